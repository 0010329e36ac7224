"""Shipped checkpoint against a candidate weights directory (docs/experiments.md, session 7).

    python docs/experiments/compare_checkpoints.py CANDIDATE_DIR --cells 'P1 d=10'       # accuracy-suite cells
    python docs/experiments/compare_checkpoints.py CANDIDATE_DIR --sweep 10 256,1024,4096 --seed 1 --targets 8

``--cells`` runs only the DiScoFormer rows (no KDE baselines, no adapt) on the cells of ``bench.accuracy_cells``
whose label matches, with the same targets, samples and queries as ``bench accuracy`` (seed 0): a screening
tool before the full suite, not a substitute for it. ``--sweep D N,N,...`` draws GMM-prior targets with
another seed (choose settings such as a specialist's ``max_n`` there, not on the benchmark's own targets).
Export a training checkpoint first: ``disco-score train --export CKPT --weights-dir DIR`` (copy the general
weights beside a specialist's).
"""
import argparse
import dataclasses
import re
import time

import torch

from disco_score import bench
from disco_score.discoformer import DiScoFormer

parser = argparse.ArgumentParser()
parser.add_argument("candidate_dir")
parser.add_argument("--cells", default=None, metavar="REGEX")
parser.add_argument("--sweep", nargs=2, default=None, metavar=("D", "N_LIST"))
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--targets", type=int, default=None)
args = parser.parse_args()
torch.set_num_threads(1)
models = {"shipped": DiScoFormer.pretrained(), "candidate": DiScoFormer.pretrained(args.candidate_dir)}

if args.sweep:
    d = int(args.sweep[0])
    cells = [bench.Cell("sweep", "gmm", d, int(n), args.targets or 8, ("relative_score_mse",))
             for n in args.sweep[1].split(",")]
else:
    cells = [c for c in bench.accuracy_cells(quick=False) if re.search(args.cells or ".", c.label)]

for cell in cells:
    needs_log_density = "log_density_mse" in cell.shown
    targets = min(cell.n_targets, args.targets or cell.n_targets)
    sums = {key: {metric: 0.0 for metric in cell.shown} for key in models}
    start = time.time()
    for index in range(targets):
        problem = bench.make_problem(cell.family, cell.d, cell.n, index, seed=args.seed)
        for key, model in models.items():
            model.config = dataclasses.replace(model.config, normalize=needs_log_density)  # the d <= 2 grid normaliser only matters for log-densities
            figures = bench.query_metrics(model.fit(problem.samples), problem)
            for metric in cell.shown:
                sums[key][metric] += figures[metric] / targets
    text = "  ".join(f"{key}: " + ", ".join(f"{metric} {value:.4g}" for metric, value in figs.items())
                     for key, figs in sums.items())
    print(f"{cell.label} ({targets} targets, seed {args.seed}, {time.time() - start:.0f} s)  {text}", flush=True)
