"""Gaussian kernel density estimation: the classical baseline, done carefully.

* Full bandwidth matrix (``h^2`` times the sample covariance, as scipy does) or isotropic
  (``h^2`` times the mean sample variance times I).
* Bandwidth rules: ``"scott"``, ``"silverman"``, ``"score"`` (``n^(-1/(d+6))``, the rate that is
  optimal for the score, which the density-optimal bandwidth under-smooths), ``"cv"`` (leave-one-out
  likelihood cross-validation) or a number (the factor ``h``).
* Closed-form score; log-domain throughout; evaluation chunked over queries and samples with an
  online logsumexp, so memory is O(chunk), never an (m, n) matrix.
* :class:`SDKDE`: score-debiased KDE (Epstein et al. 2025).
* :func:`oracle_tuned_kde`: the benchmark's "best hand-tuned KDE" upper bound.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ._checks import ArrayLike, as_queries, as_samples, check_positive
from .base import Estimator, Oracle, as_oracle
from .whitening import Whitening, scott_factor

logger = logging.getLogger(__name__)

Bandwidth = Literal["scott", "silverman", "score", "cv", "sd"] | float
Kernel = Literal["full", "isotropic"]

#: elements of one (queries x samples) block: 2^19 (2 MB of float32) stays near the cache; the loop
#: is memory-bound (at d = 2 and 10, n = 8192, 1000 queries: 15-25 % faster than 2^21)
BLOCK_ELEMENTS = 1 << 19
#: kernel logits less their running maximum are raised to this before exp (here and in the
#: network's attention): weights below e^-80 are negligible next to the maximum's 1, but would send
#: float32 exp down its slow subnormal path (~30x slower on x86)
LOGIT_FLOOR = -80.0


def gaussian_kernel_sums(y: torch.Tensor, centres: torch.Tensor, log_weights: torch.Tensor | None = None,
                         want_mean: bool = True, block_elements: int = BLOCK_ELEMENTS
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit-covariance Gaussian kernel sums in whitened coordinates, chunked.

    Args:
        y: (m, d) query points.
        centres: (n, d) kernel centres.
        log_weights: (n,) log mixture weights (default: all zero).
        want_mean: also return the posterior mean of the centres.
    Returns:
        lse: (m,) ``logsumexp_j(log_w_j - |y_i - c_j|^2 / 2)``.
        mean: (m, d) ``sum_j a_ij c_j`` with ``a_ij`` the normalised weights (or None).
    """
    m, d = y.shape
    n = centres.shape[0]
    dtype = torch.promote_types(y.dtype, centres.dtype)
    y, centres = y.to(dtype), centres.to(dtype)
    lw = torch.zeros(n, dtype=dtype, device=y.device) if log_weights is None else log_weights.to(dtype)
    # raising logits below the floor to it changes every sum by at most n e^-80 relative to its
    # largest term (below float64's rounding); not where a weight is exactly zero (log w = -inf)
    floor = LOGIT_FLOOR if bool(torch.isfinite(lw).all()) else None
    q_block = max(1, min(m, 4096))
    c_block = max(1, block_elements // q_block)
    c_sq = 0.5 * (centres * centres).sum(1)
    lse_out = torch.empty(m, dtype=dtype, device=y.device)
    mean_out = torch.empty(m, d, dtype=dtype, device=y.device) if want_mean else None
    for i0 in range(0, m, q_block):
        yq = y[i0:i0 + q_block]
        y_sq = 0.5 * (yq * yq).sum(1, keepdim=True)
        run_max = torch.full((yq.shape[0],), -math.inf, dtype=dtype, device=y.device)
        run_sum = torch.zeros(yq.shape[0], dtype=dtype, device=y.device)
        run_mean = torch.zeros(yq.shape[0], d, dtype=dtype, device=y.device) if want_mean else None
        for j0 in range(0, n, c_block):
            cj = centres[j0:j0 + c_block]
            # -|y - c|^2 / 2 = y.c - |y|^2/2 - |c|^2/2, clamped at 0 against cancellation.
            # In place on one (q_block, c_block) buffer: this loop is memory-bound.
            logits = torch.addmm(c_sq[j0:j0 + c_block], yq, cj.T, beta=-1.0)
            logits.sub_(y_sq).clamp_(max=0.0).add_(lw[j0:j0 + c_block])
            new_max = torch.maximum(run_max, logits.max(1).values)
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            rescale = torch.exp(run_max - safe_max)
            p = logits.sub_(safe_max[:, None])
            if floor is not None:
                p.clamp_(min=floor)
            p.exp_()
            run_sum = run_sum * rescale + p.sum(1)
            if run_mean is not None:
                run_mean = run_mean * rescale[:, None] + p @ cj
            run_max = new_max
        lse_out[i0:i0 + q_block] = run_max + torch.log(run_sum)
        if mean_out is not None and run_mean is not None:
            mean_out[i0:i0 + q_block] = run_mean / run_sum[:, None]
    return lse_out, mean_out


class KDEOracle(Oracle):
    """A fitted Gaussian KDE: ``p(x) = sum_j w_j N(x; x_j, H)``.

    Attributes:
        samples: (n, d) kernel centres (torch, the fitted dtype).
        kernel_covariance: (d, d) float64 ``H``.
        bandwidth: the factor ``h`` (``H = h^2 S``), for reference.
    """

    def __init__(self, samples: torch.Tensor, kernel_covariance: torch.Tensor, bandwidth: float,
                 log_weights: torch.Tensor | None = None) -> None:
        # Own copies: validated samples may be views of the caller's array, and the oracle is immutable.
        self.samples = samples.clone()
        self.dim = int(samples.shape[1])
        self.compute_dtype = samples.dtype
        self.device = samples.device
        self.kernel_covariance = kernel_covariance.clone()
        self.bandwidth = float(bandwidth)
        # Whiten about the sample mean: the kernel sums expand |z - c|^2 = |z|^2 - 2 z.c + |c|^2,
        # which cancels catastrophically when the data sit far from the origin.
        self._kernel = Whitening.from_covariance(kernel_covariance, samples.to(torch.float64).mean(0),
                                                 name="the kernel covariance")
        n = samples.shape[0]
        if log_weights is None:
            log_weights = torch.full((n,), -math.log(n), dtype=torch.float64, device=samples.device)
        self.log_weights = log_weights.clone()
        self._centres = self._kernel.forward(samples)
        self._freeze()

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self._kernel.matrix.to(y.dtype)
        z = self._kernel.forward(y)
        lse, mean = gaussian_kernel_sums(z, self._centres, self.log_weights, want_mean=want_score)
        log_p = self._kernel.log_density_out(lse - 0.5 * self.dim * math.log(2 * math.pi))
        score = None if mean is None else (mean.to(y.dtype) - z) @ w
        return log_p.to(y.dtype), score

    def _smoothed(self, sigma: float) -> "KDEOracle":
        # Convolving a Gaussian mixture with N(0, s^2 I) adds s^2 I to each kernel: exact.
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        return KDEOracle(self.samples, self.kernel_covariance + sigma ** 2 * eye, self.bandwidth,
                         self.log_weights)


def _bandwidth_factor(rule: Bandwidth, n: int, d: int) -> float | None:
    """The factor ``h`` of a rule of thumb (None for "cv", which needs the data)."""
    if isinstance(rule, str):
        if rule == "scott":
            return scott_factor(n, d)
        if rule == "silverman":
            return (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        if rule == "score":
            return n ** (-1.0 / (d + 6))
        if rule == "sd":
            return n ** (-1.0 / (d + 8))
        if rule == "cv":
            return None
        raise ValueError(f"bandwidth must be 'scott', 'silverman', 'score', 'sd', 'cv' or a positive "
                         f"number; got {rule!r}")
    return check_positive(rule, "bandwidth")


def _kernel_covariance(covariance: torch.Tensor, factor: float, kernel: Kernel) -> torch.Tensor:
    if kernel == "full":
        return factor ** 2 * covariance
    d = covariance.shape[0]
    return factor ** 2 * (torch.trace(covariance) / d) * torch.eye(d, dtype=covariance.dtype,
                                                                    device=covariance.device)


def _check_kernel(kernel: str) -> Kernel:
    if kernel not in ("full", "isotropic"):
        raise ValueError(f"kernel must be 'full' or 'isotropic'; got {kernel!r}")
    return kernel  # type: ignore[return-value]


def _sample_covariance(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    centred = x - x.mean(0)
    return centred.T @ centred / (x.shape[0] - 1)


def loo_cv_factor(samples: torch.Tensor, covariance: torch.Tensor, kernel: Kernel,
                  factors: np.ndarray | None = None, max_eval: int = 1000, seed: int = 0) -> float:
    """Bandwidth factor maximising the leave-one-out log-likelihood over a log-spaced grid.

    Evaluated at up to ``max_eval`` held-out points (a seeded subset) against all samples.
    """
    n, d = samples.shape
    scott = scott_factor(n, d)
    grid = scott * (np.logspace(-1.0, 0.5, 24) if factors is None else np.asarray(factors))
    unit = Whitening.from_covariance(_kernel_covariance(covariance, 1.0, kernel))
    x64 = samples.to(torch.float64)
    z = (x64 - x64.mean(0)) @ unit.matrix  # centred, against cancellation in the kernel sums
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:max_eval].to(samples.device)
    zq = z[idx]
    scores = []
    for h in grid:
        lw = torch.zeros(n, dtype=torch.float64, device=samples.device)
        # Leave-one-out: exclude each evaluation point from its own sum via a -inf weight trick,
        # done by subtracting its own kernel contribution (exp(0) = 1) in the linear domain.
        lse, _ = gaussian_kernel_sums(zq / h, z / h, lw, want_mean=False)
        own = torch.zeros_like(lse)
        loo = lse + torch.log1p(-torch.exp(own - lse).clamp(max=1 - 1e-15))
        ll = loo - math.log(n - 1) - 0.5 * d * math.log(2 * math.pi * h * h) + unit.log_det
        scores.append(float(ll.mean()))
    best = int(np.argmax(scores))
    if best in (0, len(grid) - 1):
        # the user must act (widen the grid or pick a bandwidth), so a visible warning, not a log line
        warnings.warn(f"leave-one-out CV picked the {'lower' if best == 0 else 'upper'} edge of its grid "
                      f"(bandwidth factor {grid[best]:.3g}); the optimum may lie outside it: pass factors= "
                      f"covering it or a numeric bandwidth", UserWarning, stacklevel=2)
    return float(grid[best])


class KDE(Estimator):
    """Gaussian kernel density estimator.

    Args:
        bandwidth: ``"scott"`` (default), ``"silverman"``, ``"score"``, ``"cv"``, ``"sd"`` or a
            positive number: the factor ``h`` with kernel covariance ``h^2 S``.
        kernel: ``"full"`` (``S`` = sample covariance) or ``"isotropic"`` (``S`` = mean variance x I).

    Example:
        >>> import numpy as np
        >>> from disco_score import KDE
        >>> x = np.random.default_rng(0).normal(size=(500, 2))
        >>> oracle = KDE().fit(x)
        >>> oracle.score(np.zeros(2)).shape
        (2,)
    """

    def __init__(self, bandwidth: Bandwidth = "scott", kernel: Kernel = "full") -> None:
        _bandwidth_factor(bandwidth, 2, 1)  # validate early
        self.bandwidth = bandwidth
        self.kernel = _check_kernel(kernel)

    def fit(self, samples: ArrayLike) -> KDEOracle:
        """Condition on ``samples`` (n, d): a :class:`KDEOracle` with one kernel ``N(x_j, h^2 S)`` per sample.

        ``h`` comes from the bandwidth rule (``"cv"``: leave-one-out likelihood over a grid), ``S`` from
        ``kernel``. The oracle keeps a copy of the samples in their dtype (float32 or float64). Raises
        ValueError if the samples are invalid, have no spread or are rank-deficient.
        """
        x = as_samples(samples)
        Whitening.from_samples(x)  # rank and spread checks with a clear message
        n, d = x.shape
        cov = _sample_covariance(x)
        factor = _bandwidth_factor(self.bandwidth, n, d)
        if factor is None:
            factor = loo_cv_factor(x, cov, self.kernel)
        return KDEOracle(x, _kernel_covariance(cov, factor, self.kernel), factor)


class SDKDE(Estimator):
    """Score-debiased KDE (Epstein et al. 2025): move each sample by ``H s(x_j) / 2``, then KDE.

    The shift cancels the leading ``O(h^2)`` smoothing bias, which allows a wider bandwidth
    (default ``"sd"``: ``h = n^(-1/(d+8))``).

    Args:
        bandwidth: as for :class:`KDE` (default ``"sd"``).
        kernel: ``"full"`` or ``"isotropic"``.
        score: where the pilot score comes from: None (a KDE with the same bandwidth, the
            empirical score), an :class:`Estimator` fitted on the samples, or a fitted :class:`Oracle`.
    """

    def __init__(self, bandwidth: Bandwidth = "sd", kernel: Kernel = "full",
                 score: Estimator | Oracle | None = None) -> None:
        _bandwidth_factor(bandwidth, 2, 1)
        if score is not None and not isinstance(score, (Estimator, Oracle)):
            raise TypeError(f"score must be None, an Estimator or an Oracle; got {type(score).__name__}")
        self.bandwidth = bandwidth
        self.kernel = _check_kernel(kernel)
        self.score = score

    def fit(self, samples: ArrayLike) -> KDEOracle:
        """Condition on ``samples`` (n, d): a :class:`KDEOracle` on the shifted centres ``x_j + H s(x_j) / 2``.

        ``H = h^2 S`` as for :class:`KDE`. The pilot score ``s`` is evaluated at the n samples themselves
        (n queries: O(n^2) for the KDE and DiScoFormer pilots); a pilot of another dimension raises
        ValueError. The centres keep the samples' dtype.
        """
        x = as_samples(samples)
        Whitening.from_samples(x)
        n, d = x.shape
        cov = _sample_covariance(x)
        factor = _bandwidth_factor(self.bandwidth, n, d)
        if factor is None:
            factor = loo_cv_factor(x, cov, self.kernel)
        h_cov = _kernel_covariance(cov, factor, self.kernel)
        if self.score is None:
            pilot: Oracle = KDEOracle(x, h_cov, factor)
        else:
            pilot = as_oracle(self.score, x)
            if pilot.dim != d:
                raise ValueError(f"score oracle has dimension {pilot.dim}, samples have {d}")
        s = torch.as_tensor(pilot.score(x)).to(torch.float64)
        shifted = (x.to(torch.float64) + 0.5 * s @ h_cov).to(x.dtype)
        return KDEOracle(shifted, h_cov, factor)


@dataclass(frozen=True)
class OracleTunedKDE:
    """Best KDE errors over bandwidths and kernel shapes, chosen against the truth."""

    score_mse: float
    relative_score_mse: float
    log_density_mse: float
    score_factor: float  # bandwidth factor relative to Scott's
    score_kernel: str
    log_density_factor: float
    log_density_kernel: str


def oracle_tuned_kde(samples: ArrayLike, queries: ArrayLike, true_log_density: ArrayLike,
                     true_score: ArrayLike, n_factors: int = 26,
                     kernels: tuple[Kernel, ...] = ("full", "isotropic")) -> OracleTunedKDE:
    """The benchmark protocol's "KDE (oracle-tuned)": per target, the best of ``n_factors``
    bandwidths log-spaced in ``[10^-1.5, 10^1]`` x Scott's, and both kernel shapes, picked
    separately for the score metric and the log-density metric against the true values."""
    from . import metrics

    x = as_samples(samples).to(torch.float64)
    n, d = x.shape
    q = as_queries(queries, d, torch.float64, x.device, name="queries").points
    true_lp = torch.as_tensor(np.asarray(true_log_density) if not isinstance(true_log_density, torch.Tensor)
                              else true_log_density).to(torch.float64)
    true_s = torch.as_tensor(np.asarray(true_score) if not isinstance(true_score, torch.Tensor)
                             else true_score).to(torch.float64)
    cov = _sample_covariance(x)
    scott = scott_factor(n, d)
    best_s = (math.inf, math.inf, 0.0, "")
    best_l = (math.inf, 0.0, "")
    for kernel in kernels:
        for rel in np.logspace(-1.5, 1.0, n_factors):
            oracle = KDEOracle(x, _kernel_covariance(cov, scott * rel, kernel), scott * rel)
            lp, s = oracle._log_density_and_score(q)
            assert s is not None
            smse = metrics.score_mse(s, true_s)
            if smse < best_s[0]:
                best_s = (smse, metrics.relative_score_mse(s, true_s), float(rel), kernel)
            lmse = metrics.log_density_mse(lp, true_lp)
            if lmse < best_l[0]:
                best_l = (lmse, float(rel), kernel)
    return OracleTunedKDE(best_s[0], best_s[1], best_l[0], best_s[2], best_s[3], best_l[1], best_l[2])
