"""W3 data: posteriors of small real-data Bayesian models, with exact unnormalised log-densities.

Each posterior is a :class:`Posterior` on an unconstrained parameter vector ``theta`` of dimension
``dim``: ``log_density_unnormalised`` is exact in torch (float64), ``score`` is its autograd gradient,
and ``numpyro_model`` is the same model in NumPyro, whose potential energy on the same unconstrained
sites equals ``-log_density_unnormalised`` (all normalising constants of prior and likelihood are kept,
so the two agree to rounding, not just up to a constant). Reference draws were made once with NUTS by
``benchmarks/make_posteriors.py`` and are cached in ``data/<name>.npz``; :func:`load_posterior_draws`
reads them.

* ``logistic_breast_cancer``, d = 11: logistic regression on scikit-learn's breast-cancer data (569
  tumours, y = benign) with 10 standardised features (:data:`BREAST_CANCER_FEATURES`); intercept
  N(0, 2.5^2), slopes N(0, 1).
* ``poisson_linnerud``, d = 6: Poisson regression of chin-ups on scikit-learn's Linnerud data (20 men)
  with 5 standardised predictors (weight, waist, pulse, sit-ups, jumps); intercept N(0, 2.5^2),
  slopes N(0, 1).
* ``eight_schools_noncentred``, d = 10: Rubin's (1981) eight schools (typed in), non-centred,
  ``theta = (mu, log tau, eta_1..8)``; mu N(0, 5^2), tau HalfCauchy(5), eta N(0, 1).

Definitions: ``docs/benchmark-protocol.md`` (W3). NumPyro and JAX are imported only by
``numpyro_model`` and ``unconstrained_sites`` (the ``jax`` extra); the torch side needs neither.
"""

from __future__ import annotations

import abc
import importlib.resources
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "Posterior", "LogisticBreastCancer", "PoissonLinnerud", "EightSchoolsNoncentred", "POSTERIORS",
    "posterior_names", "get_posterior", "load_posterior_draws", "load_posterior_metadata",
    "BREAST_CANCER_FEATURES", "LINNERUD_FEATURES", "EIGHT_SCHOOLS_Y", "EIGHT_SCHOOLS_SIGMA",
    "N_DRAWS", "N_CONTEXT",
]

#: draws cached per posterior, and how many of them the benchmark uses as context (the rest: queries)
N_DRAWS = 12000
N_CONTEXT = 8192

_LOG_2PI = math.log(2 * math.pi)


