"""Entropy, Fisher information, relative Fisher information and KSD against exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from disco_score import KDE, information
from disco_score.information import held_out_values
from disco_score.particles import GaussianFit
from disco_score.targets import GaussianMixture

F64 = torch.float64


def gaussian(d: int) -> tuple[GaussianMixture, torch.Tensor]:
    cov = torch.tensor([[2.0]], dtype=F64) if d == 1 else torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
    return GaussianMixture(torch.ones(1, dtype=F64), torch.full((1, d), 0.5, dtype=F64), cov[None]), cov


def mixture(d: int) -> GaussianMixture:
    eye = torch.eye(d, dtype=F64)
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64),
                           torch.tensor([[-2.0] * d, [1.5] * d], dtype=F64), torch.stack([0.5 * eye, eye]))


def draw(target: GaussianMixture, n: int, seed: int) -> torch.Tensor:
    return target.sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d", [1, 2])
def test_gaussian_closed_forms(d):
    target, cov = gaussian(d)
    exact_h = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))
    exact_i = float(torch.trace(torch.linalg.inv(cov)))
    x = draw(target, 2000, seed=d)
    # an exact oracle evaluated at the samples: plain Monte Carlo, within 4 standard errors
    neg_log_p = -torch.as_tensor(target.log_density(x))
    score_sq = (torch.as_tensor(target.score(x)) ** 2).sum(1)
    assert abs(information.entropy(x, target) - exact_h) < 4 * float(neg_log_p.std()) / math.sqrt(2000)
    assert abs(information.fisher_information(x, target) - exact_i) < 4 * float(score_sq.std()) / math.sqrt(2000)
    # KDE (Scott), held out: entropy within 0.04 nats; Fisher information within -15% / +40%
    # (smoothing shrinks the score, estimation noise inflates |ŝ|²; measured 0.94-1.34 x exact)
    assert abs(information.entropy(x, KDE()) - exact_h) < 0.04
    assert 0.85 * exact_i < information.fisher_information(x, KDE()) < 1.4 * exact_i
    # the moment-matched Gaussian is the right model here: close to exact
    assert abs(information.entropy(x, GaussianFit()) - exact_h) < 0.06
    assert abs(information.fisher_information(x, GaussianFit()) / exact_i - 1) < 0.08


@pytest.mark.parametrize("d", [1, 2])
def test_mixture_against_monte_carlo_truth(d):
    target = mixture(d)
    truth = draw(target, 100_000, seed=10 + d)
    exact_h, exact_i = information.entropy(truth, target), information.fisher_information(truth, target)
    x = draw(target, 2000, seed=20 + d)
    entropy_kde = information.entropy(x, KDE())
    # held-out entropy estimates the cross-entropy E_f[-log f̂] >= H: errs high (measured +0.05, +0.10)
    assert -0.03 < entropy_kde - exact_h < 0.15
    # Scott's rule over-smooths a bimodal density: the Fisher information comes out low
    fisher_kde = information.fisher_information(x, KDE())
    assert 0.35 * exact_i < fisher_kde < 0.85 * exact_i
    # a cross-validated bandwidth with the cross-product estimate is far closer (measured 0.92, 0.96)
    assert abs(information.fisher_information(x, KDE("cv"), debiased=True) / exact_i - 1) < 0.25


def test_held_out_split_is_what_keeps_the_entropy_honest():
    target, cov = gaussian(2)
    exact_h = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))
    x = draw(target, 1000, seed=3)
    spiky = KDE(bandwidth=0.01)
    # held out: a cross-entropy, so far above H (Gibbs); in sample: the kernel peaks make it far below
    assert information.entropy(x, spiky) > exact_h + 1.0
    assert information.entropy(x, spiky.fit(x)) < exact_h - 1.0


def test_held_out_values_order_seed_and_folds():
    target, _ = gaussian(1)
    x = draw(target, 600, seed=4)
    seen_sizes = []

    def statistic(oracle, points):
        seen_sizes.append((oracle.samples.shape[0], points.shape[0]))
        return points[:, 0]

    values = held_out_values(x, KDE(), statistic, folds=3, seed=1)
    torch.testing.assert_close(values, x[:, 0])  # back in the original order
    assert seen_sizes == [(400, 200)] * 3  # each part scored by a fit on the other two
    assert information.entropy(x, KDE(), seed=5) == information.entropy(x, KDE(), seed=5)
    assert information.entropy(x.numpy(), KDE()) == pytest.approx(information.entropy(x, KDE()), rel=1e-12)
    assert information.entropy(x, KDE(), folds=5) == pytest.approx(information.entropy(x, KDE()), abs=0.05)


def test_relative_fisher_information():
    gen = torch.Generator().manual_seed(5)
    p = torch.randn(2000, 2, generator=gen, dtype=F64)
    q = torch.randn(2000, 2, generator=gen, dtype=F64) + torch.tensor([1.0, 0.5], dtype=F64)
    q_same = torch.randn(2000, 2, generator=gen, dtype=F64)
    exact = 1.25  # ∇log p - ∇log q = -μ_q for unit Gaussians: |μ_q|²
    # nearly exact scores (moment-matched Gaussians) reproduce the closed form
    assert information.relative_fisher_information(p, q, GaussianFit()) == pytest.approx(exact, rel=0.08)
    assert information.relative_fisher_information(p, q_same, GaussianFit()) < 0.02
    # KDE: the plain estimate carries both scores' noise; the cross-product estimate removes it
    plain_same = information.relative_fisher_information(p, q_same, KDE())
    debiased_same = information.relative_fisher_information(p, q_same, KDE(), debiased=True)
    assert abs(debiased_same) < 0.25 < plain_same
    assert 0.6 * exact < information.relative_fisher_information(p, q, KDE(), debiased=True) < 2.0 * exact


def stein_kernel_autograd(x, y, sx, sy, kernel, ell):
    """u(x, y) for one pair, by automatic differentiation of k."""
    def k(a, b):
        rho = ((a - b) ** 2).sum()
        return (1 + rho / ell ** 2) ** -0.5 if kernel == "imq" else torch.exp(-rho / (2 * ell ** 2))
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = k(x, y)
    gx, gy = torch.autograd.grad(value, (x, y), create_graph=True)
    trace = sum(torch.autograd.grad(gx[a], y, retain_graph=True)[0][a] for a in range(x.shape[0]))
    return float((value * (sx @ sy) + sx @ gy + sy @ gx + trace).detach())


@pytest.mark.parametrize("kernel", ["imq", "gaussian"])
def test_ksd_matches_autograd_stein_kernel(kernel):
    target = mixture(2)
    x = draw(target, 12, seed=6)
    s = target.score_t(x)
    ell = 1.3
    u = torch.tensor([[stein_kernel_autograd(x[i], x[j], s[i], s[j], kernel, ell) for j in range(12)]
                      for i in range(12)], dtype=F64)
    v_stat = information.kernel_stein_discrepancy(x, target, kernel=kernel, bandwidth=ell)
    u_stat = information.kernel_stein_discrepancy(x, target, kernel=kernel, bandwidth=ell, u_statistic=True)
    assert v_stat == pytest.approx(float(u.mean()), rel=1e-10)
    assert u_stat == pytest.approx(float((u.sum() - u.diagonal().sum()) / (12 * 11)), rel=1e-10)


@pytest.mark.parametrize("kernel", ["imq", "gaussian"])
def test_ksd_separates_own_samples_from_shifted(kernel):
    target = mixture(2)
    x, fresh = draw(target, 1000, seed=7), draw(target, 1000, seed=8)
    oracle = KDE().fit(x)
    own = information.kernel_stein_discrepancy(fresh, oracle, kernel=kernel, u_statistic=True)
    shifted = information.kernel_stein_discrepancy(fresh + torch.tensor([0.5, 0.0], dtype=F64), oracle,
                                                   kernel=kernel, u_statistic=True)
    exact_own = information.kernel_stein_discrepancy(fresh, target, kernel=kernel, u_statistic=True)
    # measured: exact 0.004, KDE 0.014, shifted by half a unit 0.09-0.11
    assert abs(exact_own) < 0.015
    assert abs(own) < 0.03
    assert shifted > 4 * max(abs(own), 0.01)
    assert information.kernel_stein_discrepancy(fresh, target, kernel=kernel) >= 0.0


def test_compare_estimators_table():
    rows = information.compare_estimators({"kde": KDE(), "gauss": GaussianFit()}, dims=(1, 2), n=512,
                                          n_truth=20_000, n_components=2)
    assert [(r["dim"], r["estimator"]) for r in rows] == [(1, "kde"), (1, "gauss"), (2, "kde"), (2, "gauss")]
    for row in rows:
        assert row["entropy_error"] == pytest.approx(row["entropy"] - row["entropy_exact"])
        assert row["entropy_exact_stderr"] < 0.02 and row["fisher_exact"] > 0
        assert np.isfinite([row["fisher"], row["fisher_debiased"], row["seconds"]]).all()
    kde_1d = rows[0]
    assert abs(kde_1d["entropy_error"]) < 0.15
    # the table is reproducible
    again = information.compare_estimators({"kde": KDE()}, dims=(1,), n=512, n_truth=20_000, n_components=2)
    assert again[0]["entropy"] == kde_1d["entropy"] and again[0]["entropy_exact"] == kde_1d["entropy_exact"]


@pytest.mark.parametrize("call, error, match", [
    (lambda x: information.entropy(x[:, 0]), ValueError, "shape \\(n, d\\)"),
    (lambda x: information.entropy(x, "kde"), TypeError, "estimator must be"),
    (lambda x: information.entropy(x, KDE(), folds=1), ValueError, "folds"),
    (lambda x: information.entropy(x[:3], KDE(), folds=2), ValueError, "too few"),
    (lambda x: information.entropy(x, KDE().fit(x[:, :1])), ValueError, "dimension"),
    (lambda x: information.fisher_information(x, KDE(), debiased=True, folds=2), ValueError, "folds"),
    (lambda x: information.fisher_information(x, KDE().fit(x), debiased=True), TypeError, "Estimator"),
    (lambda x: information.relative_fisher_information(x, x[:, :1], KDE()), ValueError, "dimension"),
    (lambda x: information.relative_fisher_information(x, x, KDE().fit(x)), TypeError, "Estimator"),
    (lambda x: information.kernel_stein_discrepancy(x, KDE()), TypeError, "fitted Oracle"),
    (lambda x: information.kernel_stein_discrepancy(x, KDE().fit(x), kernel="rbf"), ValueError, "kernel"),
    (lambda x: information.kernel_stein_discrepancy(x, KDE().fit(x), bandwidth=-1.0), ValueError, "bandwidth"),
    (lambda x: information.compare_estimators({}), TypeError, "non-empty"),
    (lambda x: information.entropy(np.full((10, 2), np.inf), KDE()), ValueError, "non-finite"),
])
def test_bad_input(call, error, match):
    x = draw(gaussian(2)[0], 100, seed=9)
    with pytest.raises(error, match=match):
        call(x)
