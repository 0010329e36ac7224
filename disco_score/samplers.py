"""Sampling with no training: Langevin, MALA, annealed Langevin and reverse diffusion.

Every sampler here is driven by an :class:`~disco_score.base.Oracle`, so the score can come from a
KDE, from DiScoFormer, or from an exact target. The noise-conditional samplers use
``oracle.smoothed(sigma)``, the score of the data distribution convolved with ``N(0, sigma^2 I)``:
that is what a diffusion model learns, here obtained without training.

The pieces follow BlackJAX: each method has a small ``NamedTuple`` state, pure ``*_init`` and
``*_step`` functions (a step takes the generator first, ``langevin_step(generator, state, oracle,
step_size)``, and returns a new state and a per-step info tuple; nothing is mutated), and
:func:`run_chain` is the loop (with a tqdm bar). A chain that leaves the finite numbers or runs far
outside the range of its data and start raises :class:`ChainDiverged` (see :class:`DivergenceGuard`). The one-call entry points
:func:`langevin`, :func:`mala`, :func:`annealed_langevin` and :func:`reverse_diffusion` compose them
and return ``(samples, info)``. Chains are batched: positions have shape (m, d), one row per chain.
Arrays come back in the caller's kind (numpy in, numpy out; torch in, torch out) and dtype.

Step-size conventions (units of x squared):

* :func:`langevin` / :func:`mala` use BlackJAX's ``x' = x + tau * s(x) + sqrt(2 tau) z``.
* :func:`annealed_langevin` uses NCSN's (Song & Ermon 2019) ``x' = x + alpha_i / 2 * s_i(x) +
  sqrt(alpha_i) z`` with ``alpha_i = eps * sigma_i^2 / sigma_L^2``.

Sample quality (:func:`~disco_score.metrics.energy_distance`, its unbiased square
:func:`~disco_score.metrics.energy_statistic`, :func:`~disco_score.metrics.memorization_fraction`)
lives in :mod:`disco_score.metrics`; the names are re-exported here, where the README and the
benchmark reports cite them (``samplers.energy_statistic``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ._checks import (ArrayLike, Queries, _check_finite, _to_tensor, as_queries, as_samples, check_int,
                      check_positive)
from .base import Estimator, Oracle, as_oracle
from .defaults import resolve_oracle
from .divergence import ChainDiverged, DivergenceGuard, LowAcceptanceWarning, _check_chains  # noqa: F401  (ChainDiverged: part of the samplers API)
# sample quality is measured in disco_score.metrics; these names stay importable from here, where
# the README, the benchmark reports and the benchmark code use them
from .metrics import energy_distance, energy_statistic, memorization_fraction  # noqa: F401

logger = logging.getLogger(__name__)

State = TypeVar("State", bound=tuple)
Info = TypeVar("Info", bound=tuple)
#: ``step(generator, state) -> (new_state, info)``: one transition of a batched chain (the
#: generator comes first, as BlackJAX's ``kernel(rng_key, state)``)
StepFn = Callable[["torch.Generator | None", State], "tuple[State, Info]"]

#: points used to estimate the data's largest pairwise distance
_RANGE_SUBSET = 2000


# -- small shared helpers -------------------------------------------------------------------------

def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    return generator


def _check_oracle(oracle: Any, name: str = "oracle") -> Oracle:
    if not isinstance(oracle, Oracle):
        raise TypeError(f"{name} must be a fitted Oracle; got {type(oracle).__name__}")
    return oracle


def _check_position(position: Any, oracle: Oracle, name: str = "position") -> torch.Tensor:
    """A finite floating (m, d) tensor in the oracle's dimension (m may be 0), as the pure
    init/step functions take it; numpy arrays are converted."""
    if not isinstance(position, torch.Tensor):
        position, _ = _to_tensor(position, name)
    elif position.dtype in (torch.float16, torch.bfloat16) or position.is_complex() \
            or not position.is_floating_point():
        raise TypeError(f"{name} must be a float32 or float64 tensor; got dtype {position.dtype}")
    if position.ndim != 2 or position.shape[1] != oracle.dim:
        raise ValueError(f"{name} must have shape (m, {oracle.dim}) for this {oracle.dim}-dimensional oracle; "
                         f"got shape {tuple(position.shape)}")
    _check_finite(position.detach(), name)  # a bad start is the caller's input, not a divergence
    return position.detach()


def _check_state(state: Any, kind: type, name: str = "state") -> Any:
    if not isinstance(state, kind):
        hint = (" (the step functions take the generator first: step(generator, state, ...))"
                if isinstance(state, torch.Generator) or state is None else "")
        raise TypeError(f"{name} must be a {kind.__name__}; got {type(state).__name__}{hint}")
    return state


def _check_step_args(generator: Any, state: Any, kind: type, oracle: Any, step_size: Any
                     ) -> tuple[torch.Generator | None, Any, Oracle, float]:
    """The arguments every ``*_step(generator, state, oracle, step_size)`` takes, checked."""
    return (_check_generator(generator), _check_state(state, kind), _check_oracle(oracle),
            check_positive(step_size, "step_size"))


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _score(oracle: Oracle, x: torch.Tensor) -> torch.Tensor:
    """(m, d) score as a tensor in ``x``'s dtype and device."""
    _check_chains(x)
    return torch.as_tensor(oracle.score(x)).to(dtype=x.dtype, device=x.device)


