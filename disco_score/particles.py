"""Score-based particle solvers for Fokker–Planck and homogeneous Landau equations.

Both equations are transport equations ``∂f/∂t + ∇·(f u[f]) = 0`` whose velocity field ``u`` involves
the score ``∇log f``. A cloud of N equally weighted particles (mass 1/N each, so mass is conserved
by construction) moves with ``dx_i/dt = u(x_i)``; the score at the particles is re-estimated from
the cloud itself at every stage (``oracle = estimator.fit(particles)``), so KDE and DiScoFormer, or an
exact score for reference runs, are interchangeable.

* :func:`fokker_planck`: ``∂f/∂t = ∇·(f ∇V) + D Δf`` with ``u = -∇V - D ∇log f`` (the deterministic,
  "probability-flow" form of the Langevin SDE ``dX = -∇V dt + sqrt(2D) dW``).
* :func:`landau`: the space-homogeneous Landau collision operator
  ``∂f/∂t = ∇·∫ A(v - w) (f(w) ∇f(v) - f(v) ∇f(w)) dw`` with ``A(z) = |z|^γ (|z|² I - z zᵀ)``
  (γ = 0: Maxwell molecules; γ = -3 in 3D: Coulomb). Particle form
  ``dv_i/dt = -(1/N) Σ_j A(v_i - v_j)(s(v_i) - s(v_j))``, collision constant 1.
* Closed forms to check against: :func:`ornstein_uhlenbeck_moments` (Gaussian Fokker–Planck,
  including the heat equation) and :func:`landau_covariance_closed_form` (Maxwell-molecule
  covariance relaxation; derivation in ``docs/landau-moments.md``).

Time integration is explicit Euler or Heun (the explicit trapezoidal rule, second order; two score
fits per step). Positions are integrated in float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ._checks import ArrayLike, Queries, _to_tensor, as_samples, check_int, check_positive
from .base import Estimator, Oracle
from .defaults import default_estimator
from .kde import BLOCK_ELEMENTS
from .divergence import ChainDiverged, DivergenceGuard

logger = logging.getLogger(__name__)

Method = Literal["euler", "heun"]
#: ``score_fn(t, x)``: exact score at time ``t`` (float) of the points ``x`` (N, d) -> (N, d)
ScoreFn = Callable[[float, Any], Any]
#: ``callback(t, positions, oracle)``; ``oracle`` is None when the run is driven by ``score_fn``
Callback = Callable[[float, Any, "Oracle | None"], None]
#: ``grad_potential(x)``: (N, d) -> (N, d) gradient of the confining potential V
GradPotential = Callable[[Any], Any]


@dataclass(frozen=True)
class ParticlePath:
    """A particle trajectory, in the caller's array kind (numpy or torch) and floating dtype.

    Attributes:
        times: (T,) the stored times (the grid, thinned by ``save_every``; always the first and last).
        positions: (T, N, d) particle positions at those times.
    """

    times: Any
    positions: Any

    @property
    def final(self) -> Any:
        """(N, d) positions at the last stored time."""
        return self.positions[-1]


# -- shared machinery -----------------------------------------------------------------------------

def _time_grid(t_end: float, n_steps: int, times: ArrayLike | None) -> np.ndarray:
    """(n_steps + 1,) float64 grid: ``linspace(0, t_end, n_steps + 1)`` unless ``times`` is given."""
    if times is None:
        t_end = check_positive(t_end, "t_end")
        n_steps = check_int(n_steps, "n_steps", minimum=1)
        return np.linspace(0.0, t_end, n_steps + 1)
    grid, _ = _to_tensor(times, "times")
    grid_np = grid.to(torch.float64).cpu().numpy()
    if grid_np.ndim != 1 or grid_np.shape[0] < 2:
        raise ValueError(f"times must be a 1-D array of at least two times; got shape {grid_np.shape}")
    if not np.isfinite(grid_np).all():
        raise ValueError("times contains non-finite values")
    if not (np.diff(grid_np) > 0).all():
        raise ValueError("times must be strictly increasing")
    return grid_np


def _check_method(method: str) -> Method:
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun'; got {method!r}")
    return method  # type: ignore[return-value]


def _check_callable(value: Any, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not callable(value):
        raise TypeError(f"{name} must be callable{' or None' if allow_none else ''}; got {type(value).__name__}")


def _field_output(value: Any, name: str, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Validate a user callable's (N, d) output and bring it to ``like``'s dtype and device."""
    tensor = as_samples(value, name, min_samples=1)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must return an array of shape {shape}; got shape {tuple(tensor.shape)}")
    return tensor.to(dtype=like.dtype, device=like.device)


