"""Distilling the fitted network into a fixed-size mixture (:func:`disco_score.summary.distil`):
how much accuracy does the summary keep, and what does it cost?

    python docs/experiments/distilled_summary_probe.py [min_d] [field=value ...]

Per set (seed 101, not the benchmark's): the relative score MSE against the exact score of the
network, of the summary's EM start alone (``steps=0``) and of the distilled summary; the summary's
held-out gap to the network; the network's fit time and the distillation's wall time (1 thread).
``field=value`` pairs override :class:`~disco_score.summary.SummaryConfig` fields.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from disco_score import DiScoFormer
from disco_score.bench.problems import make_problem
from disco_score.bench.wild import w2_problem
from disco_score.metrics import relative_score_mse
from disco_score.summary import SummaryConfig, distil

SEED = 101
CASES = [("P", "gmm", 2, 8192), ("W2", "banana", 2, 8192), ("W2", "student-t mixture", 2, 8192),
         ("W2", "tight mixture", 2, 2048), ("W2", "funnel", 10, 8192), ("W2", "mixed-scale mixture", 10, 8192),
         ("P", "gmm", 10, 2048), ("W2", "shell", 20, 2048), ("P", "gmm", 50, 2048)]


def main() -> None:
    torch.set_num_threads(1)
    min_d = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    overrides = {k: type(getattr(SummaryConfig(), k))(v) for k, v in (a.split("=") for a in sys.argv[2:])}
    config = SummaryConfig(**overrides)
    print(f"{config}")
    print("| set | n | DiScoFormer | EM start | distilled | held-out gap | K | fit (s) | distil (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for protocol, family, d, n in CASES:
        if d < min_d:
            continue
        p = (w2_problem if protocol == "W2" else make_problem)(family, d, n, 0, SEED)
        x, q = p.samples.to(torch.float64), p.queries.to(torch.float64)
        t0 = time.perf_counter()
        teacher = DiScoFormer.pretrained().fit(x)
        t_fit = time.perf_counter() - t0
        start = distil(teacher, x, dataclasses.replace(config, steps=0))
        t0 = time.perf_counter()
        summary = distil(teacher, x, config)
        t_dist = time.perf_counter() - t0
        errs = [relative_score_mse(o.score(q), p.true_score) for o in (teacher, start, summary)]
        print(f"| {protocol} {family} d={d} | {n} | " + " | ".join(f"{100 * e:.3g} %" for e in errs)
              + f" | {100 * summary.teacher_gap:.3g} % | {summary.n_components} | {t_fit:.1f} | {t_dist:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
