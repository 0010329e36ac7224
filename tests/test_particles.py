"""Particle solvers against closed forms: OU / heat equation moments, Landau conservation laws,
the Maxwell-molecule covariance relaxation and the BKW exact solution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from disco_score import KDE, Oracle, particles
from disco_score.particles import GaussianFit, _landau_field_maxwell, _landau_field_pairwise
from disco_score.targets import GaussianMixture

F64 = torch.float64


def cloud_with_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, d) Gaussian draws affinely corrected so their (1/n) mean and covariance are exactly ``mean``, ``cov``."""
    x = np.random.default_rng(seed).normal(size=(n, mean.shape[0]))
    x = x - x.mean(0)
    chol = np.linalg.cholesky(np.cov(x.T, bias=True).reshape(mean.shape[0], -1))
    return x @ np.linalg.inv(chol).T @ np.linalg.cholesky(cov).T + mean


def cloud_moments(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, d) -> means (T, d), (1/N) covariances (T, d, d)."""
    means = positions.mean(1)
    centred = positions - means[:, None, :]
    return means, np.einsum("tni,tnj->tij", centred, centred) / positions.shape[1]


def ou_problem(d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    stiffness = a @ a.T / d + 0.5 * np.eye(d)
    return stiffness, rng.uniform(-1, 1, d), np.diag(rng.uniform(0.3, 2.0, d)), rng.uniform(-0.5, 0.5, d)


def exact_ou_score(mean0, cov0, stiffness, center, diffusion):
    def score_fn(t: float, x: np.ndarray) -> np.ndarray:
        m, c = particles.ornstein_uhlenbeck_moments(mean0, cov0, t, stiffness, center, diffusion)
        gauss = GaussianMixture(torch.ones(1, dtype=F64), torch.as_tensor(m)[None], torch.as_tensor(c)[None])
        return gauss.score(x)
    return score_fn


# -- closed forms -------------------------------------------------------------------------------

def test_ou_moments_solve_their_ode_and_limits():
    stiffness, center, cov0, mean0 = ou_problem(3)
    diffusion, t, eps = 0.7, 0.4, 1e-6
    m, c = particles.ornstein_uhlenbeck_moments(mean0, cov0, np.array([t - eps, t, t + eps]), stiffness,
                                                center, diffusion)
    dm, dc = (m[2] - m[0]) / (2 * eps), (c[2] - c[0]) / (2 * eps)
    np.testing.assert_allclose(dm, -stiffness @ (m[1] - center), atol=1e-7)
    np.testing.assert_allclose(dc, -stiffness @ c[1] - c[1] @ stiffness + 2 * diffusion * np.eye(3), atol=1e-6)
    m0, c0 = particles.ornstein_uhlenbeck_moments(mean0, cov0, 0.0, stiffness, center, diffusion)
    np.testing.assert_allclose(c0, cov0, atol=1e-12)
    np.testing.assert_allclose(m0, mean0, atol=1e-12)
    m_inf, c_inf = particles.ornstein_uhlenbeck_moments(mean0, cov0, 200.0, stiffness, center, diffusion)
    np.testing.assert_allclose(c_inf, diffusion * np.linalg.inv(stiffness), atol=1e-10)
    np.testing.assert_allclose(m_inf, center, atol=1e-10)
    # heat equation: no stiffness, covariance grows by 2 D t
    _, heat = particles.ornstein_uhlenbeck_moments(mean0, cov0, 1.5, diffusion=0.7)
    np.testing.assert_allclose(heat, cov0 + 2 * 0.7 * 1.5 * np.eye(3), atol=1e-12)
    # semi-definite stiffness mixes both regimes
    _, mixed = particles.ornstein_uhlenbeck_moments(np.zeros(2), np.eye(2), 1.0, np.diag([1.0, 0.0]))
    np.testing.assert_allclose(np.diag(mixed), [math.exp(-2) + (1 - math.exp(-2)), 1 + 2.0], atol=1e-12)


def test_landau_closed_form_solves_moment_ode():
    cov0 = np.array([[2.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 1.0]])
    t, eps = 0.05, 1e-6
    c = particles.landau_covariance_closed_form(cov0, np.array([t - eps, t, t + eps]))
    d = 3
    np.testing.assert_allclose((c[2] - c[0]) / (2 * eps), 4 * (np.trace(c[1]) * np.eye(d) - d * c[1]), atol=1e-6)
    np.testing.assert_allclose(particles.landau_covariance_closed_form(cov0, 0.0), cov0, atol=1e-14)
    late = particles.landau_covariance_closed_form(cov0, 10.0)
    np.testing.assert_allclose(late, np.trace(cov0) / 3 * np.eye(3), atol=1e-12)
    traces = np.trace(c, axis1=1, axis2=2)
    np.testing.assert_allclose(traces, np.trace(cov0), rtol=1e-14)
    torch_out = particles.landau_covariance_closed_form(torch.as_tensor(cov0), 0.1)
    assert isinstance(torch_out, torch.Tensor) and torch_out.shape == (3, 3)


def test_landau_moment_equation_holds_for_a_non_gaussian_density():
    # The closure dC/dt = 4 (tr C I - d C) needs only the true score, not Gaussianity: check the
    # particle field, driven by the exact score of a bimodal mixture, against it by Monte Carlo.
    d = 2
    gmm = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-1.5, 0.5], [1.0, -0.2]], dtype=F64),
                          torch.stack([torch.diag(torch.tensor([0.3, 1.2], dtype=F64)),
                                       torch.tensor([[0.6, 0.2], [0.2, 0.4]], dtype=F64)]))
    v = gmm.sample(400_000, torch.Generator().manual_seed(0))
    u = _landau_field_maxwell(v, gmm.score_t(v))
    centred = v - v.mean(0)
    dcov = (u.T @ centred + centred.T @ u) / v.shape[0]
    cov = centred.T @ centred / v.shape[0]
    predicted = 4 * (torch.trace(cov) * torch.eye(d, dtype=F64) - d * cov)
    # predicted entries are O(5); Monte-Carlo error of the field average ~ 0.02
    assert float((dcov - predicted).abs().max()) < 0.08
    # and a Gaussian with the same covariance would *not* give zero: the check has teeth
    assert float(predicted.abs().max()) > 2.0


# -- Landau field and conservation ----------------------------------------------------------------

def dense_landau_field(v: torch.Tensor, s: torch.Tensor, gamma: float) -> torch.Tensor:
    """The textbook O(N² d²) evaluation with explicit A(z) matrices."""
    z = v[:, None] - v[None]
    w = s[:, None] - s[None]
    norm2 = (z * z).sum(-1)
    eye = torch.eye(v.shape[1], dtype=F64)
    a = norm2[..., None, None] * eye - z[..., :, None] * z[..., None, :]
    if gamma != 0.0:
        weight = torch.where(norm2 > 0, norm2.clamp(min=1e-300) ** (gamma / 2), torch.zeros_like(norm2))
        a = a * weight[..., None, None]
    return -(a @ w[..., None]).squeeze(-1).mean(1)


@pytest.mark.parametrize("gamma", [0.0, -3.0, 1.0])
def test_landau_field_matches_dense_kernel(gamma):
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(70, 3, generator=gen, dtype=F64) + 4.0  # off-centre: tests the moment expansion
    s = torch.randn(70, 3, generator=gen, dtype=F64)
    dense = dense_landau_field(v, s, gamma)
    fast = particles.landau_field(v, s, gamma=gamma)
    torch.testing.assert_close(fast, dense, rtol=1e-10, atol=1e-10)
    if gamma == 0.0:
        torch.testing.assert_close(_landau_field_pairwise(v, s, 0.0), dense, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gamma", [0.0, -3.0])
def test_semi_discrete_landau_conserves_momentum_and_energy(gamma):
    # Any scores at all: conservation comes from A(z) z = 0 and the (i, j) antisymmetry.
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(500, 3, generator=gen, dtype=F64) * torch.tensor([3.0, 1.0, 0.3], dtype=F64) + 2.0
    s = torch.randn(500, 3, generator=gen, dtype=F64) * 5.0
    u = particles.landau_field(v, s, gamma=gamma)
    scale = float(u.abs().sum())
    assert float(u.sum(0).abs().max()) < 1e-12 * scale
    assert abs(float((v * u).sum())) < 1e-12 * scale * float(v.abs().max())
    assert scale > 1.0  # the field is not trivially zero


def test_landau_time_stepping_conservation():
    cov0 = np.diag([2.0, 0.5])
    v0 = cloud_with_moments(400, np.array([0.3, -0.2]), cov0)
    energy0 = (v0 ** 2).sum()
    drifts = {}
    for method in ("euler", "heun"):
        for n_steps in (20, 40):
            path = particles.landau(v0, 0.2, n_steps, GaussianFit(), method=method, progress=False)
            momentum = path.positions.sum(1)
            # momentum is exact for any step: the field sums to zero
            np.testing.assert_allclose(momentum, np.broadcast_to(v0.sum(0), momentum.shape), atol=1e-10)
            drifts[method, n_steps] = abs((path.positions[-1] ** 2).sum() - energy0) / energy0
    # Euler gains dt² Σ|u|² per step: first order overall; Heun: second order or better
    assert 1.7 < drifts["euler", 20] / drifts["euler", 40] < 2.3
    assert drifts["heun", 20] / drifts["heun", 40] > 3.5
    assert drifts["heun", 40] < 1e-2 * drifts["euler", 40]


# -- Landau against closed forms --------------------------------------------------------------------

def test_landau_covariance_relaxation_particles():
    cov0 = np.array([[2.0, 0.4], [0.4, 0.5]])
    v0 = cloud_with_moments(800, np.zeros(2), cov0, seed=3)
    anisotropy = np.abs(cov0 - particles.landau_covariance_closed_form(cov0, 10.0)).max()
    for estimator, tolerance in ((GaussianFit(), 0.07), (KDE(), 0.09)):
        path = particles.landau(v0, 0.3, 30, estimator, progress=False)
        _, covs = cloud_moments(path.positions)
        exact = particles.landau_covariance_closed_form(cov0, path.times)
        error = np.abs(covs - exact).max()
        assert error < tolerance * anisotropy / 0.7, (estimator, error)
        # relaxation has happened (a solver that did nothing would sit at cov0)
        assert np.abs(covs[-1] - cov0).max() > 0.8 * anisotropy


def bkw(d: int, k: float):
    """BKW exact solution of Maxwell-molecule Landau: f = N(0, K I) (a + b |v|²)."""
    a, b = ((2 + d) * k - d) / (2 * k), (1 - k) / (2 * k * k)
    return a, b


def bkw_sample(n: int, d: int, k: float, gen: torch.Generator) -> torch.Tensor:
    a, b = bkw(d, k)
    # mixture of N(0, K I) (weight a) and the |v|²-tilted Gaussian (weight b d K): radius² ~ K χ²_{d+2}
    n_tilted = int(torch.binomial(torch.tensor(float(n)), torch.tensor(b * d * k), generator=gen))
    plain = torch.randn(n - n_tilted, d, generator=gen, dtype=F64) * math.sqrt(k)
    direction = torch.randn(n_tilted, d, generator=gen, dtype=F64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    radius = torch.randn(n_tilted, d + 2, generator=gen, dtype=F64).norm(dim=1, keepdim=True) * math.sqrt(k)
    return torch.cat([plain, direction * radius])


def test_landau_matches_bkw_solution_with_exact_score():
    # K(t) = 1 - (1 - K0) exp(-2 (d - 1) t) for collision constant 1 (docs/landau-moments.md)
    d, k0, t_end = 3, 0.65, 0.25
    rate = 2 * (d - 1)

    def k_of(t: float) -> float:
        return 1 - (1 - k0) * math.exp(-rate * t)

    def fourth_moment(k: float) -> float:
        a, b = bkw(d, k)
        return d * (d + 2) * k ** 2 * a + b * d * (d + 2) * (d + 4) * k ** 3

    def score_fn(t: float, v: torch.Tensor) -> torch.Tensor:
        a, b = bkw(d, k_of(t))
        return -v / k_of(t) + 2 * b * v / (a + b * (v * v).sum(1, keepdim=True))

    v0 = bkw_sample(60_000, d, k0, torch.Generator().manual_seed(4))
    path = particles.landau(v0, t_end, 20, score_fn=score_fn, progress=False)
    m4 = ((path.positions ** 2).sum(-1) ** 2).mean(1)
    change = (m4 - m4[0]).numpy()
    exact_change = np.array([fourth_moment(k_of(float(t))) - fourth_moment(k0) for t in path.times])
    assert exact_change[-1] > 1.0
    np.testing.assert_allclose(change, exact_change, atol=0.04 * exact_change[-1] + 0.02)


# -- Fokker–Planck ------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [2, 10])
def test_ou_with_exact_score_and_gaussian_fit(d):
    stiffness, center, cov0, mean0 = ou_problem(d)
    diffusion = 0.7
    x0 = cloud_with_moments(300, mean0, cov0, seed=d)
    exact_score = exact_ou_score(mean0, cov0, stiffness, center, diffusion)
    grad_v = lambda x: (x - center) @ stiffness  # noqa: E731
    means, covs = particles.ornstein_uhlenbeck_moments(mean0, cov0, np.linspace(0, 1, 21), stiffness, center,
                                                        diffusion)
    for kwargs in (dict(score_fn=exact_score), dict(estimator=GaussianFit())):
        path = particles.fokker_planck(x0, grad_v, diffusion, 1.0, 20, progress=False, **kwargs)
        m, c = cloud_moments(path.positions)
        # time stepping is the only error left (the cloud's moments start exact)
        assert np.abs(m - means).max() < 3e-3
        assert np.abs(c - covs).max() < 3e-3 * np.abs(covs).max()


def test_fokker_planck_integrator_orders():
    stiffness, center, cov0, mean0 = ou_problem(2, seed=5)
    x0 = cloud_with_moments(100, mean0, cov0)
    _, exact = particles.ornstein_uhlenbeck_moments(mean0, cov0, 1.0, stiffness, center, 1.0)
    errors = {}
    for method in ("euler", "heun"):
        for n_steps in (10, 20):
            path = particles.fokker_planck(x0, lambda x: (x - center) @ stiffness, 1.0, 1.0, n_steps,
                                           GaussianFit(), method=method, progress=False)
            errors[method, n_steps] = np.abs(cloud_moments(path.positions)[1][-1] - exact).max()
    assert 1.7 < errors["euler", 10] / errors["euler", 20] < 2.4
    assert 3.3 < errors["heun", 10] / errors["heun", 20] < 4.8


def test_ou_with_kde():
    stiffness, center, cov0, mean0 = ou_problem(2)
    x0 = cloud_with_moments(500, mean0, cov0, seed=7)
    path = particles.fokker_planck(x0, lambda x: (x - center) @ stiffness, 0.7, 1.0, 10, KDE(), progress=False)
    means, covs = particles.ornstein_uhlenbeck_moments(mean0, cov0, path.times, stiffness, center, 0.7)
    m, c = cloud_moments(path.positions)
    rel = np.linalg.norm(c - covs, axis=(1, 2)) / np.linalg.norm(covs, axis=(1, 2))
    # KDE smoothing shrinks the score (by ~1/(1 + h²), h² ≈ 0.13 here): covariance low by ~10%
    assert rel.max() < 0.15
    assert np.abs(m - means).max() < 0.01
    # against the wrong answer "no diffusion", the error would be O(1)
    no_diffusion = particles.fokker_planck(x0, lambda x: (x - center) @ stiffness, 0.0, 1.0, 10, progress=False)
    assert np.linalg.norm(cloud_moments(no_diffusion.positions)[1][-1] - covs[-1]) > 3 * np.linalg.norm(
        c[-1] - covs[-1])


def test_ou_mean_with_kde_in_ten_dimensions():
    stiffness, center, cov0, mean0 = ou_problem(10)
    x0 = cloud_with_moments(400, mean0, cov0, seed=8)
    path = particles.fokker_planck(x0, lambda x: (x - center) @ stiffness, 0.7, 0.6, 6, KDE(),
                                   method="euler", progress=False)
    means, _ = particles.ornstein_uhlenbeck_moments(mean0, cov0, path.times, stiffness, center, 0.7)
    # the mean follows dm/dt = -K (m - c) whatever the score (its cloud average is ~0)
    assert np.abs(path.positions.mean(1) - means).max() < 0.05
    assert np.abs(means[-1] - mean0).max() > 0.3


def test_heat_equation():
    cov0 = np.array([[1.0, 0.3], [0.3, 0.5]])
    x0 = cloud_with_moments(400, np.array([1.0, 2.0]), cov0)
    path = particles.fokker_planck(x0, None, 0.5, 1.0, 10, GaussianFit(), progress=False)
    _, covs = cloud_moments(path.positions)
    exact = cov0 + 2 * 0.5 * path.times[:, None, None] * np.eye(2)
    np.testing.assert_allclose(covs, exact, atol=2e-4)  # Heun's error only: the moments start exact
    kde_path = particles.fokker_planck(x0, None, 0.5, 1.0, 5, KDE(), progress=False)
    _, kde_covs = cloud_moments(kde_path.positions)
    growth = np.trace(kde_covs[-1] - cov0) / np.trace(exact[-1] - cov0)
    assert 0.75 < growth < 1.0  # KDE smoothing slows the spreading, never reverses it


# -- interface ----------------------------------------------------------------------------------------

def test_kinds_callback_grid_and_thinning():
    x0 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    seen = []

    def callback(t, positions, oracle):
        seen.append((t, type(positions), positions.dtype, isinstance(oracle, Oracle)))

    path = particles.fokker_planck(x0, lambda x: x, 1.0, 0.5, 6, KDE(), method="euler", callback=callback,
                                   progress=False, save_every=4)
    assert isinstance(path.positions, torch.Tensor) and path.positions.dtype == torch.float32
    assert path.positions.shape == (3, 200, 2) and path.times.shape == (3,)
    torch.testing.assert_close(path.times, torch.tensor([0.0, 4 / 12, 0.5], dtype=torch.float32))
    torch.testing.assert_close(path.positions[0], x0)
    assert [round(s[0], 10) for s in seen] == [round(k / 12, 10) for k in range(7)]
    assert all(s[1] is torch.Tensor and s[2] == torch.float64 and s[3] for s in seen)

    grid = np.array([0.0, 0.1, 0.3, 0.35])
    numpy_path = particles.landau(x0.numpy(), times=grid, estimator=GaussianFit(), progress=False)
    assert isinstance(numpy_path.positions, np.ndarray) and numpy_path.positions.dtype == np.float32
    np.testing.assert_allclose(numpy_path.times, grid)
    np.testing.assert_array_equal(numpy_path.final, numpy_path.positions[-1])


def test_default_estimator_is_used():
    x0 = np.random.default_rng(0).normal(size=(200, 2))
    path = particles.fokker_planck(x0, lambda x: x, t_end=0.1, n_steps=2, progress=False)
    assert path.positions.shape == (3, 200, 2) and np.isfinite(path.positions).all()
    assert particles.landau(x0, t_end=0.05, n_steps=1, progress=False).positions.shape == (2, 200, 2)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x0=np.zeros(5)), ValueError, "x0 must have shape"),
    (dict(x0=np.full((10, 2), np.nan)), ValueError, "non-finite"),
    (dict(grad_potential="x"), TypeError, "grad_potential must be callable"),
    (dict(grad_potential=lambda x: x[:, :1]), ValueError, "grad_potential must return"),
    (dict(grad_potential=lambda x: x * np.nan), ValueError, "grad_potential.*non-finite"),
    (dict(t_end=0.0), ValueError, "t_end"),
    (dict(t_end=-1.0), ValueError, "t_end"),
    (dict(n_steps=0), ValueError, "n_steps"),
    (dict(n_steps=2.5), TypeError, "n_steps"),
    (dict(diffusion=-1.0), ValueError, "diffusion"),
    (dict(method="rk4"), ValueError, "method"),
    (dict(estimator=KDE(), score_fn=lambda t, x: -x), ValueError, "not both"),
    (dict(estimator="kde"), TypeError, "estimator must be an Estimator"),
    (dict(estimator=None, score_fn=lambda t, x: -x[:3]), ValueError, "score_fn must return"),
    (dict(times=[0.0, 0.2, 0.1]), ValueError, "strictly increasing"),
    (dict(times=[0.0]), ValueError, "at least two"),
    (dict(callback=3), TypeError, "callback"),
    (dict(save_every=0), ValueError, "save_every"),
])
def test_fokker_planck_bad_input(kwargs, error, match):
    args = dict(x0=np.random.default_rng(0).normal(size=(50, 2)), grad_potential=lambda x: x, t_end=0.1,
                n_steps=2, estimator=GaussianFit(), progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        particles.fokker_planck(**args)


def test_oracle_as_estimator_is_refused_with_a_hint():
    x0 = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(TypeError, match="cannot follow the moving cloud"):
        particles.landau(x0, 0.1, 2, KDE().fit(x0), progress=False)


@pytest.mark.parametrize("call, error, match", [
    (lambda: particles.landau(np.zeros((4, 2, 2)), progress=False), ValueError, "v0 must have shape"),
    (lambda: particles.landau(np.ones((5, 2)), gamma=float("nan"), progress=False), ValueError, "gamma"),
    (lambda: particles.landau_field(np.ones((5, 2)), np.ones((4, 2))), ValueError, "scores must have"),
    (lambda: particles.landau_covariance_closed_form(np.array([[1.0, 0.5], [0.0, 1.0]]), 1.0), ValueError,
     "symmetric"),
    (lambda: particles.landau_covariance_closed_form(np.diag([1.0, -1.0]), 1.0), ValueError, "semi-definite"),
    (lambda: particles.landau_covariance_closed_form(np.ones(3), 1.0), ValueError, "square"),
    (lambda: particles.landau_covariance_closed_form(np.eye(2), -1.0), ValueError, "non-negative"),
    (lambda: particles.landau_covariance_closed_form(np.eye(2), np.ones((2, 2))), ValueError, "1-D"),
    (lambda: particles.ornstein_uhlenbeck_moments(np.zeros(3), np.eye(2), 1.0), ValueError, "mean0"),
    (lambda: particles.ornstein_uhlenbeck_moments(np.zeros(2), np.eye(2), 1.0, np.eye(3)), ValueError,
     "stiffness"),
])
def test_landau_and_closed_form_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- reliability: divergence and overflowing exponents ---------------------------------------------

def test_stiff_drift_with_a_coarse_time_step_raises_chain_diverged() -> None:
    from disco_score import ChainDiverged

    x0 = np.random.default_rng(0).normal(size=(100, 2))
    with pytest.raises(ChainDiverged, match=r"fokker-planck: particles diverged .*time step 0\.01 .*raise n_steps"):
        particles.fokker_planck(x0, lambda x: 1000.0 * x, t_end=0.1, n_steps=10, estimator=KDE(), progress=False)
    # the same drift with a stable step runs to the equilibrium N(0, D / 1000) without a word
    path = particles.fokker_planck(x0, lambda x: 1000.0 * x, t_end=0.1, n_steps=1000, estimator=KDE(),
                                   method="euler", progress=False, save_every=1000)
    assert np.isfinite(path.final).all() and np.abs(path.final).max() < 1.0


@pytest.mark.parametrize("gamma", [1e3, -1e3])
def test_landau_with_an_overflowing_exponent_names_gamma(gamma: float) -> None:
    x0 = np.random.default_rng(0).normal(size=(60, 2))
    with pytest.raises(ValueError, match=r"gamma=-?1000: .*overflows float64"):
        particles.landau(x0, t_end=0.1, n_steps=2, gamma=gamma, estimator=KDE(), progress=False)