def _log_density_and_score(oracle: Oracle, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_chains(x)
    log_p, score = oracle.log_density_and_score(x, normalized=False)  # Metropolis ratios need no constant
    return (torch.as_tensor(log_p).to(dtype=x.dtype, device=x.device),
            torch.as_tensor(score).to(dtype=x.dtype, device=x.device))


def _restorer(value: ArrayLike, name: str) -> tuple[torch.Tensor, Queries]:
    """Validate an (n, d) array and return it as a tensor plus the recipe to hand results back."""
    tensor = as_samples(value, name, min_samples=1)
    _, is_torch = _to_tensor(value, name)
    return tensor, Queries(tensor, single=False, is_torch=is_torch, dtype=tensor.dtype, device=tensor.device)


# -- noise levels chosen from the data ------------------------------------------------------------

def noise_range(data: ArrayLike, relative_sigma_min: float = 1e-2) -> tuple[float, float]:
    """Default ``(sigma_max, sigma_min)`` for noise-conditional sampling of ``data`` (n, d).

    ``sigma_max`` is the largest pairwise distance (estimated on a fixed subset of at most 2000
    points), so the most-smoothed density is nearly one broad Gaussian covering the data (Song &
    Ermon 2020, technique 1). ``sigma_min`` is ``relative_sigma_min`` times the data's scale
    (root mean per-coordinate standard deviation). Both in the units of the data; deterministic.
    """
    x = as_samples(data, "data").to(torch.float64)
    relative_sigma_min = check_positive(relative_sigma_min, "relative_sigma_min")
    if x.shape[0] > _RANGE_SUBSET:  # a fixed seed: the defaults depend on the data alone
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:_RANGE_SUBSET]
        x = x[keep.to(x.device)]
    sigma_max = float(torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").max())
    scale = float(x.var(0).mean().sqrt())
    if not (sigma_max > 0 and scale > 0):
        raise ValueError("data has no spread (all points coincide); cannot choose noise levels")
    return sigma_max, relative_sigma_min * scale


def geometric_noise_levels(sigma_max: float, sigma_min: float, n_levels: int) -> torch.Tensor:
    """(n_levels,) float64 noise levels from ``sigma_max`` down to ``sigma_min``, geometrically spaced."""
    sigma_max, sigma_min = check_positive(sigma_max, "sigma_max"), check_positive(sigma_min, "sigma_min")
    n_levels = check_int(n_levels, "n_levels", minimum=1)
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must not exceed sigma_max ({sigma_max})")
    if n_levels == 1:
        return torch.tensor([sigma_min], dtype=torch.float64)
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n_levels, dtype=torch.float64))


def default_n_levels(sigma_max: float, sigma_min: float, dim: int) -> int:
    """Number of geometric levels so consecutive noise shells overlap in ``dim`` dimensions.

    Noise of scale sigma in d dimensions concentrates at radius ``sigma sqrt(d)``; the ratio
    ``gamma`` of consecutive levels is kept at ``1 + 1/sqrt(d)`` (capped to [1.05, 1.5]) so a
    sample at one level stays typical at the next (Song & Ermon 2020, technique 2). At least 10.
    """
    sigma_max, sigma_min = check_positive(sigma_max, "sigma_max"), check_positive(sigma_min, "sigma_min")
    dim = check_int(dim, "dim", minimum=1)
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must not exceed sigma_max ({sigma_max})")
    gamma = min(1.5, max(1.05, 1.0 + 1.0 / math.sqrt(dim)))
    return max(10, math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1)


def ncsn_relative_step(gamma: float, steps_per_level: int) -> float:
    """NCSN relative step ``r = eps / sigma_L^2`` for a level ratio ``gamma`` and ``T`` steps per level.

    Song & Ermon (2020, technique 4): for a Gaussian of variance ``sigma_i^2`` started at variance
    ``(gamma sigma_i)^2``, ``T`` steps of ``x + r sigma_i^2 / 2 * s + sqrt(r) sigma_i z`` give variance
    ``sigma_i^2 (S + (1 - r/2)^(2T) (gamma^2 - S))`` with ``S = 1 / (1 - r/4)``. The returned ``r``
    brings that ratio closest to 1 (searched on a log grid in [1e-4, 1]).
    """
    gamma = check_positive(gamma, "gamma")
    if gamma < 1.0:
        raise ValueError(f"gamma is the ratio of consecutive noise levels and must be at least 1; got {gamma}")
    steps_per_level = check_int(steps_per_level, "steps_per_level", minimum=1)
    grid = np.logspace(-4, 0, 801)
    stationary = 1.0 / (1.0 - grid / 4)
    ratio = stationary + (1.0 - grid / 2) ** (2 * steps_per_level) * (gamma ** 2 - stationary)
    return float(grid[int(np.argmin(np.abs(ratio - 1.0)))])


