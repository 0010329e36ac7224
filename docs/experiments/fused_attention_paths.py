"""The fused attention path against the blocked loop: fit and query time, and the largest
difference of the outputs, on the packaged general network.

    python docs/experiments/fused_attention_paths.py

Two-scale, two-cluster sets in d = 1 ... 50; queries are fresh normal draws plus points 1e-3 from
samples. "query" includes the log-density, so in d <= 2 the grid normaliser (96^2 or 1024 nodes).
"""

import time

import numpy as np
import torch

from disco_score import DiScoFormer
from disco_score.geometric_net import fused_attention

torch.set_num_threads(1)
estimator = DiScoFormer.pretrained(split_components=False, specialists=())
for d, n in [(1, 700), (2, 3000), (3, 1500), (5, 2000), (10, 1200), (50, 600)]:
    rng = np.random.default_rng(d)
    x = rng.normal(size=(n, d)) * np.where(rng.random((n, 1)) < 0.5, 1, 0.3) + (rng.random((n, 1)) < 0.5) * 3
    q = np.concatenate([rng.normal(size=(500, d)), x[:100] + 1e-3])
    times, outputs = [], []
    for fused in (True, False):
        with fused_attention(fused):
            start = time.perf_counter()
            oracle = estimator.fit(x)
            fitted = time.perf_counter()
            outputs.append((oracle.score(q), oracle.log_density(q)))
            times.append((fitted - start, time.perf_counter() - fitted))
    (s1, l1), (s2, l2) = outputs
    print(f"d={d} n={n} fit {times[0][0]:.2f} / {times[1][0]:.2f} s, query {times[0][1]:.2f} / {times[1][1]:.2f} s "
          f"(fused / blocked); score max rel diff {np.abs(s1 - s2).max() / np.abs(s2).max():.1e}, "
          f"log-density max diff {np.abs(l1 - l2).max():.1e}")
