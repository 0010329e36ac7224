"""diffusers adapter: score conversions against closed forms, and end-to-end sampling checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    ScoreSdeVeScheduler,
)

from disco_score import KDE, DiScoFormer, metrics, samplers  # noqa: E402
from disco_score.integrations.diffusers import DiscoScoreModel, EmpiricalDiffusionPipeline  # noqa: E402
from disco_score.summary import MixtureSummary, SummaryConfig  # noqa: E402
from disco_score.targets import GaussianMixture  # noqa: E402

# 400 generated points against 400 fresh target points: correct conversions land near 0.1, a
# conversion that forgets the 1/sqrt(abar) input scaling lands above 3 (see the last test).
ED_THRESHOLD = 0.25

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)


def gaussian() -> GaussianMixture:
    return GaussianMixture(torch.ones(1, dtype=torch.float64), MEAN[None], COV[None])


def mixture_2d() -> GaussianMixture:
    weights = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
    variances = torch.tensor([[0.3, 0.6], [0.6, 0.3], [0.4, 0.4]], dtype=torch.float64)
    return GaussianMixture(weights, means, torch.diag_embed(variances))


@pytest.fixture(scope="module")
def mixture_sets() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    target = mixture_2d()
    gen = torch.Generator().manual_seed(7)
    return target, target.sample(400, gen), target.sample(400, gen)


def vp_truth(x_t: torch.Tensor, abar: float) -> dict[str, torch.Tensor]:
    """Exact epsilon / x0 / v predictions for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, x0 ~ N(MEAN, COV).

    Gaussian posterior: with A = abar COV + (1 - abar) I, E[x0 | x_t] = MEAN + sqrt(abar) COV A^-1
    (x_t - sqrt(abar) MEAN), and E[eps | x_t] = (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar).
    """
    a = abar * COV + (1 - abar) * torch.eye(2, dtype=torch.float64)
    centred = x_t - math.sqrt(abar) * MEAN
    x0 = MEAN + math.sqrt(abar) * torch.linalg.solve(a, centred.T).T @ COV
    eps = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
    return {"epsilon": eps, "sample": x0, "v_prediction": math.sqrt(abar) * eps - math.sqrt(1 - abar) * x0}


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_variance_preserving_predictions_are_the_exact_posterior_means(prediction_type: str) -> None:
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    model = DiscoScoreModel(gaussian()).configure_for(scheduler)
    x_t = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0, 250, 999):
        abar = float(scheduler.alphas_cumprod[t])
        out = model(x_t, t).sample
        torch.testing.assert_close(out, vp_truth(x_t, abar)[prediction_type], rtol=1e-4, atol=1e-5)
    # One timestep per row, as in training loops.
    steps = torch.tensor([0, 250, 999, 999, 10, 500])
    out = model(x_t, steps).sample
    for i, t in enumerate(steps.tolist()):
        torch.testing.assert_close(out[i], vp_truth(x_t[i:i + 1], float(scheduler.alphas_cumprod[t]))[prediction_type][0],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("karras", [False, True])
def test_euler_timesteps_map_to_the_scheduler_sigmas_and_scaled_input(karras: bool) -> None:
    scheduler = EulerDiscreteScheduler(use_karras_sigmas=karras)
    scheduler.set_timesteps(12)
    model = DiscoScoreModel(gaussian()).configure_for(scheduler)
    sigmas = model.timestep_to_sigma(scheduler.timesteps)
    torch.testing.assert_close(sigmas, scheduler.sigmas[:-1].to(torch.float64), rtol=2e-3, atol=1e-4)
    # Euler's own denoised estimate, x_ve - sigma * eps, must be Tweedie's E[x0 | x_ve].
    x_ve = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    t, sigma = scheduler.timesteps[4], float(scheduler.sigmas[4])
    eps = model(scheduler.scale_model_input(x_ve.to(torch.float32), t).to(torch.float64), t).sample
    abar = 1 / (1 + sigma ** 2)
    expected_x0 = vp_truth(x_ve * math.sqrt(abar), abar)["sample"]
    torch.testing.assert_close(x_ve - sigma * eps, expected_x0, rtol=1e-4, atol=1e-4)


def test_score_sde_ve_output_is_the_smoothed_score() -> None:
    target = gaussian()
    model = DiscoScoreModel(target).configure_for(ScoreSdeVeScheduler())
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = 0.7
    expected = -torch.linalg.solve(COV + sigma ** 2 * torch.eye(2, dtype=torch.float64), (x - MEAN).T).T
    torch.testing.assert_close(model(x, torch.full((4,), sigma)).sample, expected)
    assert model.config.prediction_type == "score"


SCHEDULERS = {
    "ddpm": (lambda smax, smin: DDPMScheduler(clip_sample=False), 30),
    "ddim": (lambda smax, smin: DDIMScheduler(clip_sample=False), 15),
    "euler": (lambda smax, smin: EulerDiscreteScheduler(), 15),
    "score_sde_ve": (lambda smax, smin: ScoreSdeVeScheduler(sigma_max=smax, sigma_min=smin), 30),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_pipeline_with_exact_score_samples_the_target(mixture_sets, name: str) -> None:
    target, train, fresh = mixture_sets
    make, steps = SCHEDULERS[name]
    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(target, train), make(*samplers.noise_range(train)))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_samples=400, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    assert isinstance(out.samples, torch.Tensor) and out.samples.shape == (400, 2)
    assert out.samples.dtype == torch.float64
    assert metrics.energy_distance(out.samples, fresh) < ED_THRESHOLD


def test_pipeline_with_kde_samples_the_target_without_copying(mixture_sets) -> None:
    target, train, fresh = mixture_sets
    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(KDE(), train.numpy()), DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_samples=400, num_inference_steps=15, generator=torch.Generator().manual_seed(0),
               output_type="np")
    assert isinstance(out.samples, np.ndarray) and out.samples.shape == (400, 2)
    assert metrics.energy_distance(out.samples, fresh) < ED_THRESHOLD
    assert metrics.memorization_fraction(out.samples, train) < metrics.memorization_fraction(fresh, train) + 0.1
    # Swapping the scheduler the diffusers way reconfigures the model.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    again = pipe(num_samples=400, num_inference_steps=15, generator=torch.Generator().manual_seed(0))
    assert pipe.model.config.prediction_type == "v_prediction"
    assert metrics.energy_distance(again.samples, fresh) < ED_THRESHOLD


def test_pipeline_with_the_distilled_summary_samples_the_target(mixture_sets) -> None:
    # the summary is fitted lazily inside the pipeline's no_grad call and trains there
    target, train, fresh = mixture_sets
    estimator = DiScoFormer.pretrained(summary=SummaryConfig(steps=20, components=8))
    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(estimator, train), DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_samples=400, num_inference_steps=15, generator=torch.Generator().manual_seed(0))
    assert isinstance(pipe.model.noise_conditional.oracle, MixtureSummary)
    assert metrics.energy_distance(out.samples, fresh) < ED_THRESHOLD


def test_seeded_pipeline_repeats(mixture_sets) -> None:
    target, train, _ = mixture_sets
    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(target, train), DDPMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    a = pipe(num_samples=20, num_inference_steps=5, generator=torch.Generator().manual_seed(3)).samples
    b = pipe(num_samples=20, num_inference_steps=5, generator=torch.Generator().manual_seed(3)).samples
    assert torch.equal(a, b)


def test_a_wrong_conversion_fails_the_distribution_check(mixture_sets) -> None:
    """The end-to-end threshold catches the classic bug: scoring x_t instead of x_t / sqrt(abar)."""

    class Unscaled(DiscoScoreModel):
        def _predict(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
            return -sigma * self.noise_conditional.score(x.to(torch.float64), sigma).to(x.dtype)

    target, train, fresh = mixture_sets
    pipe = EmpiricalDiffusionPipeline(Unscaled(target, train), DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_samples=400, num_inference_steps=15, generator=torch.Generator().manual_seed(0))
    assert metrics.energy_distance(out.samples, fresh) > ED_THRESHOLD


def test_save_and_load_round_trip(tmp_path, mixture_sets) -> None:
    _, train, _ = mixture_sets
    model = DiscoScoreModel(KDE(), train).configure_for(DDIMScheduler())
    model.save_pretrained(tmp_path)
    loaded = DiscoScoreModel.from_pretrained(tmp_path, estimator=KDE())
    assert torch.equal(loaded.data, train) and loaded.config.noise_schedule == "vp"
    x = train[:5]
    torch.testing.assert_close(loaded(x, 300).sample, model(x, 300).sample)


def test_clipping_scheduler_on_wide_data_warns(mixture_sets) -> None:
    target, train, _ = mixture_sets
    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(target, train), DDIMScheduler())  # clip_sample=True
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(UserWarning, match="clip_sample=False"):
        pipe(num_samples=5, num_inference_steps=2)


def test_variance_preserving_scheduler_on_data_of_sd_1000_warns() -> None:
    """DDIM starts at N(0, I); data of sd 1000 stay visible at its last level and would come back
    with a fraction of their spread -- never silently."""
    data = 1000.0 * torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(KDE(), data), DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(UserWarning, match="Standardise the data"):
        pipe(num_samples=5, num_inference_steps=2)
    unit = EmpiricalDiffusionPipeline(DiscoScoreModel(KDE(), data / 1000.0), DDIMScheduler(clip_sample=False))
    unit.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unit(num_samples=5, num_inference_steps=2)


def test_bad_input_raises_clear_errors(mixture_sets) -> None:
    target, train, _ = mixture_sets
    with pytest.raises(ValueError, match="needs data"):
        DiscoScoreModel(KDE())
    with pytest.raises(TypeError, match="estimator must be"):
        DiscoScoreModel("kde", train)
    with pytest.raises(ValueError, match="data has dimension 3"):
        DiscoScoreModel(target, torch.zeros(10, 3))
    model = DiscoScoreModel(target, train)
    with pytest.raises(ValueError, match="configure_for"):
        model(train[:3], 10)
    with pytest.raises(ValueError, match="not supported"):
        model.configure_for(FlowMatchEulerDiscreteScheduler())
    model.configure_for(DDPMScheduler())
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        model(torch.zeros(3, 5), 10)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        model(train[:3], 1000)
    with pytest.raises(ValueError, match="one entry per sample"):
        model(train[:3], torch.tensor([1, 2]))
    pipe = EmpiricalDiffusionPipeline(model, DDPMScheduler(clip_sample=False))
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        pipe(num_samples=0)
    with pytest.raises(ValueError, match="output_type"):
        pipe(num_samples=2, output_type="pil")
    with pytest.raises(TypeError, match="model must be a DiscoScoreModel"):
        EmpiricalDiffusionPipeline(torch.nn.Linear(2, 2), DDPMScheduler())


def test_discoformer_ddim_in_10d_is_near_the_exact_score_and_beats_kde() -> None:
    """Issue 5's quality bar in a test: a 10-D mixture (the benchmark's prior, one seeded target),
    1024 training points, DDIM with 50 steps. By the unbiased energy statistic (0 = the target
    itself), DiScoFormer's samples land far closer to the exact score's than Scott KDE's do."""
    from disco_score import DiScoFormer
    from disco_score.targets import random_gmm

    gen = torch.Generator().manual_seed(3)
    target = random_gmm(10, generator=gen)
    train, fresh = target.sample(1024, gen), target.sample(1000, gen)
    statistic = {}
    for name, estimator in (("exact", target), ("discoformer", DiScoFormer.pretrained()), ("kde", KDE())):
        pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(estimator, train), DDIMScheduler(clip_sample=False))
        pipe.set_progress_bar_config(disable=True)
        out = pipe(num_samples=1000, num_inference_steps=50, generator=torch.Generator().manual_seed(0))
        statistic[name] = metrics.energy_statistic(out.samples, fresh)
    assert statistic["discoformer"] < 0.5 * statistic["kde"], statistic
    assert statistic["discoformer"] - statistic["exact"] < 0.5 * (statistic["kde"] - statistic["exact"]), statistic
