"""The distilled mixture summary (:mod:`disco_score.summary`): exact against a full-covariance
Gaussian mixture, its convolution exact, its score the gradient of its log-density, the
distillation recovering a known mixture from its exact score, and bad input refused."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _conjugate import NaNOracle
from disco_score import KDE, DiScoFormer
from disco_score.cli import make_estimator
from disco_score.metrics import relative_score_mse
from disco_score.samplers import annealed_langevin
from disco_score.summary import MixtureSummary, SummaryConfig, distil
from disco_score.targets import GaussianMixture
from disco_score.whitening import Whitening

FAST = SummaryConfig(components=16, points=256, held_out=128, steps=40, em_points=1024)


def _random_summary(d: int, k: int, r: int, seed: int) -> tuple[MixtureSummary, GaussianMixture]:
    """A summary with random components on an anisotropic whitening, and the same mixture in full
    covariances in the data's coordinates."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    whitening = Whitening.from_covariance(a @ a.T + 0.3 * torch.eye(d, dtype=torch.float64),
                                          torch.randn(d, generator=gen, dtype=torch.float64))
    log_w = torch.log_softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    means = torch.randn(k, d, generator=gen, dtype=torch.float64)
    factors = 0.7 * torch.randn(k, d, r, generator=gen, dtype=torch.float64)
    variances = 0.1 + torch.rand(k, generator=gen, dtype=torch.float64)
    summary = MixtureSummary(whitening, log_w, means, factors, variances, compute_dtype=torch.float64)
    cov_z = variances[:, None, None] * torch.eye(d, dtype=torch.float64) + factors @ factors.transpose(1, 2)
    inv = whitening.inverse
    exact = GaussianMixture(log_w.exp() / log_w.exp().sum(), means @ inv + whitening.mean, inv @ cov_z @ inv)
    return summary, exact


@pytest.mark.parametrize("d,k,r", [(1, 2, 1), (3, 4, 2), (6, 3, 6)])
def test_summary_is_its_gaussian_mixture_and_convolves_exactly(d, k, r):
    summary, exact = _random_summary(d, k, r, seed=d)
    x = exact.sample(300, torch.Generator().manual_seed(1)) * 1.5
    for sigma in (0.0, 0.4, 2.0):
        lhs, rhs = summary.smoothed(sigma), exact.smoothed(sigma) if sigma else exact
        np.testing.assert_allclose(lhs.log_density(x), rhs.log_density(x), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(lhs.score(x), rhs.score(x), rtol=1e-8, atol=1e-8)
    # two convolutions compose into one with the summed variances
    twice = summary.smoothed(0.3).smoothed(0.4)
    assert twice.smoothing == pytest.approx(0.5)
    np.testing.assert_allclose(twice.score(x), exact.smoothed(0.5).score(x), rtol=1e-8, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), k=st.integers(1, 3), sigma=st.floats(0.0, 2.0), seed=st.integers(0, 10 ** 6))
def test_summary_score_is_the_gradient_of_its_log_density(d, k, sigma, seed):
    summary, _ = _random_summary(d, k, max(1, d - 1), seed)
    summary = summary.smoothed(sigma)
    y = (2 * torch.randn(20, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
         ).requires_grad_(True)
    log_p, _ = summary._log_density_and_score(y, want_score=False)
    (grad,) = torch.autograd.grad(log_p.sum(), y)
    torch.testing.assert_close(summary.score(y.detach()), grad, rtol=1e-7, atol=1e-9)


def _anisotropic_mixture() -> GaussianMixture:
    """Two thin, rotated components on axes of very different scales."""
    gen = torch.Generator().manual_seed(3)
    scale = torch.tensor([1.0, 30.0, 0.05], dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0]
    base = q @ torch.diag(torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64) ** 2) @ q.T
    means = torch.tensor([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]], dtype=torch.float64) * scale
    covs = torch.stack([base, base.T.flip(0).flip(1)]) * (scale[:, None] * scale[None, :])
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=torch.float64), means, covs)


def test_distil_recovers_a_mixture_from_its_exact_score():
    target = _anisotropic_mixture()
    x = target.sample(4000, torch.Generator().manual_seed(0))
    queries = target.sample(1000, torch.Generator().manual_seed(1))
    summary = distil(target, x, dataclasses.replace(FAST, steps=100))
    err = relative_score_mse(summary.score(queries), target.score(queries))
    assert err < 0.03, err
    assert summary.teacher_gap < 0.05
    assert summary.dim == 3 and summary.compute_dtype == torch.float64
    # its log-density is normalised (a mixture of Gaussians): close to the truth's
    gap = summary.log_density(queries) - target.log_density(queries)
    assert abs(float(gap.mean())) < 0.1
    # a sampler on the summary's convolutions (one summary for every level) reaches the target
    draws, _ = annealed_langevin(summary, x, n_samples=400, generator=torch.Generator().manual_seed(2),
                                 progress=False)
    assert np.all(np.isfinite(np.asarray(draws)))


