"""Exact targets: log-densities against torch.distributions / scipy, scores against autograd,
samplers against known moments and distribution functions, and the GMM prior against the protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Categorical, Laplace, MixtureSameFamily, MultivariateNormal, Normal

from disco_score.targets import (Banana, Funnel, GaussianMixture, ProductLaplace, ProductStudentT,
                                 haar_orthogonal, random_gmm)

F64 = torch.float64


def _torch_mixture(gmm: GaussianMixture) -> MixtureSameFamily:
    # logits, not probs: Categorical clamps probs to [eps, 1 - eps], which revives padding components
    return MixtureSameFamily(Categorical(logits=torch.log(gmm.weights)),
                             MultivariateNormal(gmm.means, covariance_matrix=gmm.covariances))


def _padded_gmm() -> GaussianMixture:
    """Three real components plus one weight-0 padding component, d = 3."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, 3, generator=gen, dtype=F64)
    covs = a @ a.transpose(-1, -2) + 0.3 * torch.eye(3, dtype=F64)
    means = 2.0 * torch.randn(4, 3, generator=gen, dtype=F64)
    weights = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=F64)
    return GaussianMixture(weights, means, covs)


# --------------------------------------------------------------------------- log-densities
def test_gmm_log_prob_matches_torch_unbatched_with_padding(generator):
    gmm = _padded_gmm()
    x = 2.5 * torch.randn(200, 3, generator=generator, dtype=F64)
    expected = _torch_mixture(gmm).log_prob(x)
    torch.testing.assert_close(gmm.log_prob_t(x), expected, rtol=1e-12, atol=1e-12)
    # the Oracle API gives the same numbers, numpy in -> numpy out
    np.testing.assert_allclose(gmm.log_density(x.numpy()), expected.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gmm.density(x.numpy()), expected.exp().numpy(), rtol=1e-10)


