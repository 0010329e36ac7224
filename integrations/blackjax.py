"""BlackJAX adapter: a disco-score oracle as a JAX log-density, and a score-only Langevin sampler.

:func:`logdensity_fn` gives the ``logdensity_fn`` every BlackJAX gradient sampler takes
(``blackjax.nuts``, ``hmc``, ``mala``, ``window_adaptation``): a JAX function (d,) -> scalar whose
gradient is the oracle's score. It is a host callback into torch, so it works under ``jit``,
``grad`` and ``vmap`` (a ``vmap`` over chains makes one torch call per step for all chains).

:func:`unadjusted_langevin` is a sampler in BlackJAX's own shape (``init``/``step`` pure functions
over an explicit state) that needs only a score -- no log-density, no Metropolis correction --
which is what a score model provides most cheaply. Being unadjusted, it samples a distribution
``O(step_size)`` away from the target.

Example:
    >>> import jax, blackjax
    >>> from disco_score import KDE
    >>> from disco_score.integrations.blackjax import logdensity_fn
    >>> oracle = KDE().fit(prior_samples)                         # doctest: +SKIP
    >>> log_prior = logdensity_fn(oracle)                           # doctest: +SKIP
    >>> logpost = lambda th: log_prior(th) + log_likelihood(th)     # doctest: +SKIP
    >>> warmup = blackjax.window_adaptation(blackjax.nuts, logpost)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from disco_score._checks import ArrayLike, check_positive
from disco_score.base import Estimator, Oracle

from . import require

require("jax", "jax")
require("blackjax", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from blackjax.base import SamplingAlgorithm  # noqa: E402
from blackjax.util import generate_gaussian_noise  # noqa: E402

from ._jax_bridge import check_chain_range, jax_oracle, oracle_from  # noqa: E402

__all__ = ["logdensity_fn", "score_fn", "LangevinState", "LangevinInfo", "init", "build_kernel",
           "unadjusted_langevin"]


def logdensity_fn(oracle: Oracle | Estimator | None, samples: ArrayLike | None = None
                  ) -> Callable[[Any], Any]:
    """JAX log-density of a fitted oracle: (d,) -> scalar in nats (also (..., d) -> (...)).

    Differentiable (its gradient is ``oracle.score``), ``jit``- and ``vmap``-able; float32 by
    default, float64 with ``jax_enable_x64``. ``logdensity_fn(estimator_or_None, samples)`` fits
    first (``None`` = the default estimator).
    """
    return jax_oracle(oracle_from(oracle, samples)).log_density


def score_fn(oracle: Oracle | Estimator | None, samples: ArrayLike | None = None
             ) -> Callable[[Any], Any]:
    """JAX score of a fitted oracle: (d,) -> (d,) (also (..., d) -> (..., d)); one host call,
    no log-density evaluated. Not differentiable."""
    return jax_oracle(oracle_from(oracle, samples)).score


class LangevinState(NamedTuple):
    """State of the unadjusted Langevin algorithm.

    position: the chain position (a pytree; for an oracle, a (d,) array).
    score: the score ``grad log p`` at ``position`` (same structure), kept so each step costs one
        score evaluation.
    origin, origin_score_norm, step: where the chain started, the score norm there and the steps
        taken -- the divergence check's reference (:func:`init` sets them; None turns it off).
    """

    position: Any
    score: Any
    origin: Any = None
    origin_score_norm: Any = None
    step: Any = None


class LangevinInfo(NamedTuple):
    """Per-step diagnostics: ``score_norm``, the Euclidean norm of the score at the new position
    (a run-away value signals a step size too large for the target's curvature)."""

    score_norm: Any


def _norm(tree: Any) -> Any:
    return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(tree)))


def init(position: Any, score_fn: Callable[[Any], Any]) -> LangevinState:
    """Initial state at ``position`` (also the divergence check's reference point)."""
    score = score_fn(position)
    return LangevinState(position, score, position, _norm(score), jnp.zeros((), jnp.int32))


def build_kernel() -> Callable[..., tuple[LangevinState, LangevinInfo]]:
    """The unadjusted Langevin transition
    ``x' = x + step_size * score(x) + sqrt(2 step_size) * xi``, ``xi ~ N(0, I)``.

    Returns ``kernel(rng_key, state, score_fn, step_size) -> (state, info)``. A chain that leaves
    the range its drift and noise allow from ``state.origin`` (``DIVERGENCE_FACTOR`` times ``k tau
    |s(x0)| + sqrt(2 k tau D)``, see :class:`disco_score.divergence.DivergenceGuard`) or the finite
    numbers raises :class:`~disco_score.samplers.ChainDiverged` -- under ``jit`` as a
    ``JaxRuntimeError`` carrying its message -- instead of returning huge positions.
    """

    def kernel(rng_key: Any, state: LangevinState, score_fn: Callable[[Any], Any], step_size: float
               ) -> tuple[LangevinState, LangevinInfo]:
        noise = generate_gaussian_noise(rng_key, state.position)
        position = jax.tree.map(lambda x, s, z: x + step_size * s + jnp.sqrt(2.0 * step_size) * z,
                                state.position, state.score, noise)
        score = score_fn(position)
        norm = _norm(score)
        if state.origin is None:
            return LangevinState(position, score), LangevinInfo(norm)
        step = state.step + 1
        size = sum(leaf.size for leaf in jax.tree.leaves(position))
        distance = _norm(jax.tree.map(lambda x, x0: x - x0, position, state.origin))
        radius = step * step_size * state.origin_score_norm + jnp.sqrt(2.0 * step_size * step * size)
        jax.debug.callback(partial(check_chain_range, what="unadjusted_langevin"), distance, radius, step,
                           jnp.asarray(step_size))
        return LangevinState(position, score, state.origin, state.origin_score_norm, step), LangevinInfo(norm)

    return kernel


def unadjusted_langevin(score: Oracle | Callable[[Any], Any], step_size: float) -> SamplingAlgorithm:
    """Score-only unadjusted Langevin (ULA) as a BlackJAX ``SamplingAlgorithm``.

    Args:
        score: a fitted :class:`~disco_score.base.Oracle` (its score is called through the JAX
            bridge) or any JAX function position -> score, e.g. the oracle's score plus a
            likelihood gradient for a posterior.
        step_size: Euler step ``epsilon`` (units of x squared). The chain's stationary law is
            ``O(epsilon)`` away from the target; there is no accept/reject step to correct it.

    Example:
        >>> ula = unadjusted_langevin(oracle, step_size=1e-2)      # doctest: +SKIP
        >>> state = ula.init(jnp.zeros(d))                          # doctest: +SKIP
        >>> state, info = jax.jit(ula.step)(rng_key, state)         # doctest: +SKIP
    """
    step_size = check_positive(step_size, "step_size")
    if isinstance(score, Oracle):
        score = jax_oracle(score).score
    elif not callable(score):
        raise TypeError(f"score must be an Oracle or a callable position -> score; got {type(score).__name__}")
    kernel = build_kernel()

    def init_fn(position: Any, rng_key: Any = None) -> LangevinState:
        return init(position, score)

    def step_fn(rng_key: Any, state: LangevinState) -> tuple[LangevinState, LangevinInfo]:
        return kernel(rng_key, state, score, step_size)

    return SamplingAlgorithm(init_fn, step_fn)
