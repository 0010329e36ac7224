"""The affine map that puts a sample set in standard position, and back.

For a symmetric positive-definite matrix ``S`` (the sample covariance, or a kernel covariance) the
map is ``z = (x - mean) @ W`` with ``W = S^{-1/2}`` (symmetric). Densities transform as
``log p_x(x) = log p_z(z) + log|det W|`` and scores as ``s_x(x) = W @ s_z(z)``. Using the symmetric
square root makes the map unique, so an affine change of the data, ``X A + b``, changes ``z`` only by
an orthogonal rotation: a rotation-equivariant model in ``z`` is then exactly affine-equivariant.

Also here, because every estimator works in these coordinates: Scott's bandwidth factor
(:func:`scott_factor`, a kernel width in whitened units) and the canonical frame of a whitened set
(:func:`canonical_frame`), which removes the rotation left after whitening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Relative eigenvalue below which a covariance counts as singular. Statistics are computed in
# float64, where a set of points on a line gives ratios near 1e-16 even after float32 rounding.
RANK_TOLERANCE = 1e-11


def scott_factor(n: int, d: int) -> float:
    """Scott's rule ``n^(-1/(d+4))``: the Gaussian-kernel bandwidth, in whitened units (data
    standard deviations), for ``n`` samples in ``d`` dimensions."""
    return n ** (-1.0 / (d + 4))


def log_scott_factor(n: int, d: int) -> float:
    """``log`` of :func:`scott_factor`, computed as ``-log(n) / (d + 4)`` (what the networks add to
    their learned log-bandwidths)."""
    return -math.log(n) / (d + 4)


def canonical_frame(z: torch.Tensor) -> torch.Tensor:
    """(B, n, d) whitened samples -> (B, d, d) orthogonal frame ``R`` (columns are axes).

    The eigenvectors of the fourth-moment matrix ``mean(|z|^2 z z^T)`` (FOBI), ascending, each signed
    so the third moment along it is non-negative. For a rotated set ``z Q`` the frame is ``Q^T R``,
    so the canonical coordinates ``z R`` do not change: a network on them is exactly rotation-
    invariant, and its score, mapped back with ``R^T``, exactly equivariant (up to ties between
    eigenvalues, which have probability zero). For mixtures the extreme axes are informative: the
    most platykurtic direction of a two-component mixture is its between-mean direction.
    """
    x = z.detach().to(torch.float64)
    weight = (x * x).sum(-1)
    moment = torch.einsum("bni,bn,bnj->bij", x, weight, x) / x.shape[1]
    _, axes = torch.linalg.eigh(moment)
    skew = ((x @ axes) ** 3).mean(1)  # (B, d)
    sign = torch.where(skew < 0, -torch.ones_like(skew), torch.ones_like(skew))
    return (axes * sign[:, None, :]).to(z.dtype)


def _power_of_two_above(value: float) -> float:
    """The power of two in [value, 2 value) (0 for 0, inf for inf or NaN): dividing by it is exact."""
    if value == 0 or not math.isfinite(value):
        return value if value == 0 else math.inf
    exponent = math.frexp(value)[1]  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return math.ldexp(1.0, exponent) if exponent < 1024 else math.inf


@dataclass(frozen=True)
class Whitening:
    """``z = (x - mean) @ matrix``; all fields float64 on the samples' device.

    Attributes:
        mean: (d,) centre.
        matrix: (d, d) symmetric ``S^{-1/2}``.
        inverse: (d, d) symmetric ``S^{1/2}``.
        log_det: scalar ``log|det matrix|`` (nats), added to log-densities computed in ``z``.
    """

    mean: torch.Tensor
    matrix: torch.Tensor
    inverse: torch.Tensor
    log_det: torch.Tensor

    @staticmethod
    def from_covariance(covariance: torch.Tensor, mean: torch.Tensor | None = None,
                        name: str = "covariance") -> "Whitening":
        """Whitening for a symmetric positive-definite (d, d) matrix; ValueError if it is singular."""
        cov = covariance.to(torch.float64)
        cov = 0.5 * (cov + cov.T)
        evals, evecs = torch.linalg.eigh(cov)
        top = float(evals[-1])
        if not top > 0:
            raise ValueError(f"{name} is zero: the samples have no spread (all points identical?)")
        if float(evals[0]) <= RANK_TOLERANCE * top:
            rank = int((evals > RANK_TOLERANCE * top).sum())
            raise ValueError(
                f"{name} is rank-deficient: the samples span only {rank} of {cov.shape[0]} dimensions "
                f"(points on a lower-dimensional subspace, a constant coordinate, fewer points than "
                f"dimensions, or coordinates on scales more than ~1e5 apart); drop or combine the "
                f"redundant coordinates, or standardise them, first")
        inv_sqrt = evecs * evals.rsqrt()
        matrix = inv_sqrt @ evecs.T
        inverse = (evecs * evals.sqrt()) @ evecs.T
        if mean is None:
            mean = torch.zeros(cov.shape[0], dtype=torch.float64, device=cov.device)
        return Whitening(mean.to(torch.float64), matrix, inverse, -0.5 * torch.log(evals).sum())

    @staticmethod
    def from_samples(samples: torch.Tensor, name: str = "samples") -> "Whitening":
        """Centre at the sample mean, scale by the unbiased sample covariance (ddof = 1)."""
        x = samples.to(torch.float64)
        # Statistics of x / scale, the scale folded back in after: data near 1e200 (or 1e-200)
        # would overflow (underflow) the sums of squares in float64. Scales are powers of two, so
        # for ordinary data every result is bit-for-bit the unscaled one.
        largest = float(x.abs().max()) if x.numel() else 0.0
        top = _power_of_two_above(largest)
        if not math.isfinite(top):
            raise ValueError(f"{name} reach {largest:.3g}, too close to float64's largest number (or are not "
                             f"finite); rescale the data")
        mean = (x / top).mean(0) * top if top > 0 else x.mean(0)
        centred = x - mean
        scale = _power_of_two_above(float(centred.abs().max()) if centred.numel() else 0.0)
        if scale == 0:
            raise ValueError(f"the covariance of {name} is zero: the samples have no spread (all points identical?)")
        if not 1.0 / scale < math.inf:
            raise ValueError(f"{name} spread only ~{scale:.3g}, below float64's normal range (subnormal numbers); "
                             f"rescale the data")
        unit = centred / scale
        base = Whitening.from_covariance(unit.T @ unit / (x.shape[0] - 1), name=f"the covariance of {name}")
        if scale == 1.0:
            return Whitening(mean, base.matrix, base.inverse, base.log_det)
        matrix, inverse = base.matrix / scale, base.inverse * scale
        if not (bool(torch.isfinite(matrix).all()) and bool(torch.isfinite(inverse).all())):
            raise ValueError(f"{name} spread ~{scale:.3g}: its whitening overflows float64; rescale the data")
        return Whitening(mean, matrix, inverse, base.log_det - x.shape[1] * math.log(scale))

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the map (the length of ``mean``)."""
        return int(self.mean.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(m, d) points -> (m, d) whitened points, in the input's dtype."""
        return ((x.to(torch.float64) - self.mean) @ self.matrix).to(x.dtype)

    def backward(self, z: torch.Tensor) -> torch.Tensor:
        """Whitened points -> original coordinates."""
        return (z.to(torch.float64) @ self.inverse + self.mean).to(z.dtype)

    def log_density_out(self, log_density_z: torch.Tensor) -> torch.Tensor:
        """Log-density in ``z`` -> log-density in ``x`` (adds ``log|det W|``)."""
        return log_density_z + self.log_det.to(log_density_z.dtype)

    def score_out(self, score_z: torch.Tensor) -> torch.Tensor:
        """Score in ``z`` (m, d) -> score in ``x``: ``W @ s`` (W is symmetric)."""
        return score_z @ self.matrix.to(score_z.dtype)
