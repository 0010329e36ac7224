"""Shared plumbing for the probabilistic-programming adapters: samples -> cached oracle, and
oracle -> JAX-callable log-density whose gradient is the oracle's score.

JAX cannot trace into torch, so the JAX side calls the oracle on the host through
:func:`jax.pure_callback` and tells JAX the derivative with a :func:`jax.custom_jvp` rule whose
tangent is ``score(x) . t`` (the score comes from the same host call as the value). The result
works under ``jit``, ``grad`` and ``vmap``; under ``vmap`` the whole batch of chains goes to torch
in one call (``vmap_method="broadcast_all"``). Arrays are handed over in JAX's dtype: float32 by
default, float64 when ``jax_enable_x64`` is on; float16/bfloat16 positions are computed in float32
and the results returned in their dtype; complex positions raise ``TypeError`` before any callback.

Errors: a non-finite position (a diverged chain, a NaN initial value) or a non-finite oracle
output raises ``ValueError`` inside the callback. Called eagerly you get that ``ValueError``;
under ``jit`` JAX re-raises it as ``jax.errors.JaxRuntimeError`` whose message contains the
``ValueError`` text. Either way the run stops; it never carries on with NaN chains.

:func:`fitted_oracle` has no JAX dependency (the Pyro adapter uses it too); ``jax`` is imported
only when a JAX function is built.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from disco_score._checks import ArrayLike, as_samples
from disco_score.base import Estimator, Oracle
from disco_score.defaults import resolve_oracle

from . import require

logger = logging.getLogger(__name__)

#: fitted oracles kept by :func:`fitted_oracle` (models rebuild their distributions on every trace)
ORACLE_CACHE_SIZE = 8

_oracle_cache: "OrderedDict[tuple, tuple[Any, Oracle]]" = OrderedDict()
_oracle_cache_lock = threading.Lock()


def fitted_oracle(samples: ArrayLike, estimator: Estimator | Oracle | None = None
                  ) -> tuple[torch.Tensor, Oracle]:
    """Validate ``samples`` (n, d) and return ``(samples as a tensor, oracle fitted on them)``.

    ``estimator=None`` means :func:`disco_score.defaults.default_estimator`; a fitted
    :class:`~disco_score.base.Oracle` is used as is (its dimension must match). Fits are cached on
    the samples' content (SHA-1 of the bytes, shape, dtype) and the estimator's identity, because
    PPL models construct their distributions anew on every trace -- Pyro's HMC retraces the model at
    every leapfrog step -- and refitting there would dominate the run time.
    """
    tensor = as_samples(samples, "samples")
    if isinstance(estimator, Oracle):
        if estimator.dim != tensor.shape[1]:
            raise ValueError(f"estimator is an oracle fitted in dimension {estimator.dim}, but samples "
                             f"have dimension {tensor.shape[1]}")
        return tensor, estimator
    if estimator is not None and not isinstance(estimator, Estimator):
        raise TypeError(f"estimator must be None, an Estimator or an Oracle; got {type(estimator).__name__}")
    host = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha1(host.numpy().tobytes()).hexdigest()
    key = (digest, tuple(host.shape), str(host.dtype), str(tensor.device), id(estimator))
    with _oracle_cache_lock:
        hit = _oracle_cache.get(key)
        if hit is not None:
            _oracle_cache.move_to_end(key)
            return tensor, hit[1]
    oracle = resolve_oracle(estimator, tensor)
    logger.debug("fitted %s on %d samples in dimension %d", type(oracle).__name__, *tensor.shape)
    with _oracle_cache_lock:
        # the estimator is stored beside the oracle so its id cannot be reused while cached
        _oracle_cache[key] = (estimator, oracle)
        while len(_oracle_cache) > ORACLE_CACHE_SIZE:
            _oracle_cache.popitem(last=False)
    return tensor, oracle


def oracle_from(source: Estimator | Oracle | None, samples: ArrayLike | None = None) -> Oracle:
    """A fitted oracle as is, or ``source`` (an estimator, or None for the default) fitted on
    ``samples`` through the :func:`fitted_oracle` cache."""
    if isinstance(source, Oracle) and samples is None:
        return source
    if samples is None:
        raise ValueError("pass a fitted Oracle, or samples (and optionally an estimator) to fit one")
    return fitted_oracle(samples, source)[1]


def check_positions(points: Any, what: str) -> None:
    """Raise ValueError if any row of ``points`` (m, d) (numpy, or a detached CPU tensor) is not
    finite: a sampler evaluating there has diverged or was initialised badly."""
    finite_rows = np.isfinite(np.asarray(points)).all(axis=1)
    if not finite_rows.all():
        raise ValueError(f"disco-score {what} was evaluated at {int((~finite_rows).sum())} non-finite "
                         f"position(s) (NaN or inf) out of {finite_rows.shape[0]}: the sampler has "
                         f"diverged or was initialised at a non-finite point")


def check_chain_range(distance: Any, radius: Any, step: Any, step_size: Any, what: str) -> None:
    """Host side of the Langevin kernels' divergence check (numpy in; also called from JAX).

    ``distance``: each chain's distance from its start; ``radius``: how far its drift and noise
    can have carried a healthy chain by ``step`` (see :class:`disco_score.divergence.DivergenceGuard`).
    Raises :class:`~disco_score.divergence.ChainDiverged` when a chain is non-finite or beyond
    ``DIVERGENCE_FACTOR`` times that radius.
    """
    from disco_score import divergence

    distance = np.asarray(distance, dtype=np.float64).reshape(-1)
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64).reshape(-1), distance.shape)
    step = int(np.max(np.asarray(step))) if np.size(step) else 0
    step_size = float(np.max(np.asarray(step_size, dtype=np.float64)))
    if not np.isfinite(distance).all():
        raise divergence.ChainDiverged(f"{what}, step {step}: {int((~np.isfinite(distance)).sum())} chain(s) "
                                     f"diverged (non-finite positions); step_size={step_size:.3g} is too "
                                     f"large; reduce it")
    far = distance > divergence.DIVERGENCE_FACTOR * np.maximum(radius, 1e-300)
    if far.any():
        raise divergence.ChainDiverged(
            f"{what}, step {step}: {int(far.sum())} chain(s) diverged: {float(distance.max()):.3g} from the "
            f"start, beyond {divergence.DIVERGENCE_FACTOR:.0e} x the range drift and noise allow "
            f"({float(radius[far].max()):.3g}); step_size={step_size:.3g} is too large; reduce it")


def check_oracle_output(value: Any, what: str) -> None:
    """Raise ValueError if an oracle output (numpy, or a detached CPU tensor) is not finite."""
    finite = np.isfinite(np.asarray(value))
    if not finite.all():
        raise ValueError(f"disco-score oracle returned a non-finite {what} at {int((~finite).sum())} "
                         f"value(s) for finite positions; the oracle is unusable there")


def _host_points(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """(..., d) array from JAX -> a writable (m, d) copy (torch refuses read-only buffers)."""
    points = np.array(x, copy=True).reshape(-1, dim)
    check_positions(points, what)
    return points


class JaxOracle:
    """An :class:`~disco_score.base.Oracle` seen from JAX.

    Attributes:
        oracle: the wrapped torch oracle.
        dim: dimension ``d``.
        log_density: JAX function (..., d) -> (...), log-density in nats; differentiable with
            ``grad = score`` (first order only: a Hessian would need the score's Jacobian, which
            the oracle does not provide, and raises).
        score: JAX function (..., d) -> (...), the score; not differentiable.
        log_density_and_score: JAX function (..., d) -> ((...), (..., d)) in one host call.

    Build it with :func:`jax_oracle`, which caches one per oracle.
    """

    def __init__(self, oracle: Oracle) -> None:
        require("jax", "jax")
        import jax
        import jax.numpy as jnp

        if not isinstance(oracle, Oracle):
            raise TypeError(f"oracle must be a disco_score Oracle; got {type(oracle).__name__}")
        self.oracle = oracle
        self.dim = dim = int(oracle.dim)

        def host_log_density(x: np.ndarray) -> np.ndarray:
            points = _host_points(x, dim, "log-density")
            value = np.asarray(oracle.log_density(points))
            check_oracle_output(value, "log-density")
            return value.reshape(x.shape[:-1]).astype(x.dtype, copy=False)

        def host_score(x: np.ndarray) -> np.ndarray:
            points = _host_points(x, dim, "score")
            value = np.asarray(oracle.score(points))
            check_oracle_output(value, "score")
            return value.reshape(x.shape).astype(x.dtype, copy=False)

        def host_both(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            points = _host_points(x, dim, "log-density")
            log_p, score = oracle.log_density_and_score(points)
            log_p, score = np.asarray(log_p), np.asarray(score)
            check_oracle_output(log_p, "log-density")
            check_oracle_output(score, "score")
            return (log_p.reshape(x.shape[:-1]).astype(x.dtype, copy=False),
                    score.reshape(x.shape).astype(x.dtype, copy=False))

        def as_positions(x: Any) -> Any:
            x = jnp.asarray(x)
            if jnp.issubdtype(x.dtype, jnp.complexfloating):
                # refused here, before the host callback, where it would surface as an opaque
                # JaxRuntimeError: log-densities of complex points are not defined
                raise TypeError(f"positions must be real; got dtype {x.dtype}")
            if not jnp.issubdtype(x.dtype, jnp.floating):
                x = x.astype(jnp.result_type(float))
            if x.ndim == 0 or x.shape[-1] != dim:
                raise ValueError(f"positions must have shape (..., {dim}) for this {dim}-dimensional "
                                 f"oracle; got shape {tuple(x.shape)}")
            return x

        def compute_dtype(x: Any) -> Any:
            """float16/bfloat16 are computed in float32 (torch refuses them and numpy has no
            bfloat16); the caller's dtype is restored on the way out."""
            return x.astype(jnp.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x

        def shapes(x: Any, with_score: bool) -> Any:
            value = jax.ShapeDtypeStruct(x.shape[:-1], x.dtype)
            return (value, jax.ShapeDtypeStruct(x.shape, x.dtype)) if with_score else value

        @jax.custom_jvp
        def _log_density(x: Any) -> Any:
            return jax.pure_callback(host_log_density, shapes(x, False), x, vmap_method="broadcast_all")

        @_log_density.defjvp
        def _log_density_jvp(primals: tuple, tangents: tuple) -> tuple:
            (x,), (t,) = primals, tangents
            log_p, score = jax.pure_callback(host_both, shapes(x, True), x, vmap_method="broadcast_all")
            return log_p, jnp.sum(score * t, axis=-1)

        def log_density(x: Any) -> Any:
            x = as_positions(x)
            return _log_density(compute_dtype(x)).astype(x.dtype)

        def score(x: Any) -> Any:
            x = as_positions(x)
            y = compute_dtype(x)
            return jax.pure_callback(host_score, shapes(y, True)[1], y, vmap_method="broadcast_all").astype(x.dtype)

        def log_density_and_score(x: Any) -> tuple[Any, Any]:
            x = as_positions(x)
            y = compute_dtype(x)
            log_p, s = jax.pure_callback(host_both, shapes(y, True), y, vmap_method="broadcast_all")
            return log_p.astype(x.dtype), s.astype(x.dtype)

        self.log_density: Callable[[Any], Any] = log_density
        self.score: Callable[[Any], Any] = score
        self.log_density_and_score: Callable[[Any], tuple[Any, Any]] = log_density_and_score

    def __repr__(self) -> str:
        return f"JaxOracle({type(self.oracle).__name__}, dim={self.dim})"


_jax_oracles: "weakref.WeakKeyDictionary[Oracle, JaxOracle]" = weakref.WeakKeyDictionary()


def jax_oracle(oracle: Oracle) -> JaxOracle:
    """The :class:`JaxOracle` of ``oracle`` (one per oracle, so jitted functions are reused)."""
    if not isinstance(oracle, Oracle):
        raise TypeError(f"oracle must be a disco_score Oracle; got {type(oracle).__name__}")
    bridge = _jax_oracles.get(oracle)
    if bridge is None:
        bridge = _jax_oracles[oracle] = JaxOracle(oracle)
    return bridge
