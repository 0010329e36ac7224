"""Cutting a sample set into parts fitted separately, rotation-equivariantly: well-separated
components (:func:`find_split`), and interleaved subsets of a set larger than a network was trained
on (:func:`interleaved_subsets`).

Why: after whitening, two components that are far apart in the data can sit about 2 units apart
along one direction of a 100-dimensional cloud whose pair distances are about 14, and a network
built on distances (or any kernel) cannot see them; a per-component fit can (P2's score MSE at
n = 16384: 0.18 for the network on the whole set, 0.024 for one Gaussian per found component;
docs/experiments.md, "A component-finding stage on P2, prototyped without a network").

How: projection pursuit in whitened coordinates ``z``. Start from the FOBI axes (eigenvectors of
``mean(|z|^2 z z^T)``, an equivariant frame) at both ends of the spectrum, run two searches over unit
directions ``w`` -- FastICA's kurtosis fixed point and gradient descent on ``mean((w.z)^4)`` (a
bimodal projection has low kurtosis) -- and, among the converged directions, take the one whose
best two-way split of the projections leaves the smallest fraction of the variance within the two
sides. Every step commutes with rotations of ``z``, so the split rotates with the data and the
estimator built on it stays exactly affine-equivariant (ties aside, which have probability zero);
means over samples make it permutation-invariant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .whitening import canonical_frame

#: split only where the best two-way split leaves less than this fraction of the projection's
#: variance within the sides. A Gaussian projection leaves 1 - 2/pi = 0.36, a uniform one 0.25,
#: the most bimodal directions of unimodal sets found by the search 0.22-0.27, P2's found
#: components below 0.15 (docs/experiments.md, "A component-finding stage on P2, prototyped without a network")
SPLIT_GATE = 0.2
#: ... and below this fraction of what the search finds on Gaussian data of the same (n, d)
#: (:func:`null_within_fraction`): with d / n large the search overfits, and splits structureless
#: sets as well as it splits weak components
NULL_RATIO = 0.6
#: the search's best within-split fraction on Gaussian (and product Student-t / Laplace) samples,
#: measured at d = 16, 50, 100 and n / d = 4 ... 160 (docs/experiments.md, "Design: a component-finding
#: stage before the network"), fitted as
#: ``(1 - 2/pi) - NULL_SCALE * (d / n) ** NULL_POWER``
NULL_SCALE, NULL_POWER = 0.476, 0.47
#: starts x samples per search: the FOBI axes used as starts, taken from both ends of the spectrum
#: (at large n the between-mean direction of two components is near one end -- low fourth moment if
#: balanced, high if not -- and 16 starts find all 8 of P2's seed-0/1 targets at n = 16384; at
#: n = 2048 the frame is noisier and only starts from the middle find 3 of 8). So the cost is
#: about constant in n: every axis at n <= 2048 (d = 100), 16 at n = 16384
STARTS_BUDGET = 2 ** 18
MIN_STARTS = 16
FIXED_POINT_ITERS = 50
DESCENT_ITERS = 1000
DESCENT_STEP = 0.3
#: searches stop once no direction moves more than this (an invariant criterion)
TOLERANCE = 1e-7
#: the search's best directions refined by :func:`_refine_split`, and its rounds at most
REFINE_CANDIDATES, REFINE_ITERS = 4, 20


@dataclass(frozen=True)
class Split:
    """A two-way split of whitened samples along a unit direction.

    Attributes:
        direction: (d,) unit vector in whitened coordinates.
        threshold: the cut on ``z @ direction``; side ``lower`` is ``z @ direction < threshold``.
        within_fraction: fraction of the projection's variance left within the two sides.
        lower: (n,) bool mask of the samples below the cut.
    """

    direction: torch.Tensor
    threshold: float
    within_fraction: float
    lower: torch.Tensor


def _fixed_point(w: torch.Tensor, z: torch.Tensor, iters: int) -> torch.Tensor:
    """One-unit FastICA for the kurtosis contrast from each row of ``w`` (k, d): w <- E[z (w.z)^3] - 3w."""
    for _ in range(iters):
        new = ((w @ z.T) ** 3) @ z / z.shape[0] - 3 * w
        new = new / new.norm(dim=1, keepdim=True)
        # the fixed point is defined up to sign; compare directions, not vectors
        moved = float((1 - (new * w).sum(1).abs()).max())
        w = new
        if moved < TOLERANCE:
            break
    return w


def _descent(w: torch.Tensor, z: torch.Tensor, iters: int, step: float) -> torch.Tensor:
    """Projected gradient descent on ``mean((w.z)^4)`` over the unit sphere, from each row of ``w``."""
    for _ in range(iters):
        g = ((w @ z.T) ** 3) @ z / z.shape[0]
        g = g - (g * w).sum(1, keepdim=True) * w  # tangent to the sphere
        new = w - step * g
        new = new / new.norm(dim=1, keepdim=True)
        moved = float((new - w).norm(dim=1).max())
        w = new
        if moved < TOLERANCE:
            break
    return w


def best_splits(w: torch.Tensor, z: torch.Tensor, min_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit row of ``w`` (k, d): the best two-way split of the projections ``z @ w_i``.

    Returns ((k,) within-split variance fraction, (k,) threshold); both sides keep at least
    ``min_size`` samples.
    """
    proj, _ = torch.sort(w @ z.T, dim=1)
    n = proj.shape[1]
    c1, c2 = proj.cumsum(1), (proj ** 2).cumsum(1)
    left = torch.arange(1, n, dtype=proj.dtype, device=proj.device)
    ss_left = c2[:, :-1] - c1[:, :-1] ** 2 / left
    ss_right = (c2[:, -1:] - c2[:, :-1]) - (c1[:, -1:] - c1[:, :-1]) ** 2 / (n - left)
    within = (ss_left + ss_right) / (c2[:, -1:] - c1[:, -1:] ** 2 / n)
    within[:, : min_size - 1] = float("inf")
    within[:, n - min_size:] = float("inf")
    k = within.argmin(1)
    rows = torch.arange(w.shape[0], device=w.device)
    return within[rows, k], 0.5 * (proj[rows, k] + proj[rows, k + 1])


