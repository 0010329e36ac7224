"""Exact reference distributions with closed-form log-density and score.

Every target is batched: parameters carry optional leading batch dimensions ``B`` and the raw
methods map points (*B, m, d) to log-densities (*B, m) and scores (*B, m, d). An unbatched target
is also an :class:`~disco_score.base.Oracle`, so samplers can be driven by the exact score.

:func:`random_gmm` draws from the benchmark protocol's random Gaussian-mixture prior
(``../shared/docs/benchmark-protocol.md``), which is also the training prior. The wider families
(Student-t mixtures, shells, warped targets) and the wider prior's draws are built on these in
:mod:`disco_score.families` (import them from there).
"""

from __future__ import annotations

import abc
import math

import torch

from ._checks import check_int, check_positive
from .base import Oracle


def _fork_seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


def _check_finite_tensor(value: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` if ``value`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite; got {int((~torch.isfinite(value)).sum())} NaN or inf value(s)")


def _check_weights(weights: torch.Tensor, name: str = "weights") -> None:
    """Mixture weights over the last axis: finite, non-negative and summing to 1.

    The tolerance on the sum is 1e-6 in float64 (a little looser in float32, ``8 K eps``, so float32
    weights normalised in float32 pass); the weights are refused rather than silently normalised,
    because an unnormalised mixture would make every log-density off by a constant.
    """
    _check_finite_tensor(weights, name)
    if not bool((weights >= 0).all()):
        raise ValueError(f"{name} must be non-negative")
    k = weights.shape[-1]
    tol = max(1e-6, 8 * k * torch.finfo(weights.dtype).eps)
    err = float((weights.sum(-1) - 1).abs().max()) if weights.numel() else 0.0
    if err > tol:
        raise ValueError(f"{name} must sum to 1 over the components (|sum - 1| <= {tol:.1e}); off by {err:.3g}")


def _check_spd(matrices: torch.Tensor, name: str) -> torch.Tensor:
    """The lower Cholesky factors of ``matrices`` (..., d, d), refusing non-finite, non-symmetric
    or non-positive-definite ones with a ValueError naming ``name``.

    Symmetry is checked to ``sqrt(eps)`` relative to each matrix's largest entry: Cholesky reads only
    the lower triangle, so an asymmetric input would otherwise be used silently as a different matrix.
    """
    _check_finite_tensor(matrices, name)
    scale = matrices.abs().amax(dim=(-2, -1), keepdim=True)
    asym = (matrices - matrices.transpose(-1, -2)).abs().amax(dim=(-2, -1), keepdim=True)
    if bool((asym > math.sqrt(torch.finfo(matrices.dtype).eps) * scale).any()):
        raise ValueError(f"{name} must be symmetric (largest |A - A^T| is {float(asym.max()):.3g})")
    chol, info = torch.linalg.cholesky_ex(matrices)
    if bool((info != 0).any()):
        raise ValueError(f"{name} must be symmetric positive definite (Cholesky failed)")
    return chol


class Target(Oracle):
    """An exact distribution: batched ``log_prob_t``/``score_t``/``sample`` plus the Oracle API."""

    batch_shape: tuple[int, ...]

    @abc.abstractmethod
    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(*B, m, d) -> (*B, m) exact log-density (nats)."""

    @abc.abstractmethod
    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(*B, m, d) -> (*B, m, d) exact score."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(*B, n, d) i.i.d. draws."""

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.batch_shape:
            raise ValueError(f"this target is batched (batch shape {self.batch_shape}); use log_prob_t/score_t")
        y = y.to(self.compute_dtype)
        return self.log_prob_t(y), (self.score_t(y) if want_score else None)

    def _smoothed(self, sigma: float) -> Oracle:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form Gaussian convolution")


class GaussianMixture(Target):
    """Mixture of full-covariance Gaussians; components with weight 0 are padding.

    Args:
        weights: (*B, K) non-negative, summing to 1 over K (to 1e-6; not renormalised).
        means: (*B, K, d), finite.
        covariances: (*B, K, d, d) symmetric positive definite.

    Raises:
        ValueError: naming the argument, for inconsistent shapes, weights that are negative,
            non-finite or do not sum to 1, non-finite means, and covariances that are non-finite,
            non-symmetric or not positive definite.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> None:
        if means.ndim < 2 or covariances.shape != means.shape + means.shape[-1:] \
                or weights.shape != means.shape[:-1]:
            raise ValueError(f"inconsistent shapes: weights {tuple(weights.shape)}, means "
                             f"{tuple(means.shape)}, covariances {tuple(covariances.shape)}")
        dtype = torch.promote_types(means.dtype, torch.float32)
        # Copies: the target is immutable even if the caller later edits its tensors in place.
        self.weights = weights.to(dtype, copy=True)
        self.means = means.to(dtype, copy=True)
        self.covariances = covariances.to(dtype, copy=True)
        self.batch_shape = tuple(means.shape[:-2])
        self.dim = int(means.shape[-1])
        self.compute_dtype = dtype
        self.device = means.device
        _check_weights(self.weights, "weights")
        _check_finite_tensor(self.means, "means")
        self._chol = _check_spd(self.covariances, "covariances")
        self._log_weights = torch.log(self.weights)  # -inf for padding
        self._log_norm = (torch.log(torch.diagonal(self._chol, dim1=-2, dim2=-1)).sum(-1)
                          + 0.5 * self.dim * math.log(2 * math.pi))
        self._freeze()

    def _component_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component log(w_k N_k(x)) (*B, K, m) and centred points (*B, K, m, d)."""
        diff = x.unsqueeze(-3) - self.means.unsqueeze(-2)
        u = torch.linalg.solve_triangular(self._chol, diff.transpose(-1, -2), upper=False)
        mahal = (u * u).sum(-2)
        return self._log_weights[..., None] - self._log_norm[..., None] - 0.5 * mahal, diff

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(*B, m, d) -> (*B, m) exact log-density (nats): logsumexp over k of ``log(w_k N_k(x))``."""
        comp, _ = self._component_terms(x.to(self.compute_dtype))
        return torch.logsumexp(comp, dim=-2)

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(*B, m, d) -> (*B, m, d) exact score: the components' ``-Sigma_k^{-1} (x - mu_k)`` weighted by
        their responsibilities at ``x``."""
        comp, diff = self._component_terms(x.to(self.compute_dtype))
        resp = torch.softmax(comp, dim=-2)  # (*B, K, m)
        prec_diff = torch.cholesky_solve(diff.transpose(-1, -2), self._chol).transpose(-1, -2)
        return -(resp.unsqueeze(-1) * prec_diff).sum(-3)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(*B, n, d) i.i.d. draws in ``compute_dtype``: a component per point from the weights (padding,
        weight 0, is never picked), then a draw of that Gaussian."""
        n = check_int(n, "n")
        flat_w = self.weights.reshape(-1, self.weights.shape[-1])
        comp = torch.multinomial(flat_w, n, replacement=True, generator=generator)
        comp = comp.reshape(*self.batch_shape, n)
        eps = torch.randn(*self.batch_shape, n, self.dim, generator=generator, dtype=self.compute_dtype,
                          device=self.device)
        idx = comp[..., None].expand(*self.batch_shape, n, self.dim)
        mu = torch.gather(self.means, -2, idx)
        # Transform the noise by every component's factor (K, n, d) and pick one per point, rather
        # than gathering an (n, d, d) stack of factors (10 GB at d = 100, n = 2^17).
        noise = eps.unsqueeze(-3) @ self._chol.transpose(-1, -2)  # (*B, K, n, d)
        picked = torch.gather(noise, -3, idx.unsqueeze(-3)).squeeze(-3)
        return mu + picked

    def _smoothed(self, sigma: float) -> "GaussianMixture":
        eye = torch.eye(self.dim, dtype=self.compute_dtype, device=self.device)
        return GaussianMixture(self.weights, self.means, self.covariances + sigma ** 2 * eye)


class ProductLaplace(Target):
    """Independent Laplace coordinates: ``p(x) = prod_i exp(-|x_i - loc| / scale) / (2 scale)``."""

    def __init__(self, dim: int, loc: float = 0.0, scale: float = 1.0,
                 dtype: torch.dtype = torch.float64) -> None:
        self.dim, self.loc, self.scale = check_int(dim, "dim"), float(loc), check_positive(scale, "scale")
        self.batch_shape, self.compute_dtype, self.device = (), dtype, torch.device("cpu")
        self._freeze()

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) exact log-density (nats): the sum of ``-|x_i - loc| / scale - log(2 scale)``."""
        return (-(x - self.loc).abs() / self.scale - math.log(2 * self.scale)).sum(-1)

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) exact score ``-sign(x_i - loc) / scale`` (0 at the kink ``x_i = loc``)."""
        return -torch.sign(x - self.loc) / self.scale

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d) i.i.d. draws in ``compute_dtype``, by the inverse CDF of uniforms from ``generator``."""
        u = torch.rand(check_int(n, "n"), self.dim, generator=generator, dtype=self.compute_dtype)
        # rand can return exactly 0, where the inverse CDF below is -inf: keep u - 1/2 > -1/2.
        u = u.clamp(min=torch.finfo(self.compute_dtype).eps) - 0.5
        return self.loc - self.scale * torch.sign(u) * torch.log1p(-2 * u.abs())


