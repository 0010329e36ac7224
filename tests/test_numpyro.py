"""NumPyro adapter: EmpiricalDistribution in a model under NUTS, potential_fn, the Langevin kernel.

Reference answers: exact posterior moments of the conjugate problem (tests/_conjugate.py) and the
oracle's own values and scores.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.diagnostics import effective_sample_size  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from _conjugate import KDE_GAP_BOUND, Z_TOL, NaNOracle, check_posterior_draws  # noqa: E402
from disco_score.integrations._conjugate import (  # noqa: E402
    estimator_gap,
    kde_reference,
    make_problem,
    moment_errors,
    nuts_draws,
    ula_stationary_cov,
)
from disco_score import KDE  # noqa: E402
from disco_score.integrations.numpyro import EmpiricalDistribution, Langevin, potential_fn  # noqa: E402



@pytest.fixture(scope="module")
def problem():
    return make_problem(2)


@pytest.fixture(scope="module")
def estimator():
    return KDE("scott")


def conjugate_model(prior_samples, estimator):
    """The issue's contract, verbatim apart from the explicit estimator."""

    def model(y):
        theta = numpyro.sample("theta", EmpiricalDistribution(prior_samples, estimator))
        numpyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)

    return model


def test_distribution_shapes_log_prob_and_sampling(problem, estimator):
    prior = EmpiricalDistribution(problem.prior_samples, estimator)
    assert prior.event_shape == (2,) and prior.batch_shape == ()
    assert prior.support is dist.constraints.real_vector
    x = np.array([[0.1, 0.2], [1.0, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(prior.log_prob(jnp.asarray(x)), prior.oracle.log_density(x.astype(np.float64)),
                               rtol=1e-5)
    grad = jax.grad(lambda v: prior.log_prob(v).sum())(jnp.asarray(x))
    np.testing.assert_allclose(grad, prior.oracle.score(x.astype(np.float64)), rtol=1e-4, atol=1e-5)
    draws = prior.sample(jax.random.key(0), (5, 3))
    assert draws.shape == (5, 3, 2)
    # resampling: every draw is one of the samples
    pool = np.asarray(problem.prior_samples, dtype=np.float32)
    assert all(np.any(np.all(pool == d, axis=1)) for d in np.asarray(draws).reshape(-1, 2))
    np.testing.assert_allclose(prior.mean, problem.prior_samples.mean(0), rtol=1e-5)
    # the fit is cached: a model rebuilding the distribution on every trace fits once
    assert EmpiricalDistribution(problem.prior_samples, estimator).oracle is prior.oracle


def test_x64_log_prob_is_float64_and_exact(problem, estimator):
    with jax.enable_x64(True):
        prior = EmpiricalDistribution(problem.prior_samples, estimator)
        x = jnp.array([0.3, -0.4], dtype=jnp.float64)
        value, grad = jax.value_and_grad(prior.log_prob)(x)
        assert value.dtype == jnp.float64
        np.testing.assert_allclose(value, prior.oracle.log_density(np.array(x)), rtol=1e-12)
        np.testing.assert_allclose(grad, prior.oracle.score(np.array(x)), rtol=1e-10)


@pytest.mark.parametrize("dim", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_contract_nuts_matches_conjugate_posterior(dim, estimator):
    """NUTS, 4 vectorized chains: likelihood x sample-based prior = the analytic posterior."""
    problem = make_problem(dim)
    draws, ess = nuts_draws("numpyro", problem, estimator, chains=4, warmup=200, draws=300)
    oracle = EmpiricalDistribution(problem.prior_samples, estimator).oracle
    check_posterior_draws("numpyro NUTS", problem, oracle, draws, ess)


@pytest.mark.parametrize("dim", [2, 5])
def test_scott_kde_prior_moves_the_posterior_little(dim, estimator):
    """The estimator's own error, without sampling: exact posterior under the fitted KDE prior vs
    the true-prior analytic posterior (what the NUTS draws are compared with besides)."""
    problem = make_problem(dim)
    mean_gap, cov_gap = estimator_gap(problem, estimator.fit(problem.prior_samples))
    mean_bound, cov_bound = KDE_GAP_BOUND[dim]
    assert mean_gap < mean_bound and cov_gap < cov_bound, (mean_gap, cov_gap)


def test_langevin_kernel_with_model_and_with_potential(problem, estimator):
    """Unadjusted Langevin (score only) from a model, and from potential_fn on the prior alone."""
    model = conjugate_model(problem.prior_samples, estimator)
    step_size = 0.05
    mcmc = MCMC(Langevin(model, step_size=step_size), num_warmup=100, num_samples=400, num_chains=8,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(1), jnp.asarray(problem.observations, dtype=jnp.float32))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["theta"], dtype=np.float64)
    oracle = EmpiricalDistribution(problem.prior_samples, estimator).oracle
    mean, cov = kde_reference(problem, oracle)
    # ULA is O(step_size)-biased (here ~10% in variance); compare with its Gaussian stationary law
    err = moment_errors(draws, mean, ula_stationary_cov(cov, step_size), effective_sample_size)
    assert err.mean_z < Z_TOL and err.cov_z < Z_TOL, err

    prior_only = Langevin(potential_fn=potential_fn(oracle), step_size=0.05)
    mcmc = MCMC(prior_only, num_warmup=100, num_samples=300, progress_bar=False)
    mcmc.run(jax.random.key(2), init_params=jnp.asarray(problem.prior_mean, dtype=jnp.float32))
    draws = np.asarray(mcmc.get_samples(), dtype=np.float64)
    sd = np.sqrt(np.diag(problem.prior_cov))
    assert np.all(np.abs(draws.mean(0) - problem.prior_samples.mean(0)) < 0.5 * sd)


def test_potential_fn_is_negative_log_density(problem, estimator):
    oracle = estimator.fit(problem.prior_samples)
    u = potential_fn(oracle)
    x = jnp.array([0.5, 0.5])
    np.testing.assert_allclose(u(x), -oracle.log_density(np.asarray(x, dtype=np.float64)), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(u)(x), -oracle.score(np.asarray(x, dtype=np.float64)), rtol=1e-4)
    # estimator + samples fits (and caches) the same way
    assert float(potential_fn(estimator, problem.prior_samples)(x)) == pytest.approx(float(u(x)), rel=1e-6)


def test_nan_oracle_raises_instead_of_running(problem):
    model = conjugate_model(problem.prior_samples, NaNOracle())
    mcmc = MCMC(NUTS(model), num_warmup=10, num_samples=10, progress_bar=False)
    with pytest.raises(Exception, match="oracle returned a non-finite log-density"):
        mcmc.run(jax.random.key(0), jnp.asarray(problem.observations))


def test_bad_input(problem, estimator):
    prior = EmpiricalDistribution(problem.prior_samples, estimator)
    with pytest.raises(Exception, match="non-finite position"):
        prior.log_prob(jnp.array([jnp.nan, 0.0]))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        prior.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="samples must have shape"):
        EmpiricalDistribution(np.zeros(10), estimator)
    with pytest.raises(TypeError, match="estimator"):
        EmpiricalDistribution(problem.prior_samples, "kde")
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda s: EmpiricalDistribution(s, estimator).log_prob(jnp.zeros(2)))(
            jnp.asarray(problem.prior_samples))
    with pytest.raises(ValueError, match="exactly one"):
        Langevin()
