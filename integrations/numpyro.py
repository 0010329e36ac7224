"""NumPyro adapter: a prior known only through samples, as a NumPyro distribution.

* :class:`EmpiricalDistribution` -- ``numpyro.sample("theta", EmpiricalDistribution(prior_samples))``
  inside a model; its ``log_prob`` is the fitted oracle's log-density, differentiable with the
  oracle's score as gradient, so ``NUTS``/``HMC`` sample likelihood x sample-based prior.
* :func:`potential_fn` -- ``-log p`` for ``NUTS(potential_fn=...)`` and friends.
* :class:`Langevin` -- an unadjusted-Langevin :class:`numpyro.infer.mcmc.MCMCKernel` (gradient
  only, no accept/reject), for ``MCMC(Langevin(model), ...)``.

The log-density is a host callback into torch (see :mod:`disco_score.integrations._jax_bridge`):
it runs under ``jit`` and ``vmap`` (``chain_method="vectorized"`` evaluates all chains in one
call), in float32, or float64 with ``numpyro.enable_x64()``.

Example (the contract):
    >>> import numpyro, numpyro.distributions as dist
    >>> from disco_score.integrations.numpyro import EmpiricalDistribution
    >>> def model(y):
    ...     theta = numpyro.sample("theta", EmpiricalDistribution(prior_samples))
    ...     numpyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)
    >>> mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(model), num_warmup=500, num_samples=1000)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from disco_score._checks import ArrayLike, check_positive
from disco_score.base import Estimator, Oracle

from . import require

require("jax", "jax")
require("numpyro", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from numpyro.distributions import Distribution, constraints  # noqa: E402
from numpyro.infer.initialization import init_to_uniform  # noqa: E402
from numpyro.infer.mcmc import MCMCKernel  # noqa: E402
from numpyro.infer.util import ParamInfo, initialize_model  # noqa: E402
from numpyro.util import identity, is_prng_key  # noqa: E402

from ._jax_bridge import JaxOracle, check_chain_range, fitted_oracle, jax_oracle, oracle_from  # noqa: E402

__all__ = ["EmpiricalDistribution", "potential_fn", "Langevin", "LangevinState"]


def _concrete_samples(samples: ArrayLike) -> ArrayLike:
    if isinstance(samples, jax.core.Tracer):
        raise TypeError("samples are a traced JAX value (a model argument under jit); the oracle is "
                        "fitted in torch on concrete numbers, so close over the prior samples in the "
                        "model (or build the distribution outside jit) instead of passing them as a "
                        "model argument")
    return samples


class _FittedPrior:
    """The non-array state of an :class:`EmpiricalDistribution`, kept as one hashable pytree aux
    field (compared by identity), so distributions pass through ``jit``/``vmap`` boundaries."""

    __slots__ = ("bridge", "samples")

    def __init__(self, bridge: JaxOracle, samples: np.ndarray) -> None:
        self.bridge = bridge
        self.samples = samples


class EmpiricalDistribution(Distribution):
    """A distribution on R^d known through samples, with log-density from a disco-score oracle.

    Args:
        samples: (n, d) draws (numpy, torch or concrete JAX array).
        estimator: an :class:`~disco_score.base.Estimator` to fit on ``samples``, a fitted
            :class:`~disco_score.base.Oracle`, or None for the default estimator (the pretrained
            DiScoFormer; KDE until it ships). Fits are cached on the samples' content, so building
            the distribution inside a model (retraced many times) fits once.
        validate_args: NumPyro's argument/sample validation flag.

    ``log_prob(value)``: (..., d) -> (...) nats, gradient = the oracle's score.
    ``sample(key, sample_shape)``: resamples the sample set uniformly with replacement (a
    bootstrap draw: exact for the empirical distribution, adequate for ``Predictive`` and
    initialisation). It does not draw from the smoothed density that ``log_prob`` describes; for
    that, run MCMC on ``log_prob`` (e.g. :class:`Langevin`).
    ``mean``/``variance``: of the sample set.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    pytree_data_fields = ()
    pytree_aux_fields = ("_prior",)

    def __init__(self, samples: ArrayLike, estimator: Estimator | Oracle | None = None, *,
                 validate_args: bool | None = None) -> None:
        tensor, oracle = fitted_oracle(_concrete_samples(samples), estimator)
        self._prior = _FittedPrior(jax_oracle(oracle), tensor.detach().cpu().numpy())
        super().__init__(batch_shape=(), event_shape=(oracle.dim,), validate_args=validate_args)

    @property
    def oracle(self) -> Oracle:
        """The fitted torch oracle."""
        return self._prior.bridge.oracle

    @property
    def samples(self) -> Any:
        """The sample set, (n, d), as a JAX array."""
        return jnp.asarray(self._prior.samples)

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        """NumPyro's ``Distribution.sample``: ``sample_shape + (d,)`` points resampled uniformly with
        replacement from the sample set using ``key`` (a bootstrap draw, not the smoothed density)."""
        pool = self.samples
        index = jax.random.randint(key, tuple(sample_shape) + self.batch_shape, 0, pool.shape[0])
        return pool[index]

    def log_prob(self, value: Any) -> Any:
        """NumPyro's ``Distribution.log_prob``: the oracle's log-density (nats), (..., d) -> (...) in
        ``value``'s dtype; differentiable with the oracle's score as gradient, under ``jit`` and ``vmap``."""
        if self._validate_args:
            self._validate_sample(value)
        return self._prior.bridge.log_density(value)

    @property
    def mean(self) -> Any:
        """Mean of the sample set, (d,)."""
        return jnp.asarray(self._prior.samples.mean(0))

    @property
    def variance(self) -> Any:
        """Per-coordinate variance of the sample set (ddof = 1), (d,)."""
        return jnp.asarray(self._prior.samples.var(0, ddof=1))


