"""Error metrics exactly as defined in the benchmark protocol, and the quality of a sample set.

All take torch tensors or numpy arrays and return Python floats (computed in float64).
Shapes: scores (m, d); log-densities (m,); sample sets (n, d).

Estimates against the truth: :func:`score_mse`, :func:`relative_score_mse`, :func:`log_density_mse`,
:func:`centered_log_density_mse`, :func:`fisher_divergence`. Generated samples against data:
:func:`energy_distance`, its unbiased square :func:`energy_statistic`, and
:func:`memorization_fraction` (how often generated points copy the training data).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import ArrayLike, as_samples

#: pairs of points per block in the pairwise-distance sums (2^22 float64 distances: 32 MB)
_PAIR_BLOCK = 1 << 22


def _f64(value: ArrayLike, name: str) -> torch.Tensor:
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.to(torch.float64).cpu()
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains non-finite values")
    return tensor


def _pair(estimate: ArrayLike, truth: ArrayLike, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    est, tru = _f64(estimate, "estimate"), _f64(truth, "truth")
    if est.shape != tru.shape:
        raise ValueError(f"estimate has shape {tuple(est.shape)} but truth has shape {tuple(tru.shape)}")
    if est.ndim != ndim:
        raise ValueError(f"expected {ndim}-D arrays, got shape {tuple(est.shape)}")
    return est, tru


def score_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Mean over queries and coordinates of ``(s_hat - s)^2``."""
    est, tru = _pair(estimate, truth, 2)
    return float(((est - tru) ** 2).mean())


def relative_score_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """``sum |s_hat - s|^2 / sum |s|^2`` over queries (a zero predictor scores 1)."""
    est, tru = _pair(estimate, truth, 2)
    norm = (tru ** 2).sum()
    if not norm > 0:
        raise ValueError("truth is identically zero, so the relative score MSE is undefined (0/0)")
    return float(((est - tru) ** 2).sum() / norm)


def log_density_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Mean over queries of ``(log f_hat - log f)^2``."""
    est, tru = _pair(estimate, truth, 1)
    return float(((est - tru) ** 2).mean())


def centered_log_density_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Variance over queries of ``log f_hat - log f`` (for targets known up to a constant)."""
    est, tru = _pair(estimate, truth, 1)
    diff = est - tru
    return float(((diff - diff.mean()) ** 2).mean())


def fisher_divergence(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Monte-Carlo Fisher divergence ``E_p |s_hat - s|^2`` from scores at samples of ``p``."""
    est, tru = _pair(estimate, truth, 2)
    return float(((est - tru) ** 2).sum(1).mean())


# -- quality of a sample set ----------------------------------------------------------------------

def _mean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance over all pairs of rows of ``a`` (n, d) and ``b`` (m, d), chunked."""
    rows = max(1, _PAIR_BLOCK // max(1, b.shape[0]))
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], rows):
        total = total + torch.cdist(a[i:i + rows], b, compute_mode="donot_use_mm_for_euclid_dist").sum()
    return total / (a.shape[0] * b.shape[0])


def _two_sets(x: ArrayLike, y: ArrayLike, names: tuple[str, str], min_y: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_samples(x, names[0], min_samples=1).to(torch.float64)
    b = as_samples(y, names[1], min_samples=min_y).to(torch.float64).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} has dimension {a.shape[1]} but {names[1]} has dimension {b.shape[1]}")
    return a, b


def energy_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Energy distance between the empirical distributions of two sample sets.

    ``sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|)`` with all expectations over the empirical
    distributions (the definition of :func:`scipy.stats.energy_distance`, in any dimension).
    Zero exactly when the two empirical distributions coincide; in the units of x.

    Args:
        x: (n, d) samples. y: (m, d) samples.
    Returns:
        A non-negative float (computed in float64, memory O(block), not O(n m)).
    """
    a, b = _two_sets(x, y, ("x", "y"))
    squared = 2 * _mean_distance(a, b) - _mean_distance(a, a) - _mean_distance(b, b)
    return float(torch.sqrt(squared.clamp(min=0.0)))


def energy_statistic(x: ArrayLike, y: ArrayLike) -> float:
    """Unbiased estimate of the *squared* energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``.

    The within-set means leave out the zero self-distances (U-statistics), so the estimate has
    expectation exactly the population value, 0 when x and y are draws of one law, and may come
    out negative. :func:`energy_distance` (the V-statistic, scipy's definition) is biased upward
    by about ``E|X - X'| / n + E|Y - Y'| / m``, which at a thousand points can be larger than the
    difference between two good samplers; this statistic removes that floor.

    Args:
        x: (n, d) samples, n >= 2. y: (m, d) samples, m >= 2.
    Returns:
        A float in squared units of x (computed in float64, memory O(block)).
    """
    a, b = _two_sets(x, y, ("x", "y"), min_y=2)
    n, m = a.shape[0], b.shape[0]
    if n < 2:
        raise ValueError(f"x needs at least 2 samples for the unbiased statistic; got {n}")
    within_a = _mean_distance(a, a) * n / (n - 1)  # the n zero self-distances are not pairs
    within_b = _mean_distance(b, b) * m / (m - 1)
    return float(2 * _mean_distance(a, b) - within_a - within_b)


def nearest_neighbour_distances(points: ArrayLike) -> torch.Tensor:
    """(n,) float64 distance from each row of ``points`` (n, d) to its nearest other row."""
    x = as_samples(points, "points", min_samples=2).to(torch.float64)
    rows = max(1, _PAIR_BLOCK // x.shape[0])
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], rows):
        dist = torch.cdist(x[i:i + rows], x, compute_mode="donot_use_mm_for_euclid_dist")
        idx = torch.arange(i, min(i + rows, x.shape[0]), device=x.device)
        dist[idx - i, idx] = math.inf  # a point is not its own neighbour
        out[i:i + rows] = dist.min(1).values
    return out


def memorization_fraction(generated: ArrayLike, training: ArrayLike) -> float:
    """Fraction of generated points that copy the training data.

    A generated point counts as memorised when it lies closer to its nearest training point
    ``x_j`` than ``x_j``'s own nearest training neighbour does (the "authenticity" test of Alaa et
    al. 2022). A sampler driven by the raw empirical score (a KDE with vanishing bandwidth)
    returns training points, giving 1. Fresh draws from the data distribution are not 0 (they land
    that close by chance), so compare against ``memorization_fraction(fresh_samples, training)``.

    Args:
        generated: (m, d) generated points. training: (n, d) training points, n >= 2.
    Returns:
        A float in [0, 1].
    """
    g, x = _two_sets(generated, training, ("generated", "training"), min_y=2)
    radius = nearest_neighbour_distances(x)
    rows = max(1, _PAIR_BLOCK // x.shape[0])
    copied = 0
    for i in range(0, g.shape[0], rows):
        nearest = torch.cdist(g[i:i + rows], x, compute_mode="donot_use_mm_for_euclid_dist").min(1)
        copied += int((nearest.values < radius[nearest.indices]).sum())
    return copied / g.shape[0]