def _normal_logpdf(x: torch.Tensor, loc: float | torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; loc, scale^2), constants included (to match NumPyro's log_prob exactly)."""
    scale_t = torch.as_tensor(scale, dtype=x.dtype)
    z = (x - loc) / scale_t
    return -0.5 * z * z - torch.log(scale_t) - 0.5 * _LOG_2PI


class Posterior(abc.ABC):
    """An unnormalised posterior density on R^dim (the model's unconstrained space).

    Subclasses set ``name``, ``dim``, ``param_names`` and implement :meth:`log_density_unnormalised`,
    :meth:`numpyro_model`, :meth:`unconstrained_sites` and :meth:`flatten_samples`.
    """

    #: key in :data:`POSTERIORS` and file stem in ``data/``
    name: str
    #: dimension of ``theta``
    dim: int
    #: one label per coordinate of ``theta``, in order
    param_names: tuple[str, ...]

    @abc.abstractmethod
    def log_density_unnormalised(self, theta: torch.Tensor) -> torch.Tensor:
        """(m, d) float64 -> (m,): log prior + log likelihood (+ log-Jacobian of the unconstraining map)."""

    def score(self, theta: torch.Tensor) -> torch.Tensor:
        """(m, d) -> (m, d): gradient of :meth:`log_density_unnormalised` by torch autograd."""
        th = torch.as_tensor(theta, dtype=torch.float64).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            total = self.log_density_unnormalised(th).sum()  # rows are independent: one backward pass
            (grad,) = torch.autograd.grad(total, th)
        return grad

    @abc.abstractmethod
    def numpyro_model(self) -> None:
        """The same model in NumPyro (call with no arguments; the data are bound to ``self``)."""

    @abc.abstractmethod
    def unconstrained_sites(self, theta: np.ndarray) -> dict[str, Any]:
        """One ``theta`` (d,) -> the NumPyro model's latent sites in unconstrained space (JAX arrays),
        as ``numpyro.infer.util.potential_energy`` takes them."""

    @abc.abstractmethod
    def flatten_samples(self, samples: Mapping[str, np.ndarray]) -> np.ndarray:
        """NumPyro's (constrained) samples, each site with leading shape (*S,) -> (*S, d) ``theta``."""

    def _as_theta(self, theta: torch.Tensor) -> torch.Tensor:
        theta = torch.as_tensor(theta, dtype=torch.float64)
        if theta.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: theta must have last dimension {self.dim}, got shape {tuple(theta.shape)}")
        return theta

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class _GLM(Posterior):
    """Shared machinery of the two regressions: ``eta = a + X b``, intercept N(0, 2.5^2), slopes N(0, 1)."""

    intercept_scale = 2.5
    slope_scale = 1.0

    def __init__(self, x: np.ndarray, y: np.ndarray, feature_names: tuple[str, ...]) -> None:
        # Standardise (population sd) so one prior scale fits every slope.
        x = np.asarray(x, dtype=np.float64)
        self.x_np = (x - x.mean(0)) / x.std(0)
        self.y_np = np.asarray(y, dtype=np.float64)
        self.x = torch.from_numpy(self.x_np)
        self.y = torch.from_numpy(self.y_np)
        self.feature_names = feature_names
        self.dim = 1 + x.shape[1]
        self.param_names = ("intercept",) + tuple(f"b[{f}]" for f in feature_names)

    def _eta(self, theta: torch.Tensor) -> torch.Tensor:
        return theta[..., :1] + theta[..., 1:] @ self.x.T  # (m, n)

    def _log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        return (_normal_logpdf(theta[..., 0], 0.0, self.intercept_scale)
                + _normal_logpdf(theta[..., 1:], 0.0, self.slope_scale).sum(-1))

    def _numpyro_coefficients(self) -> tuple[Any, Any]:
        import numpyro
        import numpyro.distributions as dist

        a = numpyro.sample("intercept", dist.Normal(0.0, self.intercept_scale))
        b = numpyro.sample("b", dist.Normal(0.0, self.slope_scale).expand([self.dim - 1]).to_event(1))
        return a, b

    def unconstrained_sites(self, theta: np.ndarray) -> dict[str, Any]:
        import jax.numpy as jnp

        theta = np.asarray(theta, dtype=np.float64)
        return {"intercept": jnp.asarray(theta[0]), "b": jnp.asarray(theta[1:])}

    def flatten_samples(self, samples: Mapping[str, np.ndarray]) -> np.ndarray:
        a = np.asarray(samples["intercept"])
        return np.concatenate([a[..., None], np.asarray(samples["b"])], axis=-1)


#: the breast-cancer features used: the ten "mean" measurements less perimeter and area (correlation
#: 0.99+ with radius: they add ridges, not information), plus the radius and texture standard errors
BREAST_CANCER_FEATURES = (
    "mean radius", "mean texture", "mean smoothness", "mean compactness", "mean concavity",
    "mean concave points", "mean symmetry", "mean fractal dimension", "radius error", "texture error",
)


class LogisticBreastCancer(_GLM):
    """Logistic regression on scikit-learn's breast-cancer data (569 tumours, target 1 = benign) with the
    10 standardised :data:`BREAST_CANCER_FEATURES`; ``theta = (intercept, b_1..b_10)``, d = 11.
    Prior: intercept N(0, 2.5^2), slopes N(0, 1), independent."""

    name = "logistic_breast_cancer"

    def __init__(self) -> None:
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        names = [str(f) for f in data.feature_names]
        cols = [names.index(f) for f in BREAST_CANCER_FEATURES]
        super().__init__(data.data[:, cols], data.target, BREAST_CANCER_FEATURES)

    def log_density_unnormalised(self, theta: torch.Tensor) -> torch.Tensor:
        """(m, 11) -> (m,): ``sum_i [y_i eta_i - log(1 + exp(eta_i))]`` plus the log prior."""
        theta = self._as_theta(theta)
        eta = self._eta(theta)
        loglik = (self.y * eta - torch.nn.functional.softplus(eta)).sum(-1)
        return loglik + self._log_prior(theta)

    def numpyro_model(self) -> None:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        a, b = self._numpyro_coefficients()
        eta = a + jnp.asarray(self.x_np) @ b
        with numpyro.plate("data", len(self.y_np)):
            numpyro.sample("y", dist.Bernoulli(logits=eta), obs=jnp.asarray(self.y_np))


#: the Linnerud predictors of chin-ups: the three physiological measurements and the other two exercises
LINNERUD_FEATURES = ("Weight", "Waist", "Pulse", "Situps", "Jumps")


class PoissonLinnerud(_GLM):
    """Poisson regression of chin-ups (counts 1..17) on scikit-learn's Linnerud data (20 middle-aged men):
    ``Chins_i ~ Poisson(exp(a + x_i b))`` with the 5 standardised :data:`LINNERUD_FEATURES`;
    ``theta = (a, b_1..b_5)``, d = 6. Prior: intercept N(0, 2.5^2), slopes N(0, 1). Twenty points and
    six parameters: the prior matters; the posterior is close to Gaussian (marginal |skew| < 0.1)
    but correlated."""

    name = "poisson_linnerud"

    def __init__(self) -> None:
        from sklearn.datasets import load_linnerud

        data = load_linnerud()
        exercise = {str(k): data.data[:, i] for i, k in enumerate(data.feature_names)}
        body = {str(k): data.target[:, i] for i, k in enumerate(data.target_names)}
        columns = {**exercise, **body}
        x = np.stack([columns[f] for f in LINNERUD_FEATURES], axis=1)
        super().__init__(x, exercise["Chins"], LINNERUD_FEATURES)
        self._lgamma_y1 = float(torch.lgamma(self.y + 1).sum())

    def log_density_unnormalised(self, theta: torch.Tensor) -> torch.Tensor:
        """(m, 6) -> (m,): ``sum_i [y_i eta_i - exp(eta_i) - log y_i!]`` plus the log prior."""
        theta = self._as_theta(theta)
        eta = self._eta(theta)
        loglik = (self.y * eta - torch.exp(eta)).sum(-1) - self._lgamma_y1
        return loglik + self._log_prior(theta)

    def numpyro_model(self) -> None:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        a, b = self._numpyro_coefficients()
        eta = a + jnp.asarray(self.x_np) @ b
        with numpyro.plate("data", len(self.y_np)):
            numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=jnp.asarray(self.y_np))