def potential_fn(oracle: Oracle | Estimator | None, samples: ArrayLike | None = None
                 ) -> Callable[[Any], Any]:
    """``-log p`` as a NumPyro potential: (d,) -> scalar, differentiable (gradient ``-score``).

    For ``NUTS(potential_fn=potential_fn(oracle))`` with ``mcmc.run(key, init_params=...)``.
    ``potential_fn(estimator_or_None, samples)`` fits first.
    """
    fitted = oracle_from(oracle, None if samples is None else _concrete_samples(samples))
    log_density = jax_oracle(fitted).log_density
    return lambda x: -log_density(x)


LangevinState = namedtuple("LangevinState", ["i", "z", "potential_energy", "z_grad", "rng_key", "z_start",
                                             "grad_start_norm"])
"""State of :class:`Langevin`: iteration ``i``; ``z`` the unconstrained sample (a pytree);
``potential_energy`` and its gradient ``z_grad`` at ``z``; ``rng_key``; ``z_start`` (flat) and
``grad_start_norm``, where the chain started and the gradient norm there (the divergence check's
reference)."""


class Langevin(MCMCKernel):
    """Unadjusted Langevin: ``z' = z - step_size * grad U(z) + sqrt(2 step_size) * xi``.

    Needs only the gradient of the potential -- for a disco-score prior, its score -- and has no
    accept/reject step, so its samples are ``O(step_size)`` biased and there is nothing to adapt
    during warmup (warmup steps are burn-in). Works with ``chain_method="vectorized"``.

    Args:
        model: a NumPyro model (exactly one of ``model`` / ``potential_fn``).
        potential_fn: a potential over the pytree given as ``init_params``.
        step_size: Euler step (squared units of the unconstrained latent space).
        init_strategy: NumPyro per-site initialisation, used with ``model``.
    """

    sample_field = "z"

    def __init__(self, model: Callable | None = None, potential_fn: Callable | None = None,
                 step_size: float = 1e-2, init_strategy: Callable = init_to_uniform) -> None:
        if (model is None) == (potential_fn is None):
            raise ValueError("pass exactly one of model= or potential_fn=")
        self._model = model
        self._potential_fn = potential_fn
        self._potential_fn_gen: Callable | None = None
        self._step_size = check_positive(step_size, "step_size")
        self._init_strategy = init_strategy
        self._postprocess_fn: Callable | None = None
        self._vectorized = False

    @property
    def model(self) -> Callable | None:
        """The NumPyro model the kernel was built from (None when built from ``potential_fn``)."""
        return self._model

    @property
    def step_size(self) -> float:
        """The Euler step (squared units of the unconstrained latent space)."""
        return self._step_size

    def _potential(self, model_args: tuple, model_kwargs: dict | None) -> Callable:
        if self._potential_fn_gen is not None:
            return self._potential_fn_gen(*model_args, **(model_kwargs or {}))
        assert self._potential_fn is not None
        return self._potential_fn

    def init(self, rng_key: Any, num_warmup: int, init_params: Any, model_args: tuple,
             model_kwargs: dict | None) -> LangevinState:
        """NumPyro's ``MCMCKernel.init``: the initial :class:`LangevinState`, with the potential and its
        gradient evaluated at the start.

        The start is ``init_params``, or with a model and no ``init_params`` the model's ``init_strategy``
        initialisation. A batch of keys (``chain_method="vectorized"``) gives one state per chain (vmapped).
        ``num_warmup`` is unused: there is nothing to adapt.
        """
        self._vectorized = not is_prng_key(rng_key)
        if self._vectorized:
            rng_key, key_init = jnp.swapaxes(jax.vmap(jax.random.split)(rng_key), 0, 1)
        else:
            rng_key, key_init = jax.random.split(rng_key)
        if self._model is not None:
            params_info, self._potential_fn_gen, self._postprocess_fn, _ = initialize_model(
                key_init, self._model, dynamic_args=True, init_strategy=self._init_strategy,
                model_args=model_args, model_kwargs=model_kwargs)
            if init_params is None:
                init_params = params_info
        if init_params is None:
            raise ValueError("init_params must be given when the kernel is built from potential_fn")
        z = init_params.z if isinstance(init_params, ParamInfo) else init_params
        potential = self._potential(model_args, model_kwargs)

        def init_one(z: Any, key: Any) -> LangevinState:
            pe, grad = jax.value_and_grad(potential)(z)
            return LangevinState(jnp.array(0), z, pe, grad, key, ravel_pytree(z)[0],
                                 jnp.linalg.norm(ravel_pytree(grad)[0]))

        return jax.vmap(init_one)(z, rng_key) if self._vectorized else init_one(z, rng_key)

    def postprocess_fn(self, model_args: tuple, model_kwargs: dict | None) -> Callable:
        """NumPyro's ``MCMCKernel.postprocess_fn``: maps unconstrained samples to the model's constrained
        sites (identity when built from ``potential_fn``, or before :meth:`init`)."""
        if self._postprocess_fn is None:
            return identity
        return self._postprocess_fn(*model_args, **(model_kwargs or {}))

    def sample(self, state: LangevinState, model_args: tuple, model_kwargs: dict | None
               ) -> LangevinState:
        """NumPyro's ``MCMCKernel.sample``: one unadjusted Langevin step from ``state``,
        ``z' = z - step_size * grad U(z) + sqrt(2 step_size) * xi`` with the gradient stored in ``state``
        (no accept/reject); returns the next state with ``U`` and its gradient at ``z'``."""
        potential = self._potential(model_args, model_kwargs)
        step_size = self._step_size

        def step_one(state: LangevinState) -> LangevinState:
            z_flat, unravel = ravel_pytree(state.z)
            grad_flat, _ = ravel_pytree(state.z_grad)
            key, key_noise = jax.random.split(state.rng_key)
            noise = jax.random.normal(key_noise, z_flat.shape, z_flat.dtype)
            z_new_flat = z_flat - step_size * grad_flat + jnp.sqrt(2.0 * step_size) * noise
            # A step too large for the potential's curvature grows |z| geometrically: stop it with
            # ChainDiverged (as a JaxRuntimeError under jit) instead of returning huge samples.
            step = state.i + 1
            radius = step * step_size * state.grad_start_norm + jnp.sqrt(2.0 * step_size * step * z_flat.size)
            jax.debug.callback(partial(check_chain_range, what="numpyro Langevin"),
                               jnp.linalg.norm(z_new_flat - state.z_start), radius, step, step_size)
            z_new = unravel(z_new_flat)
            pe, grad = jax.value_and_grad(potential)(z_new)
            return LangevinState(step, z_new, pe, grad, key, state.z_start, state.grad_start_norm)

        return jax.vmap(step_one)(state) if self._vectorized else step_one(state)

    def get_diagnostics_str(self, state: LangevinState) -> str:
        """NumPyro's progress-bar text: the step size and the potential energy (mean over chains when
        vectorized)."""
        return f"step size {self._step_size:.2e}. potential {float(jnp.mean(state.potential_energy)):.3g}"
