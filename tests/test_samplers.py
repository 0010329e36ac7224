"""Samplers driven by an oracle: checked against exact targets, closed forms and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial
import scipy.stats
import torch

from disco_score import KDE, metrics, samplers
from disco_score.targets import GaussianMixture

# Energy distances below are between 400-point sets; two independent draws of the 2-D mixture
# sit about 0.1 apart, a sampler with the wrong spread (x 1.3) or wrong mode weights sits > 0.25.
ED_THRESHOLD = 0.2


def mixture_2d() -> GaussianMixture:
    """Three well-separated anisotropic components in 2-D."""
    weights = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
    variances = torch.tensor([[0.3, 0.6], [0.6, 0.3], [0.4, 0.4]], dtype=torch.float64)
    return GaussianMixture(weights, means, torch.diag_embed(variances))


def correlated_gaussian() -> GaussianMixture:
    mean = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    cov = torch.tensor([[[1.0, 0.6], [0.6, 0.5]]], dtype=torch.float64)
    return GaussianMixture(torch.ones(1, dtype=torch.float64), mean, cov)


@pytest.fixture(scope="module")
def mixture_sets() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    target = mixture_2d()
    gen = torch.Generator().manual_seed(123)
    return target, target.sample(400, gen), target.sample(400, gen)


# -- quality metrics ------------------------------------------------------------------------------

def test_energy_distance_matches_scipy_in_one_dimension(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(150, 1)), rng.normal(0.5, 2.0, size=(90, 1))
    assert metrics.energy_distance(x, y) == pytest.approx(scipy.stats.energy_distance(x[:, 0], y[:, 0]), rel=1e-10)


def test_energy_distance_is_zero_for_equal_sets_and_grows_with_a_shift(rng: np.random.Generator) -> None:
    x = rng.normal(size=(200, 3))
    assert metrics.energy_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-7)
    # For a pure shift by c of one point mass against another, the distance is sqrt(2|c|).
    assert metrics.energy_distance(np.zeros((1, 3)), np.array([[0.0, 3.0, 4.0]])) == pytest.approx(math.sqrt(10))
    near = metrics.energy_distance(x, x + 0.1)
    assert 0 < near < metrics.energy_distance(x, x + 1.0)


def test_energy_statistic_is_the_u_statistic_and_unbiased(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(40, 3)), rng.normal(0.3, 1.5, size=(25, 3))
    pair = scipy.spatial.distance.cdist
    brute = (2 * pair(x, y).mean() - pair(x, x).sum() / (40 * 39) - pair(y, y).sum() / (25 * 24))
    assert metrics.energy_statistic(x, y) == pytest.approx(brute, rel=1e-10)
    # Same law: the V-statistic (energy_distance squared) sits well above 0, the U-statistic averages 0.
    u, v = [], []
    for _ in range(200):
        a, b = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
        u.append(metrics.energy_statistic(a, b))
        v.append(metrics.energy_distance(a, b) ** 2)
    assert abs(np.mean(u)) < 3 * np.std(u) / np.sqrt(200)
    assert np.mean(v) > 10 * np.std(u) / np.sqrt(200)
    with pytest.raises(ValueError, match="x needs at least 2"):
        metrics.energy_statistic(x[:1], y)


def test_memorization_fraction_counts_copies(rng: np.random.Generator) -> None:
    train = rng.normal(size=(300, 2))
    assert metrics.memorization_fraction(train, train) == 1.0
    assert metrics.memorization_fraction(train + 100.0, train) == 0.0
    # Hand-made case: training points 0 and 10 (nearest-neighbour distance 10 each, in 1-D).
    line = np.array([[0.0], [10.0]])
    assert metrics.memorization_fraction(np.array([[4.9], [5.1], [-11.0], [21.0]]), line) == 0.5


def test_nearest_neighbour_distances_match_brute_force(rng: np.random.Generator) -> None:
    x = rng.normal(size=(50, 3))
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.diag(np.full(50, np.inf))
    np.testing.assert_allclose(metrics.nearest_neighbour_distances(x).numpy(), dist.min(1), rtol=1e-12)


def test_quality_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="dimension"):
        metrics.energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="training needs at least 2"):
        metrics.memorization_fraction(np.zeros((5, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.energy_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))


# -- defaults -------------------------------------------------------------------------------------

def test_noise_range_from_data(rng: np.random.Generator) -> None:
    x = rng.normal(size=(300, 2)) * np.array([1.0, 3.0])
    sigma_max, sigma_min = samplers.noise_range(x)
    largest = np.linalg.norm(x[:, None] - x[None], axis=-1).max()
    assert sigma_max == pytest.approx(largest)
    assert sigma_min == pytest.approx(0.01 * math.sqrt(x.var(0, ddof=1).mean()))
    with pytest.raises(ValueError, match="no spread"):
        samplers.noise_range(np.ones((10, 2)))


def test_geometric_levels_and_ncsn_step() -> None:
    levels = samplers.geometric_noise_levels(10.0, 0.1, 5).numpy()
    np.testing.assert_allclose(levels, [10.0, 10 ** 0.5, 1.0, 10 ** -0.5, 0.1])
    with pytest.raises(ValueError, match="sigma_min"):
        samplers.geometric_noise_levels(0.1, 1.0, 5)
    # The chosen relative step makes T Gaussian Langevin steps carry variance gamma^2 sigma^2 to
    # about sigma^2: check by iterating the exact variance recursion v' = a^2 v + r.
    gamma, steps = 1.5, 20
    r = samplers.ncsn_relative_step(gamma, steps)
    v = gamma ** 2
    for _ in range(steps):
        v = (1 - r / 2) ** 2 * v + r
    assert abs(v - 1) < 0.1 and abs(v - 1) < abs(gamma ** 2 - 1) / 5


# -- Langevin and MALA against closed forms -------------------------------------------------------

def test_mala_matches_gaussian_mean_and_covariance(generator: torch.Generator) -> None:
    target = correlated_gaussian()
    x0 = torch.zeros(400, 2, dtype=torch.float64)
    samples, info = samplers.mala(target, x0, step_size=0.2, n_steps=200, generator=generator, progress=False)
    assert samples.shape == (400, 2) and samples.dtype == torch.float64
    np.testing.assert_allclose(samples.mean(0).numpy(), [1.0, -2.0], atol=0.12)
    np.testing.assert_allclose(np.cov(samples.numpy().T), target.covariances[0].numpy(), atol=0.15)
    assert 0.0 < info.acceptance_rate < 1.0
    assert info.chain_acceptance_rates.shape == (400,)


def test_mala_removes_the_step_size_bias_that_langevin_has(generator: torch.Generator) -> None:
    """On N(0, 1), unadjusted Langevin with step tau has stationary variance 1 / (1 - tau/2);
    MALA's Metropolis correction brings it back to 1."""
    target = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                             torch.ones(1, 1, 1, dtype=torch.float64))
    x0 = torch.zeros(2000, 1, dtype=torch.float64)
    tau = 0.6
    ula, _ = samplers.langevin(target, x0, step_size=tau, n_steps=60, generator=generator, progress=False)
    adjusted, info = samplers.mala(target, x0, step_size=tau, n_steps=60, generator=generator, progress=False)
    assert float(ula.var()) == pytest.approx(1 / (1 - tau / 2), rel=0.08)
    assert float(adjusted.var()) == pytest.approx(1.0, rel=0.08)
    assert 0.5 < info.acceptance_rate < 1.0