class NoiseConditionalScore:
    """Scores of ``p * N(0, sigma^2 I)`` at any noise level, one cached smoothed oracle per level.

    Args:
        oracle: the fitted oracle for ``p``.
        max_cached: how many smoothed oracles to keep (least recently used are dropped).
    """

    def __init__(self, oracle: Oracle, max_cached: int = 1024) -> None:
        if not isinstance(oracle, Oracle):
            raise TypeError(f"oracle must be a fitted Oracle; got {type(oracle).__name__}")
        self.oracle = oracle
        self.max_cached = check_int(max_cached, "max_cached")
        self._cache: OrderedDict[float, Oracle] = OrderedDict()

    def at(self, sigma: float) -> Oracle:
        """The oracle of ``p`` smoothed at noise level ``sigma`` (units of x; 0 gives ``p``)."""
        sigma = check_positive(sigma, "sigma", allow_zero=True)
        smoothed = self._cache.get(sigma)
        if smoothed is None:
            smoothed = self.oracle.smoothed(sigma)
            self._cache[sigma] = smoothed
            if len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(sigma)
        return smoothed

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """(m, d) -> (m, d) score of the smoothed density, in ``x``'s dtype and device."""
        return _score(self.at(sigma), x)


# -- unadjusted Langevin --------------------------------------------------------------------------

class LangevinState(NamedTuple):
    """Batched Langevin chains: ``position`` (m, d) and the ``score`` there (m, d)."""

    position: torch.Tensor
    score: torch.Tensor


class LangevinInfo(NamedTuple):
    """Per-step diagnostics: mean squared score norm over chains (scalar tensor)."""

    mean_squared_score: torch.Tensor


def langevin_init(position: torch.Tensor, oracle: Oracle) -> LangevinState:
    """Initial state at ``position`` (m, d): a finite float32/float64 tensor in the oracle's dimension."""
    oracle = _check_oracle(oracle)
    position = _check_position(position, oracle)
    return LangevinState(position, _score(oracle, position))


def langevin_step(generator: torch.Generator | None, state: LangevinState, oracle: Oracle, step_size: float
                  ) -> tuple[LangevinState, LangevinInfo]:
    """One unadjusted Langevin step ``x' = x + tau s(x) + sqrt(2 tau) z`` (``tau = step_size``).

    The generator comes first (BlackJAX's ``kernel(rng_key, state, ...)``); None draws from torch's
    global generator. Pure: ``state`` is not modified.
    """
    generator, state, oracle, step_size = _check_step_args(generator, state, LangevinState, oracle, step_size)
    x = state.position
    new = x + step_size * state.score + math.sqrt(2.0 * step_size) * _randn(x, generator)
    new_score = _score(oracle, new)
    return LangevinState(new, new_score), LangevinInfo((new_score * new_score).sum(1).mean())


# -- Metropolis-adjusted Langevin -----------------------------------------------------------------

class MALAState(NamedTuple):
    """Batched MALA chains: ``position`` (m, d), ``log_density`` (m,) (up to the constant an oracle may
    leave out, ``normalized=False``) and ``score`` (m, d) there."""

    position: torch.Tensor
    log_density: torch.Tensor
    score: torch.Tensor


class MALAInfo(NamedTuple):
    """Per-step diagnostics: ``acceptance_probability`` (m,) and ``is_accepted`` (m,) bool."""

    acceptance_probability: torch.Tensor
    is_accepted: torch.Tensor


def mala_init(position: torch.Tensor, oracle: Oracle) -> MALAState:
    """Initial state at ``position`` (m, d): a finite float32/float64 tensor in the oracle's dimension."""
    oracle = _check_oracle(oracle)
    position = _check_position(position, oracle)
    return MALAState(position, *_log_density_and_score(oracle, position))


def _log_proposal(to: torch.Tensor, frm: torch.Tensor, frm_score: torch.Tensor, step_size: float) -> torch.Tensor:
    """log q(to | frm) up to a constant, for the proposal N(frm + tau s(frm), 2 tau I)."""
    diff = to - frm - step_size * frm_score
    return -(diff * diff).sum(1) / (4.0 * step_size)


def mala_step(generator: torch.Generator | None, state: MALAState, oracle: Oracle, step_size: float
              ) -> tuple[MALAState, MALAInfo]:
    """One MALA step: a Langevin proposal, accepted with the Metropolis–Hastings probability
    computed from ``oracle.log_density`` (so the chain targets the oracle's density exactly).

    The generator comes first, as in :func:`langevin_step`. Pure: ``state`` is not modified.
    """
    generator, state, oracle, step_size = _check_step_args(generator, state, MALAState, oracle, step_size)
    x = state.position
    proposal = x + step_size * state.score + math.sqrt(2.0 * step_size) * _randn(x, generator)
    log_p, score = _log_density_and_score(oracle, proposal)
    log_ratio = (log_p - state.log_density + _log_proposal(x, proposal, score, step_size)
                 - _log_proposal(proposal, x, state.score, step_size))
    # A proposal where the density vanishes (log_p = -inf) gives log_ratio = -inf: rejected.
    log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    accept_prob = torch.exp(log_ratio.clamp(max=0.0))
    accepted = _rand((x.shape[0],), x, generator) < accept_prob
    keep = accepted[:, None]
    new_state = MALAState(torch.where(keep, proposal, x), torch.where(accepted, log_p, state.log_density),
                          torch.where(keep, score, state.score))
    return new_state, MALAInfo(accept_prob, accepted)