class _ScoreSource:
    """Scores at the particles: from an estimator re-fitted to the cloud, or from an exact ``score_fn``."""

    def __init__(self, estimator: Estimator | None, score_fn: ScoreFn | None, kind: Queries) -> None:
        _check_callable(score_fn, "score_fn")
        if score_fn is not None and estimator is not None:
            raise ValueError("pass either estimator= (score re-estimated from the particles) or score_fn= "
                             "(an exact score), not both")
        if score_fn is None:
            estimator = default_estimator() if estimator is None else estimator
            if not isinstance(estimator, Estimator):
                hint = (" (a fitted Oracle cannot follow the moving cloud; pass its Estimator)"
                        if isinstance(estimator, Oracle) else "")
                raise TypeError(f"estimator must be an Estimator or None; got {type(estimator).__name__}{hint}")
        self.estimator, self.score_fn, self.kind = estimator, score_fn, kind

    def __call__(self, t: float, x: torch.Tensor) -> tuple[torch.Tensor, Oracle | None]:
        """(N, d) float64 positions -> ((N, d) float64 scores, the fitted oracle or None)."""
        if self.score_fn is not None:
            value = self.score_fn(t, self.kind.restore(x))
            return _field_output(value, "score_fn", tuple(x.shape), x), None
        assert self.estimator is not None
        oracle = self.estimator.fit(x)
        return torch.as_tensor(oracle.score(x)).to(dtype=x.dtype, device=x.device), oracle


Velocity = Callable[[float, torch.Tensor], tuple[torch.Tensor, "Oracle | None"]]


@dataclass(frozen=True)
class _Kinds:
    """The caller's array kind twice: in float64 for user callables, in the caller's dtype for the path."""

    call: Queries
    out: Queries


def _prepare(x0: ArrayLike, name: str) -> tuple[torch.Tensor, _Kinds]:
    """Validated (N, d) float64 positions plus the caller's kinds."""
    tensor = as_samples(x0, name)
    is_torch = isinstance(x0, torch.Tensor)
    x = tensor.to(torch.float64)
    return x, _Kinds(call=Queries(x, False, is_torch, torch.float64, tensor.device),
                     out=Queries(x, False, is_torch, tensor.dtype, tensor.device))