#: eight schools (Rubin 1981; Gelman et al., Bayesian Data Analysis, Table 5.2): estimated coaching
#: effects and their standard errors
EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


class EightSchoolsNoncentred(Posterior):
    """Eight schools, non-centred: ``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``, ``eta_j ~ N(0, 1)``,
    ``y_j ~ N(mu + tau eta_j, sigma_j^2)``; ``theta = (mu, log tau, eta_1..eta_8)``, d = 10.

    The density is on ``log tau`` (NumPyro's unconstraining map for a positive site), so it includes the
    log-Jacobian ``log tau``. Its left tail in ``log tau`` is long (tau near 0 is plausible): the
    cached draws' ``log tau`` marginal has skewness -1.4 and excess kurtosis 3.7, where the two
    regressions' marginals are near Gaussian (|skew| < 0.15).
    """

    name = "eight_schools_noncentred"
    dim = 10
    param_names = ("mu", "log_tau") + tuple(f"eta[{j}]" for j in range(8))
    mu_scale = 5.0
    tau_scale = 5.0

    def __init__(self) -> None:
        self.y = torch.tensor(EIGHT_SCHOOLS_Y, dtype=torch.float64)
        self.sigma = torch.tensor(EIGHT_SCHOOLS_SIGMA, dtype=torch.float64)

    def log_density_unnormalised(self, theta: torch.Tensor) -> torch.Tensor:
        """(m, 10) -> (m,): log N(mu) + log HalfCauchy(tau) + log tau + sum log N(eta) + sum log N(y)."""
        theta = self._as_theta(theta)
        mu, log_tau, eta = theta[..., 0], theta[..., 1], theta[..., 2:]
        tau = torch.exp(log_tau)
        lp_tau = (math.log(2 / (math.pi * self.tau_scale)) - torch.log1p((tau / self.tau_scale) ** 2)
                  + log_tau)  # HalfCauchy density, then the Jacobian d tau / d log tau = tau
        lp = _normal_logpdf(mu, 0.0, self.mu_scale) + lp_tau + _normal_logpdf(eta, 0.0, 1.0).sum(-1)
        return lp + _normal_logpdf(self.y, mu[..., None] + tau[..., None] * eta, self.sigma).sum(-1)

    def numpyro_model(self) -> None:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        mu = numpyro.sample("mu", dist.Normal(0.0, self.mu_scale))
        tau = numpyro.sample("tau", dist.HalfCauchy(self.tau_scale))
        with numpyro.plate("school", 8):
            eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(mu + tau * eta, jnp.asarray(EIGHT_SCHOOLS_SIGMA)),
                           obs=jnp.asarray(EIGHT_SCHOOLS_Y))

    def unconstrained_sites(self, theta: np.ndarray) -> dict[str, Any]:
        import jax.numpy as jnp

        theta = np.asarray(theta, dtype=np.float64)
        return {"mu": jnp.asarray(theta[0]), "tau": jnp.asarray(theta[1]), "eta": jnp.asarray(theta[2:])}

    def flatten_samples(self, samples: Mapping[str, np.ndarray]) -> np.ndarray:
        mu, tau = np.asarray(samples["mu"]), np.asarray(samples["tau"])
        return np.concatenate([mu[..., None], np.log(tau)[..., None], np.asarray(samples["eta"])], axis=-1)