class ProductStudentT(Target):
    """Independent Student-t coordinates with ``df`` degrees of freedom (heavy tails for small df)."""

    def __init__(self, dim: int, df: float = 3.0, loc: float = 0.0, scale: float = 1.0,
                 dtype: torch.dtype = torch.float64) -> None:
        self.dim, self.df = check_int(dim, "dim"), check_positive(df, "df")
        self.loc, self.scale = float(loc), check_positive(scale, "scale")
        self.batch_shape, self.compute_dtype, self.device = (), dtype, torch.device("cpu")
        nu = self.df
        self._const = (math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
                       - math.log(self.scale))
        self._freeze()

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) exact log-density (nats), summed over the independent coordinates."""
        t = (x - self.loc) / self.scale
        return (self._const - 0.5 * (self.df + 1) * torch.log1p(t * t / self.df)).sum(-1)

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) exact score ``-(df + 1) r / (df scale^2 + r^2)`` with ``r = x - loc``."""
        r = x - self.loc
        return -(self.df + 1) * r / (self.df * self.scale ** 2 + r * r)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d) i.i.d. draws in ``compute_dtype``: ``loc + scale * N(0, 1) / sqrt(chi2_df / df)``.

        torch's chi-square sampler takes no generator, so it runs on a fork of the global RNG seeded from
        ``generator``: the draws are reproducible from ``generator`` alone.
        """
        n = check_int(n, "n")
        normal = torch.randn(n, self.dim, generator=generator, dtype=self.compute_dtype)
        # Gamma draws take no generator in torch: fork the global RNG from a seed we draw.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_fork_seed(generator))
            chi2 = torch.distributions.Chi2(torch.tensor(self.df, dtype=self.compute_dtype)).sample((n, self.dim))
        return self.loc + self.scale * normal / torch.sqrt(chi2 / self.df)


class Funnel(Target):
    """Neal's funnel: ``x_0 ~ N(0, s^2)``, ``x_i | x_0 ~ N(0, exp(x_0))`` for i >= 1."""

    def __init__(self, dim: int = 2, scale: float = 3.0, dtype: torch.dtype = torch.float64) -> None:
        self.dim = check_int(dim, "dim", minimum=2)
        self.scale = check_positive(scale, "scale")
        self.batch_shape, self.compute_dtype, self.device = (), dtype, torch.device("cpu")
        self._freeze()

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) exact log-density (nats) of ``N(x_0; 0, s^2) prod_{i>=1} N(x_i; 0, exp(x_0))``."""
        v, rest = x[..., 0], x[..., 1:]
        lp0 = -0.5 * (v / self.scale) ** 2 - math.log(self.scale) - 0.5 * math.log(2 * math.pi)
        k = rest.shape[-1]
        return lp0 - 0.5 * (rest * rest).sum(-1) * torch.exp(-v) - 0.5 * k * v - 0.5 * k * math.log(2 * math.pi)

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) exact score; the components i >= 1 are ``-x_i exp(-x_0)``, large in the
        funnel's neck (``x_0`` very negative)."""
        v, rest = x[..., :1], x[..., 1:]
        k = rest.shape[-1]
        g0 = -v / self.scale ** 2 + 0.5 * (rest * rest).sum(-1, keepdim=True) * torch.exp(-v) - 0.5 * k
        return torch.cat([g0, -rest * torch.exp(-v)], dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d) i.i.d. draws in ``compute_dtype``: ``x_0 = s eps_0``, ``x_i = exp(x_0 / 2) eps_i``, eps ~ N(0, I)."""
        eps = torch.randn(check_int(n, "n"), self.dim, generator=generator, dtype=self.compute_dtype)
        v = self.scale * eps[:, :1]
        return torch.cat([v, eps[:, 1:] * torch.exp(0.5 * v)], dim=1)


class Banana(Target):
    """A curved density: ``x_0 ~ N(0, s^2)``, ``x_1 | x_0 ~ N(b (x_0^2 - s^2), 1)``, other
    coordinates standard normal."""

    def __init__(self, dim: int = 2, curvature: float = 0.5, scale: float = 2.0,
                 dtype: torch.dtype = torch.float64) -> None:
        self.dim = check_int(dim, "dim", minimum=2)
        self.curvature, self.scale = float(curvature), check_positive(scale, "scale")
        self.batch_shape, self.compute_dtype, self.device = (), dtype, torch.device("cpu")
        self._freeze()

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 1] - self.curvature * (x[..., 0] ** 2 - self.scale ** 2)

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) exact log-density (nats) of
        ``N(x_0; 0, s^2) N(x_1; b (x_0^2 - s^2), 1) prod_{i>=2} N(x_i; 0, 1)``."""
        r = self._residual(x)
        return (-0.5 * (x[..., 0] / self.scale) ** 2 - math.log(self.scale) - 0.5 * r * r
                - 0.5 * (x[..., 2:] ** 2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi))

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) exact score."""
        r = self._residual(x)
        g0 = -x[..., 0] / self.scale ** 2 + r * 2 * self.curvature * x[..., 0]
        return torch.cat([g0[..., None], -r[..., None], -x[..., 2:]], dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d) i.i.d. draws in ``compute_dtype``: ``x_0``, then ``x_1`` given ``x_0``; the rest standard normal."""
        eps = torch.randn(check_int(n, "n"), self.dim, generator=generator, dtype=self.compute_dtype)
        x0 = self.scale * eps[:, 0]
        x1 = eps[:, 1] + self.curvature * (x0 ** 2 - self.scale ** 2)
        return torch.cat([x0[:, None], x1[:, None], eps[:, 2:]], dim=1)


