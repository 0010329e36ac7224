"""Profile one sampler step: DiScoFormer's score at m = 1000 particles after a fit on n samples.

    python docs/experiments/profile_score_step.py 2 8192

Prints the fit time, the per-step time against the package's KDE on the same samples, and the top
entries of torch's profiler (self CPU time) for one score call.
"""

import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from disco_score import KDE, DiScoFormer

torch.set_num_threads(1)
d, n = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
particles = rng.normal(size=(1000, d))
start = time.perf_counter()
oracle = DiScoFormer.pretrained().fit(x)
fit = time.perf_counter() - start
kde = KDE().fit(x)
oracle.score(particles)  # warm
start = time.perf_counter()
oracle.score(particles)
step = time.perf_counter() - start
kde.score(particles)
start = time.perf_counter()
kde.score(particles)
kde_step = time.perf_counter() - start
print(f"d={d} n={n}: fit {fit:.2f} s; score at 1000 particles {step:.3f} s, KDE {kde_step:.4f} s "
      f"({step / kde_step:.1f}x)")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    oracle.score(particles)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
