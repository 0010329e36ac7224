"""How many FOBI starts the component search needs on P2 (docs/experiments.md, session 9): per target,
the search's most separated split with the given starts per end of the spectrum ("all": every axis),
its |cos| with the true whitened between-mean direction (1 = found), within-split fraction and time.
Usage: python docs/experiments/component_starts_p2.py STARTS_PER_END|all [ns] [seeds]   e.g. 8 2048,16384 0,1"""
import sys
import time

import torch

from disco_score import bench, components
from disco_score.whitening import Whitening

torch.set_num_threads(2)
per_end = sys.argv[1]
ns = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "2048,16384").split(",")]
seeds = [int(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "0,1").split(",")]
# the search takes max(MIN_STARTS, STARTS_BUDGET // n) starts; pin that number here
components.MIN_STARTS = 200 if per_end == "all" else 2 * int(per_end)
components.STARTS_BUDGET = 0
for seed in seeds:
    for n in ns:
        for idx in range(4):
            p = bench.make_problem("p2", 100, n, idx, seed, m=8)
            x = p.samples.double()
            whitening = Whitening.from_samples(x)
            z = whitening.forward(x)
            dmu = (whitening.forward(p.target.means[1:2].double()) - whitening.forward(p.target.means[0:1].double())).flatten()
            start = time.perf_counter()
            split = components.most_separated_split(z, 2 * (100 + 1))
            assert split is not None
            print(f"starts/end={per_end} seed={seed} n={n} target {idx} (smaller weight {float(p.target.weights.min()):.2f}): "
                  f"|cos| {float((split.direction @ dmu).abs() / dmu.norm()):.3f}, within {split.within_fraction:.3f}, "
                  f"time {time.perf_counter() - start:.1f}s", flush=True)