#: name -> constructor (constructing loads the data set, so it is deferred until asked for)
POSTERIORS: dict[str, Callable[[], Posterior]] = {
    LogisticBreastCancer.name: LogisticBreastCancer,
    PoissonLinnerud.name: PoissonLinnerud,
    EightSchoolsNoncentred.name: EightSchoolsNoncentred,
}


def posterior_names() -> list[str]:
    """The names of :data:`POSTERIORS`, in order."""
    return list(POSTERIORS)


def get_posterior(name: str) -> Posterior:
    """A fresh :class:`Posterior` by name."""
    if name not in POSTERIORS:
        raise KeyError(f"unknown posterior {name!r}; known: {', '.join(POSTERIORS)}")
    return POSTERIORS[name]()


def _open_npz(name: str) -> Any:
    if name not in POSTERIORS:
        raise KeyError(f"unknown posterior {name!r}; known: {', '.join(POSTERIORS)}")
    # importlib.resources also works when the package is installed as a zip or wheel.
    resource = importlib.resources.files(__package__).joinpath("data", f"{name}.npz")
    if not resource.is_file():
        raise FileNotFoundError(f"no cached draws for {name!r} at {resource}; run benchmarks/make_posteriors.py")
    with resource.open("rb") as fh:
        with np.load(fh, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def load_posterior_draws(name: str) -> np.ndarray:
    """(N_DRAWS, d) float64 cached NUTS draws of posterior ``name`` (stored as float32, so exact float64
    copies of float32 values), in a seeded random order across chains: the first :data:`N_CONTEXT`
    are the benchmark's context, the rest its held-out queries."""
    return _open_npz(name)["draws"].astype(np.float64)


def load_posterior_metadata(name: str) -> dict[str, Any]:
    """The cached file's metadata as Python scalars/strings: n_draws, seed, chains, warmup, thinning,
    numpyro and jax versions, rhat_max, ess_min (bulk ESS over coordinates), divergences, date, etc."""
    out: dict[str, Any] = {}
    for key, value in _open_npz(name).items():
        if key == "draws":
            continue
        out[key] = value.item() if value.ndim == 0 else value.tolist()
    return out
