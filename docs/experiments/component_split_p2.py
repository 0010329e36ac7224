"""DiScoFormer with and without the component-finding stage on P2-style targets (docs/experiments.md,
session 9): per target, what `fit` returns, its fit time, and the score MSE and (centred) log-density
MSE at the benchmark's 1024 queries. Use seed 1 (or higher) to choose; seed 0 is the benchmark's.
Usage: python docs/experiments/component_split_p2.py SEED [ns]   e.g. 1 2048,16384"""
import sys
import time

import torch

from disco_score import DiScoFormer, bench
from disco_score.metrics import score_mse

torch.set_num_threads(2)
seed = int(sys.argv[1])
ns = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "2048,16384").split(",")]
with_split, without = DiScoFormer.pretrained(), DiScoFormer.pretrained(split_components=False)
for n in ns:
    for idx in range(4):
        p = bench.make_problem("p2", 100, n, idx, seed)
        start = time.perf_counter()
        oracle = with_split.fit(p.samples)
        fit_s = time.perf_counter() - start
        log_p, score = oracle.log_density_and_score(p.queries)
        err = log_p - p.true_log_density
        print(f"seed={seed} n={n} target {idx}: {oracle!r}, fit {fit_s:.1f}s; score MSE with split "
              f"{score_mse(score, p.true_score):.4f}, without {score_mse(without.fit(p.samples).score(p.queries), p.true_score):.4f}; "
              f"log-density MSE (centred) {float(((err - err.mean()) ** 2).mean()):.3f}", flush=True)