def _integrate(x0: torch.Tensor, kinds: _Kinds, velocity: Velocity, grid: np.ndarray, method: Method,
               callback: Callback | None, progress: bool, save_every: int, desc: str) -> ParticlePath:
    """Explicit Euler or Heun over ``grid`` for ``dx/dt = velocity(t, x)``.

    ``callback(t, x, oracle)`` runs at every grid time with the oracle of the step's first stage
    (at the final time one extra score evaluation provides it).
    """
    save_every = check_int(save_every, "save_every", minimum=1)
    x = x0
    stored_t, stored_x = [float(grid[0])], [x.clone()]
    n_steps = grid.shape[0] - 1
    largest_dt = float(np.diff(grid).max())
    guard: DivergenceGuard | None = None
    for k in tqdm(range(n_steps), desc=desc, disable=not progress, leave=False):
        t, dt = float(grid[k]), float(grid[k + 1] - grid[k])
        u1, oracle = velocity(t, x)
        if guard is None:
            # The cloud moves at most |u(x0)| t from where it started while the flow is stable; an
            # unstable time step grows it geometrically (see divergence.DivergenceGuard).
            guard = DivergenceGuard(x0, None, u1, f"the time step {largest_dt:.3g} is too large for this "
                                                  f"{'drift' if desc == 'fokker-planck' else 'field'}; "
                                                  f"raise n_steps (or refine times)")
        guard.advance(dt, 0.0)
        if callback is not None:
            callback(t, kinds.call.restore(x), oracle)
        if method == "euler":
            x = x + dt * u1
        else:
            u2, _ = velocity(t + dt, x + dt * u1)
            x = x + 0.5 * dt * (u1 + u2)
        try:
            guard.check(x)
        except ChainDiverged as exc:
            raise ChainDiverged(f"{desc}: particles diverged at t = {t + dt:.6g}: {exc}") from None
        if (k + 1) % save_every == 0 or k + 1 == n_steps:
            stored_t.append(float(grid[k + 1]))
            stored_x.append(x.clone())
    logger.debug("%s: %d %s steps from t=%g to t=%g", desc, n_steps, method, grid[0], grid[-1])
    if callback is not None:
        _, oracle = velocity(float(grid[-1]), x)
        callback(float(grid[-1]), kinds.call.restore(x), oracle)
    times = torch.tensor(stored_t, dtype=torch.float64, device=x.device)
    return ParticlePath(kinds.out.restore(times), kinds.out.restore(torch.stack(stored_x)))


# -- Fokker–Planck ----------------------------------------------------------------------------------

def fokker_planck(x0: ArrayLike, grad_potential: GradPotential | None, diffusion: float = 1.0,
                  t_end: float = 1.0, n_steps: int = 100, estimator: Estimator | None = None, *,
                  method: Method = "heun", score_fn: ScoreFn | None = None, times: ArrayLike | None = None,
                  callback: Callback | None = None, progress: bool = True, save_every: int = 1) -> ParticlePath:
    """Solve ``∂f/∂t = ∇·(f ∇V) + D Δf`` with the deterministic score-based particle method.

    Particles move with ``dx/dt = -∇V(x) - D ∇log f_t(x)``; the score of ``f_t`` at the particles is
    re-estimated from the particle cloud at every stage (``estimator.fit(particles).score(particles)``).
    With an exact score, the particle density follows ``f_t`` exactly (the probability-flow ODE of
    the Langevin SDE ``dX = -∇V dt + sqrt(2D) dW``).

    Args:
        x0: (N, d) initial particles, samples of ``f_0`` (numpy or torch; N >= 2).
        grad_potential: ``∇V``: a callable (N, d) -> (N, d), called with float64 positions in the
            caller's kind (numpy or torch); None means ``V = 0`` (the heat equation).
        diffusion: ``D >= 0`` (units of x² per unit time).
        t_end: final time (> 0); the grid is ``linspace(0, t_end, n_steps + 1)``.
        n_steps: number of time steps (>= 1).
        estimator: score estimator re-fitted to the cloud; None means the package default
            (:func:`disco_score.defaults.default_estimator`, the pretrained DiScoFormer).
        method: ``"euler"`` (first order, one fit per step) or ``"heun"`` (second order, two fits).
        score_fn: instead of an estimator, an exact score ``score_fn(t, x)``: (N, d) -> (N, d), for
            reference runs.
        times: an explicit strictly increasing time grid (T,) overriding ``t_end`` and ``n_steps``;
            ``x0`` sits at ``times[0]``.
        callback: ``callback(t, positions, oracle)`` at every grid time (positions float64 in the
            caller's kind; ``oracle`` the fit at those positions, None with ``score_fn``).
        progress: show a tqdm progress bar.
        save_every: store every ``save_every``-th step (the first and last are always stored).

    Returns:
        :class:`ParticlePath` with ``times`` (T,) and ``positions`` (T, N, d), in the kind and
        dtype of ``x0``.

    Raises:
        ~disco_score.samplers.ChainDiverged: the cloud became non-finite or ran far beyond
            ``|u(x0)| t`` of where it started (an unstable time step: raise ``n_steps``).

    Example:
        >>> import numpy as np
        >>> from disco_score import KDE, particles
        >>> x0 = np.random.default_rng(0).normal(size=(300, 2))
        >>> path = particles.fokker_planck(x0, lambda x: x, t_end=0.5, n_steps=10,
        ...                                estimator=KDE(), progress=False)
        >>> path.positions.shape
        (11, 300, 2)
    """
    x, kinds = _prepare(x0, "x0")
    _check_callable(grad_potential, "grad_potential")
    diffusion = check_positive(diffusion, "diffusion", allow_zero=True)
    grid = _time_grid(t_end, n_steps, times)
    method = _check_method(method)
    _check_callable(callback, "callback")
    scores = _ScoreSource(estimator, score_fn, kinds.call)

    def velocity(t: float, y: torch.Tensor) -> tuple[torch.Tensor, Oracle | None]:
        drift = torch.zeros_like(y) if grad_potential is None else \
            -_field_output(grad_potential(kinds.call.restore(y)), "grad_potential", tuple(y.shape), y)
        if diffusion == 0.0:
            return drift, None
        s, oracle = scores(t, y)
        return drift - diffusion * s, oracle

    return _integrate(x, kinds, velocity, grid, method, callback, progress, save_every, "fokker-planck")


