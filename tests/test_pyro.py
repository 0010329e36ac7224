"""Pyro adapter: EmpiricalDistribution under NUTS and SVI, potential_fn, the Langevin kernel.

Reference answers: exact posterior moments of the conjugate problem (tests/_conjugate.py),
finite differences (gradcheck) and the oracle's own values and scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoMultivariateNormal  # noqa: E402
from pyro.ops.stats import effective_sample_size  # noqa: E402

from _conjugate import Z_TOL, NaNOracle, check_posterior_draws  # noqa: E402
from disco_score.integrations._conjugate import (  # noqa: E402
    kde_reference,
    make_problem,
    moment_errors,
    nuts_draws,
    ula_stationary_cov,
)
from disco_score import KDE  # noqa: E402
from disco_score.integrations.pyro import (  # noqa: E402
    EmpiricalDistribution,
    Langevin,
    oracle_log_prob,
    potential_fn,
)



def _ess(draws: np.ndarray) -> np.ndarray:
    return effective_sample_size(torch.as_tensor(draws), chain_dim=0, sample_dim=1).numpy()


@pytest.fixture(scope="module")
def problem():
    return make_problem(2)


@pytest.fixture(scope="module")
def estimator():
    return KDE("scott")


@pytest.fixture(scope="module")
def oracle(problem, estimator):
    return EmpiricalDistribution(problem.prior_samples, estimator).oracle


def conjugate_model(prior_samples, estimator):
    """The issue's contract in Pyro, apart from the explicit estimator."""

    def model(y):
        theta = pyro.sample("theta", EmpiricalDistribution(prior_samples, estimator))
        pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)

    return model


def test_log_prob_value_gradient_and_gradcheck(problem, estimator, oracle):
    prior = EmpiricalDistribution(problem.prior_samples, estimator)
    assert prior.event_shape == (2,) and prior.batch_shape == ()
    x = torch.tensor([[0.2, -0.1], [1.0, 0.5], [-1.5, 2.0]], dtype=torch.float32, requires_grad=True)
    log_p = prior.log_prob(x)
    assert log_p.shape == (3,) and log_p.dtype == torch.float32
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    np.testing.assert_allclose(log_p.detach(), oracle.log_density(x.detach().double()), rtol=1e-5)
    np.testing.assert_allclose(grad, oracle.score(x.detach().double()), rtol=1e-4, atol=1e-5)
    # float64: the backward (the score head) agrees with finite differences of the forward
    x64 = x.detach().double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: oracle_log_prob(oracle, v), (x64,))
    # batch shapes pass through; sampling resamples the sample set
    assert prior.log_prob(torch.zeros(4, 5, 2)).shape == (4, 5)
    draws = prior.sample((6,))
    pool = torch.as_tensor(problem.prior_samples, dtype=torch.float32)  # numpy in -> default dtype
    assert draws.shape == (6, 2) and draws.dtype == torch.float32
    assert all(bool((pool == d).all(1).any()) for d in draws)
    assert EmpiricalDistribution(problem.prior_samples, estimator).oracle is oracle  # cached fit


@pytest.mark.parametrize("dim", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_contract_nuts_matches_conjugate_posterior(dim, estimator):
    problem = make_problem(dim)
    draws, ess = nuts_draws("pyro", problem, estimator, chains=1, warmup=200, draws=500)
    oracle = EmpiricalDistribution(problem.prior_samples, estimator).oracle
    check_posterior_draws("pyro NUTS", problem, oracle, draws, ess)


def test_svi_recovers_conjugate_posterior(problem, estimator, oracle):
    """The posterior is Gaussian up to the KDE's smoothing, so a full-rank Gaussian guide fits it."""
    pyro.set_rng_seed(1)
    pyro.clear_param_store()

    def model(y):  # SVI checks shapes, so the k observations go in a plate
        theta = pyro.sample("theta", EmpiricalDistribution(problem.prior_samples, estimator))
        with pyro.plate("observations", y.shape[0]):
            pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)

    guide = AutoMultivariateNormal(model)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.997})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=8, vectorize_particles=True))
    y = torch.tensor(problem.observations, dtype=torch.float32)
    for _ in range(600):
        svi.step(y)
    mean, cov = kde_reference(problem, oracle)
    fitted = guide.get_posterior()
    loc = fitted.loc.detach().double().numpy()
    fitted_cov = fitted.covariance_matrix.detach().double().numpy()
    assert np.all(np.abs(loc - mean) < 0.1 * np.sqrt(np.diag(cov))), (loc, mean)
    assert np.linalg.norm(fitted_cov - cov) / np.linalg.norm(cov) < 0.25, (fitted_cov, cov)


def test_langevin_kernel_and_potential_fn(problem, estimator, oracle):
    pyro.set_rng_seed(2)
    model = conjugate_model(problem.prior_samples, estimator)
    step_size = 0.05
    mcmc = MCMC(Langevin(model, step_size=step_size), num_samples=1500, warmup_steps=100,
                disable_progbar=True)
    mcmc.run(torch.tensor(problem.observations, dtype=torch.float32))
    draws = mcmc.get_samples(group_by_chain=True)["theta"].double().numpy()
    mean, cov = kde_reference(problem, oracle)
    # ULA is O(step_size)-biased (here ~10% in variance); compare with its Gaussian stationary law
    err = moment_errors(draws, mean, ula_stationary_cov(cov, step_size), _ess)
    assert err.mean_z < Z_TOL and err.cov_z < Z_TOL, err

    # potential_fn drives Pyro's own NUTS on the prior alone
    start = torch.tensor(problem.prior_mean, dtype=torch.float64)
    mcmc = MCMC(NUTS(potential_fn=potential_fn(oracle)), num_samples=200, warmup_steps=100,
                initial_params={"theta": start}, disable_progbar=True)
    mcmc.run()
    draws = mcmc.get_samples()["theta"].numpy()
    sd = np.sqrt(np.diag(problem.prior_cov))
    assert np.all(np.abs(draws.mean(0) - problem.prior_samples.mean(0)) < 0.5 * sd)


def test_errors_surface_as_value_errors(problem, oracle):
    with pytest.raises(ValueError, match="non-finite position"):
        oracle_log_prob(oracle, torch.tensor([float("nan"), 0.0]))

    mcmc = MCMC(NUTS(conjugate_model(problem.prior_samples, NaNOracle())), num_samples=5, warmup_steps=5,
                disable_progbar=True)
    with pytest.raises(ValueError, match="oracle returned a non-finite"):
        mcmc.run(torch.tensor(problem.observations, dtype=torch.float32))


def test_bad_input(problem, estimator, oracle):
    prior = EmpiricalDistribution(problem.prior_samples, estimator)
    with pytest.raises(ValueError, match="event_shape"):  # torch.distributions' validation
        prior.log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        oracle_log_prob(oracle, torch.zeros(3))
    with pytest.raises(TypeError, match="torch tensor"):
        oracle_log_prob(oracle, np.zeros(2))
    with pytest.raises(ValueError, match="samples must have shape"):
        EmpiricalDistribution(np.zeros(10), estimator)
    with pytest.raises(TypeError, match="estimator"):
        EmpiricalDistribution(problem.prior_samples, "kde")
    with pytest.raises(KeyError, match="theta"):
        potential_fn(oracle)({"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="exactly one"):
        Langevin()
    with pytest.raises(ValueError, match="step_size"):
        Langevin(potential_fn=potential_fn(oracle), step_size=0.0)
