"""BlackJAX adapter: the JAX log-density bridge and the score-only Langevin sampler.

Reference answers: the oracle itself (values, scores), finite differences, and exact posterior
moments of the conjugate problem in tests/_conjugate.py.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
blackjax = pytest.importorskip("blackjax")
import jax.numpy as jnp  # noqa: E402

from _conjugate import Z_TOL, NaNOracle, check_posterior_draws  # noqa: E402
from disco_score.integrations._conjugate import (  # noqa: E402
    make_problem,
    moment_errors,
    nuts_draws,
    ula_stationary_cov,
)
from disco_score import KDE  # noqa: E402
from disco_score.base import Oracle  # noqa: E402
from disco_score.integrations.blackjax import (  # noqa: E402
    logdensity_fn,
    score_fn,
    unadjusted_langevin,
)



def _ess(draws: np.ndarray) -> np.ndarray:
    return np.asarray(blackjax.ess(jnp.asarray(draws), chain_axis=0, sample_axis=1))


@pytest.fixture(scope="module")
def problem():
    return make_problem(2)


@pytest.fixture(scope="module")
def oracle(problem):
    return KDE("scott").fit(problem.prior_samples)


def test_logdensity_matches_oracle_and_gradient_is_score(oracle):
    logp = logdensity_fn(oracle)
    x = np.array([[0.3, -0.2], [1.5, 0.7], [-2.0, 1.0]], dtype=np.float32)
    values = jax.jit(jax.vmap(logp))(jnp.asarray(x))
    grads = jax.jit(jax.vmap(jax.grad(logp)))(jnp.asarray(x))
    assert values.dtype == jnp.float32 and values.shape == (3,)
    np.testing.assert_allclose(values, oracle.log_density(x.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grads, oracle.score(x.astype(np.float64)), rtol=1e-4, atol=1e-5)
    # a single point gives a scalar, as BlackJAX expects
    assert logp(jnp.asarray(x[0])).shape == ()
    np.testing.assert_allclose(score_fn(oracle)(jnp.asarray(x)), grads, rtol=1e-5, atol=1e-6)


def test_float64_with_x64_and_gradient_matches_finite_differences(oracle):
    with jax.enable_x64(True):
        logp = logdensity_fn(oracle)
        x = jnp.array([0.4, -0.3], dtype=jnp.float64)
        value, grad = jax.jit(jax.value_and_grad(logp))(x)
        assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
        eps = 1e-6
        fd = [(logp(x + eps * e) - logp(x - eps * e)) / (2 * eps) for e in jnp.eye(2)]
        np.testing.assert_allclose(grad, np.array(fd), rtol=1e-6, atol=1e-8)
        # jvp (forward mode) agrees with the reverse-mode gradient
        _, tangent = jax.jvp(logp, (x,), (jnp.array([1.0, 2.0]),))
        np.testing.assert_allclose(tangent, grad @ jnp.array([1.0, 2.0]), rtol=1e-12)


def test_vmap_makes_one_host_call_per_batch(oracle):
    calls = []

    class Counting(Oracle):
        dim, compute_dtype, device = oracle.dim, oracle.compute_dtype, oracle.device

        def _log_density_and_score(self, y, want_score=True):
            calls.append(y.shape[0])
            return oracle._log_density_and_score(y, want_score)

        def _smoothed(self, sigma):
            raise NotImplementedError

    logp = logdensity_fn(Counting())
    jax.jit(jax.vmap(jax.value_and_grad(logp)))(jnp.zeros((7, 2)))
    assert calls == [7]


@pytest.mark.parametrize("dim", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_nuts_window_adaptation_matches_conjugate_posterior(dim):
    """NUTS on (Scott KDE of 4000 prior samples) x Gaussian likelihood, 4 vmapped chains."""
    problem = make_problem(dim)
    oracle = KDE("scott").fit(problem.prior_samples)
    samples, ess = nuts_draws("blackjax", problem, oracle, chains=4, warmup=200, draws=300)
    check_posterior_draws("blackjax NUTS", problem, oracle, samples, ess)


@pytest.mark.parametrize("algorithm", ["hmc", "mala"])
def test_hmc_and_mala_accept_the_logdensity(oracle, algorithm):
    """The oracle density alone as target: short vmapped runs keep the KDE's mean."""
    logp = logdensity_fn(oracle)
    if algorithm == "hmc":
        kernel = blackjax.hmc(logp, step_size=0.3, inverse_mass_matrix=jnp.ones(2), num_integration_steps=5)
    else:
        kernel = blackjax.mala(logp, step_size=0.3)
    chains, steps = 8, 150
    mean = np.asarray(oracle.samples, dtype=np.float64).mean(0)

    @jax.jit
    def run(key):
        def one_step(states, key):
            states, info = jax.vmap(kernel.step)(jax.random.split(key, chains), states)
            return states, (states.position, info.acceptance_rate)

        starts = jnp.asarray(mean, jnp.float32) + jax.random.normal(jax.random.key(3), (chains, 2))
        _, out = jax.lax.scan(one_step, jax.vmap(kernel.init)(starts), jax.random.split(key, steps))
        return out

    positions, acceptance = run(jax.random.key(4))
    assert float(acceptance.mean()) > 0.5
    draws = np.asarray(positions[steps // 3:]).reshape(-1, 2)
    sd = np.sqrt(np.diag(np.cov(np.asarray(oracle.samples, dtype=np.float64).T)))
    assert np.all(np.abs(draws.mean(0) - mean) < 0.35 * sd)


def test_unadjusted_langevin_samples_the_kde_with_score_only(oracle):
    """ULA on the oracle alone; stationary moments = the KDE mixture's, up to O(step) bias."""
    step_size = 0.02
    ula = unadjusted_langevin(oracle, step_size)
    chains, steps, burn = 16, 400, 100
    samples = np.asarray(oracle.samples, dtype=np.float64)
    kde_mean = samples.mean(0)
    kde_cov = np.cov(samples.T, bias=True) + np.asarray(oracle.kernel_covariance)

    @jax.jit
    def run(key):
        def one_step(states, key):
            states, info = jax.vmap(ula.step)(jax.random.split(key, chains), states)
            return states, states.position

        starts = jnp.broadcast_to(jnp.asarray(kde_mean, jnp.float32), (chains, 2))
        _, positions = jax.lax.scan(one_step, jax.vmap(ula.init)(starts), jax.random.split(key, steps))
        return positions

    draws = np.asarray(run(jax.random.key(5)))[burn:].transpose(1, 0, 2).astype(np.float64)
    # ULA is O(step_size)-biased (~2% in variance here); compare with its Gaussian stationary law
    err = moment_errors(draws, kde_mean, ula_stationary_cov(kde_cov, step_size), _ess)
    assert err.mean_z < Z_TOL and err.cov_z < Z_TOL, err


def test_nan_position_raises_not_nan_chain(oracle):
    logp = logdensity_fn(oracle)
    with pytest.raises(Exception, match="non-finite position"):
        jax.jit(jax.grad(logp))(jnp.array([jnp.nan, 0.0]))


def test_oracle_returning_nan_stops_nuts(oracle):
    healthy = blackjax.nuts(logdensity_fn(oracle), step_size=0.5, inverse_mass_matrix=jnp.ones(2))
    broken = blackjax.nuts(logdensity_fn(NaNOracle()), step_size=0.5, inverse_mass_matrix=jnp.ones(2))
    state = healthy.init(jnp.zeros(2))
    with pytest.raises(Exception, match="oracle returned a non-finite log-density"):
        jax.jit(broken.step)(jax.random.key(0), state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="samples"):
        logdensity_fn(KDE())  # an estimator without samples
    with pytest.raises(ValueError, match="shape"):
        logdensity_fn(KDE().fit(np.random.default_rng(0).normal(size=(50, 2))))(jnp.zeros(3))
    with pytest.raises(ValueError, match="step_size"):
        unadjusted_langevin(lambda x: -x, step_size=-1.0)
    with pytest.raises(TypeError, match="score"):
        unadjusted_langevin("not a score", step_size=0.1)
