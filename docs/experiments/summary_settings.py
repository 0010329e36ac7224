"""Which :class:`~disco_score.summary.SummaryConfig` settings matter? The summary's relative score
MSE against the exact score, per variant, on the cells where the default summary lost most to the
network in ``bench summary`` — drawn with seed 101 (W2) and at n = 8192 (W3), not the benchmark's
problems. One network fit per set, distilled once per variant (1 thread).

    python docs/experiments/summary_settings.py
"""

from __future__ import annotations

import dataclasses
import time

import torch

from disco_score import DiScoFormer
from disco_score.bench.wild import w2_problem, w3_problem
from disco_score.metrics import relative_score_mse
from disco_score.summary import SummaryConfig, distil

SEED = 101
SETS = [("W2", "banana", 2, 2048), ("W2", "student-t product", 2, 2048), ("W2", "funnel", 10, 2048),
        ("W2", "student-t mixture", 10, 2048), ("W3", "logistic_breast_cancer", 11, 8192)]
BASE = SummaryConfig()
VARIANTS = {"default": BASE, "held_out=1024": dataclasses.replace(BASE, held_out=1024),
            "points=2048": dataclasses.replace(BASE, points=2048),
            "steps=400": dataclasses.replace(BASE, steps=400),
            "components=128": dataclasses.replace(BASE, components=128),
            "rank=4": dataclasses.replace(BASE, rank=4)}


def main() -> None:
    torch.set_num_threads(1)
    print("| set | DiScoFormer | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for protocol, name, d, n in SETS:
        p = w2_problem(name, d, n, 0, SEED) if protocol == "W2" else w3_problem(name, n)
        x, q = p.samples.to(torch.float64), p.queries.to(torch.float64)
        teacher = DiScoFormer.pretrained().fit(x)
        cells = [f"{100 * relative_score_mse(teacher.score(q), p.true_score):.3g} %"]
        for config in VARIANTS.values():
            start = time.perf_counter()
            summary = distil(teacher, x, config)
            cells.append(f"{100 * relative_score_mse(summary.score(q), p.true_score):.3g} % "
                         f"(K {summary.n_components}, {time.perf_counter() - start:.0f} s)")
        print(f"| {protocol} {name} d={d} n={n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
