"""Held-out likelihood against score-matching adaptation, on W1 toy sets and W2 targets.

    python docs/experiments/adapt_objectives.py "2 spirals,two moons"

Prints the held-out log-likelihood before / after ``adapt()`` (likelihood objective, defaults) on
toy sets (n = 2000 train, 2000 test), then relative score MSE on W2 targets (n = 2048, 1024 queries):
plain fit, likelihood adaptation (16 steps, lr 0.1), score-matching adaptation (4 steps, lr 0.01).
"""

import sys
import time

import numpy as np
import torch

from disco_score import KDE, DiScoFormer, metrics
from disco_score.bench import wild
from disco_score.bench.toys import draw_toy

torch.set_num_threads(1)
est = DiScoFormer.pretrained()
for name in sys.argv[1].split(","):
    x, y = draw_toy(name, 2000, 1), draw_toy(name, 2000, 2)
    oracle = est.fit(x)
    start = time.time()
    adapted = oracle.adapt()
    print(f"{name}: {np.mean(oracle.log_density(y)):.3f} -> {np.mean(adapted.log_density(y)):.3f} "
          f"({time.time() - start:.1f} s); LOO-CV KDE {np.mean(KDE('cv').fit(x).log_density(y)):.3f}", flush=True)
for family, d in (("banana", 2), ("student-t product", 2), ("funnel", 2), ("tight mixture", 2), ("banana", 10)):
    problem = wild.w2_problem(family, d, 2048, 0, 0)
    oracle = est.fit(problem.samples)
    row = [metrics.relative_score_mse(oracle.score(problem.queries), problem.true_score)]
    for adapted in (oracle.adapt(), oracle.adapt(steps=4, lr=1e-2, objective="score_matching")):
        row.append(metrics.relative_score_mse(adapted.score(problem.queries), problem.true_score))
    print(f"{family} d={d}: plain {row[0]:.4f}, likelihood {row[1]:.4f}, score matching {row[2]:.4f}", flush=True)