def test_gmm_log_prob_matches_torch_batched(generator):
    gmm = random_gmm(4, batch=6, generator=generator)
    assert (gmm.weights == 0).any(), "the batch should contain padding components"
    x = 3.0 * torch.randn(6, 50, 4, generator=generator, dtype=F64)
    # MixtureSameFamily wants the sample dimension first: (m, B, d) -> (m, B)
    expected = _torch_mixture(gmm).log_prob(x.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(gmm.log_prob_t(x), expected, rtol=1e-11, atol=1e-11)
    # unbatched points broadcast over the batch
    torch.testing.assert_close(gmm.log_prob_t(x[0]), _torch_mixture(gmm).log_prob(x[0][:, None]).T,
                               rtol=1e-11, atol=1e-11)


def test_laplace_log_prob_matches_torch(generator):
    target = ProductLaplace(3, loc=0.7, scale=1.8)
    x = 3.0 * torch.randn(100, 3, generator=generator, dtype=F64)
    expected = Laplace(torch.tensor(0.7, dtype=F64), torch.tensor(1.8, dtype=F64)).log_prob(x).sum(-1)
    torch.testing.assert_close(target.log_prob_t(x), expected, rtol=1e-13, atol=1e-13)


def test_student_t_log_prob_matches_scipy(generator):
    target = ProductStudentT(2, df=3.5, loc=-0.4, scale=0.6)
    x = 4.0 * torch.randn(100, 2, generator=generator, dtype=F64)
    expected = stats.t.logpdf(x.numpy(), df=3.5, loc=-0.4, scale=0.6).sum(-1)
    np.testing.assert_allclose(target.log_prob_t(x).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_funnel_log_prob_matches_its_generative_definition(generator):
    target = Funnel(dim=4, scale=2.5)
    x = torch.randn(100, 4, generator=generator, dtype=F64)
    v, rest = x[:, 0], x[:, 1:]
    expected = (Normal(0.0, 2.5).log_prob(v)
                + Normal(torch.zeros(()), torch.exp(0.5 * v)[:, None]).log_prob(rest).sum(-1))
    torch.testing.assert_close(target.log_prob_t(x), expected.to(F64), rtol=1e-6, atol=1e-6)


def test_banana_log_prob_matches_its_generative_definition(generator):
    target = Banana(dim=3, curvature=0.7, scale=1.5)
    x = 2.0 * torch.randn(100, 3, generator=generator, dtype=F64)
    expected = (Normal(torch.tensor(0.0, dtype=F64), 1.5).log_prob(x[:, 0])
                + Normal(0.7 * (x[:, 0] ** 2 - 1.5 ** 2), 1.0).log_prob(x[:, 1])
                + Normal(torch.tensor(0.0, dtype=F64), 1.0).log_prob(x[:, 2]))
    torch.testing.assert_close(target.log_prob_t(x), expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- scores vs autograd
TARGETS = {
    "gmm": _padded_gmm,
    "gmm_batched": lambda: random_gmm(3, batch=4, generator=torch.Generator().manual_seed(3)),
    "laplace": lambda: ProductLaplace(3, loc=0.5, scale=1.3),
    "student_t": lambda: ProductStudentT(3, df=2.5, loc=0.2, scale=0.8),
    "funnel": lambda: Funnel(dim=3, scale=2.0),
    "banana": lambda: Banana(dim=3, curvature=0.6, scale=1.7),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_score_matches_autograd(name, generator):
    target = TARGETS[name]()
    x = 1.5 * torch.randn(*target.batch_shape, 64, target.dim, generator=generator, dtype=F64)
    if name == "laplace":  # the score is the a.e. derivative: stay away from the kinks
        x = torch.where((x - 0.5).abs() < 1e-3, x + 0.01, x)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob_t(x).sum(), x)
    torch.testing.assert_close(target.score_t(x.detach()), grad, rtol=1e-10, atol=1e-10)
    if not target.batch_shape:  # the public Oracle API returns the same exact score
        np.testing.assert_allclose(target.score(x.detach().numpy()), grad.numpy(), rtol=1e-10, atol=1e-10)


def test_batched_target_refuses_the_oracle_api(generator):
    gmm = random_gmm(2, batch=3, generator=generator)
    with pytest.raises(ValueError, match="batched"):
        gmm.score(np.zeros((4, 2)))


# --------------------------------------------------------------------------- samplers
def test_gmm_sample_moments(generator):
    gmm = _padded_gmm()
    x = gmm.sample(200_000, generator)
    w, mu, cov = gmm.weights, gmm.means, gmm.covariances
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    expected_cov = second - torch.outer(mean, mean)
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), expected_cov, atol=0.08, rtol=0.02)


def test_gmm_sample_never_draws_padding_components(generator):
    # a padding component far away: any draw from it would land near (100, 100)
    weights = torch.tensor([1.0, 0.0], dtype=F64)
    means = torch.tensor([[0.0, 0.0], [100.0, 100.0]], dtype=F64)
    gmm = GaussianMixture(weights, means, torch.eye(2, dtype=F64).expand(2, 2, 2))
    assert gmm.sample(20_000, generator).abs().max() < 10


def test_batched_gmm_sample_per_batch_moments(generator):
    gmm = random_gmm(2, batch=3, generator=generator)
    x = gmm.sample(100_000, generator)
    assert x.shape == (3, 100_000, 2)
    mean = (gmm.weights[..., None] * gmm.means).sum(-2)
    torch.testing.assert_close(x.mean(1), mean, atol=0.05, rtol=0)


def test_laplace_sample_variance(generator):
    target = ProductLaplace(2, loc=1.0, scale=1.0)
    x = target.sample(200_000, generator)
    torch.testing.assert_close(x.mean(0), torch.ones(2, dtype=F64), atol=0.02, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((2,), 2.0, dtype=F64), atol=0.05, rtol=0)
    assert stats.kstest(x[:, 0].numpy(), stats.laplace(loc=1.0, scale=1.0).cdf).pvalue > 1e-3


def test_student_t_sample_distribution(generator):
    target = ProductStudentT(2, df=3.0, loc=0.5, scale=2.0)
    x = target.sample(20_000, generator).numpy()
    for j in range(2):
        assert stats.kstest(x[:, j], stats.t(df=3.0, loc=0.5, scale=2.0).cdf).pvalue > 1e-3
    # and a wrong df is detected by the same test (the check has power)
    assert stats.kstest(x[:, 0], stats.t(df=1.5, loc=0.5, scale=2.0).cdf).pvalue < 1e-3


def test_funnel_and_banana_samples_follow_their_definitions(generator):
    funnel = Funnel(dim=3, scale=3.0).sample(20_000, generator).numpy()
    assert stats.kstest(funnel[:, 0], stats.norm(scale=3.0).cdf).pvalue > 1e-3
    standardised = funnel[:, 1:] / np.exp(0.5 * funnel[:, :1])
    assert stats.kstest(standardised.ravel(), stats.norm.cdf).pvalue > 1e-3
    banana = Banana(dim=3, curvature=0.5, scale=2.0).sample(20_000, generator).numpy()
    assert stats.kstest(banana[:, 0], stats.norm(scale=2.0).cdf).pvalue > 1e-3
    residual = banana[:, 1] - 0.5 * (banana[:, 0] ** 2 - 4.0)
    assert stats.kstest(residual, stats.norm.cdf).pvalue > 1e-3
    assert stats.kstest(banana[:, 2], stats.norm.cdf).pvalue > 1e-3


def test_samplers_stay_finite_when_rand_returns_zero(monkeypatch):
    # torch.rand can return exactly 0.0 (once in 2^24 draws in float32); the inverse-CDF and the
    # Dirichlet draw must not turn it into -inf / NaN.
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros_like(real_rand(*a, **k)))
    assert torch.isfinite(ProductLaplace(2, dtype=torch.float32).sample(10)).all()
    gmm = random_gmm(2, batch=4, dtype=torch.float32)
    assert torch.isfinite(gmm.weights).all()
    torch.testing.assert_close(gmm.weights.sum(-1), torch.ones(4))


