"""When a chain has diverged: :class:`ChainDiverged` and the range rule :class:`DivergenceGuard`.

Shared by the samplers, the particle solvers and the BlackJAX / NumPyro / Pyro Langevin kernels.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class LowAcceptanceWarning(RuntimeWarning):
    """MALA accepted too few proposals for its samples to be useful: reduce the step size."""


class ChainDiverged(RuntimeError):
    """A chain (or a particle cloud) left the finite numbers or ran off far outside the range of
    its data and start: the step size (or time step) is too large for the target's curvature."""


#: chains farther than this many reference radii from the reference centre have diverged
#: (:class:`DivergenceGuard`); ``math.inf`` turns the range check off (non-finite values still stop)
DIVERGENCE_FACTOR = 1e4


def _check_chains(x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x).all(1)).sum())
        raise ChainDiverged(f"{bad} chain(s) diverged (non-finite positions); reduce the step size")


def oracle_extent(oracle: Any) -> torch.Tensor | None:
    """(k, d) float64 points spanning the oracle's data, or None when the oracle does not expose it.

    KDE and DiScoFormer fits hold their samples (``.samples``); exact Gaussian mixtures give their
    means +- 3 standard deviations per coordinate.
    """
    samples = getattr(oracle, "samples", None)
    if isinstance(samples, torch.Tensor) and samples.ndim == 2 and samples.shape[0] > 0:
        return samples.detach().to(torch.float64)
    means, covariances = getattr(oracle, "means", None), getattr(oracle, "covariances", None)
    if isinstance(means, torch.Tensor) and isinstance(covariances, torch.Tensor) and means.ndim == 2:
        sd = torch.diagonal(covariances, dim1=-2, dim2=-1).clamp(min=0).sqrt().to(torch.float64)
        centres = means.detach().to(torch.float64)
        return torch.cat([centres - 3 * sd, centres + 3 * sd])
    return None


class DivergenceGuard:
    """Stops a batch of chains once any leaves a sane range around its data and start.

    The reference centre ``c`` is the mean of the data (when the oracle exposes it, see
    :func:`oracle_extent`) or of the starting points; the reference radius after a drift time ``D``
    (sum of the drift coefficients, e.g. ``k tau`` for Langevin) and an injected noise variance
    ``V`` per coordinate (``2 k tau``) is::

        R = R0 + D S0 + sqrt(d V)

    with ``R0`` the largest distance of a starting or data point from ``c`` and ``S0`` the largest
    drift (score or velocity) norm at the start. A healthy chain stays within ``R``: it starts within
    ``R0``, its drift moves it at most ``D S0`` while the drift shrinks towards the mass (for a
    log-concave target exactly; the factor covers the rest), and the noise spreads it by about
    ``sqrt(d V)`` -- which also bounds a heavy-tailed target's chains, whose drift vanishes far out
    so they move like Brownian motion. An unstable step grows the distance geometrically, so it
    passes ``DIVERGENCE_FACTOR`` (1e4) times ``R`` within a few dozen steps, long before the numbers
    become inf; every term scales like a length, so the rule is the same at any data scale.

    Args:
        start: (m, d) starting points. oracle: the oracle driving the chains (for its data), or None.
        start_drift: (m, d) drift at the start (``S0``); None means 0.
        hint: what to change, e.g. ``"step_size=0.5 is too large; reduce it"``.
        factor: the multiple of ``R`` that counts as diverged; default :data:`DIVERGENCE_FACTOR`.
    """

    def __init__(self, start: torch.Tensor, oracle: Any = None, start_drift: torch.Tensor | None = None,
                 hint: str = "reduce the step size", factor: float | None = None) -> None:
        x = start.detach().to(torch.float64)
        data = oracle_extent(oracle) if oracle is not None else None
        if data is not None and (data.shape[1] != x.shape[1] or not bool(torch.isfinite(data).all())):
            data = None
        if data is not None:
            centre = data.mean(0)
        elif x.shape[0]:
            centre = x.mean(0)
        else:  # no chains and no data: nothing will be checked against it
            centre = torch.zeros(x.shape[1], dtype=torch.float64)
        self.centre = centre.to(x.device)
        radius = 0.0
        if x.shape[0]:
            radius = float((x - self.centre).norm(dim=1).max())
        if data is not None:
            radius = max(radius, float((data.to(x.device) - self.centre).norm(dim=1).max()))
        self.radius0 = radius
        self.drift0 = 0.0 if start_drift is None or start_drift.shape[0] == 0 else \
            float(start_drift.detach().to(torch.float64).norm(dim=1).max())
        self.dim = int(x.shape[1])
        self.hint = hint
        self.factor = DIVERGENCE_FACTOR if factor is None else float(factor)
        self.drift_time = 0.0
        self.noise_variance = 0.0

    def advance(self, drift_time: float, noise_variance: float) -> None:
        """Account for one more step with drift coefficient ``drift_time`` and noise variance
        ``noise_variance`` per coordinate."""
        self.drift_time += float(drift_time)
        self.noise_variance += float(noise_variance)

    @property
    def radius(self) -> float:
        """The current reference radius ``R``."""
        return self.radius0 + self.drift_time * self.drift0 + math.sqrt(self.dim * self.noise_variance)

    def check(self, x: torch.Tensor) -> None:
        """Raise :class:`ChainDiverged` if any row of ``x`` (m, d) is non-finite or beyond the range."""
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x).all(1)).sum())
            raise ChainDiverged(f"{bad} chain(s) diverged (non-finite positions); {self.hint}")
        if x.shape[0] == 0 or not math.isfinite(self.factor):
            return
        limit = self.factor * max(self.radius, 1e-300)
        distance = (x.detach().to(torch.float64) - self.centre.to(x.device)).norm(dim=1)
        far = distance > limit
        if bool(far.any()):
            raise ChainDiverged(
                f"{int(far.sum())} chain(s) diverged: {float(distance.max()):.3g} from the centre of the data "
                f"and start, beyond {self.factor:.0e} x their range {self.radius:.3g}; {self.hint}")
