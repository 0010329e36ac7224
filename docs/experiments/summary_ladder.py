"""Probe: does a denser ladder of mixture sizes rescue the summary on P1 Gaussian mixtures at d = 10?

For P1 targets (the accuracy suite's make_problem, given seed) fits the network once, then distils
under the default sizes and under a ladder 64, 32, ..., 1 (successive halving either way), and
prints the relative score MSE against the truth, the size kept, the held-out gap and seconds.
Usage: python docs/experiments/summary_ladder.py [seed] [n ...]
"""

from __future__ import annotations

import sys
import time

import torch

from disco_score import DiScoFormer, summary
from disco_score.bench.problems import make_problem
from disco_score.metrics import relative_score_mse

DEFAULT_SIZES = summary.component_counts


def ladder(n: int, d: int, config: summary.SummaryConfig) -> list[int]:
    top = DEFAULT_SIZES(n, d, config)[0]
    return sorted({max(1, top >> i) for i in range(7)}, reverse=True)


def main(seed: int, sizes: list[int]) -> None:
    torch.set_num_threads(1)
    print("| n | target | true K | network | default sizes | ladder |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        for index in range(2):
            p = make_problem("gmm", 10, n, index, seed)
            net = DiScoFormer.pretrained().fit(p.samples[:summary.SummaryConfig().teacher_samples])
            row = [f"{relative_score_mse(net.score(p.queries), p.true_score):.3g}"]
            for rule in (DEFAULT_SIZES, ladder):
                summary.component_counts = rule
                t = time.perf_counter()
                fit = summary.distil(net, p.samples)
                row.append(f"{relative_score_mse(fit.score(p.queries), p.true_score):.3g} (K={fit.n_components}, "
                           f"gap {fit.teacher_gap:.3g}, {time.perf_counter() - t:.1f} s)")
            summary.component_counts = DEFAULT_SIZES
            print(f"| {n} | {index} | {p.n_components} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(args[0] if args else 101, args[1:] or [2048, 16384])
