"""The conjugate Gaussian check for a prior known only through samples.

Shared by the BlackJAX, NumPyro and Pyro adapter tests and by the benchmark's ``ppl`` suite, so
both measure the same thing. The problem and the error measures need numpy only; :func:`nuts_draws`
imports its host library when called.

The problem: a prior ``N(mu0, Sigma0)`` known only through ``n`` samples, ``k`` observations
``y_i ~ N(theta, noise_sd^2 I)``. Two reference posteriors:

* :meth:`ConjugateProblem.posterior` -- the analytic one for the true Gaussian prior;
* :meth:`ConjugateProblem.mixture_posterior` -- the exact one for a Gaussian-mixture prior
  ``sum_j w_j N(c_j, H)`` (a fitted KDE is one), so a sampler can be checked against the density it
  was actually given, with Monte-Carlo error as the only tolerance. The gap between the two is the
  estimator's own error (for a KDE: sampling noise plus the ``(1 + h^2)`` covariance inflation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ConjugateProblem", "make_problem", "MomentErrors", "moment_errors", "kde_reference",
           "importance_reference", "own_reference", "posterior_gap", "estimator_gap", "ula_stationary_cov", "HOSTS", "nuts_draws"]


def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    return top + float(np.log(np.sum(np.exp(values - top))))


@dataclass(frozen=True)
class ConjugateProblem:
    """Prior ``N(prior_mean, prior_cov)`` seen through ``prior_samples`` (n, d) float64, and
    ``observations`` (k, d) of ``N(theta, noise_sd^2 I)``."""

    prior_mean: np.ndarray  # (d,)
    prior_cov: np.ndarray  # (d, d)
    noise_sd: float
    observations: np.ndarray  # (k, d)
    prior_samples: np.ndarray  # (n, d) float64

    @property
    def dim(self) -> int:
        """Dimension ``d`` of ``theta`` (the length of ``prior_mean``)."""
        return self.prior_mean.shape[0]

    def log_likelihood(self, theta: Any, xp: Any = np) -> Any:
        """``sum_i log N(y_i; theta, noise_sd^2 I)`` up to a constant, for ``theta`` (d,), with the
        array module ``xp`` (numpy, ``jax.numpy`` or ``torch``) so any host can differentiate it."""
        return -0.5 * xp.sum((xp.asarray(self.observations) - theta) ** 2) / self.noise_sd ** 2

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Analytic posterior (mean (d,), covariance (d, d)) under the true Gaussian prior."""
        k, d = self.observations.shape
        precision = np.linalg.inv(self.prior_cov) + k / self.noise_sd ** 2 * np.eye(d)
        cov = np.linalg.inv(precision)
        mean = cov @ (np.linalg.solve(self.prior_cov, self.prior_mean)
                      + self.observations.sum(0) / self.noise_sd ** 2)
        return mean, cov

    def mixture_posterior(self, centres: np.ndarray, kernel_cov: np.ndarray,
                          log_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior moments under the prior ``sum_j w_j N(centres_j, kernel_cov)``.

        Args:
            centres: (n, d) component means. kernel_cov: (d, d) shared component covariance.
            log_weights: (n,) log mixture weights (default: equal weights).
        Returns:
            (mean (d,), covariance (d, d)), float64.
        """
        k, d = self.observations.shape
        n = centres.shape[0]
        lw = np.full(n, -np.log(n)) if log_weights is None else np.asarray(log_weights)
        lik_cov = self.noise_sd ** 2 / k * np.eye(d)  # the likelihood as a function of theta
        y_bar = self.observations.mean(0)
        kernel_prec = np.linalg.inv(kernel_cov)
        comp_cov = np.linalg.inv(kernel_prec + np.linalg.inv(lik_cov))
        comp_means = (centres @ kernel_prec + y_bar @ np.linalg.inv(lik_cov)) @ comp_cov
        # component weights: w_j N(y_bar; c_j, H + noise^2/k I)
        marg = kernel_cov + lik_cov
        diff = y_bar - centres
        log_resp = lw - 0.5 * np.einsum("nd,de,ne->n", diff, np.linalg.inv(marg), diff)
        resp = np.exp(log_resp - _logsumexp(log_resp))
        mean = resp @ comp_means
        spread = comp_means - mean
        return mean, comp_cov + (resp[:, None] * spread).T @ spread


def make_problem(dim: int, n_samples: int = 4000, n_obs: int = 2, seed: int = 0) -> ConjugateProblem:
    """A correlated prior whose mean is 1.5 prior sds from the truth, so that the posterior sits
    well away from both the prior mean and the data mean (ignoring either is detectable).
    Deterministic given ``seed`` (numpy ``default_rng``); noise sd 1."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    prior_cov = a @ a.T + 0.5 * np.eye(dim)
    prior_mean = rng.normal(size=dim)
    noise_sd = 1.0
    theta_true = prior_mean + 1.5 * np.linalg.cholesky(prior_cov) @ rng.normal(size=dim)
    observations = theta_true + noise_sd * rng.normal(size=(n_obs, dim))
    prior_samples = rng.multivariate_normal(prior_mean, prior_cov, size=n_samples)
    return ConjugateProblem(prior_mean, prior_cov, noise_sd, observations, prior_samples)


def ula_stationary_cov(cov: np.ndarray, step_size: float) -> np.ndarray:
    """Stationary covariance of unadjusted Langevin with step ``h`` on a Gaussian N(m, Sigma):
    ``Sigma (I - h Sigma^-1 / 2)^-1`` (the O(h) bias ULA carries; the mean is unbiased)."""
    d = cov.shape[0]
    return cov @ np.linalg.inv(np.eye(d) - 0.5 * step_size * np.linalg.inv(cov))


@dataclass(frozen=True)
class MomentErrors:
    """Errors of sampled moments against a reference.

    ``mean_z``: max over coordinates of ``|mean error| / (sd / sqrt(ESS))`` (standard errors).
    ``cov_z``: max over entries of the whitened covariance error ``|W C_hat W^T - I|`` divided by
    its standard error ``sqrt(2 / ESS)`` (diagonal) or ``sqrt(1 / ESS)`` (off-diagonal), with ESS
    the smallest over the squared whitened coordinates.
    ``mean_err``: max absolute mean error in reference sds; ``cov_rel``: relative Frobenius error.
    ``mean_se``: Monte-Carlo standard error of one mean coordinate in sds, ``1 / sqrt(ess_mean)``
    (the scale of ``mean_err``). ``cov_se``: the root-mean-square ``cov_rel`` of a sample covariance
    of ``ess_cov`` independent draws from the reference Gaussian,
    ``sqrt((1 + tr(C)^2 / |C|_F^2) / ess_cov)`` (Wishart variances ``(C_ij^2 + C_ii C_jj) / n``).
    """

    mean_z: float
    cov_z: float
    mean_err: float
    cov_rel: float
    ess_mean: float
    ess_cov: float
    mean_se: float
    cov_se: float


def moment_errors(draws: np.ndarray, mean: np.ndarray, cov: np.ndarray,
                  ess: Callable[[np.ndarray], np.ndarray]) -> MomentErrors:
    """Compare ``draws`` (chains, draws, d) with reference moments ``mean`` (d,), ``cov`` (d, d).

    ``ess`` maps (chains, draws, k) to per-column effective sample sizes (the host library's own).
    """
    chains, n, d = draws.shape
    flat = draws.reshape(-1, d)
    whiten = np.linalg.inv(np.linalg.cholesky(cov))
    z = (draws - mean) @ whiten.T  # ~ N(0, I) under the reference
    ess_mean = float(np.min(ess(z)))
    ess_cov = float(np.min(ess(z ** 2)))
    sd = np.sqrt(np.diag(cov))
    mean_err = np.abs(flat.mean(0) - mean)
    mean_z = float(np.max(mean_err / (sd / np.sqrt(ess_mean))))
    zc = z.reshape(-1, d)
    cov_w = zc.T @ zc / zc.shape[0] - np.outer(zc.mean(0), zc.mean(0))
    se = np.where(np.eye(d, dtype=bool), np.sqrt(2.0 / ess_cov), np.sqrt(1.0 / ess_cov))
    cov_z = float(np.max(np.abs(cov_w - np.eye(d)) / se))
    cov_hat = np.cov(flat.T)
    cov_norm = np.linalg.norm(cov)
    cov_rel = float(np.linalg.norm(cov_hat - cov) / cov_norm)
    cov_se = float(np.sqrt((1.0 + np.trace(cov) ** 2 / cov_norm ** 2) / ess_cov))
    return MomentErrors(mean_z, cov_z, float(np.max(mean_err / sd)), cov_rel, ess_mean, ess_cov,
                        float(1.0 / np.sqrt(ess_mean)), cov_se)


def kde_reference(problem: ConjugateProblem, oracle: Any) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior moments for a fitted :class:`disco_score.KDEOracle` prior."""
    return problem.mixture_posterior(np.asarray(oracle.samples, dtype=np.float64),
                                     np.asarray(oracle.kernel_covariance, dtype=np.float64),
                                     np.asarray(oracle.log_weights, dtype=np.float64))


def importance_reference(problem: ConjugateProblem, log_prior: Callable[[np.ndarray], np.ndarray], *,
                         n_draws: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Posterior moments under any prior density, by self-normalised importance sampling.

    The proposal is the analytic posterior with its covariance doubled (it covers any prior close
    to the true one); ``log_prior`` maps (n_draws, d) float64 to (n_draws,) log-densities, up to a
    constant. Returns (mean (d,), covariance (d, d), the importance sample's effective size); the
    mean's own error is about one posterior sd / sqrt(effective size).
    """
    mean, cov = problem.posterior()
    d = problem.dim
    proposal_cov = 2.0 * cov
    chol = np.linalg.cholesky(proposal_cov)
    white = np.random.default_rng(seed).normal(size=(n_draws, d))
    theta = mean + white @ chol.T
    log_q = -0.5 * np.sum(white ** 2, axis=1)  # up to a constant: self-normalised weights ignore it
    log_lik = -0.5 * np.sum((problem.observations[None, :, :] - theta[:, None, :]) ** 2, axis=(1, 2)) \
        / problem.noise_sd ** 2
    log_w = np.asarray(log_prior(theta), dtype=np.float64) + log_lik - log_q
    if not np.all(np.isfinite(log_w)):
        raise ValueError("log_prior returned non-finite values on the importance sample")
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    post_mean = w @ theta
    spread = theta - post_mean
    return post_mean, (w[:, None] * spread).T @ spread, float(1.0 / np.sum(w ** 2))


def own_reference(problem: ConjugateProblem, oracle: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Posterior moments under the prior density ``oracle`` actually gives a sampler: exact for a
    fitted KDE (:func:`kde_reference`), by :func:`importance_reference` on ``oracle.log_density``
    otherwise (``kwargs`` go there)."""
    if hasattr(oracle, "kernel_covariance"):
        return kde_reference(problem, oracle)
    mean, cov, _ = importance_reference(
        problem, lambda theta: np.asarray(oracle.log_density(theta), dtype=np.float64), **kwargs)
    return mean, cov


def posterior_gap(problem: ConjugateProblem, mean: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """(max |mean gap| in true-posterior sds, relative covariance gap) between posterior moments
    ``mean`` (d,), ``cov`` (d, d) and the true-prior analytic posterior."""
    true_mean, true_cov = problem.posterior()
    return (float(np.max(np.abs(mean - true_mean) / np.sqrt(np.diag(true_cov)))),
            float(np.linalg.norm(cov - true_cov) / np.linalg.norm(true_cov)))


def estimator_gap(problem: ConjugateProblem, oracle: Any, **kwargs: Any) -> tuple[float, float]:
    """:func:`posterior_gap` of the posterior under the fitted prior (:func:`own_reference`): the
    estimator's own error, before any sampling."""
    return posterior_gap(problem, *own_reference(problem, oracle, **kwargs))


#: hosts :func:`nuts_draws` knows
HOSTS = ("blackjax", "numpyro", "pyro")


def nuts_draws(host: str, problem: ConjugateProblem, estimator: Any, *, chains: int = 4, warmup: int = 200,
               draws: int = 300, seed: int = 0) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """NUTS on (sample-based prior from ``estimator``) x Gaussian likelihood in one host library.

    Each host is driven the way its users write it: BlackJAX with window adaptation and ``vmap``-ed
    chains on :func:`disco_score.integrations.blackjax.logdensity_fn`; NumPyro and Pyro with the
    ``EmpiricalDistribution`` prior inside a model (the issue's contract). Pyro runs one chain of
    ``chains * draws`` draws (its multi-chain mode forks processes).

    Returns:
        (draws (chains, draws, d) float64, the host's effective-sample-size function for
        :func:`moment_errors`).
    """
    if host == "blackjax":
        return _blackjax_nuts(problem, estimator, chains, warmup, draws, seed)
    if host == "numpyro":
        return _numpyro_nuts(problem, estimator, chains, warmup, draws, seed)
    if host == "pyro":
        return _pyro_nuts(problem, estimator, chains, warmup, draws, seed)
    raise ValueError(f"host must be one of {HOSTS}; got {host!r}")


def _blackjax_nuts(problem: ConjugateProblem, estimator: Any, chains: int, warmup: int, draws: int,
                   seed: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    import blackjax
    import jax
    import jax.numpy as jnp

    from disco_score.base import Oracle

    from .blackjax import logdensity_fn

    oracle = estimator if isinstance(estimator, Oracle) else estimator.fit(problem.prior_samples)
    log_prior = logdensity_fn(oracle)

    def logpost(theta: Any) -> Any:
        return log_prior(theta) + problem.log_likelihood(theta, jnp)

    key_warmup, key_start, key_run = jax.random.split(jax.random.key(seed), 3)
    warm = blackjax.window_adaptation(blackjax.nuts, logpost)
    (state, params), _ = warm.run(key_warmup, jnp.asarray(problem.prior_samples.mean(0), jnp.float32),
                                  num_steps=warmup)
    nuts = blackjax.nuts(logpost, **params)
    starts = state.position + 0.3 * jax.random.normal(key_start, (chains, problem.dim))

    @jax.jit
    def run(key: Any) -> Any:
        def one_step(states: Any, key: Any) -> Any:
            states, _ = jax.vmap(nuts.step)(jax.random.split(key, chains), states)
            return states, states.position

        _, positions = jax.lax.scan(one_step, jax.vmap(nuts.init)(starts), jax.random.split(key, draws))
        return positions

    out = np.asarray(run(key_run)).transpose(1, 0, 2).astype(np.float64)
    return out, lambda x: np.asarray(blackjax.ess(jnp.asarray(x), chain_axis=0, sample_axis=1))


def _numpyro_nuts(problem: ConjugateProblem, estimator: Any, chains: int, warmup: int, draws: int,
                  seed: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.diagnostics import effective_sample_size
    from numpyro.infer import MCMC, NUTS

    from .numpyro import EmpiricalDistribution

    def model(y: Any) -> None:
        theta = numpyro.sample("theta", EmpiricalDistribution(problem.prior_samples, estimator))
        numpyro.sample("y", dist.Normal(theta, problem.noise_sd).to_event(1), obs=y)

    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), jnp.asarray(problem.observations, dtype=jnp.float32))
    out = np.asarray(mcmc.get_samples(group_by_chain=True)["theta"], dtype=np.float64)
    return out, lambda x: np.asarray(effective_sample_size(np.asarray(x)))


def _pyro_nuts(problem: ConjugateProblem, estimator: Any, chains: int, warmup: int, draws: int,
               seed: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import MCMC, NUTS
    from pyro.ops.stats import effective_sample_size

    from .pyro import EmpiricalDistribution

    def model(y: Any) -> None:
        theta = pyro.sample("theta", EmpiricalDistribution(problem.prior_samples, estimator))
        pyro.sample("y", dist.Normal(theta, problem.noise_sd).to_event(1), obs=y)

    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model), num_samples=chains * draws, warmup_steps=warmup, disable_progbar=True)
    mcmc.run(torch.tensor(problem.observations, dtype=torch.float32))
    out = mcmc.get_samples(group_by_chain=True)["theta"].double().numpy()
    return out, lambda x: effective_sample_size(torch.as_tensor(x), chain_dim=0, sample_dim=1).numpy()
