"""Shipped checkpoint against a candidate on the accuracy suite's own targets (docs/experiments.md, session 7).

Usage: python docs/experiments/compare_checkpoints.py CANDIDATE_WEIGHTS_DIR [CELL_REGEX] [TARGETS]

Runs only the DiScoFormer rows (no KDE baselines, no adapt) on the cells of ``bench.accuracy_cells`` whose
name matches CELL_REGEX, with the same targets, samples and queries as ``bench accuracy`` (seed 0), and prints
per-cell means for both checkpoints. A screening tool before the full suite, not a substitute for it.
Export a training checkpoint first: ``disco-score train --export CKPT --weights-dir DIR``.
"""
import re
import sys
import time

import torch

from disco_score import bench
from disco_score.discoformer import DiScoFormer

torch.set_num_threads(1)
candidate_dir = sys.argv[1]
pattern = re.compile(sys.argv[2] if len(sys.argv) > 2 else ".")
max_targets = int(sys.argv[3]) if len(sys.argv) > 3 else None
models = {"shipped": DiScoFormer.pretrained(), "candidate": DiScoFormer.pretrained(candidate_dir)}

for cell in bench.accuracy_cells(quick=False):
    name = cell.label
    if not pattern.search(name):
        continue
    needs_log_density = "log_density_mse" in cell.shown
    sums = {key: {metric: 0.0 for metric in cell.shown} for key in models}
    targets = cell.n_targets if max_targets is None else min(cell.n_targets, max_targets)
    start = time.time()
    for index in range(targets):
        problem = bench.make_problem(cell.family, cell.d, cell.n, index, seed=0)
        for key, model in models.items():
            # the d <= 2 grid normaliser only matters for log-density cells
            model.normalize = needs_log_density
            figures = bench.query_metrics(model.fit(problem.samples), problem)
            for metric in cell.shown:
                sums[key][metric] += figures[metric] / targets
    text = "  ".join(f"{key}: " + ", ".join(f"{metric} {value:.4g}" for metric, value in figs.items())
                     for key, figs in sums.items())
    print(f"{name} ({targets} targets, {time.time() - start:.0f} s)  {text}", flush=True)