# -- annealed Langevin (NCSN) ---------------------------------------------------------------------

@dataclass(frozen=True)
class AnnealingSchedule:
    """The noise levels a noise-conditional sampler walks down, with one smoothed oracle per level.

    Attributes:
        sigmas: (L,) float64 noise levels, descending (units of x).
        step_sizes: (L,) float64 Langevin step per level (units of x squared).
        steps_per_level: transitions at each level (1 for reverse diffusion).
        oracles: L oracles, ``oracles[i] = oracle.smoothed(sigmas[i])``.
    """

    sigmas: torch.Tensor
    step_sizes: torch.Tensor
    steps_per_level: int
    oracles: tuple[Oracle, ...]

    @property
    def n_steps(self) -> int:
        """Total number of transitions."""
        return len(self.oracles) * self.steps_per_level


def ncsn_schedule(oracle: Oracle, sigmas: torch.Tensor, steps_per_level: int, eps: float
                  ) -> AnnealingSchedule:
    """NCSN schedule: ``alpha_i = eps sigma_i^2 / sigma_L^2`` at each level ``sigma_i`` of ``sigmas``."""
    noise = NoiseConditionalScore(oracle)
    sigmas = sigmas.to(torch.float64)
    step_sizes = eps * sigmas ** 2 / sigmas[-1] ** 2
    return AnnealingSchedule(sigmas, step_sizes, steps_per_level, tuple(noise.at(float(s)) for s in sigmas))


class AnnealedState(NamedTuple):
    """Batched chains of a noise-conditional sampler: ``position`` (m, d) and the number of
    transitions done so far (``step``), which locates the current level in the schedule."""

    position: torch.Tensor
    step: int


class AnnealedInfo(NamedTuple):
    """Per-step diagnostics: the noise level ``sigma``, the ``step_size`` used and the mean of
    ``sigma^2 |s|^2`` over chains (about d while the noise dominates the data scale)."""

    sigma: float
    step_size: float
    scaled_squared_score: torch.Tensor


def annealed_init(position: torch.Tensor) -> AnnealedState:
    """Initial state at ``position`` (m, d), before the first level."""
    return AnnealedState(position, 0)


def annealed_langevin_step(generator: torch.Generator | None, state: AnnealedState, schedule: AnnealingSchedule
                           ) -> tuple[AnnealedState, AnnealedInfo]:
    """One NCSN step ``x' = x + alpha_i / 2 * s_i(x) + sqrt(alpha_i) z`` at the current level ``i``
    (the generator first, as in :func:`langevin_step`)."""
    generator = _check_generator(generator)
    state = _check_state(state, AnnealedState)
    schedule = _check_state(schedule, AnnealingSchedule, "schedule")
    level = state.step // schedule.steps_per_level
    if level >= len(schedule.oracles):
        raise ValueError(f"the schedule has {schedule.n_steps} steps; this state has done them all")
    x = state.position
    alpha, sigma = float(schedule.step_sizes[level]), float(schedule.sigmas[level])
    score = _score(schedule.oracles[level], x)
    new = x + 0.5 * alpha * score + math.sqrt(alpha) * _randn(x, generator)
    info = AnnealedInfo(sigma, alpha, sigma ** 2 * (score * score).sum(1).mean())
    return AnnealedState(new, state.step + 1), info


def tweedie_denoise(position: torch.Tensor, oracle: Oracle, sigma: float) -> torch.Tensor:
    """Tweedie's formula ``E[x_0 | x_sigma = x] = x + sigma^2 s_sigma(x)``; ``oracle`` is the oracle
    smoothed at ``sigma``. Removes the last level's noise (the NCSN final denoising step)."""
    oracle = _check_oracle(oracle)
    position = _check_position(position, oracle)
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    return position + sigma ** 2 * _score(oracle, position)


# -- reverse diffusion (variance-exploding SDE / probability-flow ODE) ----------------------------

Method = Literal["sde", "ode"]


def ve_schedule(oracle: Oracle, sigmas: torch.Tensor) -> AnnealingSchedule:
    """Reverse-diffusion schedule over ``sigmas`` (N+1,) descending: step ``i`` moves from
    ``sigmas[i]`` to ``sigmas[i+1]``; ``step_sizes[i] = sigmas[i]^2 - sigmas[i+1]^2``."""
    noise = NoiseConditionalScore(oracle)
    sigmas = sigmas.to(torch.float64)
    step_sizes = sigmas[:-1] ** 2 - sigmas[1:] ** 2
    return AnnealingSchedule(sigmas, step_sizes, 1, tuple(noise.at(float(s)) for s in sigmas[:-1]))