@pytest.mark.parametrize("make", [
    lambda: _padded_gmm(), lambda: ProductLaplace(2), lambda: ProductStudentT(2),
    lambda: Funnel(3), lambda: Banana(2)])
def test_sampling_is_deterministic_given_a_seeded_generator(make):
    target = make()
    a = target.sample(50, torch.Generator().manual_seed(7))
    b = target.sample(50, torch.Generator().manual_seed(7))
    c = target.sample(50, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be at least 1"):
        ProductLaplace(2).sample(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        _padded_gmm().sample(2.5)


# --------------------------------------------------------------------------- the GMM prior
def test_random_gmm_is_deterministic_given_a_seeded_generator():
    a = random_gmm(3, batch=5, generator=torch.Generator().manual_seed(11))
    b = random_gmm(3, batch=5, generator=torch.Generator().manual_seed(11))
    c = random_gmm(3, batch=5, generator=torch.Generator().manual_seed(12))
    for name in ("weights", "means", "covariances"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.weights[:, 0], c.weights[:, 0])


def test_random_gmm_shapes():
    single = random_gmm(3, n_components=4, generator=torch.Generator().manual_seed(0))
    assert single.batch_shape == ()
    assert single.weights.shape == (4,) and single.means.shape == (4, 3)
    assert single.covariances.shape == (4, 3, 3)
    assert single.sample(7).shape == (7, 3)
    batched = random_gmm(3, batch=5, generator=torch.Generator().manual_seed(0))
    k = batched.weights.shape[-1]
    assert batched.batch_shape == (5,)
    assert batched.means.shape == (5, k, 3) and batched.covariances.shape == (5, k, 3, 3)
    assert batched.log_prob_t(torch.zeros(5, 8, 3, dtype=F64)).shape == (5, 8)
    assert batched.score_t(torch.zeros(5, 8, 3, dtype=F64)).shape == (5, 8, 3)
    assert batched.sample(9).shape == (5, 9, 3)
    assert random_gmm(2, dtype=torch.float32).compute_dtype == torch.float32


def test_random_gmm_follows_the_protocol_prior():
    d, batch = 3, 400
    gmm = random_gmm(d, batch=batch, generator=torch.Generator().manual_seed(5))
    w = gmm.weights
    # K ~ uniform on {1, ..., 10}: every value occurs, none outside
    ks = (w > 0).sum(-1)
    assert set(ks.tolist()) == set(range(1, 11))
    assert int(ks.max()) == w.shape[-1]
    counts = np.bincount(ks.numpy(), minlength=11)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3
    torch.testing.assert_close(w.sum(-1), torch.ones(batch, dtype=F64))
    assert (w >= 0).all()
    real = w > 0
    evals = torch.linalg.eigvalsh(gmm.covariances)[real]
    assert evals.min() >= 0.2 - 1e-12 and evals.max() <= 1.0 + 1e-12
    for b in range(20):
        covs = gmm.covariances[b, real[b]]
        # one rotation Q per mixture: all covariances commute, and Q is orthogonal
        torch.testing.assert_close(covs[0] @ covs[-1], covs[-1] @ covs[0], atol=1e-12, rtol=0)
        _, q = torch.linalg.eigh(covs[0])
        torch.testing.assert_close(q.T @ q, torch.eye(d, dtype=F64), atol=1e-12, rtol=0)
        # in the unrotated frame (the eigenbasis of any component) every mean lies in [-3, 3]^d
        # and every covariance is diagonal
        unrotated_means = gmm.means[b, real[b]] @ q
        assert unrotated_means.abs().max() <= 3.0 + 1e-9
        unrotated = q.T @ covs @ q
        off_diagonal = unrotated - torch.diag_embed(torch.diagonal(unrotated, dim1=-2, dim2=-1))
        assert off_diagonal.abs().max() < 1e-10


def test_random_gmm_without_rotation_matches_the_marginal_laws():
    d, batch = 2, 2000
    gmm = random_gmm(d, batch=batch, n_components=2, rotate=False,
                     generator=torch.Generator().manual_seed(9))
    assert gmm.weights.shape == (batch, 2)
    covs = gmm.covariances
    assert torch.equal(covs, torch.diag_embed(torch.diagonal(covs, dim1=-2, dim2=-1)))
    variances = torch.diagonal(covs, dim1=-2, dim2=-1).reshape(-1).numpy()
    assert stats.kstest(variances, stats.uniform(loc=0.2, scale=0.8).cdf).pvalue > 1e-3
    means = gmm.means.reshape(-1).numpy()
    assert stats.kstest(means, stats.uniform(loc=-3.0, scale=6.0).cdf).pvalue > 1e-3
    # Dirichlet(1, 1): the first weight is uniform on [0, 1]
    assert stats.kstest(gmm.weights[:, 0].numpy(), stats.uniform.cdf).pvalue > 1e-3


def test_random_gmm_component_range_and_errors():
    gmm = random_gmm(2, batch=200, n_components=(11, 20), generator=torch.Generator().manual_seed(0))
    ks = (gmm.weights > 0).sum(-1)
    assert int(ks.min()) >= 11 and int(ks.max()) <= 20 and len(set(ks.tolist())) > 5
    with pytest.raises(ValueError, match="n_components"):
        random_gmm(2, n_components=(5, 3))
    with pytest.raises(ValueError, match="n_components"):
        random_gmm(2, n_components=0)
    with pytest.raises(ValueError, match="dim must be at least 1"):
        random_gmm(0)


def test_haar_orthogonal_is_orthogonal_and_uniform():
    q = haar_orthogonal(3, (4000,), torch.Generator().manual_seed(0))
    eye = torch.eye(3, dtype=F64).expand(4000, 3, 3)
    torch.testing.assert_close(q @ q.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    det = torch.linalg.det(q)
    # Haar on O(d): both determinant signs, equally often
    assert abs(float((det > 0).double().mean()) - 0.5) < 0.05
    # each entry of a Haar matrix has mean 0 and variance 1/d
    torch.testing.assert_close(q.mean(0), torch.zeros(3, 3, dtype=F64), atol=0.04, rtol=0)
    torch.testing.assert_close((q ** 2).mean(0), torch.full((3, 3), 1 / 3, dtype=F64), atol=0.03, rtol=0)


# --------------------------------------------------------------------------- GMM construction
def test_gmm_smoothed_adds_sigma_squared_identity(generator):
    gmm = _padded_gmm()
    smooth = gmm.smoothed(0.7)
    assert isinstance(smooth, GaussianMixture)
    torch.testing.assert_close(smooth.covariances, gmm.covariances + 0.49 * torch.eye(3, dtype=F64))
    x = torch.randn(50, 3, generator=generator, dtype=F64)
    expected = MixtureSameFamily(Categorical(logits=torch.log(gmm.weights)),
                                 MultivariateNormal(gmm.means, gmm.covariances + 0.49 * torch.eye(3, dtype=F64)))
    torch.testing.assert_close(smooth.log_prob_t(x), expected.log_prob(x), rtol=1e-12, atol=1e-12)
    assert gmm.smoothed(0.0) is gmm
    batched = random_gmm(2, batch=3, generator=generator).smoothed(0.5)
    assert batched.batch_shape == (3,)


def test_gmm_is_immutable_and_owns_its_parameters():
    weights = torch.tensor([0.5, 0.5], dtype=F64)
    means = torch.tensor([[0.0], [2.0]], dtype=F64)
    covs = torch.ones(2, 1, 1, dtype=F64)
    gmm = GaussianMixture(weights, means, covs)
    before = gmm.log_prob_t(torch.zeros(1, 1, dtype=F64))
    means.add_(10.0)  # the caller edits its tensor afterwards
    torch.testing.assert_close(gmm.log_prob_t(torch.zeros(1, 1, dtype=F64)), before)
    with pytest.raises(AttributeError, match="immutable"):
        gmm.means = means


def test_gmm_rejects_bad_parameters():
    eye = torch.eye(2, dtype=F64).expand(2, 2, 2)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(2, 2), eye)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([1.5, -0.5], dtype=F64), torch.zeros(2, 2, dtype=F64), eye)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.zeros(2, 2, dtype=F64), -eye)


