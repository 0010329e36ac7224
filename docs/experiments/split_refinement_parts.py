"""Which benchmark cells the split refinement (components._refine_split, session 11) can change:
for every target of the d >= 5 cells, the parts ``DiScoFormer.components`` returns with and without
the refinement (``REFINE_ITERS = 0``). A cell whose parts are identical on every target gives
identical figures (the fits are deterministic functions of the parts).
Usage: python docs/experiments/split_refinement_parts.py"""
import torch

from disco_score import DiScoFormer, bench, components

torch.set_num_threads(1)
CELLS = ([("P1 d=10 n=16384", "gmm", 10, 16384, 8), ("P3 more modes d=10 n=2048", "gmm-many", 10, 2048, 8),
          ("P2 d=100 n=2048", "p2", 100, 2048, 4), ("P2 d=100 n=16384", "p2", 100, 16384, 4),
          ("sampling d=10 n=1024", "gmm", 10, 1024, 4)]
         + [(f"vs n d=10 n={n}", "gmm", 10, n, 2) for n in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)]
         + [(f"vs d d={d} n=16384", "p2" if d == 100 else "gmm", d, 16384, 2) for d in (5, 20, 50, 100)]
         + [(f"vs n d=100 n={n}", "p2", 100, n, 2) for n in (512, 1024, 2048, 4096, 8192, 16384, 32768)])
est = DiScoFormer.pretrained()
refine_iters = components.REFINE_ITERS
for label, family, d, n, targets in CELLS:
    changed = []
    for t in range(targets):
        x = bench.make_problem(family, d, n, t, 0, m=1).samples
        components.REFINE_ITERS = refine_iters
        new = est.components(x)
        components.REFINE_ITERS = 0
        old = est.components(x)
        same = len(new) == len(old) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(new, old))
        if not same:
            changed.append(f"t{t}: {[p.shape[0] for p in old]} -> {[p.shape[0] for p in new]}")
    components.REFINE_ITERS = refine_iters
    print(f"{label}: {'identical parts' if not changed else 'CHANGED ' + '; '.join(changed)}", flush=True)
