"""The wild suite's data: W1 toy sets (disco_score.bench.toys) and W3 posteriors (disco_score.bench.posteriors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from disco_score.bench import toys
from disco_score.bench.posteriors import (
    N_CONTEXT, N_DRAWS, get_posterior, load_posterior_draws, load_posterior_metadata, posterior_names,
)
from disco_score.bench.toys import TOY_SETS, draw_toy, exact_toy_target

DATA_DIR = Path(toys.__file__).resolve().parent / "data"


# -- W1 toy sets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TOY_SETS))
def test_toy_set_reproducible_shaped_finite_and_seed_dependent(name: str) -> None:
    a, b, c = draw_toy(name, 501, 7), draw_toy(name, 501, 7), draw_toy(name, 501, 8)
    assert a.shape == (501, 2) and a.dtype == np.float64  # odd n: no points lost to per-part rounding
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # The function form takes a Generator and gives the same draws as draw_toy.
    np.testing.assert_array_equal(TOY_SETS[name](501, np.random.default_rng(7)), a)


@pytest.mark.parametrize("name", list(TOY_SETS))
def test_toy_set_leaves_numpy_global_state_alone(name: str) -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    draw_toy(name, 64, 0)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_toy_lookup_by_function_name_and_errors() -> None:
    np.testing.assert_array_equal(draw_toy("eight_gaussians", 10, 1), draw_toy("8 gaussians", 10, 1))
    with pytest.raises(KeyError, match="unknown toy set"):
        draw_toy("nine gaussians", 10, 0)
    with pytest.raises(TypeError, match="Generator"):
        toys.pinwheel(10, np.random.RandomState(0))  # type: ignore[arg-type]


def test_eight_gaussians_exact_target_matches_the_sampler() -> None:
    target = exact_toy_target("8 gaussians")
    assert target is not None and target.dim == 2
    n = 40000
    x_toy = draw_toy("8 gaussians", n, 0)
    x_exact = target.sample(n, torch.Generator().manual_seed(0)).numpy()
    # Exact moments: mean 0, covariance (R^2 / 2 + sd^2) I.
    var = toys.EIGHT_GAUSSIANS_RADIUS ** 2 / 2 + toys.EIGHT_GAUSSIANS_SD ** 2
    for x in (x_toy, x_exact):
        np.testing.assert_allclose(x.mean(0), 0.0, atol=0.05)
        np.testing.assert_allclose(np.cov(x.T), var * np.eye(2), atol=0.12)
    # Same component structure: the nearest-centre assignment is uniform over the 8 and tight around it.
    means = target.means.numpy()
    for x in (x_toy, x_exact):
        nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)
        np.testing.assert_allclose(np.bincount(nearest, minlength=8) / n, 1 / 8, atol=0.01)
        resid = x - means[nearest]
        np.testing.assert_allclose(resid.std(0), toys.EIGHT_GAUSSIANS_SD, rtol=0.03)
    # And the two log-likelihoods agree (same distribution, same cross-entropy).
    assert abs(target.log_density(x_toy).mean() - target.log_density(x_exact).mean()) < 0.03


@pytest.mark.parametrize("name", ["8 gaussians", "tight rings", "checkerboard", "heavy-tailed blob"])
def test_exact_toy_targets_are_normalised_and_cover_the_sampler(name: str) -> None:
    target = exact_toy_target(name)
    assert target is not None
    half = 30.0 if name == "heavy-tailed blob" else 6.0
    # Midpoint rule on 600^2 cells: the checkerboard's square edges (multiples of 2) fall on cell edges.
    h = 2 * half / 600
    g = -half + h * (np.arange(600) + 0.5)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    mass = np.exp(target.log_density(grid)).sum() * h ** 2
    # The Student-t's tail beyond |x| = 30 holds about 1e-3 of its mass.
    assert mass == pytest.approx(1.0, abs=3e-3 if name == "heavy-tailed blob" else 1e-3)
    x = draw_toy(name, 2000, 3)
    assert np.isfinite(target.log_density(x)).all()  # every draw lies in the support


def test_student_t_blob_score_matches_autograd_and_sampler_moments() -> None:
    target = toys.StudentT2D()
    x = torch.tensor(draw_toy("heavy-tailed blob", 50, 0), requires_grad=True)
    (grad,) = torch.autograd.grad(target.log_prob_t(x).sum(), x)
    torch.testing.assert_close(target.score_t(x.detach()), grad)
    # Covariance nu / (nu - 2) S exists for nu = 2.5 but converges slowly: compare a robust statistic,
    # the median of the Mahalanobis radius, between the numpy sampler and the torch sampler.
    prec = np.linalg.inv(np.array(toys.BLOB_SCALE))
    def med_radius(v: np.ndarray) -> float:
        return float(np.median(np.einsum("ni,ij,nj->n", v, prec, v)))
    a = med_radius(draw_toy("heavy-tailed blob", 20000, 1))
    b = med_radius(target.sample(20000, torch.Generator().manual_seed(1)).numpy())
    assert a == pytest.approx(b, rel=0.05)


def test_curve_toy_sets_have_no_exact_target() -> None:
    for name in ("pinwheel", "2 spirals", "two moons", "circles", "swiss roll"):
        assert exact_toy_target(name) is None


# -- W3 posteriors -------------------------------------------------------------------------------------

EXPECTED_DIMS = {"logistic_breast_cancer": 11, "poisson_linnerud": 6, "eight_schools_noncentred": 10}


@pytest.fixture(scope="module", params=posterior_names())
def posterior(request: pytest.FixtureRequest):
    pytest.importorskip("sklearn")  # the regressions' data sets ship with scikit-learn
    return get_posterior(request.param)


def _test_points(post, n: int = 5) -> torch.Tensor:
    # Cached draws (where the posterior lives) plus a wider perturbation of them (off the bulk).
    draws = torch.from_numpy(load_posterior_draws(post.name)[:n])
    gen = torch.Generator().manual_seed(0)
    return torch.cat([draws, draws + 0.5 * torch.randn(draws.shape, generator=gen, dtype=torch.float64)])


def test_posterior_dims(posterior) -> None:
    assert posterior.dim == EXPECTED_DIMS[posterior.name] == len(posterior.param_names)


def test_log_density_matches_numpyro_potential_energy(posterior) -> None:
    jax = pytest.importorskip("jax")
    pytest.importorskip("numpyro")
    from numpyro.infer.util import potential_energy

    theta = _test_points(posterior)
    ours = posterior.log_density_unnormalised(theta).numpy()
    with jax.enable_x64(True):
        # One compiled function for all points (tracing the model per point costs seconds).
        energy = jax.jit(lambda sites: potential_energy(posterior.numpyro_model, (), {}, sites))
        theirs = np.array([-float(energy(posterior.unconstrained_sites(t))) for t in theta.numpy()])
    diff = ours - theirs
    # Up to a constant is what the benchmark needs; both keep every constant, so it is 0 here too.
    assert np.ptp(diff) < 1e-8 * (1 + np.abs(ours).max())
    assert abs(diff.mean()) < 1e-8 * (1 + np.abs(ours).max())


def test_score_matches_finite_differences(posterior) -> None:
    theta = _test_points(posterior, n=3)
    score = posterior.score(theta)
    assert score.shape == theta.shape
    h = 1e-5
    eye = torch.eye(posterior.dim, dtype=torch.float64)
    fd = torch.stack([(posterior.log_density_unnormalised(theta + h * e)
                       - posterior.log_density_unnormalised(theta - h * e)) / (2 * h) for e in eye], dim=-1)
    torch.testing.assert_close(score, fd, rtol=1e-5, atol=1e-5)


def test_cached_draws_load_with_metadata_and_finite_density(posterior) -> None:
    draws = load_posterior_draws(posterior.name)
    assert draws.shape == (N_DRAWS, posterior.dim) and draws.dtype == np.float64
    assert N_DRAWS >= N_CONTEXT + 1024
    logp = posterior.log_density_unnormalised(torch.from_numpy(draws))
    assert torch.isfinite(logp).all()
    assert torch.isfinite(posterior.score(torch.from_numpy(draws[:256]))).all()
    meta = load_posterior_metadata(posterior.name)
    assert meta["n_draws"] == N_DRAWS and meta["dim"] == posterior.dim
    assert meta["rhat_max"] < 1.01 and meta["ess_min"] > 0.5 * N_DRAWS
    assert {"seed", "numpyro_version", "date", "thinning", "chains", "divergences"} <= set(meta)
    assert (DATA_DIR / f"{posterior.name}.npz").stat().st_size < 1_100_000


def test_unknown_posterior_names_fail_clearly() -> None:
    with pytest.raises(KeyError, match="unknown posterior"):
        get_posterior("ten_schools")
    with pytest.raises(KeyError, match="unknown posterior"):
        load_posterior_draws("ten_schools")
    with pytest.raises(ValueError, match="last dimension"):
        get_posterior("eight_schools_noncentred").log_density_unnormalised(torch.zeros(2, 9, dtype=torch.float64))


def test_cached_draws_satisfy_steins_identity_for_the_torch_density(posterior) -> None:
    # Under p, E[s(theta)] = 0 and E[s(theta) (theta - c)^T] = -I for the score s of p: a check that the
    # cached draws come from this very density (parameterisation, data, prior), not only that NUTS mixed.
    theta = torch.from_numpy(load_posterior_draws(posterior.name))
    s, t = posterior.score(theta).numpy(), theta.numpy()
    root_n = np.sqrt(len(t))
    z_mean = s.mean(0) / (s.std(0) / root_n)
    prod = s[:, :, None] * (t - t.mean(0))[:, None, :]
    z_cross = (prod.mean(0) + np.eye(posterior.dim)) / (prod.std(0) / root_n)
    # Observed max |z| is about 3 over the ~100 entries; 5 leaves room without hiding a real mismatch.
    assert np.abs(z_mean).max() < 5 and np.abs(z_cross).max() < 5