def test_distil_keeps_its_best_state_and_is_deterministic():
    target = _anisotropic_mixture()
    x = target.sample(2000, torch.Generator().manual_seed(0))
    start = distil(target, x, dataclasses.replace(FAST, steps=0))
    fitted = distil(target, x, FAST)
    again = distil(target, x, FAST)
    assert fitted.teacher_gap <= start.teacher_gap  # the EM start is one of the states it chooses among
    q = target.sample(64, torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(fitted.score(q), again.score(q))


def test_distil_of_the_network_matches_it_closely():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(600, 2, generator=gen) * 0.3 + 2, torch.randn(600, 2, generator=gen)])
    teacher = DiScoFormer.pretrained().fit(x)
    summary = distil(teacher, x, FAST)
    q = x[:200] + 0.1 * torch.randn(200, 2, generator=gen)
    assert relative_score_mse(summary.score(q), teacher.score(q)) < 0.1
    assert summary.compute_dtype == torch.float32 and summary.score(q).dtype == torch.float32


def test_the_estimator_returns_the_summary_when_asked():
    x = torch.randn(800, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert DiScoFormer.pretrained(summary=True).config.summary == SummaryConfig()
    assert DiScoFormer.pretrained(summary=False).config.summary is None
    fit = DiScoFormer.pretrained(summary=FAST).fit(x)
    assert isinstance(fit, MixtureSummary) and fit.dim == 2
    assert not isinstance(DiScoFormer.pretrained().fit(x), MixtureSummary)
    # the command line's --estimator discoformer-summary is the same estimator
    assert make_estimator("discoformer-summary").config.summary == SummaryConfig()
    assert make_estimator("discoformer").config.summary is None


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_the_fits_that_optimise_run_inside_a_samplers_grad_mode(grad_mode):
    # pipelines (diffusers' __call__) fit lazily under no_grad; distil and adapt still train
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(8))
    outside = DiScoFormer.pretrained(summary=FAST).fit(x)
    with grad_mode():
        inside = DiScoFormer.pretrained(summary=FAST).fit(x)
        adapted = DiScoFormer.pretrained().fit(x).adapt(steps=2)
    q = x[:50]
    np.testing.assert_allclose(inside.score(q), outside.score(q), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(adapted.score(q)).all()


def test_a_large_set_is_distilled_from_a_network_fitted_on_a_subset(monkeypatch):
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    estimator = DiScoFormer.pretrained(summary=dataclasses.replace(FAST, teacher_samples=500))
    seen = []
    fit_network = estimator._fit_network
    monkeypatch.setattr(estimator, "_fit_network", lambda s: seen.append(s.shape[0]) or fit_network(s))
    fit = estimator.fit(x)
    # the subset, then (the blend's cross-fit) its two halves
    assert seen[0] == 500 and max(seen) == 500 and isinstance(fit, MixtureSummary)


def test_distil_refuses_bad_input():
    x = torch.randn(300, 2, dtype=torch.float64)
    kde = KDE().fit(x)
    with pytest.raises(TypeError, match="teacher"):
        distil(KDE(), x)
    with pytest.raises(TypeError, match="config"):
        distil(kde, x, config={"components": 4})
    with pytest.raises(ValueError, match="dimension"):
        distil(kde, torch.randn(300, 3))
    with pytest.raises(ValueError, match="non-finite"):
        distil(NaNOracle(), x, FAST)
    with pytest.raises(ValueError, match="samples"):
        distil(kde, torch.full((300, 2), math.nan))
    for field, value in (("components", 0), ("lr", -1.0), ("steps", -1), ("trial_steps", -1), ("seed", 1.5)):
        with pytest.raises((ValueError, TypeError), match=field):
            SummaryConfig(**{field: value})


def test_summary_refuses_inconsistent_parts():
    summary, _ = _random_summary(2, 3, 1, seed=0)
    lw, mu, f, v = summary._parts
    with pytest.raises(ValueError, match="inconsistent shapes"):
        MixtureSummary(summary._whitening, lw[:2], mu, f, v)
    with pytest.raises(AttributeError, match="immutable"):
        summary.rank = 3
