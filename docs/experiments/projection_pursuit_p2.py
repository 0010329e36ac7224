"""Can a deterministic, equivariant projection pursuit find P2's between-mean direction where the FOBI
frame alone could not (docs/experiments.md, sessions 6 and 8)?

In whitened coordinates z, start from every FOBI axis (eigenvectors of mean(|z|^2 z z^T), an
equivariant frame) and run two searches over unit directions w, each step commuting with rotations:
  * "fixed point": one-unit FastICA for the kurtosis contrast, w <- mean(z (w^T z)^3) - 3 w;
  * "descent": projected gradient descent on mean((w^T z)^4) (bimodal = low kurtosis), 200 steps.
Prints, per target, |cos| between the whitened mean difference and (a) the best FOBI axis, (b) the
converged direction of most extreme kurtosis of each search, (c) the best-aligned converged
direction (an upper bound for any rule that picks among them). 1 = found.
With --fit: pick, among the directions both searches converged to (descent run 1000 steps x 0.3), the
one whose best two-way split of the projections leaves the least within-split variance (a rule that
never sees the truth), split the samples there, fit one Gaussian per side (Ledoit-Wolf shrinkage,
rotation-equivariant) with weights = counts, and print that mixture's score MSE on the benchmark's
1024 queries: what a component-finding stage would give.
Usage: python docs/experiments/projection_pursuit_p2.py [seed] [--fit]"""
import sys

import torch
from sklearn.covariance import ledoit_wolf

from disco_score import bench
from disco_score.metrics import score_mse
from disco_score.whitening import canonical_frame
from disco_score.targets import GaussianMixture
from disco_score.whitening import Whitening

torch.set_num_threads(1)
args = [a for a in sys.argv[1:] if a != "--fit"]
seed = int(args[0]) if args else 0
fit = "--fit" in sys.argv


def excess_kurtosis(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(k,) excess kurtosis of the projections of z (n, d) on the unit rows of w (k, d)."""
    return ((w @ z.T) ** 4).mean(-1) - 3


def fixed_point(w: torch.Tensor, z: torch.Tensor, iters: int = 50) -> torch.Tensor:
    for _ in range(iters):
        w = ((w @ z.T) ** 3) @ z / len(z) - 3 * w
        w = w / w.norm(dim=1, keepdim=True)
    return w


def descent(w: torch.Tensor, z: torch.Tensor, iters: int = 200, step: float = 0.05) -> torch.Tensor:
    for _ in range(iters):
        g = ((w @ z.T) ** 3) @ z / len(z)
        g = g - (g * w).sum(1, keepdim=True) * w  # tangent to the sphere
        w = w - step * g
        w = w / w.norm(dim=1, keepdim=True)
    return w


def best_split(w: torch.Tensor, z: torch.Tensor, min_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k,) within-split variance fraction of the best two-way split of each projection, (k,) threshold."""
    proj, _ = torch.sort(w @ z.T, dim=1)
    n = proj.shape[1]
    c1, c2 = proj.cumsum(1), (proj ** 2).cumsum(1)
    left = torch.arange(1, n, dtype=proj.dtype)
    ss_left = c2[:, :-1] - c1[:, :-1] ** 2 / left
    ss_right = (c2[:, -1:] - c2[:, :-1]) - (c1[:, -1:] - c1[:, :-1]) ** 2 / (n - left)
    within = (ss_left + ss_right) / (c2[:, -1:] - c1[:, -1:] ** 2 / n)
    within[:, : min_size - 1], within[:, n - min_size:] = float("inf"), float("inf")
    k = within.argmin(1)
    rows = torch.arange(len(w))
    return within[rows, k], 0.5 * (proj[rows, k] + proj[rows, k + 1])


def split_fit_score_mse(x: torch.Tensor, side: torch.Tensor, problem: bench.Problem) -> float:
    parts = [x[side], x[~side]]
    covs = torch.stack([torch.as_tensor(ledoit_wolf(part.numpy())[0]) for part in parts])
    means = torch.stack([part.mean(0) for part in parts])
    weights = torch.tensor([len(part) / len(x) for part in parts], dtype=torch.float64)
    return score_mse(GaussianMixture(weights, means, covs).score(problem.queries.double()), problem.true_score)


for n in (2048, 16384):
    for idx in range(4):
        p = bench.make_problem("p2", 100, n, idx, seed, **({} if fit else {"m": 8}))
        x = p.samples.double()
        whitening = Whitening.from_samples(x)
        z = whitening.forward(x)
        dmu = (whitening.forward(p.target.means[1:2].double()) - whitening.forward(p.target.means[0:1].double())).flatten()
        dmu = dmu / dmu.norm()
        fobi = canonical_frame(z[None])[0].T  # rows = the FOBI axes
        w_fp, w_gd = fixed_point(fobi, z), descent(fobi, z)
        k_fp, k_gd = excess_kurtosis(w_fp, z), excess_kurtosis(w_gd, z)
        cos = lambda w: (w @ dmu).abs()
        print(f"n={n:5d} target {idx} (smaller weight {float(p.target.weights.min()):.2f}, kurtosis along the truth "
              f"{float(excess_kurtosis(dmu[None], z)[0]):+.2f}): FOBI {float(cos(fobi).max()):.3f} | "
              f"fixed point {float(cos(w_fp)[k_fp.abs().argmax()]):.3f} (best {float(cos(w_fp).max()):.3f}) | "
              f"descent {float(cos(w_gd)[k_gd.argmin()]):.3f} (best {float(cos(w_gd).max()):.3f})")
        if fit:
            candidates = torch.cat([w_fp, descent(fobi, z, 1000, 0.3)])
            within, threshold = best_split(candidates, z, min_size=z.shape[1] + 2)
            j = int(within.argmin())
            side = z @ candidates[j] < threshold[j]
            mse = split_fit_score_mse(x, side, p)
            print(f"    --fit: chosen direction |cos| {float(cos(candidates[j:j + 1])[0]):.3f}, within-split variance "
                  f"{float(within[j]):.3f}, split sizes {int(side.sum())}/{int((~side).sum())}, score MSE {mse:.4f}")
