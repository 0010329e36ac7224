"""Information-theoretic quantities from samples, through any score/density oracle.

* :func:`entropy`: differential entropy ``H = -E[log f]`` (nats).
* :func:`fisher_information`: ``I = E|∇log f|²`` (1 / units of x squared).
* :func:`relative_fisher_information`: ``E_p|∇log p - ∇log q|²`` between two sample sets.
* :func:`kernel_stein_discrepancy`: squared KSD of samples against an oracle's score (IMQ or
  Gaussian kernel).
* :func:`compare_estimators`: entropy and Fisher information of random Gaussian mixtures (the
  benchmark protocol's prior) against Monte-Carlo truth, for a set of estimators.

Held-out evaluation (cross-fitting). With an :class:`~disco_score.base.Estimator`, the samples are
shuffled (seeded) and cut into ``folds`` near-equal parts; each part is evaluated by an oracle fitted
on the other parts, and the estimate averages over all n points. No point is evaluated by an oracle
that saw it: evaluating a KDE at its own centres adds the kernel peak and biases the entropy low. For
the entropy, held-out evaluation estimates the cross-entropy ``E_f[-log f̂] >= H(f)`` (Gibbs), so the
estimate errs high in expectation. With ``folds = 2`` each fit uses half the samples. Passing a fitted
:class:`~disco_score.base.Oracle` instead evaluates it at all samples (no fitting).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from ._checks import ArrayLike, as_samples, check_int, check_positive
from .base import Estimator, Oracle
from .defaults import default_estimator
from .kde import BLOCK_ELEMENTS

logger = logging.getLogger(__name__)

SteinKernel = Literal["imq", "gaussian"]
#: per-point statistic of an oracle at (m, d) float64 points -> (m,) or (m, k) float64
PointStatistic = Callable[[Oracle, torch.Tensor], torch.Tensor]


def _log_density(oracle: Oracle, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(oracle.log_density(x)).to(torch.float64)


def _score(oracle: Oracle, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(oracle.score(x)).to(torch.float64)


def _squared_score_norm(oracle: Oracle, x: torch.Tensor) -> torch.Tensor:
    s = _score(oracle, x)
    return (s * s).sum(1)


def _neg_log_density_and_squared_score(oracle: Oracle, x: torch.Tensor) -> torch.Tensor:
    log_p, s = oracle.log_density_and_score(x)
    s = torch.as_tensor(s).to(torch.float64)
    return torch.stack([-torch.as_tensor(log_p).to(torch.float64), (s * s).sum(1)], dim=1)


def _check_source(estimator: Estimator | Oracle | None) -> Estimator | Oracle:
    source = default_estimator() if estimator is None else estimator
    if not isinstance(source, (Estimator, Oracle)):
        raise TypeError(f"estimator must be an Estimator, a fitted Oracle or None; got {type(source).__name__}")
    return source


def _check_dim(oracle: Oracle, d: int) -> None:
    if oracle.dim != d:
        raise ValueError(f"the oracle has dimension {oracle.dim} but the samples have dimension {d}")


def held_out_values(samples: ArrayLike, estimator: Estimator | Oracle | None, statistic: PointStatistic,
                    folds: int = 2, seed: int = 0) -> torch.Tensor:
    """Per-sample values of ``statistic(oracle, points)``, each from an oracle that did not see the point.

    Args:
        samples: (n, d) samples (numpy or torch).
        estimator: an Estimator (cross-fitted over ``folds``), a fitted Oracle (evaluated directly)
            or None (the package default estimator).
        statistic: ``(oracle, (m, d) float64 points) -> (m,)`` or ``(m, k)``.
        folds: number of cross-fitting parts (>= 2).
        seed: seed of the shuffle that assigns points to parts.

    Returns:
        (n,) or (n, k) float64 tensor in the samples' original order.
    """
    x = as_samples(samples).to(torch.float64)
    n, d = x.shape
    source = _check_source(estimator)
    folds = check_int(folds, "folds", minimum=2)
    if isinstance(source, Oracle):
        _check_dim(source, d)
        return statistic(source, x)
    if n < 2 * folds:
        raise ValueError(f"samples: {n} points are too few for {folds}-fold held-out evaluation")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(x.device)
    values: torch.Tensor | None = None
    for part in torch.tensor_split(order, folds):
        keep = torch.ones(n, dtype=torch.bool, device=x.device)
        keep[part] = False
        oracle = source.fit(x[keep])
        part_values = statistic(oracle, x[part]).to(device=x.device, dtype=torch.float64)
        if values is None:
            values = torch.empty((n, *part_values.shape[1:]), dtype=torch.float64, device=x.device)
        values[part] = part_values
    assert values is not None
    return values


def entropy(samples: ArrayLike, estimator: Estimator | Oracle | None = None, *, folds: int = 2,
            seed: int = 0) -> float:
    """Differential entropy ``H = -E[log f]`` in nats, held-out (see the module docstring).

    Args:
        samples: (n, d) samples of ``f``.
        estimator: Estimator (cross-fitted), fitted Oracle (e.g. an exact target, for Monte-Carlo
            truth) or None (the pretrained DiScoFormer).
        folds: cross-fitting parts (>= 2).
        seed: shuffle seed.

    Example:
        >>> import numpy as np
        >>> from disco_score import KDE, information
        >>> x = np.random.default_rng(0).normal(size=(2000, 1))
        >>> round(information.entropy(x, KDE()), 1)   # exact: 0.5 log(2 pi e) = 1.419
        1.4
    """
    return float(-held_out_values(samples, estimator, _log_density, folds, seed).mean())


def fisher_information(samples: ArrayLike, estimator: Estimator | Oracle | None = None, *,
                       folds: int | None = None, seed: int = 0, debiased: bool = False) -> float:
    """Fisher information ``I = E|∇log f|²`` (trace of the location Fisher matrix; units 1 / x²), held-out.

    For ``N(m, Σ)``, ``I = tr(Σ⁻¹)``. The plain estimate averages ``|ŝ(x)|²`` over held-out points;
    since ``E|ŝ|² = |E ŝ|² + E|ŝ - E ŝ|²``, estimation noise biases it up (smoothing, as in KDE,
    shrinks the score and biases it down). With ``debiased=True`` the samples are cut into
    ``folds >= 3`` parts, an oracle is fitted on each part alone, and each point's value is the
    mean of ``ŝ_a(x)·ŝ_b(x)`` over pairs of oracles fitted on two other parts: independent noise
    then averages out, leaving only the estimator's systematic error (each fit sees n / folds points).

    Args:
        samples, estimator, seed: as for :func:`entropy` (an Oracle is evaluated directly).
        folds: cross-fitting parts; default 2 (plain) or 3 (debiased).
        debiased: use the cross-product estimate.
    """
    if not debiased:
        return float(held_out_values(samples, estimator, _squared_score_norm, 2 if folds is None else folds,
                                     seed).mean())
    source = _check_source(estimator)
    if isinstance(source, Oracle):
        raise TypeError("debiased=True fits several oracles; pass an Estimator, not a fitted Oracle")
    return _cross_product_mean(as_samples(samples), source, 3 if folds is None else folds, seed, None)


def _cross_product_mean(samples: torch.Tensor, source: Estimator, folds: int, seed: int,
                        reference: tuple[Oracle, Oracle] | None) -> float:
    """Mean over points of ``(ŝ_a(x) - r_1(x))·(ŝ_b(x) - r_2(x))``, symmetrised and averaged over pairs
    a < b of oracles fitted on single parts other than x's own; ``r`` = 0 without a reference.

    Independent estimation noise in the factors averages out instead of adding ``E|ŝ - E ŝ|²``."""
    folds = check_int(folds, "folds", minimum=3)
    x = samples.to(torch.float64)
    n = x.shape[0]
    if n < 2 * folds:
        raise ValueError(f"samples: {n} points are too few for {folds}-fold cross-fitting")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(x.device)
    parts = torch.tensor_split(order, folds)
    oracles = [source.fit(x[part]) for part in parts]
    total = 0.0
    for k, part in enumerate(parts):
        xk = x[part]
        scores = {a: _score(oracles[a], xk) for a in range(folds) if a != k}
        r1, r2 = (0.0, 0.0) if reference is None else (_score(reference[0], xk), _score(reference[1], xk))
        pair_sum = torch.zeros(xk.shape[0], dtype=torch.float64, device=xk.device)
        pairs = 0
        for a in scores:
            for b in scores:
                if a < b:
                    pair_sum += 0.5 * (((scores[a] - r1) * (scores[b] - r2)).sum(1)
                                       + ((scores[b] - r1) * (scores[a] - r2)).sum(1))
                    pairs += 1
        total += float(pair_sum.sum()) / pairs
    return total / n


def relative_fisher_information(samples_p: ArrayLike, samples_q: ArrayLike,
                                estimator: Estimator | None = None, *, folds: int | None = None,
                                seed: int = 0, debiased: bool = False) -> float:
    """Relative Fisher information ``E_p|∇log p - ∇log q|²`` (zero iff p = q; units 1 / x²).

    Plain: ``q``'s oracle is fitted on all of ``samples_q``; ``p``'s score is cross-fitted on
    ``samples_p`` (``folds``, default 2) and both are evaluated at ``p``'s held-out points. The
    estimation noise of both scores adds to it, so for p = q it stays above zero. ``debiased=True``
    fits ``q`` on two halves and ``p`` on ``folds >= 3`` (default 3) single parts and averages
    ``(ŝ_pa - ŝ_q1)·(ŝ_pb - ŝ_q2)`` (see :func:`fisher_information`): noise averages out, leaving
    the estimators' systematic error; the estimate can then be slightly negative.

    Args:
        samples_p: (n, d) samples of p (the expectation is over p).
        samples_q: (m, d) samples of q.
        estimator: Estimator for both, or None (the pretrained DiScoFormer).
        folds, seed: cross-fitting of p.
        debiased: use the cross-product estimate.
    """
    xp = as_samples(samples_p, "samples_p").to(torch.float64)
    xq = as_samples(samples_q, "samples_q").to(torch.float64)
    if xp.shape[1] != xq.shape[1]:
        raise ValueError(f"samples_p has dimension {xp.shape[1]} but samples_q has {xq.shape[1]}")
    source = _check_source(estimator)
    if not isinstance(source, Estimator):
        raise TypeError("relative_fisher_information needs an Estimator (it fits p and q); "
                        f"got {type(source).__name__}")
    if debiased:
        order = torch.randperm(xq.shape[0], generator=torch.Generator().manual_seed(int(seed) + 1))
        halves = torch.tensor_split(order.to(xq.device), 2)
        reference = (source.fit(xq[halves[0]]), source.fit(xq[halves[1]]))
        return _cross_product_mean(xp, source, 3 if folds is None else folds, seed, reference)
    oracle_q = source.fit(xq)

    def squared_difference(oracle_p: Oracle, x: torch.Tensor) -> torch.Tensor:
        diff = _score(oracle_p, x) - _score(oracle_q, x)
        return (diff * diff).sum(1)

    return float(held_out_values(xp, source, squared_difference, 2 if folds is None else folds, seed).mean())


def _median_distance(x: torch.Tensor, max_points: int = 1000) -> float:
    """Median pairwise distance (on at most ``max_points`` evenly strided points)."""
    stride = max(1, x.shape[0] // max_points)
    sub = x[::stride]
    dist = torch.cdist(sub, sub)
    iu = torch.triu_indices(sub.shape[0], sub.shape[0], offset=1)
    med = float(dist[iu[0], iu[1]].median())
    if not med > 0:
        raise ValueError("samples: the median pairwise distance is zero (repeated points); pass a bandwidth")
    return med


def _radial_kernel(kernel: SteinKernel, rho: torch.Tensor, ell: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``φ(ρ)``, ``φ'(ρ)``, ``φ''(ρ)`` of ``k(x, y) = φ(|x - y|²)``."""
    if kernel == "imq":  # (1 + ρ/ℓ²)^(-1/2), Gorham & Mackey (2017)
        base = 1.0 + rho / ell ** 2
        beta = -0.5
        return (base ** beta, beta / ell ** 2 * base ** (beta - 1),
                beta * (beta - 1) / ell ** 4 * base ** (beta - 2))
    phi = torch.exp(-rho / (2.0 * ell ** 2))
    return phi, -phi / (2.0 * ell ** 2), phi / (4.0 * ell ** 4)