def reverse_diffusion_step(generator: torch.Generator | None, state: AnnealedState, schedule: AnnealingSchedule,
                           method: Method = "sde") -> tuple[AnnealedState, AnnealedInfo]:
    """One step of the reverse variance-exploding diffusion from ``sigma_i`` to ``sigma_{i+1}``
    (the generator first, as in :func:`langevin_step`).

    ``"sde"``: ``x' = x + (sigma_i^2 - sigma_{i+1}^2) s_i(x) + sqrt(sigma_i^2 - sigma_{i+1}^2) z``
    (the reverse-diffusion predictor of Song et al. 2021, i.e. ScoreSdeVeScheduler.step_pred).
    ``"ode"``: the probability-flow Euler step ``x' = x + (sigma_i^2 - sigma_{i+1}^2) / 2 * s_i(x)``.
    """
    generator = _check_generator(generator)
    state = _check_state(state, AnnealedState)
    schedule = _check_state(schedule, AnnealingSchedule, "schedule")
    if method not in ("sde", "ode"):
        raise ValueError(f"method must be 'sde' or 'ode'; got {method!r}")
    i = state.step
    if i >= len(schedule.oracles):
        raise ValueError(f"the schedule has {schedule.n_steps} steps; this state has done them all")
    x = state.position
    delta, sigma = float(schedule.step_sizes[i]), float(schedule.sigmas[i])
    score = _score(schedule.oracles[i], x)
    if method == "sde":
        new = x + delta * score + math.sqrt(delta) * _randn(x, generator)
    else:
        new = x + 0.5 * delta * score
    return AnnealedState(new, i + 1), AnnealedInfo(sigma, delta, sigma ** 2 * (score * score).sum(1).mean())


# -- the loop -------------------------------------------------------------------------------------

def _stack(infos: list[Any]) -> Any:
    """A list of per-step info NamedTuples -> one NamedTuple of (n_steps, ...) tensors."""
    if not infos:
        return None
    fields = []
    for values in zip(*infos):
        if isinstance(values[0], torch.Tensor):
            fields.append(torch.stack(values))
        else:
            fields.append(torch.tensor(values, dtype=torch.float64))
    return type(infos[0])(*fields)


def run_chain(step: StepFn, state: State, n_steps: int, generator: torch.Generator | None = None,
              progress: bool = True, desc: str = "sampling", guard: DivergenceGuard | None = None
              ) -> tuple[State, Any]:
    """Apply ``step(generator, state)`` ``n_steps`` times.

    Args:
        step: a transition taking ``(generator, state)``, e.g.
            ``lambda g, s: mala_step(g, s, oracle, 0.1)``.
        state: the initial state (a NamedTuple whose first field is the (m, d) ``position``).
        n_steps: number of transitions, at least 1.
        generator: the torch.Generator every step draws from.
        progress: show a tqdm progress bar.
        desc: the progress bar's label, also the prefix of error messages.
        guard: checks the positions after every step (the step advances it); without one only
            non-finite positions stop the run.
    Returns:
        The final state and the per-step infos stacked field by field along a leading axis.
    Raises:
        ChainDiverged: when the chains leave the finite numbers or the guard's range (the step size
            is too large).
    """
    if not callable(step):
        raise TypeError(f"step must be callable as step(generator, state); got {type(step).__name__}")
    generator = _check_generator(generator)
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    infos = []
    for k in tqdm(range(n_steps), desc=desc, disable=not progress, leave=False):
        try:
            state, info = step(generator, state)
            if guard is None:
                _check_chains(state[0])
            else:
                guard.check(state[0])
        except ChainDiverged as exc:
            raise ChainDiverged(f"{desc}, step {k + 1}: {exc}") from None
        infos.append(info)
    return state, _stack(infos)


# -- one-call entry points ------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingInfo:
    """Diagnostics returned with the samples.

    Attributes:
        method: which sampler ran.
        n_steps: transitions per chain (not counting the final denoising step).
        step_sizes: (L,) float64 step size of each noise level (one entry for langevin/mala);
            units of x squared, in the method's convention (see the module docstring).
        noise_levels: (L,) float64 noise levels, descending (None for langevin/mala).
        acceptance_rate: MALA's mean acceptance probability over chains and steps (else None).
        chain_acceptance_rates: (m,) MALA's per-chain mean acceptance probability (else None).
        mean_squared_score: (n_steps,) per-step mean over chains of ``|s|^2`` (langevin/mala) or
            ``sigma^2 |s|^2`` (annealed samplers; about d while the noise dominates).
        relative_step: NCSN's ``eps / sigma_L^2`` (annealed Langevin only).
        denoised: whether the final Tweedie denoising step was applied.
    """

    method: str
    n_steps: int
    step_sizes: np.ndarray
    noise_levels: np.ndarray | None = None
    acceptance_rate: float | None = None
    chain_acceptance_rates: np.ndarray | None = None
    mean_squared_score: np.ndarray | None = None
    relative_step: float | None = None
    denoised: bool = False