def test_numpy_in_numpy_out_and_single_chain(rng: np.random.Generator, generator: torch.Generator) -> None:
    target = correlated_gaussian()
    x0 = rng.normal(size=(20, 2)).astype(np.float32)
    out, _ = samplers.langevin(target, x0, n_steps=5, generator=generator, progress=False)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (20, 2)
    one, _ = samplers.mala(target, torch.zeros(2, dtype=torch.float32), n_steps=5, generator=generator,
                           progress=False)
    assert isinstance(one, torch.Tensor) and one.shape == (2,) and one.dtype == torch.float32


def test_seeded_runs_repeat() -> None:
    target = correlated_gaussian()
    a, _ = samplers.mala(target, torch.zeros(10, 2), n_steps=20, generator=torch.Generator().manual_seed(5),
                         progress=False)
    b, _ = samplers.mala(target, torch.zeros(10, 2), n_steps=20, generator=torch.Generator().manual_seed(5),
                         progress=False)
    assert torch.equal(a, b)


def test_pieces_compose_like_the_one_call_entry_point() -> None:
    """init/step/run_chain by hand give exactly what mala() gives."""
    target = correlated_gaussian()
    x0 = torch.zeros(30, 2, dtype=torch.float64)
    expected, _ = samplers.mala(target, x0, step_size=0.1, n_steps=15,
                                generator=torch.Generator().manual_seed(2), progress=False)
    state = samplers.mala_init(x0, target)
    state, infos = samplers.run_chain(lambda g, s: samplers.mala_step(g, s, target, 0.1), state, 15,
                                      torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(state.position, expected)
    assert infos.is_accepted.shape == (15, 30) and infos.acceptance_probability.dtype == torch.float64
    # The step is pure: the input state is untouched and reusable.
    first = samplers.mala_init(x0, target)
    samplers.mala_step(torch.Generator().manual_seed(0), first, target, 0.1)
    assert torch.equal(first.position, x0)


# -- noise-conditional samplers on a 2-D mixture --------------------------------------------------

def test_annealed_langevin_with_exact_score_matches_target(mixture_sets, generator: torch.Generator) -> None:
    target, train, fresh = mixture_sets
    samples, info = samplers.annealed_langevin(target, train, n_samples=400, n_levels=20, steps_per_level=10,
                                               generator=generator, progress=False)
    assert samples.shape == (400, 2)
    assert metrics.energy_distance(samples, fresh) < ED_THRESHOLD
    assert info.noise_levels[0] == pytest.approx(samplers.noise_range(train)[0])
    np.testing.assert_allclose(info.step_sizes, info.relative_step * info.noise_levels ** 2, rtol=1e-12)
    assert info.denoised and info.n_steps == 200
    # While the noise dominates, sigma^2 |s_sigma|^2 is about d = 2 (a wrongly scaled score is not).
    assert 1.0 < info.mean_squared_score[0] < 4.0


def test_annealed_langevin_with_kde_matches_target_without_copying(mixture_sets, generator: torch.Generator) -> None:
    target, train, fresh = mixture_sets
    samples, _ = samplers.annealed_langevin(KDE(), train.numpy(), n_samples=400, n_levels=20, steps_per_level=10,
                                            generator=generator, progress=False)
    assert isinstance(samples, np.ndarray) and samples.dtype == np.float64
    assert metrics.energy_distance(samples, fresh) < ED_THRESHOLD
    reference = metrics.memorization_fraction(fresh, train)  # fresh draws, about 0.6
    assert metrics.memorization_fraction(samples, train) < reference + 0.1
    # The raw empirical score (vanishing bandwidth) copies the training set instead.
    copies, _ = samplers.annealed_langevin(KDE(bandwidth=1e-3), train, n_samples=200, n_levels=20,
                                           steps_per_level=10, generator=generator, progress=False)
    assert metrics.memorization_fraction(copies, train) > 0.9


@pytest.mark.parametrize("method", ["sde", "ode"])
def test_reverse_diffusion_with_exact_score_matches_target(mixture_sets, method: str,
                                                           generator: torch.Generator) -> None:
    target, train, fresh = mixture_sets
    samples, info = samplers.reverse_diffusion(target, train, n_samples=400, n_steps=100, method=method,
                                               generator=generator, progress=False)
    assert metrics.energy_distance(samples, fresh) < ED_THRESHOLD
    assert info.noise_levels.shape == (101,) and info.step_sizes.shape == (100,)
    # Overdispersing the result by 30% must fail the same check (the threshold has teeth).
    centre = samples.mean(0)
    assert metrics.energy_distance(centre + 1.3 * (samples - centre), fresh) > ED_THRESHOLD


def test_contract_calls_with_defaults() -> None:
    gen = torch.Generator().manual_seed(0)
    data = mixture_2d().sample(150, gen)
    samples, info = samplers.annealed_langevin(KDE(), data, n_samples=1000, generator=gen, progress=False)
    assert samples.shape == (1000, 2) and np.isfinite(samples.numpy()).all()
    assert info.noise_levels[-1] == pytest.approx(samplers.noise_range(data)[1])
    oracle = KDE().fit(data)
    out, _ = samplers.langevin(oracle, data[:50], step_size=1e-2, n_steps=500, generator=gen, progress=False)
    assert out.shape == (50, 2)
    out, info = samplers.mala(oracle, data[:50], step_size=1e-2, n_steps=500, generator=gen, progress=False)
    assert out.shape == (50, 2) and 0 < info.acceptance_rate <= 1


def test_oracle_without_data_needs_explicit_noise_range(generator: torch.Generator) -> None:
    target = mixture_2d()
    samples, _ = samplers.reverse_diffusion(target, None, n_samples=50, n_steps=20, sigma_max=8.0, sigma_min=0.02,
                                            generator=generator, progress=False)
    assert samples.shape == (50, 2)
    with pytest.raises(ValueError, match="data=None"):
        samplers.annealed_langevin(target, None, n_samples=10)


# -- bad input ------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors() -> None:
    target = correlated_gaussian()
    data = target.sample(50, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="x0 must have shape"):
        samplers.langevin(target, torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="x0 has dimension 3"):
        samplers.mala(target, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="step_size must be a finite positive"):
        samplers.langevin(target, torch.zeros(4, 2), step_size=-0.1)
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        samplers.mala(target, torch.zeros(4, 2), n_steps=0)
    with pytest.raises(TypeError, match="generator"):
        samplers.langevin(target, torch.zeros(4, 2), generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs samples"):
        samplers.langevin(KDE(), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="Estimator or an Oracle"):
        samplers.annealed_langevin("kde", data)
    with pytest.raises(ValueError, match="data has dimension 3"):
        samplers.annealed_langevin(target, torch.zeros(10, 3), n_samples=10)
    with pytest.raises(ValueError, match="sigma_min .* smaller than sigma_max"):
        samplers.reverse_diffusion(target, data, sigma_max=0.1, sigma_min=1.0)
    with pytest.raises(ValueError, match="method must be"):
        samplers.reverse_diffusion(target, data, method="heun")
    with pytest.raises(ValueError, match="n_samples must be at least 1"):
        samplers.annealed_langevin(target, data, n_samples=0)


def test_divergence_is_reported_not_returned_as_nan() -> None:
    target = correlated_gaussian()
    with pytest.raises(samplers.ChainDiverged, match=r"langevin, step \d+: .*diverged.*step_size=50 .*reduce it"):
        samplers.langevin(target, torch.ones(4, 2, dtype=torch.float64), step_size=50.0, n_steps=400,
                          progress=False)


# -- reliability: divergence, helper validation, host habits ---------------------------------------

def test_annealed_langevin_with_too_large_a_step_raises_chain_diverged() -> None:
    data = torch.randn(400, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(samplers.ChainDiverged, match=r"annealed langevin, step \d+: .*diverged.*eps=10 .*reduce eps"):
        samplers.annealed_langevin(KDE(), data, 50, eps=10.0, generator=torch.Generator().manual_seed(0),
                                   progress=False)
    from disco_score import ChainDiverged

    assert ChainDiverged is samplers.ChainDiverged and issubclass(ChainDiverged, RuntimeError)


def test_divergence_guard_never_fires_on_healthy_heavy_tailed_chains() -> None:
    """Cauchy chains wander far (the drift vanishes out there) and a far-off target pulls chains a
    long way from their start: neither is a divergence."""
    from disco_score.targets import ProductStudentT

    cauchy = ProductStudentT(2, df=1.0)
    gen = torch.Generator().manual_seed(0)
    x, _ = samplers.langevin(cauchy, torch.zeros(200, 2, dtype=torch.float64), step_size=0.5, n_steps=1000,
                             generator=gen, progress=False)
    assert bool(torch.isfinite(x).all())
    x, info = samplers.mala(cauchy, torch.zeros(100, 2, dtype=torch.float64), step_size=2.0, n_steps=500,
                            generator=gen, progress=False)
    assert info.acceptance_rate > 0.3
    data = cauchy.sample(1000, gen)
    for run in (samplers.annealed_langevin, samplers.reverse_diffusion):
        out, _ = run(KDE(), data, 100, generator=gen, progress=False)
        assert bool(torch.isfinite(out).all())
    far = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.full((1, 2), 1e6, dtype=torch.float64),
                          torch.eye(2, dtype=torch.float64)[None])
    x, _ = samplers.langevin(far, torch.zeros(10, 2, dtype=torch.float64), step_size=0.01, n_steps=1500,
                             generator=gen, progress=False)
    assert float((x - 1e6).abs().max()) < 10


def test_low_mala_acceptance_is_a_visible_warning() -> None:
    target = correlated_gaussian()
    with pytest.warns(samplers.LowAcceptanceWarning, match="acceptance rate .* reduce step_size"):
        samplers.mala(target, torch.zeros(20, 2, dtype=torch.float64), step_size=30.0, n_steps=20,
                      generator=torch.Generator().manual_seed(0), progress=False)


def test_step_functions_take_the_generator_first_and_validate() -> None:
    target = correlated_gaussian()
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    state = samplers.langevin_init(x0, target)
    new, info = samplers.langevin_step(gen, state, target, 0.1)
    assert new.position.shape == (5, 2) and bool(torch.isfinite(info.mean_squared_score))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        samplers.langevin_step(state, target, 0.1, gen)  # the old argument order
    with pytest.raises(TypeError, match="state must be a LangevinState.*generator first"):
        samplers.langevin_step(None, gen, target, 0.1)
    with pytest.raises(TypeError, match="state must be a MALAState"):
        samplers.mala_step(gen, state, target, 0.1)
    with pytest.raises(ValueError, match="step_size must be a finite positive"):
        samplers.mala_step(gen, samplers.mala_init(x0, target), target, -1.0)
    with pytest.raises(TypeError, match="oracle must be a fitted Oracle"):
        samplers.langevin_step(gen, state, "kde", 0.1)
    with pytest.raises(ValueError, match=r"position must have shape \(m, 2\)"):
        samplers.langevin_init(torch.zeros(5, 3, dtype=torch.float64), target)
    with pytest.raises(ValueError, match="position contains 4 non-finite"):
        samplers.mala_init(torch.full((2, 2), math.nan, dtype=torch.float64), target)
    with pytest.raises(TypeError, match="float32 or float64"):
        samplers.langevin_init(torch.zeros(2, 2, dtype=torch.float16), target)
    with pytest.raises(ValueError, match="sigma must be a finite non-negative"):
        samplers.tweedie_denoise(x0, target, -1.0)
    with pytest.raises(TypeError, match="step must be callable"):
        samplers.run_chain(None, state, 3)
    schedule = samplers.ncsn_schedule(target, samplers.geometric_noise_levels(2.0, 0.5, 3), 2, 0.01)
    with pytest.raises(ValueError, match="method must be"):
        samplers.reverse_diffusion_step(gen, samplers.annealed_init(x0), schedule, "heun")
    with pytest.raises(TypeError, match="schedule must be a AnnealingSchedule"):
        samplers.annealed_langevin_step(gen, samplers.annealed_init(x0), target)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: samplers.default_n_levels(0.0, 1.0, 2), ValueError, "sigma_max must be a finite positive"),
    (lambda: samplers.default_n_levels(1.0, 2.0, 2), ValueError, "sigma_min .* must not exceed sigma_max"),
    (lambda: samplers.default_n_levels(2.0, 1.0, 0), ValueError, "dim must be at least 1"),
    (lambda: samplers.default_n_levels(2.0, 1.0, 2.5), TypeError, "dim must be an integer"),
    (lambda: samplers.ncsn_relative_step(0.5, 10), ValueError, "gamma .* at least 1"),
    (lambda: samplers.ncsn_relative_step(math.nan, 10), ValueError, "gamma must be a finite positive"),
    (lambda: samplers.ncsn_relative_step(1.2, 0), ValueError, "steps_per_level must be at least 1"),
    (lambda: samplers.langevin_init(torch.zeros(2, 2), None), TypeError, "oracle must be a fitted Oracle"),
])
def test_sampler_helpers_validate_their_arguments(call, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        call()


@pytest.mark.parametrize("run", [samplers.langevin, samplers.mala])
def test_empty_start_raises_value_error_not_nan_diagnostics(run) -> None:
    with pytest.raises(ValueError, match=r"x0 has no chains \(shape \(0, 2\)\)"):
        run(correlated_gaussian(), torch.zeros(0, 2, dtype=torch.float64), n_steps=3, progress=False)


@pytest.mark.parametrize("run", [samplers.langevin, samplers.mala])
def test_inputs_that_require_grad_or_are_not_contiguous(run) -> None:
    data = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    oracle = KDE().fit(data)
    wide = torch.randn(10, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for x0 in (data[:10].clone().requires_grad_(True), wide[:, ::2], data[:20].T.contiguous().T[:10]):
        out, info = run(oracle, x0, step_size=0.05, n_steps=10, generator=torch.Generator().manual_seed(2),
                        progress=False)
        assert out.shape == (10, 2) and out.dtype == torch.float64 and not out.requires_grad
        assert bool(torch.isfinite(out).all())
    samples, _ = samplers.annealed_langevin(KDE(), data.clone().requires_grad_(True), 20, n_levels=3,
                                            steps_per_level=2, generator=torch.Generator().manual_seed(3),
                                            progress=False)
    assert samples.shape == (20, 2) and not samples.requires_grad