def kernel_stein_discrepancy(samples: ArrayLike, oracle: Oracle, *, kernel: SteinKernel = "imq",
                             bandwidth: float | Literal["median"] = "median", u_statistic: bool = False) -> float:
    """Squared kernel Stein discrepancy ``KSD²`` of ``samples`` against ``oracle``'s score.

    ``KSD² = E_{x,y}[u(x, y)]`` with the Stein kernel
    ``u = s(x)·s(y) k + s(x)·∇_y k + s(y)·∇_x k + tr ∇_x∇_y k``. For a radial kernel
    ``k = φ(ρ)``, ``ρ = |x - y|²``: ``u = φ s(x)·s(y) + 2φ' (x - y)·(s(y) - s(x)) - 2dφ' - 4ρφ''``.
    It vanishes iff the samples come from the oracle's distribution (for the IMQ kernel, Gorham &
    Mackey 2017). Cost O(n² d) in blocks.

    Args:
        samples: (n, d) points (numpy or torch).
        oracle: a fitted Oracle (any estimator's, or an exact target).
        kernel: ``"imq"`` ``(1 + ρ/ℓ²)^(-1/2)`` or ``"gaussian"`` ``exp(-ρ / (2ℓ²))``.
        bandwidth: ``ℓ`` in the units of x, or ``"median"`` (the median pairwise distance).
        u_statistic: the unbiased U-statistic (excludes i = j; may be slightly negative) instead of
            the V-statistic (a squared RKHS norm, >= 0, biased up by O(1/n)).

    Returns:
        ``KSD²`` (units: 1 / x²) as a float.
    """
    if not isinstance(oracle, Oracle):
        raise TypeError(f"oracle must be a fitted Oracle; got {type(oracle).__name__}")
    if kernel not in ("imq", "gaussian"):
        raise ValueError(f"kernel must be 'imq' or 'gaussian'; got {kernel!r}")
    x = as_samples(samples).to(torch.float64)
    n, d = x.shape
    _check_dim(oracle, d)
    ell = _median_distance(x) if isinstance(bandwidth, str) and bandwidth == "median" \
        else check_positive(bandwidth, "bandwidth")
    s = _score(oracle, x).to(x.device)
    sq_x = (x * x).sum(1)
    xs = (x * s).sum(1)  # x_i · s_i
    block = max(1, BLOCK_ELEMENTS // n)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i0 in range(0, n, block):
        xi, si = x[i0:i0 + block], s[i0:i0 + block]
        rho = (sq_x[i0:i0 + block, None] + sq_x[None, :] - 2.0 * xi @ x.T).clamp(min=0.0)
        phi, dphi, d2phi = _radial_kernel(kernel, rho, ell)
        # (x_i - x_j)·(s_j - s_i) = x_i·s_j - x_j·s_j - x_i·s_i + x_j·s_i
        r_ds = xi @ s.T - xs[None, :] - xs[i0:i0 + block, None] + si @ x.T
        u = phi * (si @ s.T) + 2.0 * dphi * r_ds - 2.0 * d * dphi - 4.0 * rho * d2phi
        if u_statistic:
            rows = torch.arange(xi.shape[0], device=x.device)
            u[rows, rows + i0] = 0.0
        total = total + u.sum()
    pairs = n * (n - 1) if u_statistic else n * n
    return float(total / pairs)


def compare_estimators(estimators: Mapping[str, Estimator | None], dims: tuple[int, ...] = (1, 2, 10),
                       n: int = 2048, seed: int = 0, *, n_truth: int = 200_000,
                       n_components: int | tuple[int, int] = (1, 10), folds: int = 2) -> list[dict[str, Any]]:
    """Entropy and Fisher information estimates against the truth on random Gaussian mixtures.

    For each dimension, one mixture is drawn from the benchmark protocol's prior
    (:func:`disco_score.targets.random_gmm`, seeded by ``(seed, d)``), ``n`` samples are drawn from
    it, and every estimator's held-out estimates are compared with Monte-Carlo truth from ``n_truth``
    independent samples and the exact log-density and score.

    Args:
        estimators: name -> Estimator (None: the package default).
        dims: dimensions.
        n: samples given to the estimators.
        seed: base seed.
        n_truth: Monte-Carlo samples for the exact values.
        n_components: mixture components (fixed, or an inclusive range drawn per mixture).
        folds: cross-fitting parts.

    Returns:
        One dict per (dimension, estimator) with keys ``dim``, ``estimator``, ``n``, ``entropy``,
        ``entropy_exact``, ``entropy_exact_stderr``, ``entropy_error`` (estimate - exact),
        ``fisher``, ``fisher_exact``, ``fisher_exact_stderr``, ``fisher_relative_error``
        ((estimate - exact) / exact), ``fisher_debiased`` and ``fisher_debiased_relative_error`` (the
        cross-product estimate, see :func:`fisher_information`), ``seconds`` (the estimator's wall time).
    """
    import time

    from .targets import random_gmm

    if not isinstance(estimators, Mapping) or not estimators:
        raise TypeError("estimators must be a non-empty mapping name -> Estimator")
    n = check_int(n, "n", minimum=4)
    n_truth = check_int(n_truth, "n_truth", minimum=2)
    rows: list[dict[str, Any]] = []
    for d in dims:
        d = check_int(d, "dims entries")
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + d)
        target = random_gmm(d, n_components=n_components, generator=gen)
        samples = target.sample(n, generator=gen)
        truth = target.sample(n_truth, generator=gen)
        exact = _neg_log_density_and_squared_score(target, truth)
        (h_true, i_true), (h_se, i_se) = exact.mean(0).tolist(), (exact.std(0) / math.sqrt(n_truth)).tolist()
        for name, estimator in estimators.items():
            start = time.perf_counter()
            h_est, i_est = held_out_values(samples, estimator, _neg_log_density_and_squared_score,
                                           folds, seed).mean(0).tolist()
            i_debiased = fisher_information(samples, estimator, seed=seed, debiased=True)
            seconds = time.perf_counter() - start
            rows.append({"dim": d, "estimator": name, "n": n,
                         "entropy": h_est, "entropy_exact": h_true, "entropy_exact_stderr": h_se,
                         "entropy_error": h_est - h_true,
                         "fisher": i_est, "fisher_exact": i_true, "fisher_exact_stderr": i_se,
                         "fisher_relative_error": (i_est - i_true) / i_true,
                         "fisher_debiased": i_debiased,
                         "fisher_debiased_relative_error": (i_debiased - i_true) / i_true, "seconds": seconds})
            logger.info("d=%d %s: H %.4f (exact %.4f), I %.4f (exact %.4f)", d, name, h_est, h_true,
                        i_est, i_true)
    return rows
