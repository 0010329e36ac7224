"""Exact target families beyond Gaussian mixtures, for the wider training prior and the W2 protocol.

Every class is a :class:`~disco_score.targets.Target` (so also an :class:`~disco_score.base.Oracle`)
with an exact, normalised log-density, an exact score and an exact sampler, computed in float64:

- :class:`StudentTMixture`: mixtures of multivariate Student-t components (heavy tails);
- :class:`Shell` / :class:`Ring`: thin spherical shells, ``p(x) ∝ exp(-(|x - c| - r)^2 / (2 s^2))``;
- :class:`WarpedTarget`: any unbatched target pushed through invertible smooth maps (:class:`AffineWarp`,
  :class:`TanhWarp`, :class:`SinhArcsinhWarp`, :class:`CouplingWarp`, :class:`RadialWarp`), with the
  density by change of variables and the score by autograd of that exact log-density.

:func:`random_prior_target` draws a random member of a random family (the protocol's GMM prior,
:func:`~disco_score.targets.random_gmm`, is one of the families); :func:`random_wide_mixture`,
:func:`random_warped` and :func:`random_shell` draw from one family each.

>>> import torch
>>> from disco_score.families import random_prior_target
>>> target = random_prior_target(3, torch.Generator().manual_seed(0))
>>> x = target.sample(5, torch.Generator().manual_seed(1))
>>> tuple(target.log_density(x).shape), tuple(target.score(x).shape)
((5,), (5, 3))
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import numpy as np
import torch

from ._checks import check_int, check_positive
from .targets import (GaussianMixture, Target, _check_finite_tensor, _check_spd, _check_weights, _fork_seed,
                      haar_orthogonal, random_gmm)

F64 = torch.float64

__all__ = ["StudentTMixture", "Shell", "Ring", "WarpLayer", "AffineWarp", "TanhWarp", "SinhArcsinhWarp",
           "CouplingWarp", "RadialWarp", "WarpedTarget", "random_wide_mixture", "random_warped", "random_shell",
           "random_prior_target", "PRIOR_FAMILIES"]


def _as_f64(value: torch.Tensor | float | Sequence[float], name: str) -> torch.Tensor:
    """A finite float64 copy of ``value`` (copied so later in-place edits by the caller change nothing)."""
    tensor = torch.as_tensor(value).to(F64, copy=True)
    _check_finite_tensor(tensor, name)
    return tensor


def _log_cosh(w: torch.Tensor) -> torch.Tensor:
    # log cosh without overflow: |w| + log(1 + e^{-2|w|}) - log 2
    a = w.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


# =========================================================================== Student-t mixture
class StudentTMixture(Target):
    """Mixture of multivariate Student-t components; components with weight 0 are padding.

    Component k has density ``Gamma((nu+d)/2) / (Gamma(nu/2) (nu pi)^{d/2} |L|)
    (1 + delta^2 / nu)^{-(nu+d)/2}`` with ``delta^2 = |L^{-1} (x - mu)|^2`` and scale matrix ``L L^T``
    (its covariance is ``nu / (nu - 2) L L^T`` for ``nu > 2``, infinite otherwise).

    Args:
        weights: (*B, K) non-negative, summing to 1 over K (to 1e-6; not renormalised).
        locs: (*B, K, d) finite locations.
        dfs: (*B, K) degrees of freedom, finite and positive.
        scales: (*B, K, d, d) symmetric positive-definite scale matrices; or
        scale_tril: (*B, K, d, d) their lower Cholesky factors (positive diagonal). Give exactly one.

    Raises:
        ValueError: naming the argument, for inconsistent shapes, weights that are negative or do not
            sum to 1, non-finite locations, non-positive dfs, or scales that are not symmetric positive
            definite (scale_tril not lower triangular with a positive diagonal).
    """

    def __init__(self, weights: torch.Tensor, locs: torch.Tensor, dfs: torch.Tensor,
                 scales: torch.Tensor | None = None, *, scale_tril: torch.Tensor | None = None) -> None:
        if (scales is None) == (scale_tril is None):
            raise ValueError("give exactly one of scales and scale_tril")
        locs = _as_f64(locs, "locs")
        weights, dfs = torch.as_tensor(weights).to(F64, copy=True), torch.as_tensor(dfs).to(F64, copy=True)
        mats = torch.as_tensor(scales if scale_tril is None else scale_tril).to(F64, copy=True)
        if locs.ndim < 2 or mats.shape != locs.shape + locs.shape[-1:] or weights.shape != locs.shape[:-1] \
                or dfs.shape != locs.shape[:-1]:
            raise ValueError(f"inconsistent shapes: weights {tuple(weights.shape)}, locs {tuple(locs.shape)}, "
                             f"dfs {tuple(dfs.shape)}, scales {tuple(mats.shape)}")
        _check_weights(weights, "weights")
        _check_finite_tensor(dfs, "dfs")
        if not bool((dfs > 0).all()):
            raise ValueError("dfs must be positive")
        if scale_tril is None:
            chol = _check_spd(mats, "scales")
        else:
            _check_finite_tensor(mats, "scale_tril")
            diag = torch.diagonal(mats, dim1=-2, dim2=-1)
            if not bool((torch.triu(mats, 1) == 0).all()) or not bool((diag > 0).all()):
                raise ValueError("scale_tril must be lower triangular with a positive diagonal")
            chol = mats
        self.weights, self.locs, self.dfs, self.scale_tril = weights, locs, dfs, chol
        self.batch_shape, self.dim = tuple(locs.shape[:-2]), int(locs.shape[-1])
        self.compute_dtype, self.device = F64, locs.device
        d = self.dim
        self._log_weights = torch.log(weights)  # -inf for padding
        self._log_norm = (torch.lgamma((dfs + d) / 2) - torch.lgamma(dfs / 2) - 0.5 * d * torch.log(dfs * math.pi)
                          - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1))
        self._freeze()

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-component ``log(w_k t_k(x))`` (*B, K, m), Mahalanobis ``delta^2`` (*B, K, m), and the
        centred points (*B, K, m, d)."""
        diff = x.to(F64).unsqueeze(-3) - self.locs.unsqueeze(-2)
        z = torch.linalg.solve_triangular(self.scale_tril, diff.transpose(-1, -2), upper=False)
        maha = (z * z).sum(-2)
        nu = self.dfs[..., None]
        comp = (self._log_weights + self._log_norm)[..., None] - 0.5 * (nu + self.dim) * torch.log1p(maha / nu)
        return comp, maha, diff

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(*B, m, d) -> (*B, m) exact log-density (nats), a logsumexp over the components."""
        return torch.logsumexp(self._terms(x)[0], dim=-2)

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(*B, m, d) -> (*B, m, d) exact score: the components' ``-(nu+d) / (nu + delta^2) S^{-1} (x - mu)``
        weighted by their responsibilities at ``x``."""
        comp, maha, diff = self._terms(x)
        resp = torch.softmax(comp, dim=-2)
        nu = self.dfs[..., None]
        prec_diff = torch.cholesky_solve(diff.transpose(-1, -2), self.scale_tril).transpose(-1, -2)
        coef = resp * (nu + self.dim) / (nu + maha)
        return -(coef.unsqueeze(-1) * prec_diff).sum(-3)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(*B, n, d) i.i.d. float64 draws: a component per point, then ``mu + L eps / sqrt(chi2_nu / nu)``.

        The chi-square draws run on a fork of the global RNG seeded from ``generator`` (torch's gamma
        sampler takes no generator), so the draws are reproducible from ``generator`` alone.
        """
        n = check_int(n, "n")
        k, d = self.weights.shape[-1], self.dim
        flat_w = self.weights.reshape(-1, k)
        comp = torch.multinomial(flat_w, n, replacement=True, generator=generator)  # (Bf, n)
        eps = torch.randn(flat_w.shape[0], n, d, generator=generator, dtype=F64, device=self.device)
        locs, chol = self.locs.reshape(-1, k, d), self.scale_tril.reshape(-1, k, d, d)
        nu = torch.gather(self.dfs.reshape(-1, k), 1, comp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_fork_seed(generator))
            chi2 = torch.distributions.Chi2(nu).sample()
        radial = torch.sqrt(nu / chi2.clamp_min(torch.finfo(F64).tiny))
        out = torch.empty_like(eps)
        # One component at a time: a gathered (n, d, d) stack of factors would not fit at d = 128.
        for b in range(flat_w.shape[0]):
            for j in torch.unique(comp[b]).tolist():
                idx = comp[b] == j
                out[b, idx] = locs[b, j] + (eps[b, idx] @ chol[b, j].T) * radial[b, idx, None]
        return out.reshape(*self.batch_shape, n, d)


# =========================================================================== shells
class Shell(Target):
    """A thin spherical shell in R^d: ``p(x) = exp(-(|x - c| - r)^2 / (2 s^2)) / Z``.

    ``Z = S_{d-1} * int_0^inf rho^{d-1} exp(-(rho - r)^2 / (2 s^2)) drho`` with the sphere's area
    ``S_{d-1} = 2 pi^{d/2} / Gamma(d/2)``; the radial integral is done once at construction by
    composite Gauss-Legendre quadrature (80 panels x 20 nodes in log space over the mode +- 40 s, where
    the integrand's log is concave, so the truncation is below e^-800; relative error ~1e-14).
    Sampling is exact: the radius by rejection from ``N(rho*, s^2)`` at the radial mode ``rho*``
    (an envelope, since ``(d-1) log rho`` is concave), the direction uniform on the sphere.

    Args:
        dim: d >= 1 (d = 1 gives two bumps at ``c +- r``).
        radius: r >= 0 (units of x).
        width: s > 0, the radial standard deviation (units of x).
        center: (d,) centre c; zeros when None.
    """

    def __init__(self, dim: int, radius: float = 1.0, width: float = 0.1,
                 center: torch.Tensor | Sequence[float] | None = None) -> None:
        self.dim = check_int(dim, "dim")
        self.radius = check_positive(radius, "radius", allow_zero=True)
        self.width = check_positive(width, "width")
        c = torch.zeros(self.dim, dtype=F64) if center is None else _as_f64(center, "center")
        if c.shape != (self.dim,):
            raise ValueError(f"center must have shape ({self.dim},); got {tuple(c.shape)}")
        self.center = c
        self.batch_shape, self.compute_dtype, self.device = (), F64, torch.device("cpu")
        d, r, s = self.dim, self.radius, self.width
        self._mode = 0.5 * (r + math.sqrt(r * r + 4 * (d - 1) * s * s))  # root of (d-1)/rho = (rho-r)/s^2
        lo, hi = max(0.0, self._mode - 40 * s), self._mode + 40 * s
        nodes, wts = np.polynomial.legendre.leggauss(20)
        edges = np.linspace(lo, hi, 81)
        half = 0.5 * np.diff(edges)[:, None]
        rho = torch.from_numpy((edges[:-1, None] + half * (nodes[None] + 1)).ravel())
        log_w = torch.from_numpy(np.log((half * wts[None]).ravel()))
        log_radial = torch.logsumexp(self._log_radial(rho) + log_w, 0)
        log_area = math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)
        self.log_normalizer = float(log_radial) + log_area
        self._freeze()

    def _log_radial(self, rho: torch.Tensor) -> torch.Tensor:
        """Unnormalised log radial density ``(d-1) log rho - (rho - r)^2 / (2 s^2)`` at rho > 0."""
        core = -0.5 * ((rho - self.radius) / self.width) ** 2
        return core if self.dim == 1 else core + (self.dim - 1) * torch.log(rho)

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) exact log-density (nats)."""
        rho = torch.linalg.vector_norm(x.to(F64) - self.center, dim=-1)
        return -0.5 * ((rho - self.radius) / self.width) ** 2 - self.log_normalizer

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) exact score ``-(|x - c| - r) / s^2 (x - c) / |x - c|`` (0 at the centre,
        where the density has a kink for r > 0)."""
        diff = x.to(F64) - self.center
        rho = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
        unit = diff / rho.clamp_min(torch.finfo(F64).tiny)  # diff is 0 where rho is 0
        return -(rho - self.radius) / self.width ** 2 * unit

    def sample_radius(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) exact draws of ``|x - c|``, by rejection from ``N(rho*, s^2)`` at the radial mode rho*.

        ``log f(rho) + (rho - rho*)^2 / (2 s^2)`` is concave with its maximum at rho*, so
        ``f(rho*) exp(-(rho - rho*)^2 / (2 s^2))`` bounds f; the acceptance rate is above ~0.7.
        """
        n = check_int(n, "n")
        accepted: list[torch.Tensor] = []
        have, top = 0, float(self._log_radial(torch.tensor(self._mode, dtype=F64))) if self._mode > 0 else 0.0
        while have < n:
            m = max(64, int(1.5 * (n - have)) + 16)
            rho = self._mode + self.width * torch.randn(m, generator=generator, dtype=F64)
            u = torch.rand(m, generator=generator, dtype=F64)
            pos = rho > 0
            rho_safe = torch.where(pos, rho, torch.ones_like(rho))
            log_ratio = self._log_radial(rho_safe) + 0.5 * ((rho_safe - self._mode) / self.width) ** 2 - top
            keep = pos & (torch.log(u) < log_ratio)
            accepted.append(rho[keep])
            have += int(keep.sum())
        return torch.cat(accepted)[:n]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d) i.i.d. float64 draws: ``c + rho * g / |g|`` with rho from :meth:`sample_radius` and
        g standard normal."""
        rho = self.sample_radius(n, generator)
        g = torch.randn(n, self.dim, generator=generator, dtype=F64)
        g = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(torch.finfo(F64).tiny)
        return self.center + rho[:, None] * g


class Ring(Shell):
    """The 2-D :class:`Shell`: a ring of radius ``radius`` and radial sd ``width`` around ``center``."""

    def __init__(self, radius: float = 1.0, width: float = 0.1,
                 center: torch.Tensor | Sequence[float] | None = None) -> None:
        super().__init__(2, radius, width, center)


# =========================================================================== warps
class WarpLayer(abc.ABC):
    """An invertible smooth map ``x = T(u)`` of R^d with its log-Jacobian, on float64 (..., d) tensors."""

    dim: int

    @abc.abstractmethod
    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (x (..., d), ``log |det dT/du|`` (...))."""

    @abc.abstractmethod
    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (u (..., d), ``log |det dT^{-1}/dx|`` (...)); differentiable in x."""


class AffineWarp(WarpLayer):
    """``x = A u + b``: rotations, scalings and shears plus a shift.

    Args:
        matrix: (d, d) invertible (reciprocal condition number above 1e-10).
        shift: (d,) b; zeros when None.
    """

    def __init__(self, matrix: torch.Tensor, shift: torch.Tensor | None = None) -> None:
        a = _as_f64(matrix, "matrix")
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"matrix must be square (d, d); got {tuple(a.shape)}")
        self.dim = int(a.shape[0])
        b = torch.zeros(self.dim, dtype=F64) if shift is None else _as_f64(shift, "shift")
        if b.shape != (self.dim,):
            raise ValueError(f"shift must have shape ({self.dim},); got {tuple(b.shape)}")
        sv = torch.linalg.svdvals(a)
        if not float(sv[-1]) > 1e-10 * float(sv[0]):
            raise ValueError("matrix must be invertible (reciprocal condition number <= 1e-10)")
        self.matrix, self.shift = a, b
        self._lu, self._piv = torch.linalg.lu_factor(a)
        self._logdet = float(torch.log(sv).sum())

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (``A u + b``, ``log |det A|``)."""
        return u @ self.matrix.T + self.shift, torch.full(u.shape[:-1], self._logdet, dtype=F64)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (``A^{-1} (x - b)`` by the LU factors, ``-log |det A|``)."""
        flat = (x - self.shift).reshape(-1, self.dim)
        u = torch.linalg.lu_solve(self._lu, self._piv, flat.T).T.reshape(x.shape)
        return u, torch.full(x.shape[:-1], -self._logdet, dtype=F64)


class TanhWarp(WarpLayer):
    """Elementwise ``x_i = u_i + a_i tanh(b_i u_i + c_i)``, monotone because ``a_i b_i > -1``.

    A bump of the derivative around ``u_i = -c_i / b_i``: ``a b < 0`` squeezes mass into a ridge,
    ``a b > 0`` thins it into a gap. The inverse has no closed form: a Newton iteration safeguarded by
    bisection on the bracket ``[x - |a|, x + |a|]`` (which holds the root since ``|a tanh| <= |a|``),
    run to float64 precision; a final Newton step from the detached root carries the exact gradient
    ``du/dx = 1 / T'(u)`` to autograd.

    Args:
        a, b, c: (d,) finite, with ``a * b > -1`` elementwise.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> None:
        self.a, self.b, self.c = _as_f64(a, "a"), _as_f64(b, "b"), _as_f64(c, "c")
        if self.a.ndim != 1 or self.b.shape != self.a.shape or self.c.shape != self.a.shape:
            raise ValueError(f"a, b, c must share a shape (d,); got {tuple(self.a.shape)}, "
                             f"{tuple(self.b.shape)}, {tuple(self.c.shape)}")
        if not bool((self.a * self.b > -1).all()):
            raise ValueError("a * b must be > -1 elementwise, or the map is not monotone")
        self.dim = int(self.a.shape[0])

    def _derivative(self, u: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(self.b * u + self.c)
        return 1 + self.a * self.b * (1 - t * t)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (x, ``sum_i log T_i'(u_i)``)."""
        x = u + self.a * torch.tanh(self.b * u + self.c)
        return x, torch.log(self._derivative(u)).sum(-1)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (u, ``-sum_i log T_i'(u_i)``) with ``|T(u) - x|`` at float64 round-off."""
        with torch.no_grad():
            xd = x.detach()
            lo, hi = xd - self.a.abs(), xd + self.a.abs()
            u = (xd - self.a * torch.tanh(self.b * xd + self.c)).clamp(lo, hi)
            f_prev = torch.full_like(u, math.inf)
            last_newton = torch.zeros_like(u, dtype=torch.bool)
            done = torch.zeros_like(u, dtype=torch.bool)
            for _ in range(200):
                f = u + self.a * torch.tanh(self.b * u + self.c) - xd
                lo, hi = torch.where(f < 0, u, lo), torch.where(f > 0, u, hi)
                step = u - f / self._derivative(u)
                # Bisect where Newton leaves the bracket, or where the last Newton step failed to halve
                # the residual: plain bracketed Newton can cycle on tanh-like maps, and this rule allows
                # at most one Newton step between bisections there, while keeping quadratic convergence.
                newton = (step >= lo) & (step <= hi) & (~last_newton | (f.abs() <= 0.5 * f_prev))
                new = torch.where(done, u, torch.where(newton, step, 0.5 * (lo + hi)))
                f_prev, last_newton = f.abs(), newton
                # Converged entries are frozen: after a step below 1e-13 the error is at round-off
                # (quadratic convergence), and further steps would only chase round-off residuals.
                done = done | ((new - u).abs() <= 1e-13 * (1 + u.abs()))
                u = new
                if bool(done.all()):
                    break
        # One Newton step from the detached root: equal to it at round-off, with gradient 1 / T'(u).
        u = u - (u + self.a * torch.tanh(self.b * u + self.c) - x) / self._derivative(u)
        return u, -torch.log(self._derivative(u)).sum(-1)


class SinhArcsinhWarp(WarpLayer):
    """Elementwise sinh-arcsinh map ``x = loc + scale sinh(delta asinh((u - loc) / scale) - skew)``.

    ``delta < 1`` fattens the tails, ``delta > 1`` thins them, ``skew`` skews; the inverse is closed-form,
    ``u = loc + scale sinh((asinh((x - loc) / scale) + skew) / delta)``.

    Args:
        loc, scale, skew, delta: (d,) finite, with ``scale > 0`` and ``delta > 0``.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, skew: torch.Tensor, delta: torch.Tensor) -> None:
        self.loc, self.scale = _as_f64(loc, "loc"), _as_f64(scale, "scale")
        self.skew, self.delta = _as_f64(skew, "skew"), _as_f64(delta, "delta")
        shapes = {tuple(t.shape) for t in (self.loc, self.scale, self.skew, self.delta)}
        if len(shapes) != 1 or self.loc.ndim != 1:
            raise ValueError(f"loc, scale, skew, delta must share a shape (d,); got {sorted(shapes)}")
        if not bool((self.scale > 0).all()):
            raise ValueError("scale must be positive")
        if not bool((self.delta > 0).all()):
            raise ValueError("delta must be positive")
        self.dim = int(self.loc.shape[0])

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (x, log-Jacobian)."""
        z = (u - self.loc) / self.scale
        w = self.delta * torch.asinh(z) - self.skew
        logdet = torch.log(self.delta) + _log_cosh(w) - 0.5 * torch.log1p(z * z)
        return self.loc + self.scale * torch.sinh(w), logdet.sum(-1)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (u, log-Jacobian of the inverse), both closed-form."""
        y = (x - self.loc) / self.scale
        v = (torch.asinh(y) + self.skew) / self.delta
        logdet = -torch.log(self.delta) + _log_cosh(v) - 0.5 * torch.log1p(y * y)
        return self.loc + self.scale * torch.sinh(v), logdet.sum(-1)


class CouplingWarp(WarpLayer):
    """Affine coupling: the coordinates ``A = cond_index`` pass through, the rest B are scaled and
    shifted by smooth functions of them, ``x_B = u_B exp(s(u_A)) + t(u_A)``.

    ``h = tanh(W u_A + bias)``, ``s = max_log_scale tanh(V_s h)``, ``t = V_t h``: small random tanh
    features give banana- and spiral-like curved shapes; the inverse is closed-form,
    ``u_B = (x_B - t(x_A)) exp(-s(x_A))``.

    Args:
        dim: d >= 2.
        cond_index: (|A|,) distinct coordinates in [0, d), 1 <= |A| <= d - 1.
        weight: (H, |A|) W.  bias: (H,).  scale_weight: (|B|, H) V_s.  shift_weight: (|B|, H) V_t.
        max_log_scale: bound on ``|s|`` (> 0).
    """

    def __init__(self, dim: int, cond_index: torch.Tensor | Sequence[int], weight: torch.Tensor,
                 bias: torch.Tensor, scale_weight: torch.Tensor, shift_weight: torch.Tensor,
                 max_log_scale: float = 1.0) -> None:
        self.dim = check_int(dim, "dim", minimum=2)
        idx = torch.as_tensor(cond_index, dtype=torch.long).reshape(-1)
        if idx.numel() < 1 or idx.numel() > self.dim - 1 or idx.unique().numel() != idx.numel() \
                or bool(((idx < 0) | (idx >= self.dim)).any()):
            raise ValueError(f"cond_index must hold 1 to {self.dim - 1} distinct coordinates in [0, {self.dim})")
        rest = torch.tensor([i for i in range(self.dim) if i not in set(idx.tolist())], dtype=torch.long)
        self.cond_index, self.rest_index = idx, rest
        self._unperm = torch.argsort(torch.cat([idx, rest]))
        self.weight, self.bias = _as_f64(weight, "weight"), _as_f64(bias, "bias")
        self.scale_weight, self.shift_weight = _as_f64(scale_weight, "scale_weight"), _as_f64(shift_weight, "shift_weight")
        h = self.bias.shape[0] if self.bias.ndim == 1 else -1
        if self.weight.shape != (h, idx.numel()) or self.scale_weight.shape != (rest.numel(), h) \
                or self.shift_weight.shape != (rest.numel(), h):
            raise ValueError(f"inconsistent shapes: weight {tuple(self.weight.shape)}, bias {tuple(self.bias.shape)}, "
                             f"scale_weight {tuple(self.scale_weight.shape)}, shift_weight "
                             f"{tuple(self.shift_weight.shape)} for |A| = {idx.numel()}, |B| = {rest.numel()}")
        self.max_log_scale = check_positive(max_log_scale, "max_log_scale")

    def _scale_shift(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(a @ self.weight.T + self.bias)
        return self.max_log_scale * torch.tanh(h @ self.scale_weight.T), h @ self.shift_weight.T

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (x, ``sum s(u_A)``)."""
        a, b = u[..., self.cond_index], u[..., self.rest_index]
        s, t = self._scale_shift(a)
        return torch.cat([a, b * torch.exp(s) + t], -1)[..., self._unperm], s.sum(-1)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (u, ``-sum s(x_A)``)."""
        a, b = x[..., self.cond_index], x[..., self.rest_index]
        s, t = self._scale_shift(a)
        return torch.cat([a, (b - t) * torch.exp(-s)], -1)[..., self._unperm], -s.sum(-1)


class RadialWarp(WarpLayer):
    """Radial flow ``x = u + beta (u - z) / (alpha + |u - z|)`` around a centre z.

    Invertible for ``beta > -alpha`` (``beta > 0`` pushes mass away from z, hollowing it; ``beta < 0``
    pulls it in). The inverse solves ``r^2 + (alpha + beta - rho) r - alpha rho = 0`` for ``r = |u - z|``
    given ``rho = |x - z|``, in the cancellation-free form of the quadratic formula.

    Args:
        center: (d,) z.  alpha: > 0.  beta: > -alpha.
    """

    def __init__(self, center: torch.Tensor, alpha: float, beta: float) -> None:
        self.center = _as_f64(center, "center")
        if self.center.ndim != 1:
            raise ValueError(f"center must have shape (d,); got {tuple(self.center.shape)}")
        self.dim = int(self.center.shape[0])
        self.alpha = check_positive(alpha, "alpha")
        self.beta = float(beta)
        if not (math.isfinite(self.beta) and self.beta > -self.alpha):
            raise ValueError(f"beta must be finite and > -alpha = {-self.alpha}; got {beta}")

    def _logdet(self, r: torch.Tensor) -> torch.Tensor:
        # (d-1) radial stretch factors (1 + beta h) and one along the radius, 1 + beta alpha / (alpha + r)^2
        ar = self.alpha + r
        return (self.dim - 1) * torch.log1p(self.beta / ar) + torch.log1p(self.beta * self.alpha / ar ** 2)

    @staticmethod
    def _norm(v: torch.Tensor) -> torch.Tensor:
        # clamped before the root so autograd stays finite at exactly the centre
        return (v * v).sum(-1).clamp_min(1e-300).sqrt()

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (x, log-Jacobian)."""
        diff = u - self.center
        r = self._norm(diff)
        return u + self.beta * diff / (self.alpha + r)[..., None], self._logdet(r)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) -> (u, log-Jacobian of the inverse), closed-form."""
        diff = x - self.center
        rho = self._norm(diff)
        q = self.alpha + self.beta - rho
        disc = torch.sqrt(q * q + 4 * self.alpha * rho)
        r = torch.where(q < 0, 0.5 * (disc - q), 2 * self.alpha * rho / (disc + q.clamp_min(0)))
        factor = 1 / (1 + self.beta / (self.alpha + r))
        return self.center + diff * factor[..., None], -self._logdet(r)


class WarpedTarget(Target):
    """The law of ``x = T(u) = L_n(... L_1(u))`` for ``u ~ base``, by change of variables.

    ``log p(x) = log p_base(T^{-1}(x)) + sum_i log |det J_{L_i^{-1}}|``, exact up to the layers'
    inverses (closed-form, or float64 round-off for :class:`TanhWarp`); the score is torch autograd of
    that function, so it is exact too, and it works under ``torch.no_grad`` callers.

    Args:
        base: an unbatched :class:`Target` whose ``log_prob_t`` is differentiable in torch.
        layers: the maps L_1, ..., L_n, applied in order to base draws (at least one).
    """

    def __init__(self, base: Target, layers: Sequence[WarpLayer]) -> None:
        if not isinstance(base, Target) or base.batch_shape:
            raise ValueError("base must be an unbatched Target")
        layers = tuple(layers)
        if not layers or not all(isinstance(layer, WarpLayer) for layer in layers):
            raise ValueError("layers must be a non-empty sequence of WarpLayer")
        if any(layer.dim != base.dim for layer in layers):
            raise ValueError(f"every layer must act on the base's dimension {base.dim}; got "
                             f"{[layer.dim for layer in layers]}")
        self.base, self.layers = base, layers
        self.dim, self.batch_shape, self.compute_dtype, self.device = base.dim, (), F64, base.device
        self._freeze()

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) base points -> (x = T(u), ``log |det dT/du|``)."""
        x, total = u.to(F64), torch.zeros(u.shape[:-1], dtype=F64)
        for layer in self.layers:
            x, ld = layer.forward(x)
            total = total + ld
        return x, total

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., d) points -> (u = T^{-1}(x), ``log |det dT^{-1}/dx|``)."""
        u, total = x.to(F64), torch.zeros(x.shape[:-1], dtype=F64)
        for layer in reversed(self.layers):
            u, ld = layer.inverse(u)
            total = total + ld
        return u, total

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(m, d) -> (m,) exact log-density (nats) by change of variables."""
        u, ld = self.inverse(x)
        return self.base.log_prob_t(u) + ld

    def _both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            xg = x.detach().to(F64).requires_grad_(True)
            lp = self.log_prob_t(xg)
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        return lp.detach(), grad

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(m, d) -> (m, d) exact score: autograd of :meth:`log_prob_t` (grad enabled internally)."""
        return self._both(x)[1]

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not want_score:
            return self.log_prob_t(y), None
        return self._both(y)  # one inversion for both

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d) i.i.d. float64 draws ``T(u)``, u from the base's sampler."""
        with torch.no_grad():
            return self.forward(self.base.sample(check_int(n, "n"), generator))[0]


# =========================================================================== random draws
def _uniform(lo: float, hi: float, size: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(size, generator=generator, dtype=F64)


def _log_uniform(lo: float, hi: float, size: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.exp(_uniform(math.log(lo), math.log(hi), size, generator))


def random_wide_mixture(dim: int, generator: torch.Generator | None = None,
                        n_components: tuple[int, int] = (1, 32), spread: float = 3.0,
                        scale_range: tuple[float, float] = (0.01, 1.0), max_axis_ratio: float = 30.0,
                        concentration: float = 0.5, min_weight: float = 0.005, student_t_prob: float = 0.5,
                        df_range: tuple[float, float] = (1.5, 30.0)) -> GaussianMixture | StudentTMixture:
    """A random mixture from the wide prior: many, tight, anisotropic, unevenly weighted components.

    K log-uniform on the integers of ``n_components``; means uniform on ``[-spread, spread]^d``; each
    component's scale ``spread * c`` with c log-uniform on ``scale_range`` and axis standard deviations
    ``spread * c * R^(v_i - 1/2)`` (v_i uniform, R log-uniform on ``[1, max_axis_ratio]``) in a
    Haar-random orientation; weights Dirichlet(``concentration``) floored at ``min_weight`` and
    renormalised; with probability ``student_t_prob`` the components are Student-t with dfs
    log-uniform on ``df_range`` (scale matrices as above), else Gaussian.

    Args:
        dim: d >= 1.
        generator: seeded torch.Generator for reproducible draws.
        n_components, spread, scale_range, max_axis_ratio, concentration, min_weight, student_t_prob,
            df_range: the prior's settings, as above.

    Returns:
        A float64 :class:`~disco_score.targets.GaussianMixture` or :class:`StudentTMixture`.
    """
    d = check_int(dim, "dim")
    lo, hi = n_components
    if not 1 <= lo <= hi:
        raise ValueError(f"n_components must be a range (lo, hi) with 1 <= lo <= hi; got {n_components}")
    k = min(hi, int(math.floor(float(_log_uniform(lo, hi + 1, (1,), generator)))))
    means = spread * (2 * torch.rand(k, d, generator=generator, dtype=F64) - 1)
    c = spread * _log_uniform(*scale_range, (k, 1), generator)
    ratio = _log_uniform(1.0, max_axis_ratio, (k, 1), generator)
    sd = c * ratio ** (torch.rand(k, d, generator=generator, dtype=F64) - 0.5)
    q = haar_orthogonal(d, (k,), generator)
    cov = (q * sd[:, None, :] ** 2) @ q.transpose(-1, -2)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_fork_seed(generator))
        gamma = torch.distributions.Gamma(torch.full((k,), concentration, dtype=F64), 1.0).sample()
    w = gamma.clamp_min(torch.finfo(F64).tiny)
    w = (w / w.sum()).clamp_min(min_weight)
    w = w / w.sum()
    if float(torch.rand((), generator=generator, dtype=F64)) < student_t_prob:
        return StudentTMixture(w, means, _log_uniform(*df_range, (k,), generator), scales=cov)
    return GaussianMixture(w, means, cov)


def _random_layer(kind: str, d: int, spread: float, generator: torch.Generator | None) -> WarpLayer:
    """One random warp of the given kind, sized to data of scale ``spread`` around the origin."""
    if kind == "affine":
        scales = _log_uniform(0.5, 2.0, (d,), generator)
        a = (haar_orthogonal(d, (), generator) * scales) @ haar_orthogonal(d, (), generator).T
        return AffineWarp(a, 0.3 * spread * torch.randn(d, generator=generator, dtype=F64))
    if kind == "tanh":
        b = _log_uniform(0.5, 3.0, (d,), generator) / spread
        ab = _uniform(-0.9, 3.0, (d,), generator)  # a b > -1: derivative between 0.1 and 4
        return TanhWarp(ab / b, b, _uniform(-1.5, 1.5, (d,), generator))
    if kind == "sinh_arcsinh":
        return SinhArcsinhWarp(_uniform(-0.5, 0.5, (d,), generator) * spread,
                               spread * _log_uniform(0.3, 1.0, (d,), generator),
                               _uniform(-0.5, 0.5, (d,), generator), _log_uniform(0.7, 1.4, (d,), generator))
    if kind == "coupling":
        perm = torch.randperm(d, generator=generator)
        n_a, hidden = d // 2, 8
        w = torch.randn(hidden, n_a, generator=generator, dtype=F64)
        w = w * _log_uniform(0.5, 2.0, (hidden, 1), generator) / (spread * math.sqrt(n_a))
        return CouplingWarp(d, perm[:n_a], w, _uniform(-1.0, 1.0, (hidden,), generator),
                            0.5 / math.sqrt(hidden) * torch.randn(d - n_a, hidden, generator=generator, dtype=F64),
                            0.5 * spread / math.sqrt(hidden) * torch.randn(d - n_a, hidden, generator=generator,
                                                                           dtype=F64))
    if kind == "radial":
        alpha = spread * float(_log_uniform(0.1, 1.0, (1,), generator))
        beta = alpha * float(_uniform(-0.9, 3.0, (1,), generator))
        return RadialWarp(spread * (2 * torch.rand(d, generator=generator, dtype=F64) - 1), alpha, beta)
    raise ValueError(f"unknown warp kind {kind!r}")


WARP_KINDS = ("affine", "tanh", "sinh_arcsinh", "coupling", "radial")


def random_warped(dim: int, generator: torch.Generator | None = None, n_layers: tuple[int, int] = (1, 3),
                  spread: float = 3.0, **mixture_kwargs: object) -> WarpedTarget:
    """A random wide mixture (:func:`random_wide_mixture`) pushed through 1-3 random warps.

    Each layer's kind is uniform over affine, tanh, sinh-arcsinh, coupling (d >= 2 only) and radial,
    with parameters sized to ``spread`` so the warps bend the mixture on its own scale.

    Args:
        dim: d >= 1.
        generator: seeded torch.Generator.
        n_layers: inclusive range of the number of layers.
        spread: the mixture's spread (see :func:`random_wide_mixture`).
        **mixture_kwargs: passed on to :func:`random_wide_mixture`.

    Returns:
        A :class:`WarpedTarget`.
    """
    d = check_int(dim, "dim")
    base = random_wide_mixture(d, generator, spread=spread, **mixture_kwargs)  # type: ignore[arg-type]
    kinds = [k for k in WARP_KINDS if d >= 2 or k != "coupling"]
    n = int(torch.randint(n_layers[0], n_layers[1] + 1, (1,), generator=generator))
    picks = torch.randint(0, len(kinds), (n,), generator=generator).tolist()
    return WarpedTarget(base, [_random_layer(kinds[i], d, spread, generator) for i in picks])


def random_shell(dim: int, generator: torch.Generator | None = None, spread: float = 3.0) -> Target:
    """A random thin shell: radius ``spread * U(0.3, 1.5)``, width/radius log-uniform on [0.02, 0.3],
    centre uniform on ``[-spread/2, spread/2]^d``; with probability 1/2 stretched by a random affine
    map (scales log-uniform on [0.5, 2]) into an ellipsoidal shell.

    Args:
        dim: d >= 1.  generator: seeded torch.Generator.  spread: overall scale.

    Returns:
        A :class:`Shell`, or a :class:`WarpedTarget` of one.
    """
    d = check_int(dim, "dim")
    radius = spread * float(_uniform(0.3, 1.5, (1,), generator))
    width = radius * float(_log_uniform(0.02, 0.3, (1,), generator))
    shell = Shell(d, radius, width, 0.5 * spread * (2 * torch.rand(d, generator=generator, dtype=F64) - 1))
    if float(torch.rand((), generator=generator, dtype=F64)) < 0.5:
        q = haar_orthogonal(d, (), generator)
        a = (q * _log_uniform(0.5, 2.0, (d,), generator)) @ q.T
        return WarpedTarget(shell, [AffineWarp(a)])
    return shell


#: the families :func:`random_prior_target` picks from
PRIOR_FAMILIES = ("gmm", "wide_mixture", "warped", "shell")


def random_prior_target(dim: int, generator: torch.Generator | None = None,
                        families: Sequence[str] = PRIOR_FAMILIES, probs: Sequence[float] | None = None) -> Target:
    """One draw of the wider training prior: a family at random, then a random member of it.

    Families: "gmm" (the protocol's GMM prior, :func:`~disco_score.targets.random_gmm`), "wide_mixture"
    (:func:`random_wide_mixture`), "warped" (:func:`random_warped`) and "shell" (:func:`random_shell`).

    Args:
        dim: d >= 1 (all families work up to d = 128 and beyond).
        generator: seeded torch.Generator; the draw is reproducible from it.
        families: the families to pick from (a subset of :data:`PRIOR_FAMILIES`).
        probs: their probabilities (normalised here); uniform when None.

    Returns:
        An unbatched float64 :class:`~disco_score.targets.Target`.
    """
    d = check_int(dim, "dim")
    families = tuple(families)
    unknown = [f for f in families if f not in PRIOR_FAMILIES]
    if not families or unknown:
        raise ValueError(f"families must be a non-empty subset of {PRIOR_FAMILIES}; unknown {unknown}")
    p = torch.ones(len(families), dtype=F64) if probs is None else torch.as_tensor(probs, dtype=F64)
    if p.shape != (len(families),) or not bool(torch.isfinite(p).all()) or not bool((p >= 0).all()) \
            or float(p.sum()) <= 0:
        raise ValueError("probs must be finite non-negative numbers, one per family, not all zero")
    family = families[int(torch.multinomial(p / p.sum(), 1, generator=generator))]
    if family == "gmm":
        return random_gmm(d, generator=generator)
    if family == "wide_mixture":
        return random_wide_mixture(d, generator)
    if family == "warped":
        return random_warped(d, generator)
    return random_shell(d, generator)
