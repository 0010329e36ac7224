"""A 2-D density and score field: DiScoFormer and KDE against the exact answer.

Draws 1000 samples from a fixed, uneven four-component Gaussian mixture
(:func:`disco_score.datasets.demo_mixture`), fits the pretrained DiScoFormer and a Gaussian KDE
(Scott's bandwidth) to them, and plots on a grid

* top row: the log-density (filled contours) and the score direction (arrows) of the truth, of
  DiScoFormer and of the KDE;
* bottom row: the samples, and each estimator's score error ``|s_hat - s|`` on the grid divided by
  the root-mean-square true score ``sqrt(E|s|^2)`` (the normalisation of the relative score MSE,
  whose value at 1024 fresh draws from the truth is in the titles), shown where the true density
  is within 8 nats of its maximum (grey outside).

Run from the repository root (about 20 s of CPU time)::

    python examples/density_score_field.py          # writes docs/images/density_score_field.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from disco_score import KDE, DiScoFormer, datasets, metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID_POINTS = 80  # per axis
ARROW_STRIDE = 5  # one arrow every this many grid points


def main(out: Path, n: int = 1000, seed: int = 0) -> dict[str, float]:
    target = datasets.demo_mixture()
    samples = target.sample(n, torch.Generator().manual_seed(seed)).numpy()
    oracles = {"truth": target, "DiScoFormer": DiScoFormer.pretrained().fit(samples),
               "KDE (Scott)": KDE("scott").fit(samples)}

    # Headline numbers at 1024 fresh draws from the truth (the benchmark protocol's queries).
    queries = target.sample(1024, torch.Generator().manual_seed(seed + 1)).numpy()
    true_score = target.score(queries)
    rms_true_score = float(np.sqrt((true_score ** 2).sum(1).mean()))
    errors = {name: metrics.relative_score_mse(oracle.score(queries), true_score)
              for name, oracle in oracles.items() if name != "truth"}

    xs = np.linspace(-4.0, 4.5, GRID_POINTS)
    ys = np.linspace(-4.0, 4.5, GRID_POINTS)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    fields = {name: oracle.log_density_and_score(grid) for name, oracle in oracles.items()}
    true_log_p, true_grid_score = fields["truth"]
    top = float(true_log_p.max())
    levels = np.linspace(top - 10.0, top, 11)  # ten nats below the mode

    fig, axes = plt.subplots(2, 3, figsize=(13, 8.6), sharex=True, sharey=True)
    arrows = (slice(None, None, ARROW_STRIDE), slice(None, None, ARROW_STRIDE))
    gx, gy = np.meshgrid(xs, ys)
    for ax, (name, (log_p, score)) in zip(axes[0], fields.items()):
        image = ax.contourf(xs, ys, np.clip(log_p, levels[0], None).reshape(gx.shape), levels=levels,
                            cmap="viridis")
        unit = score / np.maximum(np.linalg.norm(score, axis=1, keepdims=True), 1e-12)
        ax.quiver(gx[arrows], gy[arrows], unit[:, 0].reshape(gx.shape)[arrows],
                  unit[:, 1].reshape(gx.shape)[arrows], color="white", alpha=0.8, width=0.004)
        ax.set_title(name if name == "truth" else f"{name}: rel. score MSE {errors[name]:.3f}", fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="log-density (nats)")

    axes[1, 0].scatter(samples[:, 0], samples[:, 1], s=3, color="0.25")
    axes[1, 0].set_title(f"the {n} samples", fontsize=10)
    norm = LogNorm(vmin=1e-2, vmax=3.0)
    outside = (true_log_p < top - 8.0).reshape(gx.shape)
    for ax, name in zip(axes[1, 1:], ("DiScoFormer", "KDE (Scott)")):
        error = np.linalg.norm(fields[name][1] - true_grid_score, axis=1).reshape(gx.shape) / rms_true_score
        ax.set_facecolor("0.85")
        mesh = ax.pcolormesh(xs, ys, np.ma.masked_where(outside, np.clip(error, 1e-2, 3.0)), norm=norm,
                             cmap="magma", shading="auto")
        ax.contour(xs, ys, true_log_p.reshape(gx.shape), levels=levels[::2], colors="white", linewidths=0.5)
        ax.set_title(f"{name}: |s_hat - s| / rms |s|", fontsize=10)
    fig.colorbar(mesh, ax=axes[1].tolist(), shrink=0.85, label="score error / rms true score")
    for ax in axes.flat:
        ax.set_aspect("equal")
    fig.suptitle(f"Density and score from {n} samples of a 4-component 2-D Gaussian mixture", fontsize=12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return errors


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "density_score_field.png")
    parser.add_argument("--n", type=int, default=1000, help="number of samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, value in main(args.out, args.n, args.seed).items():
        print(f"{name:12s} relative score MSE {value:.4f}")
    print(f"wrote {args.out}")