def ornstein_uhlenbeck_moments(mean0: ArrayLike, cov0: ArrayLike, t: ArrayLike,
                               stiffness: ArrayLike | None = None, center: ArrayLike | None = None,
                               diffusion: float = 1.0) -> tuple[Any, Any]:
    """Exact mean and covariance of the Fokker–Planck solution for ``V(x) = (x - c)ᵀ K (x - c) / 2``.

    The moments of ``dX = -K (X - c) dt + sqrt(2D) dW`` obey ``dm/dt = -K (m - c)`` and
    ``dC/dt = -K C - C K + 2D I`` whatever ``f_0`` is; a Gaussian ``f_0`` stays Gaussian. With
    ``K = Q diag(λ) Qᵀ``: ``m(t) = c + Q e^{-λt} Qᵀ (m0 - c)`` and, in the eigenbasis,
    ``C_ab(t) = e^{-(λ_a + λ_b) t} C0_ab + 2D δ_ab (1 - e^{-2 λ_a t}) / (2 λ_a)`` (``2Dt`` when
    ``λ_a = 0``; ``K = 0`` is the heat equation, ``C(t) = C0 + 2Dt I``).

    Args:
        mean0: (d,) initial mean.
        cov0: (d, d) initial covariance (symmetric positive semi-definite).
        t: a time >= 0, or (T,) times.
        stiffness: (d, d) symmetric positive semi-definite ``K``; None means 0 (heat equation).
        center: (d,) ``c``; None means 0.
        diffusion: ``D >= 0``.

    Returns:
        ``(mean, cov)``: (d,), (d, d) for a scalar ``t``; (T, d), (T, d, d) for times (T,); numpy
        float64 unless ``cov0`` is a torch tensor.
    """
    cov, kind = _symmetric_matrix(cov0, "cov0")
    d = cov.shape[0]
    mean = _vector(mean0, "mean0", d)
    times, scalar = _times(t)
    k_mat = torch.zeros(d, d, dtype=torch.float64) if stiffness is None else \
        _symmetric_matrix(stiffness, "stiffness", d)[0]
    c = torch.zeros(d, dtype=torch.float64) if center is None else _vector(center, "center", d)
    diffusion = check_positive(diffusion, "diffusion", allow_zero=True)
    lam, q = torch.linalg.eigh(k_mat)
    lam = lam.clamp(min=0.0)  # round-off below zero in a semi-definite K
    decay = torch.exp(-lam[None, :] * times[:, None])  # (T, d)
    means = c + ((mean - c) @ q * decay) @ q.T
    cov_eig = q.T @ cov @ q
    pair_decay = decay[:, :, None] * decay[:, None, :]
    # (1 - e^{-2λt}) / (2λ), continued to t at λ = 0
    two_lt = 2.0 * lam[None, :] * times[:, None]
    growth = torch.where(lam[None, :] > 0, -torch.expm1(-two_lt) / (2.0 * lam[None, :]).clamp(min=1e-300),
                         times[:, None].expand_as(two_lt))
    covs_eig = pair_decay * cov_eig + torch.diag_embed(2.0 * diffusion * growth)
    covs = q @ covs_eig @ q.T
    if scalar:
        means, covs = means[0], covs[0]
    return kind.restore(means), kind.restore(covs)


