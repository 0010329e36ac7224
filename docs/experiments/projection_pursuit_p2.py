"""Can a deterministic, equivariant projection pursuit find P2's between-mean direction where the FOBI
frame alone could not (docs/experiments.md, sessions 6 and 8)?

In whitened coordinates z, start from every FOBI axis (eigenvectors of mean(|z|^2 z z^T), an
equivariant frame) and run two searches over unit directions w, each step commuting with rotations:
  * "fixed point": one-unit FastICA for the kurtosis contrast, w <- mean(z (w^T z)^3) - 3 w;
  * "descent": projected gradient descent on mean((w^T z)^4) (bimodal = low kurtosis), 200 steps.
Prints, per target, |cos| between the whitened mean difference and (a) the best FOBI axis, (b) the
converged direction of most extreme kurtosis of each search, (c) the best-aligned converged
direction (an upper bound for any rule that picks among them). 1 = found.
Usage: python docs/experiments/projection_pursuit_p2.py [seed]"""
import sys

import torch

from disco_score import bench
from disco_score.whitening import Whitening

torch.set_num_threads(1)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0


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


for n in (2048, 16384):
    for idx in range(4):
        p = bench.make_problem("p2", 100, n, idx, seed, m=8)
        x = p.samples.double()
        whitening = Whitening.from_samples(x)
        z = whitening.forward(x)
        dmu = (whitening.forward(p.target.means[1:2].double()) - whitening.forward(p.target.means[0:1].double())).flatten()
        dmu = dmu / dmu.norm()
        fobi = torch.linalg.eigh((z * (z * z).sum(1, keepdim=True)).T @ z / n)[1].T  # rows = axes
        w_fp, w_gd = fixed_point(fobi, z), descent(fobi, z)
        k_fp, k_gd = excess_kurtosis(w_fp, z), excess_kurtosis(w_gd, z)
        cos = lambda w: (w @ dmu).abs()
        print(f"n={n:5d} target {idx} (smaller weight {float(p.target.weights.min()):.2f}, kurtosis along the truth "
              f"{float(excess_kurtosis(dmu[None], z)[0]):+.2f}): FOBI {float(cos(fobi).max()):.3f} | "
              f"fixed point {float(cos(w_fp)[k_fp.abs().argmax()]):.3f} (best {float(cos(w_fp).max()):.3f}) | "
              f"descent {float(cos(w_gd)[k_gd.argmin()]):.3f} (best {float(cos(w_gd).max()):.3f})")
