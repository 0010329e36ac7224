"""Probe: does stacking the network's score with a BIC-chosen Gaussian mixture's, the weight chosen by
held-out score matching, beat both?

Score of the geometric blend p_net^w p_gmm^(1-w): s = w s_net + (1 - w) s_gmm. Its held-out
Hyvärinen loss E[|s|^2 / 2 + div s] is quadratic in w, so the cross-fitted w (fit both on one
interleaved half, score at points of the other, both ways) has a closed form; clipped to [0, 1].
Prints relative score MSE against the truth for the network, the mixture, the blend at the chosen
w and at the best w in hindsight.
Usage: python docs/experiments/score_stacking.py [seed] [more]
"""

from __future__ import annotations

import sys
import time

import torch

from disco_score import DiScoFormer
from disco_score.bench.baselines import BICGaussianMixture
from disco_score.bench.problems import make_problem
from disco_score.bench.wild import WildCell
from disco_score.components import interleaved_subsets
from disco_score.metrics import relative_score_mse
from disco_score.whitening import Whitening

CELLS = [WildCell("W3", "poisson_linnerud", 512, d=6), WildCell("W3", "poisson_linnerud", 2048, d=6),
         WildCell("W3", "eight_schools_noncentred", 2048, d=10), WildCell("W3", "logistic_breast_cancer", 2048, d=11),
         WildCell("W2", "tight mixture d=2", 2048, 1, 2), WildCell("W2", "mixed-scale mixture d=10", 2048, 1, 10),
         WildCell("W2", "student-t product d=10", 2048, 1, 10), WildCell("W2", "funnel d=10", 2048, 1, 10),
         WildCell("W2", "banana d=2", 2048, 1, 2), WildCell("W2", "shell d=5", 2048, 1, 5),
         WildCell("W2", "student-t mixture d=2", 2048, 1, 2)]
MORE = [WildCell("W2", "student-t product d=2", 2048, 1, 2), WildCell("W2", "funnel d=2", 2048, 1, 2),
        WildCell("W2", "shell d=2", 2048, 1, 2), WildCell("W2", "shell d=20", 2048, 1, 20),
        WildCell("W2", "tight mixture d=10", 2048, 1, 10), WildCell("W3", "eight_schools_noncentred", 512, d=10),
        WildCell("W3", "eight_schools_noncentred", 8192, d=10), ("gmm", 2, 2048, 0), ("gmm", 2, 2048, 1),
        ("gmm", 10, 2048, 0), ("gmm", 10, 2048, 1), ("gmm", 10, 256, 0)]
POINTS, STEP = int(__import__("os").environ.get("BLEND_POINTS", 256)), 1e-2


def score_and_div(oracle, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m, d = y.shape
    eye = torch.eye(d, dtype=y.dtype)
    pts = torch.cat([y, (y[:, None] + STEP * eye).reshape(-1, d), (y[:, None] - STEP * eye).reshape(-1, d)])
    s = torch.as_tensor(oracle.score(pts), dtype=torch.float64)
    plus, minus = s[m:m + m * d].reshape(m, d, d), s[m + m * d:].reshape(m, d, d)
    return s[:m], (torch.diagonal(plus - minus, dim1=1, dim2=2)).sum(1) / (2 * STEP)


def blend_weight(z: torch.Tensor, seed: int) -> float:
    halves = interleaved_subsets(z, 2)
    num = den = 0.0
    for a, b in ((halves[0], halves[1]), (halves[1], halves[0])):
        y = z[b][:: max(1, len(b) // POINTS)][:POINTS]
        sa, da = score_and_div(DiScoFormer.pretrained().fit(z[a]), y)
        sb, db = score_and_div(BICGaussianMixture(seed=seed).fit(z[a]), y)
        diff = sa - sb
        num += float(-((diff * sb).sum(1) + da - db).mean())
        den += float((diff * diff).sum(1).mean())
    return min(1.0, max(0.0, num / den))


def problem_of(cell, seed: int):
    if isinstance(cell, WildCell):
        return cell.label, cell.problems(seed)[0]
    family, d, n, index = cell
    return f"P1 d={d} n={n} #{index}", make_problem(family, d, n, index, seed)


def main(seed: int, cells: list) -> None:
    torch.set_num_threads(1)
    print("| set | network | BIC mixture | blend (w) | best w in hindsight | seconds |")
    print("|---|---|---|---|---|---|")
    for cell in cells:
        label, problem = problem_of(cell, seed)
        t = time.perf_counter()
        x, q, truth = problem.samples, problem.queries, problem.true_score
        s_net = torch.as_tensor(DiScoFormer.pretrained().fit(x).score(q), dtype=torch.float64)
        s_gmm = torch.as_tensor(BICGaussianMixture(seed=seed).fit(x).score(q), dtype=torch.float64)
        w = blend_weight(Whitening.from_samples(x).forward(x), seed)
        grid = [i / 20 for i in range(21)]
        errs = [relative_score_mse(g * s_net + (1 - g) * s_gmm, truth) for g in grid]
        best = min(range(21), key=lambda i: errs[i])
        print(f"| {label} | {relative_score_mse(s_net, truth):.3g} | {relative_score_mse(s_gmm, truth):.3g} | "
              f"{relative_score_mse(w * s_net + (1 - w) * s_gmm, truth):.3g} ({w:.2f}) | "
              f"{errs[best]:.3g} ({grid[best]:.2f}) | {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 101, MORE if sys.argv[2:] == ["more"] else CELLS)
