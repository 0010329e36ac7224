"""Maxwell-molecule Landau collisions relax an anisotropic velocity distribution toward isotropy.

``disco_score.particles.landau`` moves N particles with
``dv_i/dt = -(1/N) Σ_j A(v_i - v_j)(s(v_i) - s(v_j))``, ``A(z) = |z|² I - z zᵀ``, the score ``s``
re-estimated from the cloud at every Heun stage. For Maxwell molecules the covariance obeys the
closed equation ``dC/dt = 4 (tr C I - d C)`` whatever the density (``docs/landau-moments.md``), so

    C(t) = (tr C0 / d) I + (C0 - (tr C0 / d) I) exp(-4 d t)

is an exact reference although the density itself (which does not stay Gaussian) has no closed form.

Score sources: KDE (Scott), the package's default estimator (the pretrained DiScoFormer) and the
moment-matched Gaussian (``particles.GaussianFit``, a Gaussian closure: exact only while the cloud is
Gaussian). d = 3, an anisotropic Gaussian start. The script prints the covariance error over time
and the momentum / energy drift, and saves ``docs/images/landau_relaxation.png``.

Run: ``python examples/landau_relaxation.py [--n 800] [--steps 30]`` (about half a minute of CPU).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from disco_score import KDE, particles  # noqa: E402
from disco_score.defaults import default_estimator  # noqa: E402

logger = logging.getLogger("landau_relaxation")
OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "landau_relaxation.png"
COV0 = np.array([[1.8, 0.3, 0.0], [0.3, 0.9, 0.0], [0.0, 0.0, 0.3]])
T_END = 0.2  # the anisotropy decays like exp(-12 t) in d = 3
REPORT_TIMES = (0.025, 0.05, 0.1, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800, help="particles")
    parser.add_argument("--steps", type=int, default=30, help="Heun steps to t = 0.2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    d = COV0.shape[0]
    x = np.random.default_rng(args.seed).normal(size=(args.n, d))
    x = x - x.mean(0)
    # correct the draw so its (1/N) covariance is exactly COV0: errors below are the solver's
    v0 = x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / args.n)).T @ np.linalg.cholesky(COV0).T

    sources = {"KDE (Scott)": KDE(), "default (DiScoFormer)": default_estimator(),
               "Gaussian closure": particles.GaussianFit()}
    colours = {"KDE (Scott)": "tab:blue", "default (DiScoFormer)": "tab:red", "Gaussian closure": "tab:green"}
    runs = {}
    for label, estimator in sources.items():
        start = time.process_time()
        path = particles.landau(v0, T_END, args.steps, estimator, progress=False)
        seconds = time.process_time() - start
        centred = path.positions - path.positions.mean(1, keepdims=True)
        covs = np.einsum("tni,tnj->tij", centred, centred) / args.n
        exact = particles.landau_covariance_closed_form(COV0, path.times)
        error = np.abs(covs - exact).max(axis=(1, 2))
        energy = (path.positions ** 2).sum((1, 2))
        momentum = path.positions.sum(1)
        runs[label] = dict(times=path.times, covs=covs, exact=exact, error=error)
        at = [error[np.argmin(np.abs(path.times - t))] for t in REPORT_TIMES]
        logger.info("%-22s max |C - C_exact| at t=%s: %s; energy drift %.1e (relative), "
                    "momentum drift %.1e; %.1f s CPU", label, REPORT_TIMES, " ".join(f"{e:.4f}" for e in at),
                    abs(energy[-1] - energy[0]) / energy[0], np.abs(momentum - momentum[0]).max(), seconds)
    anisotropy = np.abs(COV0 - np.trace(COV0) / d * np.eye(d)).max()
    logger.info("initial anisotropy max |C0 - tr(C0)/d I| = %.3f", anisotropy)

    fig, (ax_cov, ax_err) = plt.subplots(1, 2, figsize=(12, 4.5))
    fine_t = np.linspace(0, T_END, 200)
    fine = particles.landau_covariance_closed_form(COV0, fine_t)
    for (i, j), style in zip([(0, 0), (1, 1), (2, 2), (0, 1)], ["-", "--", "-.", ":"]):
        ax_cov.plot(fine_t, fine[:, i, j], color="grey", lw=4, alpha=0.4, ls=style,
                    label=f"closed form C[{i},{j}]")
        for label, r in runs.items():
            ax_cov.plot(r["times"], r["covs"][:, i, j], color=colours[label], ls=style, lw=1.2)
    for label, r in runs.items():
        ax_cov.plot([], [], color=colours[label], label=label)
        ax_err.plot(r["times"], r["error"], color=colours[label], label=label)
    ax_cov.set_xlabel("t")
    ax_cov.set_ylabel("covariance entries")
    ax_cov.set_title(f"Landau, Maxwell molecules, d = {d}, N = {args.n}")
    ax_cov.legend(fontsize=7, ncol=2)
    ax_err.set_xlabel("t")
    ax_err.set_ylabel("max |C_particles - C_closed form|")
    ax_err.set_title(f"covariance error (initial anisotropy {anisotropy:.2f})")
    ax_err.legend(fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    logger.info("saved %s", OUT)


if __name__ == "__main__":
    main()
