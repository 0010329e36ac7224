"""Settings of the component stage on benchmark-family targets (docs/experiments.md, session 10):
relative score MSE, log-density MSE, number of fitted parts and wall time per configuration.
Configurations: ``default`` (as shipped), ``nosplit``, ``split<K>[m<min size>][r]`` = components
looked for from d = 2 with at most K parts, the given minimum part size, ``r`` = no reassignment.
Usage: python docs/experiments/component_settings.py d ns targets configs [seed] [family]
  e.g. 10 1024,4096 0,1 default,split16m192,split8m32r 1 gmm   (family: gmm, gmm-many, p2, ...)"""
import sys
import time

import torch
from disco_score import DiScoFormer, bench
from disco_score.metrics import relative_score_mse
torch.set_num_threads(1)
d = int(sys.argv[1])
ns = [int(v) for v in sys.argv[2].split(",")]
targets = [int(v) for v in sys.argv[3].split(",")]
configs = sys.argv[4].split(",")
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 1
family = sys.argv[6] if len(sys.argv) > 6 else "gmm"
def make(c):
    if c == "default": return DiScoFormer.pretrained()
    if c == "nosplit": return DiScoFormer.pretrained(split_components=False)
    rest = c[5:]  # split<K>[m<min size>][r = no reassign]
    noreassign = rest.endswith("r"); rest = rest.rstrip("r")
    k, _, m = rest.partition("m")
    extra = {"min_component_size": int(m)} if m else {}
    return DiScoFormer.pretrained(split_min_dim=2, max_components=int(k), reassign=not noreassign, **extra)
ests = {c: make(c) for c in configs}
for n in ns:
    for t in targets:
        p = bench.make_problem(family, d, n, t, seed)
        out = []
        for name, est in ests.items():
            t0 = time.perf_counter()
            o = est.fit(p.samples)
            k = len(getattr(o, "components", [o]))
            err = relative_score_mse(o.score(p.queries), p.true_score)
            ld = float(((o.log_density(p.queries) - p.true_log_density) ** 2).mean())
            out.append(f"{name} {100*err:.2f} % ld {ld:.3f} ({k} parts, {time.perf_counter()-t0:.0f} s)")
        print(f"{family} d={d} n={n} t{t} K={p.n_components}: " + " | ".join(out), flush=True)
