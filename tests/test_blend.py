"""The fit's blend with a BIC Gaussian mixture: EM and BIC against scikit-learn and exact densities,
the held-out weight against its closed form, the blended oracle against its parts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from disco_score import DiScoFormer
from disco_score.blend import ScoreBlend, blend_weight
from disco_score.gaussian_mixture import bic_mixture, em
from disco_score.metrics import relative_score_mse
from disco_score.targets import GaussianMixture


def _separated(n: int, seed: int, scale: float = 0.3) -> tuple[GaussianMixture, torch.Tensor]:
    means = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    covs = torch.stack([torch.tensor([[1.0, 0.6], [0.6, 1.0]]), torch.eye(2) * 0.5, torch.diag(torch.tensor([2.0, 0.2]))])
    target = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), means, scale * covs.double())
    return target, target.sample(n, torch.Generator().manual_seed(seed))


def test_em_log_likelihood_is_the_mixtures_own() -> None:
    z = torch.randn(600, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z[:200] += 4.0
    counts, means, cov, loglik = em(z, 3, 30, torch.Generator().manual_seed(1))
    exact = GaussianMixture(counts / z.shape[0], means, cov).log_prob_t(z).mean()
    assert loglik == pytest.approx(float(exact), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_bic_mixture_chooses_as_scikit_learn_does(seed: int) -> None:
    sklearn = pytest.importorskip("sklearn.mixture")
    target, x = _separated(1500, seed)
    fitted = bic_mixture(x, seed=seed)
    bics = [sklearn.GaussianMixture(k, random_state=seed).fit(x.numpy()).bic(x.numpy()) for k in range(1, 7)]
    assert fitted.weights.shape[-1] == 1 + int(np.argmin(bics)) == 3
    order = torch.argsort(fitted.means[:, 0] * 10 + fitted.means[:, 1])
    assert torch.allclose(fitted.means[order], target.means[torch.tensor([0, 2, 1])], atol=0.15)
    assert fitted.dim == 2 and fitted.compute_dtype == torch.float64


def test_bic_mixture_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        bic_mixture(np.ones((50, 2)))
    with pytest.raises(TypeError, match="seed"):
        bic_mixture(np.random.default_rng(0).normal(size=(50, 2)), seed=1.5)  # type: ignore[arg-type]


class _Gaussian:
    """The score of N(0, I / precision)."""

    def __init__(self, precision: float) -> None:
        self.precision = precision

    def score(self, y: torch.Tensor) -> torch.Tensor:
        return -self.precision * y


def test_blend_weight_is_the_held_out_optimum() -> None:
    # blending precisions 2 and 0.5 gives precision 2w + 0.5(1 - w); the Hyvärinen loss of -c y is
    # minimised at c = d / mean|y|^2 (about 1), so w = (c - 0.5) / 1.5, about 1/3
    z = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = blend_weight(lambda half: _Gaussian(2.0), lambda half: _Gaussian(0.5), z)
    assert w == pytest.approx(1 / 3, abs=0.03)
    assert blend_weight(lambda half: _Gaussian(1.0), lambda half: _Gaussian(3.0), z) == pytest.approx(1.0, abs=0.03)
    assert blend_weight(lambda half: _Gaussian(0.2), lambda half: _Gaussian(0.5), z) == 0.0  # clipped


@pytest.fixture(scope="module")
def blended() -> tuple[ScoreBlend, object, GaussianMixture, torch.Tensor]:
    target, x = _separated(1000, 3)
    fit = DiScoFormer.pretrained().fit(x)
    assert isinstance(fit, ScoreBlend) and 0.0 <= fit.weight < 1.0
    plain = DiScoFormer.pretrained(blend=False).fit(x)
    return fit, plain, target, x


def test_blend_is_the_geometric_mixture_in_the_bulk_and_the_network_in_the_far_tail(blended) -> None:
    fit, plain, target, x = blended
    y = target.sample(300, torch.Generator().manual_seed(9))
    w = fit.weight
    a, s_a = fit.network.log_density_and_score(y, normalized=False)
    b, s_b = fit.mixture.log_density_and_score(y)
    near = (b - a).abs() < 1.0  # the gate is open: within e^-3 of the geometric blend
    assert near.float().mean() > 0.5
    lp, score = fit.log_density_and_score(y, normalized=False)
    torch.testing.assert_close(lp[near], (w * a + (1 - w) * b)[near], rtol=0, atol=0.06)
    torch.testing.assert_close(score[near], (w * s_a + (1 - w) * s_b)[near], rtol=0.05, atol=0.1)
    torch.testing.assert_close(fit.log_density(y), lp - fit.log_normalizer, rtol=0, atol=1e-10)
    far = torch.tensor([[30.0, 30.0]], dtype=torch.float64)  # hundreds of nats into the mixture's tail
    torch.testing.assert_close(fit.score(far), fit.network.score(far))


def test_blend_score_is_the_gradient_of_its_log_density() -> None:
    # with exact parts (two Gaussian mixtures) the blend's score must be the autograd gradient
    from disco_score.whitening import Whitening

    net_part, x = _separated(500, 0, scale=1.0)
    z_mixture = GaussianMixture(torch.tensor([0.6, 0.4], dtype=torch.float64),
                                torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64),
                                torch.stack([torch.eye(2), 0.3 * torch.eye(2)]).double())
    whitening = Whitening.from_samples(x)
    z = whitening.forward(x)
    blend = ScoreBlend(net_part, z_mixture, 0.35, whitening, torch.stack([z.min(0).values, z.max(0).values]), True)
    y = torch.cat([x[:50], 6.0 * torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)])
    y.requires_grad_(True)
    with torch.enable_grad():
        lp, _ = blend._blend(y, want_score=False)
        (grad,) = torch.autograd.grad(lp.sum(), y)
    torch.testing.assert_close(blend.score(y.detach()), grad, rtol=1e-7, atol=1e-9)


def test_blend_is_normalised_in_two_dimensions(blended) -> None:
    fit, _, _, _ = blended
    # importance sampling from the blend's own mixture part: E_mix[p_blend / p_mix] = 1
    draws = fit.mixture.sample(40_000, torch.Generator().manual_seed(4))
    ratio = torch.exp(fit.log_density(draws) - fit.mixture.log_density(draws))
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.03)


def test_blend_beats_the_network_on_a_mixture_of_separated_gaussians(blended) -> None:
    fit, plain, target, _ = blended
    y = target.sample(2000, torch.Generator().manual_seed(5))
    truth = target.score(y)
    assert relative_score_mse(fit.score(y), truth) < relative_score_mse(plain.score(y), truth)


def test_blend_keeps_dtype_smooths_and_adapts(blended) -> None:
    fit, _, _, x = blended
    y32 = x[:5].float()
    assert fit.score(y32).dtype == torch.float32 and fit.log_density(y32).dtype == torch.float32
    smooth = fit.smoothed(0.1)
    assert isinstance(smooth, ScoreBlend) and smooth.weight == fit.weight
    assert torch.allclose(smooth.mixture.covariances, fit.mixture.covariances + 0.01 * torch.eye(2, dtype=torch.float64))
    adapted = fit.adapt(steps=1)
    assert isinstance(adapted, ScoreBlend) and adapted.whitened_mixture is fit.whitened_mixture and adapted.weight == fit.weight
    assert math.isfinite(float(adapted.log_density(x[:3]).sum()))


def test_blend_switch() -> None:
    x = np.random.default_rng(0).normal(size=(300, 2))
    assert not isinstance(DiScoFormer.pretrained(blend=False).fit(x), ScoreBlend)
    with pytest.raises(TypeError, match="blend"):
        DiScoFormer.pretrained(blend="yes")
    small = DiScoFormer.pretrained().fit(x[:100])  # below BLEND_MIN_N: the network alone
    assert not isinstance(small, ScoreBlend)


def test_blend_is_permutation_invariant_and_affine_equivariant(blended) -> None:
    fit, _, target, x = blended
    y = target.sample(200, torch.Generator().manual_seed(6))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(7))
    permuted = DiScoFormer.pretrained().fit(x[perm])
    assert permuted.weight == pytest.approx(fit.weight, abs=1e-9)
    # the network computes in float32 (its sums' order changes with the samples'); the mixture is float64
    torch.testing.assert_close(permuted.score(y), fit.score(y), rtol=1e-3, atol=1e-3 * float(fit.score(y).abs().max()))
    torch.testing.assert_close(permuted.mixture.means, fit.mixture.means, rtol=1e-9, atol=1e-9)
    theta = 0.7
    a = 2.5 * torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                           dtype=torch.float64)
    b = torch.tensor([3.0, -1.0], dtype=torch.float64)
    moved = DiScoFormer.pretrained().fit(x @ a.T + b)
    # equivariant up to the float32 network's rounding, which the finite-difference divergence amplifies
    assert moved.weight == pytest.approx(fit.weight, abs=0.01)
    # p'(Ay + b) = p(y) / |det A|; s'(Ay + b) = A^{-T} s(y)
    lp, score = fit.log_density_and_score(y)
    lp_m, score_m = moved.log_density_and_score(y @ a.T + b)
    assert torch.allclose(lp_m, lp - math.log(2.5 ** 2), atol=0.02)
    assert torch.allclose(score_m, score @ torch.linalg.inv(a), atol=0.01 * float(score.abs().max()))
