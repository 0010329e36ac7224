"""The integrations under each host's habits: JAX x64 on and off under jit/grad/vmap, half and
complex dtypes, torch float64 as the default dtype, empty batches, and Langevin kernels with a
step too large (ChainDiverged, never huge finite positions). KDE oracles throughout (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disco_score import KDE, ChainDiverged

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402


@pytest.fixture(scope="module")
def prior() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(300, 2))


@pytest.fixture(scope="module")
def oracle(prior):
    return KDE("scott").fit(prior)


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# -- the JAX bridge (BlackJAX and NumPyro share it) -------------------------------------------------

@pytest.mark.parametrize("x64", [False, True])
def test_bridge_under_jit_grad_vmap_with_x64_on_and_off(oracle, x64):
    pytest.importorskip("blackjax")
    from disco_score.integrations.blackjax import logdensity_fn

    x = np.array([[0.3, -0.2], [1.5, 0.7], [-2.0, 1.0]])
    with jax.enable_x64(x64):
        logp = logdensity_fn(oracle)
        dtype = jnp.float64 if x64 else jnp.float32
        points = jnp.asarray(x, dtype=dtype)
        values = jax.jit(jax.vmap(logp))(points)
        grads = jax.jit(jax.vmap(jax.grad(logp)))(points)
        assert values.dtype == dtype and grads.dtype == dtype and grads.shape == (3, 2)
        rtol = 1e-10 if x64 else 1e-5
        np.testing.assert_allclose(values, oracle.log_density(x), rtol=rtol)
        np.testing.assert_allclose(grads, oracle.score(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_positions_are_upcast_and_returned_in_their_dtype(oracle, dtype):
    pytest.importorskip("blackjax")
    from disco_score.integrations.blackjax import logdensity_fn, score_fn

    half = getattr(jnp, dtype)
    x = jnp.asarray([[0.25, -0.5], [1.0, 0.5]], dtype=half)
    logp = logdensity_fn(oracle)
    for value in (logp(x), jax.jit(logp)(x), jax.vmap(logp)(x)):
        assert value.dtype == half and value.shape == (2,)
        np.testing.assert_allclose(np.asarray(value, np.float64),
                                   oracle.log_density(np.asarray(x, np.float64)), rtol=2e-2)
    grad = jax.grad(lambda z: logp(z).sum())(x)
    assert grad.dtype == half and bool(jnp.isfinite(grad.astype(jnp.float32)).all())
    assert score_fn(oracle)(x).dtype == half


def test_complex_positions_raise_type_error_before_the_callback(oracle):
    pytest.importorskip("blackjax")
    from disco_score.integrations.blackjax import logdensity_fn, score_fn

    with pytest.raises(TypeError, match="positions must be real; got dtype complex64"):
        logdensity_fn(oracle)(jnp.ones(2, jnp.complex64))
    with pytest.raises(TypeError, match="positions must be real"):
        jax.jit(score_fn(oracle))(jnp.ones((3, 2), jnp.complex64))


def test_numpyro_log_prob_with_x64_on_and_off(prior):
    pytest.importorskip("numpyro")
    from disco_score.integrations.numpyro import EmpiricalDistribution

    x = np.array([[0.1, 0.2], [-1.0, 0.5]])
    for x64 in (False, True):
        with jax.enable_x64(x64):
            dist = EmpiricalDistribution(prior, KDE("scott"))
            dtype = jnp.float64 if x64 else jnp.float32
            value = jax.jit(dist.log_prob)(jnp.asarray(x, dtype))
            grad = jax.grad(lambda z: dist.log_prob(z).sum())(jnp.asarray(x, dtype))
            assert value.dtype == dtype and grad.dtype == dtype
            np.testing.assert_allclose(value, dist.oracle.log_density(x), rtol=1e-5)


# -- Langevin kernels with a step too large -----------------------------------------------------------

def test_blackjax_ula_with_a_huge_step_raises_chain_diverged(oracle):
    pytest.importorskip("blackjax")
    from disco_score.integrations.blackjax import unadjusted_langevin

    def run(step_size: float, n: int):
        ula = unadjusted_langevin(oracle, step_size)
        state, step, key = ula.init(jnp.zeros(2)), jax.jit(ula.step), jax.random.key(0)
        for _ in range(n):
            key, sub = jax.random.split(key)
            state, _ = step(sub, state)
        return state

    healthy = run(0.1, 100)
    assert int(healthy.step) == 100 and bool(jnp.all(jnp.abs(healthy.position) < 10))
    diverged = (ChainDiverged, jax.errors.JaxRuntimeError)  # under jit JAX wraps the callback's error
    with pytest.raises(diverged, match="ChainDiverged.*unadjusted_langevin, step .*step_size=5 is too large"):
        run(5.0, 100)


def test_numpyro_langevin_with_a_huge_step_raises_chain_diverged(oracle):
    pytest.importorskip("numpyro")
    from numpyro.infer import MCMC

    from disco_score.integrations.numpyro import Langevin, potential_fn

    def run(step_size: float):
        mcmc = MCMC(Langevin(potential_fn=potential_fn(oracle), step_size=step_size), num_warmup=0,
                    num_samples=100, progress_bar=False)
        mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
        return np.asarray(mcmc.get_samples())

    assert np.abs(run(0.1)).max() < 10
    diverged = (ChainDiverged, jax.errors.JaxRuntimeError)  # under jit JAX wraps the callback's error
    with pytest.raises(diverged, match="numpyro Langevin, step .*diverged.*step_size=5 is too large"):
        run(5.0)


def test_pyro_langevin_with_a_huge_step_raises_chain_diverged(oracle):
    pytest.importorskip("pyro")
    import pyro
    from pyro.infer import MCMC

    from disco_score.integrations.pyro import Langevin, potential_fn

    def run(step_size: float):
        pyro.set_rng_seed(0)
        mcmc = MCMC(Langevin(potential_fn=potential_fn(oracle), step_size=step_size), num_samples=100,
                    warmup_steps=0, initial_params={"theta": torch.zeros(2, dtype=torch.float64)},
                    disable_progbar=True)
        mcmc.run()
        return mcmc.get_samples()["theta"]

    assert float(run(0.1).abs().max()) < 10
    with pytest.raises(ChainDiverged, match=r"pyro Langevin, step \d+: .*diverged.*step_size=5 is too large"):
        run(5.0)


# -- Pyro ---------------------------------------------------------------------------------------------

def test_pyro_log_prob_on_an_empty_batch_is_empty(prior):
    pytest.importorskip("pyro")
    from disco_score.integrations.pyro import EmpiricalDistribution

    dist = EmpiricalDistribution(prior, KDE("scott"))
    for shape in ((0, 2), (3, 0, 2)):
        value = torch.zeros(shape, requires_grad=True)
        out = dist.log_prob(value)
        assert out.shape == shape[:-1] and out.dtype == value.dtype
        out.sum().backward()
        assert value.grad is not None and value.grad.shape == shape


def test_pyro_nuts_short_chain_with_float64_default_dtype(prior, float64_default):
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as pdist
    from pyro.infer import MCMC, NUTS

    from disco_score.integrations.pyro import EmpiricalDistribution

    samples = torch.as_tensor(prior)  # float64, as the default dtype now is

    def model(y):
        theta = pyro.sample("theta", EmpiricalDistribution(samples, KDE("scott")))
        pyro.sample("y", pdist.Normal(theta, 1.0).to_event(1), obs=y)

    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(model), num_samples=30, warmup_steps=20, disable_progbar=True)
    mcmc.run(torch.tensor([[0.5, -0.5]]))
    draws = mcmc.get_samples()["theta"]
    assert draws.dtype == torch.float64 and draws.shape == (30, 2) and bool(torch.isfinite(draws).all())


def test_numpyro_nuts_short_chain_with_float64_default_dtype(prior, float64_default):
    numpyro = pytest.importorskip("numpyro")
    import numpyro.distributions as ndist
    from numpyro.infer import MCMC, NUTS

    from disco_score.integrations.numpyro import EmpiricalDistribution

    def model(y):
        theta = numpyro.sample("theta", EmpiricalDistribution(torch.as_tensor(prior), KDE("scott")))
        numpyro.sample("y", ndist.Normal(theta, 1.0).to_event(1), obs=y)

    mcmc = MCMC(NUTS(model), num_warmup=20, num_samples=30, progress_bar=False)
    mcmc.run(jax.random.key(0), jnp.asarray([[0.5, -0.5]], dtype=jnp.float32))
    draws = np.asarray(mcmc.get_samples()["theta"])
    assert draws.shape == (30, 2) and np.isfinite(draws).all()


@pytest.mark.parametrize("x64", [False, True])
def test_blackjax_ula_vmapped_over_chains_with_x64_on_and_off(oracle, x64):
    pytest.importorskip("blackjax")
    from disco_score.integrations.blackjax import unadjusted_langevin

    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        for step_size, diverges in ((0.1, False), (5.0, True)):
            ula = unadjusted_langevin(oracle, step_size)
            states = jax.vmap(ula.init)(jnp.zeros((4, 2), dtype))
            step = jax.jit(jax.vmap(ula.step))

            def run(states=states, step=step):
                keys = jax.random.split(jax.random.key(0), 60)
                for key in keys:
                    states, _ = step(jax.random.split(key, 4), states)
                return states

            if diverges:
                with pytest.raises((ChainDiverged, jax.errors.JaxRuntimeError), match="ChainDiverged"):
                    run()
            else:
                final = run()
                assert final.position.dtype == dtype and bool(jnp.all(jnp.abs(final.position) < 10))