def _chains(oracle: Estimator | Oracle, x0: ArrayLike, step_size: float, n_steps: int, generator: Any
            ) -> tuple[Oracle, Queries, float, int, torch.Generator | None]:
    oracle = as_oracle(oracle)
    q = as_queries(x0, oracle.dim, oracle.compute_dtype, oracle.device, name="x0")
    if q.points.shape[0] == 0:
        raise ValueError(f"x0 has no chains (shape {tuple(q.points.shape)}); pass at least one starting point")
    return (oracle, q, check_positive(step_size, "step_size"), check_int(n_steps, "n_steps", minimum=1),
            _check_generator(generator))


def _guarded_chain(name: str, init: Callable[..., Any], kernel: Callable[..., Any], oracle: Oracle,
                   position: torch.Tensor, step_size: float, n_steps: int, generator: torch.Generator | None,
                   progress: bool) -> tuple[Any, Any]:
    """``n_steps`` of a Langevin-type ``kernel`` from ``init(position, oracle)``, stopped by a
    :class:`DivergenceGuard` (drift time ``step_size`` and noise variance ``2 step_size`` per step)."""
    start = init(position, oracle)
    guard = DivergenceGuard(start.position, oracle, start.score,
                            f"step_size={step_size:.3g} is too large for this target; reduce it")

    def step(g: torch.Generator | None, s: Any) -> Any:
        guard.advance(step_size, 2.0 * step_size)
        return kernel(g, s, oracle, step_size)

    return run_chain(step, start, n_steps, generator, progress, name, guard)


def langevin(oracle: Oracle, x0: ArrayLike, step_size: float = 1e-2, n_steps: int = 500,
             generator: torch.Generator | None = None, progress: bool = True) -> tuple[Any, SamplingInfo]:
    """Unadjusted Langevin algorithm ``x' = x + tau s(x) + sqrt(2 tau) z``, one chain per row of ``x0``.

    Biased by O(step_size) (no Metropolis correction); see :func:`mala` for the exact version.

    Args:
        oracle: a fitted :class:`~disco_score.base.Oracle` (its ``score`` drives the chains).
        x0: (m, d) starting points (or (d,) for one chain).
        step_size: ``tau`` in units of x squared.
        n_steps: transitions per chain.
        generator: seeds the noise.
        progress: show a tqdm progress bar.
    Returns:
        ``(samples, info)``: final positions shaped and typed like ``x0``, and :class:`SamplingInfo`.
    Raises:
        ValueError / TypeError: bad arguments (named), or ``x0`` with no rows.
        ChainDiverged: a chain left the finite numbers or ran :data:`DIVERGENCE_FACTOR` times beyond
            the range of the data and start (:class:`DivergenceGuard`): ``step_size`` is too large.
    """
    oracle, q, step_size, n_steps, generator = _chains(oracle, x0, step_size, n_steps, generator)
    state, infos = _guarded_chain("langevin", langevin_init, langevin_step, oracle, q.points, step_size, n_steps,
                                  generator, progress)
    info = SamplingInfo("langevin", n_steps, np.array([step_size]),
                        mean_squared_score=infos.mean_squared_score.cpu().numpy())
    return q.restore(state.position), info


def mala(oracle: Oracle, x0: ArrayLike, step_size: float = 1e-2, n_steps: int = 500,
         generator: torch.Generator | None = None, progress: bool = True) -> tuple[Any, SamplingInfo]:
    """Metropolis-adjusted Langevin: Langevin proposals accepted with the Metropolis–Hastings
    probability from ``oracle.log_density``, so each chain leaves the oracle's density invariant.

    Args and returns as :func:`langevin`; ``info.acceptance_rate`` is the mean acceptance
    probability (aim for roughly 0.5–0.8 by adjusting ``step_size``); below 0.2 a
    :class:`LowAcceptanceWarning` is issued.
    """
    oracle, q, step_size, n_steps, generator = _chains(oracle, x0, step_size, n_steps, generator)
    state, infos = _guarded_chain("mala", mala_init, mala_step, oracle, q.points, step_size, n_steps, generator,
                                  progress)
    per_chain = infos.acceptance_probability.mean(0)
    info = SamplingInfo("mala", n_steps, np.array([step_size]), acceptance_rate=float(per_chain.mean()),
                        chain_acceptance_rates=per_chain.cpu().numpy())
    if info.acceptance_rate is not None and info.acceptance_rate < 0.2:
        # the user must act (the chains barely moved), so a warning they see, not a log line
        warnings.warn(f"MALA acceptance rate is {info.acceptance_rate:.2f} with step_size={step_size:.3g}; "
                      f"reduce step_size (aim for 0.5-0.8)", LowAcceptanceWarning, stacklevel=2)
    return q.restore(state.position), info