# -- Landau -----------------------------------------------------------------------------------------

def _landau_field_maxwell(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """γ = 0 field in O(N d²): ``A(z) w = |z|² w - z (z·w)`` is polynomial, so the sum over j reduces
    to first and second moments of the cloud. Centring (allowed: only differences enter) keeps the
    expansion free of cancellation."""
    v = v - v.mean(0)
    s = s - s.mean(0)
    n = v.shape[0]
    vv, vs = (v * v).sum(1), (v * s).sum(1)  # (N,)
    m_vs, m_vv = v.T @ s / n, v.T @ v / n  # E[v sᵀ], E[v vᵀ]
    # (1/N) Σ_j |z_ij|² (s_i - s_j)
    norm_part = s * (vv + vv.mean())[:, None] + 2.0 * v @ m_vs - (vv[:, None] * s).mean(0)
    # (1/N) Σ_j z_ij (z_ij · (s_i - s_j))
    proj_part = v * (vs + vs.mean())[:, None] + v @ m_vs.T + s @ m_vv - (vs[:, None] * v).mean(0)
    return proj_part - norm_part


def _landau_field_pairwise(v: torch.Tensor, s: torch.Tensor, gamma: float) -> torch.Tensor:
    """Any γ in O(N² d), in row blocks so memory stays O(BLOCK_ELEMENTS), never (N, N, d, d)."""
    n, d = v.shape
    out = torch.empty_like(v)
    block = max(1, BLOCK_ELEMENTS // (n * d))
    for i0 in range(0, n, block):
        z = v[i0:i0 + block, None, :] - v[None, :, :]  # (b, N, d)
        w = s[i0:i0 + block, None, :] - s[None, :, :]
        z2 = (z * z).sum(-1, keepdim=True)
        aw = z2 * w - z * (z * w).sum(-1, keepdim=True)
        if gamma != 0.0:
            # |z|^γ; the i = j term (and coincident particles) contribute nothing: w or A vanish there
            weight = torch.where(z2 > 0, z2.clamp(min=1e-300) ** (0.5 * gamma), torch.zeros_like(z2))
            aw = aw * weight
            if not bool(torch.isfinite(aw).all()) and bool(torch.isfinite(v).all() and torch.isfinite(s).all()):
                # |z|^gamma left float64 (|gamma| in the hundreds): the exponent, not the time step, is wrong
                bad = ~torch.isfinite(aw).all(-1)
                pair = z2[..., 0][bad].sqrt()
                raise ValueError(f"gamma={gamma:g}: the Landau kernel |v_i - v_j|^gamma overflows float64 at "
                                 f"pair distance {float(pair.max() if gamma > 0 else pair.min()):.3g}; use a "
                                 f"physical exponent (-3 <= gamma <= 1) or rescale the velocities")
        out[i0:i0 + block] = -aw.sum(1) / n
    return out


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(gamma)):
        raise ValueError(f"gamma must be a finite number (0: Maxwell molecules, -3: Coulomb in 3D); got {gamma!r}")
    return float(gamma)


def landau_field(velocities: ArrayLike, scores: ArrayLike, gamma: float = 0.0) -> Any:
    """The particle Landau velocity field ``u_i = -(1/N) Σ_j A(v_i - v_j)(s_i - s_j)``.

    ``A(z) = |z|^γ (|z|² I - z zᵀ)``. For γ = 0 (Maxwell molecules) this costs O(N d²) via the
    moments of the cloud; otherwise O(N² d) in blocks. Because ``A(z) z = 0`` and the sum is
    antisymmetric in (i, j), ``Σ_i u_i = 0`` and ``Σ_i v_i · u_i = 0`` for any scores: momentum and
    kinetic energy are conserved by the semi-discrete system.

    Args:
        velocities: (N, d) particle velocities.
        scores: (N, d) score ``∇log f`` at the velocities.
        gamma: kernel exponent γ.

    Returns:
        (N, d) ``dv/dt``, in the kind and dtype of ``velocities``.
    """
    v, kinds = _prepare(velocities, "velocities")
    s = as_samples(scores, "scores", min_samples=1).to(dtype=torch.float64, device=v.device)
    if s.shape != v.shape:
        raise ValueError(f"scores must have the shape of velocities {tuple(v.shape)}; got {tuple(s.shape)}")
    gamma = _check_gamma(gamma)
    field = _landau_field_maxwell(v, s) if gamma == 0.0 else _landau_field_pairwise(v, s, gamma)
    return kinds.out.restore(field)


def landau(v0: ArrayLike, t_end: float = 1.0, n_steps: int = 100, estimator: Estimator | None = None, *,
           gamma: float = 0.0, method: Method = "heun", score_fn: ScoreFn | None = None,
           times: ArrayLike | None = None, callback: Callback | None = None, progress: bool = True,
           save_every: int = 1) -> ParticlePath:
    """Solve the space-homogeneous Landau equation with the score-based particle method.

    ``∂f/∂t = ∇·∫ A(v - w)(f(w) ∇f(v) - f(v) ∇f(w)) dw``, ``A(z) = |z|^γ (|z|² I - z zᵀ)``
    (collision constant 1), as ``dv_i/dt = -(1/N) Σ_j A(v_i - v_j)(s(v_i) - s(v_j))`` with the score
    ``s`` re-estimated from the cloud at every stage (see :func:`landau_field`).

    Conservation: mass (equal weights) and momentum exactly, also after Euler or Heun steps (the
    field sums to zero); kinetic energy exactly in the semi-discrete (continuous-time) system, while
    a time step changes it by ``dt² Σ|u_i|²`` (Euler, so O(dt) over a run) or
    ``(dt²/4) Σ|u_i(v) - u_i(v + dt u)|²`` (Heun, O(dt²) over a run, since that difference is O(dt)).

    Args:
        v0: (N, d) initial velocities, samples of ``f_0`` (numpy or torch).
        t_end, n_steps, estimator, method, score_fn, times, callback, progress, save_every: as for
            :func:`fokker_planck`.
        gamma: kernel exponent γ: 0 for Maxwell molecules (O(N d²) per field evaluation), else
            O(N² d).

    Returns:
        :class:`ParticlePath` with ``times`` (T,) and ``positions`` (T, N, d) (the velocities).
    """
    v, kinds = _prepare(v0, "v0")
    grid = _time_grid(t_end, n_steps, times)
    method = _check_method(method)
    gamma = _check_gamma(gamma)
    _check_callable(callback, "callback")
    scores = _ScoreSource(estimator, score_fn, kinds.call)

    def velocity(t: float, y: torch.Tensor) -> tuple[torch.Tensor, Oracle | None]:
        s, oracle = scores(t, y)
        field = _landau_field_maxwell(y, s) if gamma == 0.0 else _landau_field_pairwise(y, s, gamma)
        return field, oracle

    return _integrate(v, kinds, velocity, grid, method, callback, progress, save_every, "landau")


def landau_covariance_closed_form(cov0: ArrayLike, t: ArrayLike) -> Any:
    """Exact covariance of the Maxwell-molecule (γ = 0) Landau solution, for any ``f_0``.

    The second moments obey the closed linear system ``dC/dt = 4 (tr(C) I - d C)`` (derivation:
    ``docs/landau-moments.md``): the trace (energy) is conserved and the traceless part decays,
    ``C(t) = (tr C0 / d) I + (C0 - (tr C0 / d) I) e^{-4 d t}``. The mean is conserved.

    Args:
        cov0: (d, d) initial covariance (symmetric positive semi-definite).
        t: a time >= 0 or (T,) times.

    Returns:
        (d, d) for a scalar ``t``, (T, d, d) for times (T,); numpy float64 unless ``cov0`` is torch.
    """
    cov, kind = _symmetric_matrix(cov0, "cov0")
    d = cov.shape[0]
    times, scalar = _times(t)
    iso = torch.trace(cov) / d * torch.eye(d, dtype=torch.float64)
    covs = iso + (cov - iso) * torch.exp(-4.0 * d * times)[:, None, None]
    return kind.restore(covs[0] if scalar else covs)


# -- reference scores and validation of small matrices -------------------------------------------

class GaussianFit(Estimator):
    """Moment-matched Gaussian: ``fit`` returns the exact oracle of ``N(mean, cov)`` of the samples.

    ``cov`` is the maximum-likelihood (1/N) covariance, the cloud's own second moment. Driving
    :func:`fokker_planck` with it reproduces the closed-form moments of a quadratic potential exactly
    (up to time stepping); for :func:`landau` it is a Gaussian moment closure.
    """

    def fit(self, samples: ArrayLike) -> Oracle:
        """The exact oracle of ``N(mean, cov)`` of ``samples`` (n, d): a one-component
        :class:`~disco_score.targets.GaussianMixture` in float64. ValueError for a degenerate cloud."""
        from .targets import GaussianMixture
        from .whitening import Whitening

        x = as_samples(samples).to(torch.float64)
        Whitening.from_samples(x)  # a clear message for degenerate clouds
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / x.shape[0]
        return GaussianMixture(torch.ones(1, dtype=torch.float64, device=x.device), mean[None], cov[None])


def _symmetric_matrix(value: ArrayLike, name: str, dim: int | None = None) -> tuple[torch.Tensor, Queries]:
    """A finite symmetric positive semi-definite (d, d) float64 CPU matrix, and the caller's kind."""
    tensor, is_torch = _to_tensor(value, name)
    if tensor.ndim != 2 or tensor.shape[0] != tensor.shape[1]:
        raise ValueError(f"{name} must be a square (d, d) matrix; got shape {tuple(tensor.shape)}")
    if dim is not None and tensor.shape[0] != dim:
        raise ValueError(f"{name} must be ({dim}, {dim}); got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains non-finite values")
    device = tensor.device
    mat = tensor.to(torch.float64).cpu()
    scale = float(mat.abs().max()) or 1.0
    if float((mat - mat.T).abs().max()) > 1e-10 * scale:
        raise ValueError(f"{name} must be symmetric")
    mat = 0.5 * (mat + mat.T)
    if float(torch.linalg.eigvalsh(mat)[0]) < -1e-10 * scale:
        raise ValueError(f"{name} must be positive semi-definite (it has a negative eigenvalue)")
    return mat, Queries(mat, False, is_torch, torch.float64, device)


def _vector(value: ArrayLike, name: str, dim: int) -> torch.Tensor:
    tensor, _ = _to_tensor(value, name)
    if tuple(tensor.shape) != (dim,):
        raise ValueError(f"{name} must have shape ({dim},); got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains non-finite values")
    return tensor.to(torch.float64).cpu()


def _times(t: ArrayLike) -> tuple[torch.Tensor, bool]:
    """(T,) float64 non-negative times and whether a scalar was given."""
    tensor, _ = _to_tensor(t, "t")
    if tensor.ndim > 1:
        raise ValueError(f"t must be a number or a 1-D array of times; got shape {tuple(tensor.shape)}")
    # np.ascontiguousarray (inside _to_tensor) lifts 0-d input to 1-d: ask the input itself
    scalar = (t.ndim if isinstance(t, torch.Tensor) else np.ndim(t)) == 0
    tensor = tensor.reshape(-1).to(torch.float64).cpu()
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError("t must be finite and non-negative")
    return tensor, scalar
