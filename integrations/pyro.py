"""Pyro adapter: a prior known only through samples, as a Pyro distribution.

* :class:`EmpiricalDistribution` -- a :class:`pyro.distributions.TorchDistribution` whose
  ``log_prob`` is the fitted oracle's log-density and whose gradient is the oracle's score head
  (a :class:`torch.autograd.Function`, no autograd through the estimator), so it works in models
  sampled with ``pyro.infer.mcmc`` ``NUTS``/``HMC`` and fitted with ``SVI``.
* :func:`potential_fn` -- ``-log p`` over a params dict, for ``NUTS(potential_fn=...)``.
* :class:`Langevin` -- an unadjusted-Langevin kernel following Pyro's
  :class:`~pyro.infer.mcmc.mcmc_kernel.MCMCKernel` interface (``setup``/``sample``/...).

Example (the contract):
    >>> import pyro, pyro.distributions as dist
    >>> from disco_score.integrations.pyro import EmpiricalDistribution
    >>> def model(y):
    ...     theta = pyro.sample("theta", EmpiricalDistribution(prior_samples))
    ...     pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)
    >>> mcmc = pyro.infer.MCMC(pyro.infer.NUTS(model), num_samples=1000, warmup_steps=500)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from disco_score._checks import ArrayLike, check_positive
from disco_score.base import Estimator, Oracle
from disco_score.divergence import ChainDiverged, DivergenceGuard

from . import require
from ._jax_bridge import check_oracle_output, check_positions, fitted_oracle, oracle_from

require("pyro", "pyro")

import pyro.distributions as dist  # noqa: E402
from pyro.distributions import constraints  # noqa: E402
from pyro.infer.autoguide.initialization import init_to_uniform  # noqa: E402
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel  # noqa: E402
from pyro.infer.mcmc.util import initialize_model  # noqa: E402
from pyro.ops.integrator import potential_grad  # noqa: E402

__all__ = ["EmpiricalDistribution", "oracle_log_prob", "potential_fn", "Langevin"]


class _OracleLogDensity(torch.autograd.Function):
    """``log p(x)`` with backward ``grad_out * score(x)``: the oracle's score head is the gradient.

    One oracle pass computes both when a gradient is needed (NUTS/HMC/SVI always need it).
    """

    @staticmethod
    def forward(ctx: Any, points: torch.Tensor, oracle: Oracle) -> torch.Tensor:  # (m, d) -> (m,)
        if ctx.needs_input_grad[0]:
            log_p, score = oracle.log_density_and_score(points)
            check_oracle_output(score.detach().cpu(), "score")
            ctx.save_for_backward(score)
        else:
            log_p = oracle.log_density(points)
        check_oracle_output(log_p.detach().cpu(), "log-density")
        return log_p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        (score,) = ctx.saved_tensors
        return grad_out[:, None] * score, None


def oracle_log_prob(oracle: Oracle, value: torch.Tensor) -> torch.Tensor:
    """Differentiable ``log p(value)``: (..., d) -> (...), gradient = ``oracle.score``.

    Non-finite positions raise ValueError (a diverged chain or a NaN initial value); a Hessian
    is not available (the backward is ``once_differentiable``).
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"value must be a torch tensor; got {type(value).__name__}")
    if value.ndim == 0 or value.shape[-1] != oracle.dim:
        raise ValueError(f"value must have shape (..., {oracle.dim}); got {tuple(value.shape)}")
    points = value.reshape(-1, oracle.dim)
    if points.shape[0] == 0:  # an empty batch: an empty result, still attached to the graph
        return (value * 0).sum(-1)
    check_positions(points.detach().cpu(), "log-density")
    return _OracleLogDensity.apply(points, oracle).reshape(value.shape[:-1])