def _noise_conditional_setup(estimator: Estimator | Oracle | None, data: ArrayLike | None, n_samples: int,
                             sigma_max: float | None, sigma_min: float | None, generator: Any
                             ) -> tuple[Oracle, torch.Tensor, Queries, float, float, torch.Generator | None]:
    """Fit the oracle, choose the noise range and draw the starting points ``mean + sigma_max z``."""
    n_samples = check_int(n_samples, "n_samples")
    generator = _check_generator(generator)
    if data is None:
        if not isinstance(estimator, Oracle) or sigma_max is None or sigma_min is None:
            raise ValueError("data=None needs a fitted Oracle as estimator and explicit sigma_max and sigma_min")
        oracle = estimator
        centre = torch.zeros(oracle.dim, dtype=oracle.compute_dtype, device=oracle.device)
        kind = Queries(centre[None], False, True, oracle.compute_dtype, oracle.device)
    else:
        x, kind = _restorer(data, "data")
        oracle = resolve_oracle(estimator, x if not isinstance(estimator, Oracle) else None)
        if x.shape[1] != oracle.dim:
            raise ValueError(f"data has dimension {x.shape[1]} but the oracle was fitted on "
                             f"{oracle.dim}-dimensional samples")
        if sigma_max is None or sigma_min is None:
            default_max, default_min = noise_range(x)
            sigma_max = default_max if sigma_max is None else sigma_max
            sigma_min = default_min if sigma_min is None else sigma_min
        centre = x.mean(0)
    sigma_max, sigma_min = check_positive(sigma_max, "sigma_max"), check_positive(sigma_min, "sigma_min")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be smaller than sigma_max ({sigma_max})")
    dtype = torch.promote_types(centre.dtype, oracle.compute_dtype)
    start = torch.empty(n_samples, oracle.dim, dtype=dtype, device=oracle.device)
    start = centre.to(dtype=dtype, device=oracle.device) + sigma_max * _randn(start, generator)
    return oracle, start, kind, sigma_max, sigma_min, generator


class _DataExtent:
    """The data of a noise-conditional run, seen by :class:`DivergenceGuard` as an oracle's samples."""

    def __init__(self, samples: torch.Tensor) -> None:
        self.samples = samples


def _data_extent_oracle(oracle: Oracle, data: ArrayLike | None) -> Any:
    """What the divergence guard measures the range against: the data when given, else the oracle."""
    if data is None:
        return oracle
    return _DataExtent(as_samples(data, "data", min_samples=1))


#: the switch point of ``smoothed(sigma)`` inside annealed Langevin, in Scott bandwidths, for oracles
#: left at their automatic one (DiScoFormer: 1.5 elsewhere). The refit's error is an outward bias
#: its chains equilibrate to at every level (d = 10 energy distance 0.248 -> 0.147;
#: docs/experiments.md, "Shipped: the annealed-Langevin switch point")
LANGEVIN_CONVOLUTION_THRESHOLD = 0.4


def _langevin_smoothing(oracle: Oracle) -> Oracle:
    """The oracle with the annealed-Langevin switch point (see
    :meth:`~disco_score.base.Oracle.with_default_convolution_threshold`)."""
    return oracle.with_default_convolution_threshold(LANGEVIN_CONVOLUTION_THRESHOLD)