def haar_orthogonal(d: int, batch: tuple[int, ...] = (), generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(*batch, d, d) Haar-random orthogonal matrices (QR of a Gaussian with the sign fix)."""
    g = torch.randn(*batch, d, d, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def random_gmm(dim: int, batch: int | None = None, n_components: int | tuple[int, int] = (1, 10),
               rotate: bool = True, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """Draw from the protocol's random GMM prior.

    K ~ uniform on ``n_components`` (inclusive range, or fixed), weights ~ Dirichlet(1, ..., 1),
    means ~ U[-3, 3]^d, diagonal variances ~ U[0.2, 1]^d, then the whole mixture rotated by a
    Haar-random orthogonal Q (unless ``rotate=False``). With ``batch`` the result has batch shape
    (batch,), components padded to the largest K with weight 0.
    """
    d = check_int(dim, "dim")
    b = 1 if batch is None else check_int(batch, "batch")
    lo, hi = (n_components, n_components) if isinstance(n_components, int) else n_components
    if not 1 <= lo <= hi:
        raise ValueError(f"n_components must be a positive int or a range (lo, hi) with 1 <= lo <= hi; got {n_components}")
    ks = torch.randint(lo, hi + 1, (b,), generator=generator)
    k_max = int(ks.max())
    # Exponential(1) draws; rand can return exactly 0 (once in 2^24 draws in float32), whose log is -inf.
    uniform = torch.rand(b, k_max, generator=generator, dtype=dtype).clamp(min=torch.finfo(dtype).tiny)
    expo = -torch.log(uniform)
    mask = torch.arange(k_max)[None, :] < ks[:, None]
    expo = torch.where(mask, expo, torch.zeros_like(expo))
    weights = expo / expo.sum(1, keepdim=True)
    means = 6.0 * torch.rand(b, k_max, d, generator=generator, dtype=dtype) - 3.0
    variances = 0.2 + 0.8 * torch.rand(b, k_max, d, generator=generator, dtype=dtype)
    covs = torch.diag_embed(variances)
    if rotate:
        q = haar_orthogonal(d, (b,), generator, dtype)
        means = means @ q.transpose(-1, -2)
        covs = q[:, None] @ covs @ q.transpose(-1, -2)[:, None]
    # Padding components reuse a valid covariance so the Cholesky factor exists.
    covs = torch.where(mask[..., None, None], covs, covs[:, :1].expand_as(covs))
    if batch is None:
        return GaussianMixture(weights[0], means[0], covs[0])
    return GaussianMixture(weights, means, covs)