def null_within_fraction(n: int, d: int) -> float:
    """The within-split variance fraction :func:`find_split`'s search reaches on n Gaussian samples in d
    dimensions (no components): ``1 - 2/pi`` as n / d grows, less where the search overfits."""
    return max(0.05, (1 - 2 / math.pi) - NULL_SCALE * (d / n) ** NULL_POWER)


def most_separated_split(z: torch.Tensor, min_size: int) -> Split | None:
    """The search's most separated two-way split of whitened samples ``z`` (n, d), gated by nothing
    (None only if ``n < 2 * min_size``); ``min_size``: the fewest samples either side may keep.

    Cost: ``2 k`` directions x (``FIXED_POINT_ITERS`` + ``DESCENT_ITERS``) iterations of O(n d) each at
    most (the searches stop at convergence), ``k = min(d, max(MIN_STARTS, STARTS_BUDGET // n))``
    starts: about 7 s at d = 100 on two cores, for any n.
    """
    n, d = z.shape
    if n < 2 * min_size:
        return None
    z = z.to(torch.float64)
    axes = canonical_frame(z[None])[0].T  # (d, d) rows, ascending fourth moment
    k = max(MIN_STARTS, STARTS_BUDGET // n) // 2  # per end of the spectrum
    starts = axes if 2 * k >= d else torch.cat([axes[:k], axes[d - k:]])
    candidates = torch.cat([_fixed_point(starts, z, FIXED_POINT_ITERS), _descent(starts, z, DESCENT_ITERS, DESCENT_STEP)])
    within, threshold = best_splits(candidates, z, min_size)
    best = torch.argsort(within)[:REFINE_CANDIDATES].tolist()
    refined = [_refine_split(z, Split(candidates[j], float(threshold[j]), float(within[j]),
                                      z @ candidates[j] < threshold[j]), min_size) for j in best]
    return min(refined, key=lambda split: split.within_fraction)


def _refine_split(z: torch.Tensor, split: Split, min_size: int) -> Split:
    """Lloyd rounds on a split of whitened samples ``z``: the direction becomes the difference of the
    two sides' means (Fisher's discriminant, since the total covariance is I), then the best cut
    along it, until the sides stop changing.

    Why: the kurtosis searches can stop at a direction that only correlates with the components: at
    d = 20, n = 16384, a 0.15 / 0.85 pair was split 97 % right along a direction leaving 0.32 of the
    variance within the sides, above the gate; one refinement gives 0.030 and 100 %. On
    structureless sets it lowers the within fraction only a little (docs/experiments.md, "Design:
    Lloyd refinement of the split direction").
    """
    lower = split.lower
    for _ in range(REFINE_ITERS):
        w = z[~lower].mean(0) - z[lower].mean(0)
        w = w / w.norm()
        within, cut = best_splits(w[None], z, min_size)
        if not float(within[0]) < split.within_fraction:
            break
        lower = z @ w < cut[0]
        split = Split(w, float(cut[0]), float(within[0]), lower)
    return split


def find_split(z: torch.Tensor, min_size: int, gate: float = SPLIT_GATE) -> Split | None:
    """The most separated two-way split of whitened samples ``z`` (n, d) if it marks components, else None.

    The split counts only if its within-split variance fraction is below both ``gate`` and
    ``NULL_RATIO * null_within_fraction(n, d)`` (what the search reaches on structureless data).
    """
    split = most_separated_split(z, min_size)
    if split is None or not split.within_fraction < min(gate, NULL_RATIO * null_within_fraction(*z.shape)):
        return None
    return split


def interleaved_subsets(z: torch.Tensor, k: int) -> list[torch.Tensor]:
    """``k`` disjoint subsets of whitened samples ``z`` (n, d) that each look like the whole set: sort
    the samples along the first canonical (FOBI) axis and deal them out in turn, so each subset
    spans the set's whole range. Returns (n_j,) index tensors, n_j = n // k or n // k + 1.

    The axis rotates with the data and the ranks do not depend on the input order, so the subsets
    are permutation-invariant and rotation-equivariant (ties aside).
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of subsets; got {k}")
    axis = canonical_frame(z.to(torch.float64)[None])[0][:, 0]
    order = torch.argsort(z.to(torch.float64) @ axis)
    return [order[j::k] for j in range(k)]


def _mahalanobis2(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """(m, d) -> (m,) squared Mahalanobis distances to ``mean`` under the covariance ``chol chol^T``."""
    u = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)
    return (u * u).sum(0)


#: rounds of reassignment after the cuts (:func:`reassign_to_gaussians`); it settles in 2-3
REASSIGN_ITERS = 5


def reassign_to_gaussians(z: torch.Tensor, labels: torch.Tensor, min_size: int,
                          iters: int = REASSIGN_ITERS) -> torch.Tensor:
    """Move each sample to the part whose Gaussian fit explains it best (classification EM).

    ``z`` (n, d) whitened samples, ``labels`` (n,) part indices 0 … k-1 from the cuts. A cut is a
    hyperplane: a component lying across it is split, and its far piece rides along as a small
    clump at the edge of a neighbour, which that part's network must then model as well (d = 10,
    n = 16384: 58 of one component's 795 points; docs/experiments.md, "Design: the component stage
    from d = 5, with a minimum part size and reassignment"). Each round fits
    every part's mean and covariance and assigns each sample to the largest
    ``log(count) + log N(z; mean, cov)``; a round that would leave a part below ``min_size`` points
    is not taken. The log-likelihood is affine-invariant, so the parts stay equivariant.
    Returns the new (n,) labels.
    """
    k, d = int(labels.max()) + 1, z.shape[1]
    z = z.to(torch.float64)
    eye = torch.eye(d, dtype=torch.float64, device=z.device)
    for _ in range(iters):
        scores = []
        for j in range(k):
            part = z[labels == j]
            mean = part.mean(0)
            cov = torch.cov(part.T).reshape(d, d) + 1e-9 * eye  # ridge: whitened units, so equivariant
            chol = torch.linalg.cholesky(cov)
            scores.append(math.log(part.shape[0]) - torch.log(torch.diagonal(chol)).sum() - 0.5 * _mahalanobis2(z, mean, chol))
        new = torch.stack(scores).argmax(0)
        counts = torch.bincount(new, minlength=k)
        if bool((counts < min_size).any()) or bool((new == labels).all()):
            break
        labels = new
    return labels


#: the envelope of a found component (:class:`GaussianEnvelopes`): its Gaussian fit's covariance
#: inflated by this factor squared ...
ENVELOPE_INFLATION = 1.5
#: ... and this many nats above the level set on the component's own samples
ENVELOPE_MARGIN = 3.0
#: the level is this quantile over the probe samples (robust to a stray clump of another component's points)
ENVELOPE_QUANTILE = 0.9
#: probe samples per component, evenly spaced in Mahalanobis-radius rank (the innermost and outermost included)
ENVELOPE_PROBES = 256


@dataclass(frozen=True)
class GaussianEnvelopes:
    """Upper envelopes of the log-densities of K fitted components, one Gaussian each:
    ``b_k(x) = level_k - |x - mean_k|^2 / (2 c^2)`` in the Mahalanobis metric of ``covariances[k]``
    (c = ``inflation``), so the envelope falls as a Gaussian c times wider than the component's fit.

    Why: a network fitted on one component's samples can put too much density far from them, in
    another component's region, and take part of the posterior there (d = 10: 2.6 % of it at one
    component's queries; docs/experiments.md, "Design: a Gaussian envelope on each found component").
    :meth:`cap` bounds each component's log-density ``a`` by the smooth minimum
    ``a - softplus(a - b)``; where ``a`` is well below ``b`` (the component's own region) it is
    unchanged. Every quantity is affine-equivariant, so the mixture stays so.

    Attributes:
        means: (K, d) float64 component means.
        covariances: (K, d, d) float64 component covariances (uninflated).
        levels: (K,) float64 log-density (nats) of each envelope at its mean.
        inflation: c.
    """

    means: torch.Tensor
    covariances: torch.Tensor
    levels: torch.Tensor
    inflation: float = ENVELOPE_INFLATION
    chol: torch.Tensor = field(init=False, repr=False)  # (K, d, d) Cholesky factors of ``covariances``

    def __post_init__(self) -> None:
        object.__setattr__(self, "chol", torch.linalg.cholesky(self.covariances))

    @classmethod
    def from_parts(cls, parts: Sequence[torch.Tensor], log_densities: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                   inflation: float = ENVELOPE_INFLATION,
                   margin: float = ENVELOPE_MARGIN, quantile: float = ENVELOPE_QUANTILE,
                   probes: int = ENVELOPE_PROBES) -> "GaussianEnvelopes":
        """Envelopes for components with samples ``parts[k]`` (n_k, d) and fitted log-density
        ``log_densities[k]`` (a callable (p, d) -> (p,)).

        The level is the larger of the Gaussian fit's peak and the ``quantile`` of
        ``a(x_i) + r_i^2 / (2 c^2)`` over probe samples ``x_i`` (so the envelope passes above the fit
        at most of its own samples, whatever the shape: a Student-t component's peak is well above
        its Gaussian fit's), plus ``margin``.
        """
        means, covs, levels = [], [], []
        for x, log_density in zip(parts, log_densities):
            x64 = x.to(torch.float64)
            n, d = x64.shape
            mean, cov = x64.mean(0), torch.cov(x64.T).reshape(d, d)
            chol = torch.linalg.cholesky(cov)
            r2 = _mahalanobis2(x64, mean, chol)
            peak = float(-torch.log(torch.diagonal(chol)).sum() - 0.5 * d * math.log(2 * math.pi))
            ranks = torch.linspace(0, n - 1, min(probes, n), dtype=torch.float64, device=x64.device)
            ranks = ranks.round().long().unique()
            probe = torch.argsort(r2)[ranks]
            values = log_density(x[probe]).to(torch.float64) + 0.5 * r2[probe] / inflation ** 2
            levels.append(max(peak, float(torch.quantile(values, quantile))) + margin)
            means.append(mean)
            covs.append(cov)
        levels_t = torch.tensor(levels, dtype=torch.float64, device=means[0].device)
        return cls(torch.stack(means), torch.stack(covs), levels_t, inflation)

    def smoothed(self, sigma: float) -> "GaussianEnvelopes":
        """The envelopes of the components convolved with N(0, sigma^2 I): each Gaussian fit's
        covariance grows by sigma^2 I and its peak falls accordingly."""
        d = self.means.shape[1]
        covs = self.covariances + sigma ** 2 * torch.eye(d, dtype=torch.float64, device=self.means.device)
        shift = 0.5 * (torch.logdet(self.covariances) - torch.logdet(covs))
        return GaussianEnvelopes(self.means, covs, self.levels + shift, self.inflation)

    def cap(self, y: torch.Tensor, log_densities: torch.Tensor, scores: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cap components' log-densities (m, K) at queries ``y`` (m, d), and their scores (m, K, d)
        by the chain rule (None: log-densities only). Float64 in and out."""
        y = y.to(torch.float64)
        chol = self.chol
        b = torch.stack([self.levels[k] - 0.5 * _mahalanobis2(y, self.means[k], chol[k]) / self.inflation ** 2
                         for k in range(len(self.levels))], 1)
        excess = log_densities - b
        capped = log_densities - torch.nn.functional.softplus(excess)
        if scores is None:
            return capped, None
        grad_b = torch.stack([-torch.cholesky_solve((y - self.means[k]).T, chol[k]).T / self.inflation ** 2
                              for k in range(len(self.levels))], 1)
        w = torch.sigmoid(excess)[..., None]
        return capped, (1 - w) * scores + w * grad_b
