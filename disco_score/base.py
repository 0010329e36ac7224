"""The estimator interface every density/score estimator in the package implements.

An :class:`Estimator` holds configuration only. ``Estimator.fit(samples)`` conditions on a sample
set and returns an :class:`Oracle`: an immutable object answering ``log_density``, ``density``,
``score`` and ``smoothed`` at any query points. Samplers, integrations and particle solvers are
written against :class:`Oracle` alone, so KDE and DiScoFormer are interchangeable everywhere.

This module imports no implementation; what ``estimator=None`` means is decided in
:mod:`disco_score.defaults`.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ._checks import ArrayLike, Queries, as_queries, check_positive


_F = TypeVar("_F", bound=Callable[..., Any])


def with_autograd(fn: _F) -> _F:
    """Run ``fn`` with autograd on whatever the caller's mode: the fits that optimise (``adapt``,
    ``distil``) are often reached lazily from inside a sampler's ``no_grad`` or ``inference_mode``."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)
    return wrapped  # type: ignore[return-value]


class Oracle(abc.ABC):
    """A fitted density ``p`` on R^d: log-density and score (gradient of the log-density).

    Queries ``x`` have shape (m, d) or (d,) (one point). Results come back in the caller's kind
    (numpy in, numpy out; torch in, torch out on the same device) and floating dtype. Subclasses
    implement :meth:`_log_density_and_score` on validated torch tensors.
    """

    #: dimension of the fitted samples
    dim: int
    #: dtype the oracle computes in (the samples' dtype); queries are promoted to at least this
    compute_dtype: torch.dtype
    #: device holding the fitted state
    device: torch.device

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"{type(self).__name__} is immutable after fit; "
                                 f"fit the estimator again to change '{name}'")
        object.__setattr__(self, name, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    # -- subclass hooks (validated (m, d) tensors on self.device) -------------------------------
    @abc.abstractmethod
    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(m, d) -> ((m,) log-density in nats, (m, d) score or None)."""

    @abc.abstractmethod
    def _smoothed(self, sigma: float) -> "Oracle":
        """Oracle for ``p * N(0, sigma^2 I)``."""

    # -- public API ------------------------------------------------------------------------------
    def _queries(self, x: ArrayLike) -> Queries:
        return as_queries(x, self.dim, self.compute_dtype, self.device)

    def log_density(self, x: ArrayLike) -> Any:
        """Log-density (nats) at ``x``: (m, d) -> (m,); a single point (d,) gives a scalar."""
        q = self._queries(x)
        with torch.no_grad():
            value, _ = self._log_density_and_score(q.points, want_score=False)
        return q.restore(value)

    def density(self, x: ArrayLike) -> Any:
        """Density at ``x`` (units: 1 / volume of x): (m, d) -> (m,)."""
        q = self._queries(x)
        with torch.no_grad():
            value, _ = self._log_density_and_score(q.points, want_score=False)
        return q.restore(value.exp())

    def score(self, x: ArrayLike) -> Any:
        """Score ``grad_x log p(x)`` (1 / units of x): (m, d) -> (m, d); (d,) -> (d,)."""
        q = self._queries(x)
        with torch.no_grad():  # the score does not depend on the log-density's constant
            _, value = self._unnormalized_log_density_and_score(q.points, want_score=True)
        assert value is not None
        return q.restore(value)

    def log_density_and_score(self, x: ArrayLike, normalized: bool = True) -> tuple[Any, Any]:
        """Both at once (one pass): ((m,), (m, d)).

        ``normalized=False``: the log-density up to an additive constant, which the oracle may then
        skip computing (DiScoFormer's grid normaliser in d <= 2); enough for Metropolis ratios and
        for fits that compare log-density differences.
        """
        if not isinstance(normalized, bool):
            raise TypeError(f"normalized must be a bool, got {type(normalized).__name__}")
        q = self._queries(x)
        with torch.no_grad():
            hook = self._log_density_and_score if normalized else self._unnormalized_log_density_and_score
            log_p, score = hook(q.points, want_score=True)
        assert score is not None
        return q.restore(log_p), q.restore(score)

    def _unnormalized_log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As :meth:`_log_density_and_score`, free to leave out a constant; by default it does not."""
        return self._log_density_and_score(y, want_score)

    def with_default_convolution_threshold(self, threshold: float) -> "Oracle":
        """This oracle with ``threshold`` as its default switch point in :meth:`smoothed`.

        Oracles whose :meth:`smoothed` switches, from some noise level up, to the exact convolution
        of their samples (DiScoFormer fits) use ``threshold`` (in Scott bandwidths) for it unless
        their estimator fixed one; every other oracle is returned unchanged. Annealed Langevin sets
        its own switch point through this (:func:`disco_score.samplers.annealed_langevin`).
        """
        return self

    def smoothed(self, sigma: float) -> "Oracle":
        """Oracle for ``p`` convolved with ``N(0, sigma^2 I)`` (``sigma`` in the units of x).

        ``sigma = 0`` returns this oracle. Used for noise-conditional (annealed) sampling.
        """
        sigma = check_positive(sigma, "sigma", allow_zero=True)
        return self if sigma == 0.0 else self._smoothed(sigma)


def grid_log_integral(log_density: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> float:
    """log of the integral of ``exp(log_density)`` over a grid covering the points ``z`` (k, d), d <= 2,
    +- 4 along each axis: the trapezoid rule on 1024 nodes (d = 1) or 96 x 96 (d = 2), float64 nodes
    on z's device. ``log_density`` maps (g, d) float64 nodes to (g,) log-densities."""
    d = z.shape[1]
    if d > 2:
        raise ValueError(f"a grid integral is for d <= 2, got d = {d}")
    k = 1024 if d == 1 else 96
    axes = [torch.linspace(float(z[:, i].min()) - 4, float(z[:, i].max()) + 4, k, dtype=torch.float64,
                           device=z.device) for i in range(d)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    with torch.no_grad():
        lp = log_density(grid)
    weights = [torch.full((k,), float(a[1] - a[0]), dtype=torch.float64, device=z.device) for a in axes]
    for w in weights:  # trapezoid rule: half weight at the ends
        w[0] *= 0.5
        w[-1] *= 0.5
    log_w = torch.log(weights[0]) if d == 1 else (torch.log(weights[0])[:, None]
                                                  + torch.log(weights[1])[None, :]).reshape(-1)
    return float(torch.logsumexp(lp.double() + log_w, 0))


class Estimator(abc.ABC):
    """Configuration for a density/score estimator; :meth:`fit` returns an :class:`Oracle`."""

    @abc.abstractmethod
    def fit(self, samples: ArrayLike) -> Oracle:
        """Condition on ``samples`` (n, d) and return a new immutable oracle."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def as_oracle(source: "Estimator | Oracle", samples: ArrayLike | None = None) -> Oracle:
    """An oracle from either a fitted oracle or an estimator plus samples."""
    if isinstance(source, Oracle):
        return source
    if isinstance(source, Estimator):
        if samples is None:
            raise ValueError("an Estimator needs samples to fit; pass samples= or a fitted Oracle")
        return source.fit(samples)
    raise TypeError(f"expected an Estimator or an Oracle, got {type(source).__name__}")