def test_gmm_validation_names_the_argument():
    eye = torch.eye(2, dtype=F64).expand(2, 2, 2).clone()
    means, w = torch.zeros(2, 2, dtype=F64), torch.tensor([0.5, 0.5], dtype=F64)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        GaussianMixture(torch.tensor([0.5, 0.6], dtype=F64), means, eye)
    with pytest.raises(ValueError, match="weights must be finite"):
        GaussianMixture(torch.tensor([float("nan"), 0.5], dtype=F64), means, eye)
    with pytest.raises(ValueError, match="means must be finite"):
        GaussianMixture(w, torch.tensor([[0.0, float("inf")], [0.0, 0.0]], dtype=F64), eye)
    skew = eye.clone()
    skew[0, 0, 1] = 0.5  # lower triangle still the identity: Cholesky alone would accept it
    with pytest.raises(ValueError, match="covariances must be symmetric"):
        GaussianMixture(w, means, skew)
    singular = eye.clone()
    singular[1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64)
    with pytest.raises(ValueError, match="covariances must be symmetric positive definite"):
        GaussianMixture(w, means, singular)
    nan_cov = eye.clone()
    nan_cov[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="covariances must be finite"):
        GaussianMixture(w, means, nan_cov)
    # within tolerance: weights off by 1e-9 and float32 weights normalised in float32 are accepted
    GaussianMixture(w + 5e-10, means, eye)
    w32 = torch.rand(32, generator=torch.Generator().manual_seed(0))
    GaussianMixture(w32 / w32.sum(), torch.zeros(32, 2), torch.eye(2).expand(32, 2, 2))


def test_target_constructors_validate():
    with pytest.raises(ValueError, match="scale"):
        ProductLaplace(2, scale=0.0)
    with pytest.raises(ValueError, match="df"):
        ProductStudentT(2, df=-1.0)
    with pytest.raises(ValueError, match="dim must be at least 2"):
        Funnel(dim=1)
    with pytest.raises(TypeError, match="dim must be an integer"):
        Banana(dim=2.0)
    assert math.isclose(float(ProductLaplace(1).log_density(np.zeros(1))), -math.log(2.0))
