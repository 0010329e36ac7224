"""Probe: which mixture sizes and how much halving the distilled summary wants.

Relative score MSE of the network and of summaries distilled under variants of SummaryConfig and
of the size list, on a few wild problems at a seed the benchmark does not use.
Usage: python docs/experiments/summary_sizes.py [seed]
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from disco_score import DiScoFormer, summary
from disco_score.bench.wild import WildCell
from disco_score.metrics import relative_score_mse

CELLS = [WildCell("W3", "logistic_breast_cancer", 2048, d=11), WildCell("W2", "student-t product d=2", 2048, 1, 2),
         WildCell("W2", "banana d=2", 2048, 1, 2), WildCell("W2", "funnel d=10", 2048, 1, 10),
         WildCell("W2", "student-t mixture d=10", 2048, 1, 10), WildCell("W3", "eight_schools_noncentred", 2048, d=10)]
DEFAULT_SIZES = summary.component_counts


def with_one(n: int, d: int, config: summary.SummaryConfig) -> list[int]:
    return sorted(set(DEFAULT_SIZES(n, d, config)) | {1}, reverse=True)


VARIANTS = {
    "halving (default)": ({}, DEFAULT_SIZES),
    "all sizes in full": ({"trial_steps": 150}, DEFAULT_SIZES),
    "halving + K=1": ({}, with_one),
    "halving + K=1, 300 steps": ({"steps": 300}, with_one),
}


def main(seed: int) -> None:
    torch.set_num_threads(1)
    print("| set | network | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for cell in CELLS:
        problem = cell.problems(seed)[0]
        net = DiScoFormer.pretrained().fit(problem.samples)
        truth = problem.true_score
        row = [f"{relative_score_mse(net.score(problem.queries), truth):.3g}"]
        for overrides, sizes in VARIANTS.values():
            summary.component_counts = sizes
            t = time.perf_counter()
            fit = summary.distil(net, problem.samples, dataclasses.replace(summary.SummaryConfig(), **overrides))
            err = relative_score_mse(fit.score(problem.queries), truth)
            row.append(f"{err:.3g} (K={fit.n_components}, {time.perf_counter() - t:.1f} s)")
        summary.component_counts = DEFAULT_SIZES
        print(f"| {cell.label} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 101)