class EmpiricalDistribution(dist.TorchDistribution):
    """A distribution on R^d known through samples, with log-density from a disco-score oracle.

    Args:
        samples: (n, d) draws (numpy or torch).
        estimator: an :class:`~disco_score.base.Estimator` to fit on ``samples``, a fitted
            :class:`~disco_score.base.Oracle`, or None for the default estimator (the pretrained
            DiScoFormer; KDE until it ships). Fits are cached on the samples' content: Pyro's HMC
            re-runs the model at every leapfrog step, and this keeps that to one fit.
        validate_args: torch.distributions' validation flag.

    ``log_prob(value)``: (..., d) -> (...) nats, in ``value``'s dtype; its gradient is the score.
    ``samples``: the sample set as a tensor (numpy input is cast to torch's default dtype; the
    oracle is fitted on it in its own dtype).
    ``sample(sample_shape)``: resamples the sample set uniformly with replacement (a bootstrap
    draw, using torch's global RNG as Pyro does), not a draw from the smoothed density
    ``log_prob`` describes; for that, run MCMC on it. There is no ``rsample``: use this
    distribution in the model, not in a reparameterised guide.
    ``mean``/``variance``: of the sample set.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, samples: ArrayLike, estimator: Estimator | Oracle | None = None,
                 validate_args: bool | None = None) -> None:
        tensor, self.oracle = fitted_oracle(samples, estimator)
        # Pyro models compute in torch's default dtype; numpy input (float64 by habit) would make
        # sample() -- and so init_to_sample/init_to_median -- leak float64 into them.
        self.samples = tensor if isinstance(samples, torch.Tensor) else tensor.to(torch.get_default_dtype())
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([self.oracle.dim]),
                         validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Pyro's ``log_prob``: the oracle's log-density (nats), (..., d) -> (...) in ``value``'s dtype;
        its backward gives the oracle's score (:func:`oracle_log_prob`)."""
        if self._validate_args and value.numel():  # torch's support check cannot reshape an empty batch
            self._validate_sample(value)
        return oracle_log_prob(self.oracle, value)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Pyro's ``sample``: ``sample_shape + (d,)`` points resampled uniformly with replacement from
        ``samples`` with torch's global RNG (a bootstrap draw, not the smoothed density)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        index = torch.randint(self.samples.shape[0], shape, device=self.samples.device)
        return self.samples[index]

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the sample set, (d,), in ``samples``' dtype."""
        return self.samples.mean(0)

    @property
    def variance(self) -> torch.Tensor:
        """Per-coordinate variance of the sample set (unbiased, ddof = 1), (d,)."""
        return self.samples.var(0)


def potential_fn(oracle: Oracle | Estimator | None, samples: ArrayLike | None = None,
                 site: str = "theta") -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``params -> -log p(params[site])``, a Pyro potential (gradient ``-score``).

    For ``NUTS(potential_fn=potential_fn(oracle))`` with ``MCMC(..., initial_params={site: x0})``.
    ``potential_fn(estimator_or_None, samples)`` fits first.
    """
    fitted = oracle_from(oracle, samples)

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        if site not in params:
            raise KeyError(f"potential_fn expects a params dict with key {site!r}; got {sorted(params)}")
        return -oracle_log_prob(fitted, params[site])

    return potential


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(1, D) float64 concatenation of a params dict's tensors (sorted by site name)."""
    return torch.cat([params[k].detach().reshape(-1).to(torch.float64) for k in sorted(params)])[None]