def annealed_langevin(estimator: Estimator | Oracle | None, data: ArrayLike | None, n_samples: int = 1000,
                      *, sigma_max: float | None = None, sigma_min: float | None = None,
                      n_levels: int | None = None, steps_per_level: int = 20, eps: float | None = None,
                      denoise: bool = True, generator: torch.Generator | None = None,
                      progress: bool = True) -> tuple[Any, SamplingInfo]:
    """Annealed Langevin dynamics (NCSN; Song & Ermon 2019, with the 2020 defaults) from the data's
    noise-conditional score ``oracle.smoothed(sigma).score``.

    Chains start at ``mean(data) + sigma_max z`` and take ``steps_per_level`` Langevin steps
    ``x + alpha_i / 2 * s_i(x) + sqrt(alpha_i) z`` at each of ``n_levels`` geometric noise levels
    from ``sigma_max`` down to ``sigma_min``, with ``alpha_i = eps sigma_i^2 / sigma_L^2``; then a
    final Tweedie denoising step ``x + sigma_L^2 s_L(x)``. A DiScoFormer left at its automatic
    ``convolution_threshold`` uses the exact convolution of the samples from 0.4 Scott bandwidths
    up here (1.5 elsewhere): Langevin chains equilibrate to the refitted network's outward bias.

    Args:
        estimator: an Estimator (fitted to ``data`` here), a fitted Oracle, or None for
            :func:`~disco_score.defaults.default_estimator`.
        data: (n, d) samples; they set the defaults and the output's kind (numpy or torch) and dtype.
            May be None only with a fitted Oracle and explicit ``sigma_max`` and ``sigma_min``.
        n_samples: number of chains (generated points).
        sigma_max, sigma_min: noise range (units of x); default :func:`noise_range` of the data.
        n_levels: default :func:`default_n_levels`.
        steps_per_level: Langevin steps at each level (``T``).
        eps: NCSN step constant (units of x squared); default ``r sigma_min^2`` with ``r`` from
            :func:`ncsn_relative_step` for the level ratio and ``T``.
        denoise: apply the final Tweedie step.
        generator: seeds the initial points and the noise.
        progress: show a tqdm progress bar.
    Returns:
        ``(samples, info)``: (n_samples, d) points and :class:`SamplingInfo`.
    """
    oracle, start, kind, sigma_max, sigma_min, generator = _noise_conditional_setup(
        estimator, data, n_samples, sigma_max, sigma_min, generator)
    oracle = _langevin_smoothing(oracle)
    steps_per_level = check_int(steps_per_level, "steps_per_level")
    n_levels = default_n_levels(sigma_max, sigma_min, oracle.dim) if n_levels is None else n_levels
    sigmas = geometric_noise_levels(sigma_max, sigma_min, check_int(n_levels, "n_levels", minimum=2))
    gamma = float(sigmas[0] / sigmas[1])
    if eps is None:
        eps = ncsn_relative_step(gamma, steps_per_level) * sigma_min ** 2
    eps = check_positive(eps, "eps")
    schedule = ncsn_schedule(oracle, sigmas, steps_per_level, eps)
    logger.debug("annealed Langevin: %d levels %.3g -> %.3g (ratio %.3f), %d steps each, eps %.3g",
                 n_levels, sigma_max, sigma_min, gamma, steps_per_level, eps)
    guard = DivergenceGuard(start, _data_extent_oracle(oracle, data),
                            hint=f"eps={eps:.3g} (relative step {eps / sigma_min ** 2:.3g}) is too large; reduce eps")

    def step(g: torch.Generator | None, s: AnnealedState) -> tuple[AnnealedState, AnnealedInfo]:
        alpha = float(schedule.step_sizes[min(s.step // schedule.steps_per_level, len(schedule.oracles) - 1)])
        guard.advance(0.5 * alpha, alpha)
        return annealed_langevin_step(g, s, schedule)

    state, infos = run_chain(step, annealed_init(start), schedule.n_steps, generator, progress,
                             "annealed langevin", guard)
    position = state.position
    if denoise:
        position = tweedie_denoise(position, schedule.oracles[-1], sigma_min)
    info = SamplingInfo("annealed_langevin", schedule.n_steps, schedule.step_sizes.numpy(),
                        noise_levels=sigmas.numpy(),
                        mean_squared_score=infos.scaled_squared_score.cpu().numpy(),
                        relative_step=eps / sigma_min ** 2, denoised=denoise)
    return kind.restore(position), info


def reverse_diffusion(estimator: Estimator | Oracle | None, data: ArrayLike | None, n_samples: int = 1000,
                      *, n_steps: int = 200, sigma_max: float | None = None, sigma_min: float | None = None,
                      method: Method = "sde", denoise: bool = True,
                      generator: torch.Generator | None = None, progress: bool = True
                      ) -> tuple[Any, SamplingInfo]:
    """Reverse variance-exploding diffusion (Song et al. 2021) from ``oracle.smoothed(sigma).score``.

    The forward process adds noise, ``x_sigma = x_0 + sigma z``; reversing it from ``sigma_max``
    to ``sigma_min`` along ``n_steps`` geometric levels turns ``mean(data) + sigma_max z`` into
    samples of the data distribution smoothed at ``sigma_min``, which a final Tweedie step denoises.

    Args:
        estimator, data, n_samples, sigma_max, sigma_min, denoise, generator, progress: as for
            :func:`annealed_langevin`.
        n_steps: number of noise levels walked down.
        method: ``"sde"`` (stochastic reverse SDE, Euler–Maruyama) or ``"ode"`` (the deterministic
            probability-flow ODE, Euler).
    Returns:
        ``(samples, info)``: (n_samples, d) points and :class:`SamplingInfo`.
    """
    if method not in ("sde", "ode"):
        raise ValueError(f"method must be 'sde' or 'ode'; got {method!r}")
    n_steps = check_int(n_steps, "n_steps")
    oracle, start, kind, sigma_max, sigma_min, generator = _noise_conditional_setup(
        estimator, data, n_samples, sigma_max, sigma_min, generator)
    schedule = ve_schedule(oracle, geometric_noise_levels(sigma_max, sigma_min, n_steps + 1))
    guard = DivergenceGuard(start, _data_extent_oracle(oracle, data),
                            hint=f"n_steps={n_steps} is too few for noise levels {sigma_max:.3g} -> {sigma_min:.3g}; "
                                 f"raise n_steps")

    def step(g: torch.Generator | None, s: AnnealedState) -> tuple[AnnealedState, AnnealedInfo]:
        delta = float(schedule.step_sizes[min(s.step, len(schedule.oracles) - 1)])
        guard.advance(delta if method == "sde" else 0.5 * delta, delta if method == "sde" else 0.0)
        return reverse_diffusion_step(g, s, schedule, method)

    state, infos = run_chain(step, annealed_init(start), schedule.n_steps, generator, progress,
                             f"reverse diffusion ({method})", guard)
    position = state.position
    if denoise:
        position = tweedie_denoise(position, NoiseConditionalScore(oracle).at(sigma_min), sigma_min)
    info = SamplingInfo(f"reverse_diffusion_{method}", schedule.n_steps, schedule.step_sizes.numpy(),
                        noise_levels=schedule.sigmas.numpy(),
                        mean_squared_score=infos.scaled_squared_score.cpu().numpy(), denoised=denoise)
    return kind.restore(position), info