class Langevin(MCMCKernel):
    """Unadjusted Langevin: ``z' = z - step_size * grad U(z) + sqrt(2 step_size) * xi``.

    Pyro's kernel interface, with the same model handling as :class:`pyro.infer.HMC`
    (unconstrained space via ``transforms``, ``init_strategy``, ``jit_compile``). Gradient only --
    for a disco-score prior, its score -- and no accept/reject step, so samples carry an
    ``O(step_size)`` bias and warmup is plain burn-in. A step too large for the potential raises
    :class:`~disco_score.samplers.ChainDiverged` once the chain runs off
    (:class:`~disco_score.samplers.DivergenceGuard`, referenced to the starting point).

    Args:
        model: a Pyro model (exactly one of ``model`` / ``potential_fn``).
        potential_fn: a potential over a dict of unconstrained tensors; then pass
            ``initial_params`` to :class:`pyro.infer.MCMC`.
        step_size: Euler step (squared units of the unconstrained latent space).
        transforms, max_plate_nesting, jit_compile, init_strategy: as for ``pyro.infer.HMC``.
    """

    def __init__(self, model: Callable | None = None, potential_fn: Callable | None = None,
                 step_size: float = 1e-2, transforms: dict | None = None,
                 max_plate_nesting: int | None = None, jit_compile: bool = False,
                 init_strategy: Callable = init_to_uniform) -> None:
        if (model is None) == (potential_fn is None):
            raise ValueError("pass exactly one of model= or potential_fn=")
        self.model = model
        self.potential_fn = potential_fn
        self.transforms = transforms
        self.step_size = check_positive(step_size, "step_size")
        self._max_plate_nesting = max_plate_nesting
        self._jit_compile = jit_compile
        self._init_strategy = init_strategy
        self._initial_params: dict[str, torch.Tensor] | None = None
        self._reset()

    def _reset(self) -> None:
        self._t = 0
        self._warmup_steps = 0
        self._z_grads: dict[str, torch.Tensor] | None = None
        self._potential_energy = math.nan
        self._guard: DivergenceGuard | None = None

    @property
    def initial_params(self) -> dict[str, torch.Tensor] | None:
        """Pyro's ``MCMCKernel.initial_params``: the starting point, a dict of unconstrained tensors per
        site (given by :class:`pyro.infer.MCMC`, or found by :meth:`setup` from the model)."""
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict[str, torch.Tensor]) -> None:
        """Set the starting point (:class:`pyro.infer.MCMC` passes its ``initial_params`` here)."""
        self._initial_params = params

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        """Pyro's ``MCMCKernel.setup``: prepare the potential and evaluate its gradient at the start.

        With a model, the potential, ``transforms`` and starting point come from ``initialize_model`` as for
        :class:`pyro.infer.HMC` (``init_strategy`` unless ``initial_params`` were given). ``warmup_steps`` is
        only recorded: there is nothing to adapt. Built from ``potential_fn`` without ``initial_params``:
        ValueError.
        """
        self._warmup_steps = warmup_steps
        if self.model is not None:
            init_params, self.potential_fn, self.transforms, _ = initialize_model(
                self.model, args, kwargs, transforms=self.transforms,
                max_plate_nesting=self._max_plate_nesting, jit_compile=self._jit_compile,
                init_strategy=self._init_strategy, initial_params=self._initial_params)
            self._initial_params = init_params
        if not self._initial_params:
            raise ValueError("Langevin needs initial_params when built from potential_fn")
        start = {k: v.detach() for k, v in self._initial_params.items()}
        self._gradient_at(start)
        assert self._z_grads is not None
        self._guard = DivergenceGuard(_flat(start), None, _flat(self._z_grads),
                                      f"step_size={self.step_size:.3g} is too large; reduce it")

    def _gradient_at(self, z: dict[str, torch.Tensor]) -> None:
        self._z_grads, potential_energy = potential_grad(self.potential_fn, z)
        self._potential_energy = float(potential_energy)

    def cleanup(self) -> None:
        """Pyro's ``MCMCKernel.cleanup``: reset the step counters, drop the cached gradient and potential energy."""
        self._reset()

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pyro's ``MCMCKernel.sample``: one unadjusted Langevin step from ``params`` (a dict of unconstrained
        tensors), ``z - step_size * grad U(z) + sqrt(2 step_size) * xi`` with torch's global RNG, no
        accept/reject. The gradient at the new point is kept for the next step."""
        if self._z_grads is None or set(self._z_grads) != set(params):
            self._gradient_at({k: v.detach() for k, v in params.items()})
        assert self._z_grads is not None
        noise_scale = math.sqrt(2.0 * self.step_size)
        z = {name: (value.detach() - self.step_size * self._z_grads[name]
                    + noise_scale * torch.randn_like(value))
             for name, value in params.items()}
        if self._guard is not None:
            self._guard.advance(self.step_size, 2.0 * self.step_size)
            try:
                self._guard.check(_flat(z))
            except ChainDiverged as exc:
                raise ChainDiverged(f"pyro Langevin, step {self._t + 1}: {exc}") from None
        self._gradient_at(z)
        self._t += 1
        return z.copy()

    def logging(self) -> "OrderedDict[str, str]":
        """Pyro's progress-bar fields: the step size and the potential energy at the current state."""
        return OrderedDict([("step size", f"{self.step_size:.2e}"),
                            ("potential", f"{self._potential_energy:.3g}")])

    def diagnostics(self) -> dict:
        """Pyro's ``MCMCKernel.diagnostics``: the step size (no acceptance rate: nothing is rejected)."""
        return {"step size": self.step_size}
