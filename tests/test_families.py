"""The wider target families: log-densities against scipy and quadrature, scores against autograd and
finite differences, samplers against distribution functions and Stein's identity, warps' inverses and
Jacobians, validation, and the random-prior draws up to d = 128."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from disco_score.families import (PRIOR_FAMILIES, AffineWarp, CouplingWarp, RadialWarp, Ring, Shell,
                                  SinhArcsinhWarp, StudentTMixture, TanhWarp, WarpedTarget, random_prior_target,
                                  random_warped, random_wide_mixture)
from disco_score.targets import GaussianMixture, Target, haar_orthogonal

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(k: int, d: int, gen: torch.Generator, floor: float = 0.2) -> torch.Tensor:
    a = torch.randn(k, d, d, generator=gen, dtype=F64)
    return 0.5 * a @ a.transpose(-1, -2) / d + floor * torch.eye(d, dtype=F64)


def _tmix(d: int, seed: int = 0, k: int = 3) -> StudentTMixture:
    gen = _gen(seed)
    w = torch.rand(k, generator=gen, dtype=F64) + 0.2
    return StudentTMixture(w / w.sum(), 2.0 * torch.randn(k, d, generator=gen, dtype=F64),
                           torch.tensor([1.5, 4.0, 25.0][:k], dtype=F64), scales=_spd(k, d, gen))


def _gauss_mix(d: int, seed: int = 0) -> GaussianMixture:
    gen = _gen(seed)
    return GaussianMixture(torch.tensor([0.6, 0.4], dtype=F64), torch.randn(2, d, generator=gen, dtype=F64),
                           _spd(2, d, gen, floor=0.3))


def _warped(d: int, seed: int = 0, base: Target | None = None) -> WarpedTarget:
    """Every layer kind once (coupling for d >= 2), on a two-component Gaussian base."""
    gen = _gen(seed + 100)
    layers = [AffineWarp(haar_orthogonal(d, (), gen) @ torch.diag(torch.linspace(0.6, 1.5, d, dtype=F64)),
                         0.3 * torch.randn(d, generator=gen, dtype=F64)),
              TanhWarp(torch.full((d,), -0.8, dtype=F64), torch.full((d,), 1.0, dtype=F64),
                       torch.linspace(-0.5, 0.5, d, dtype=F64)),
              SinhArcsinhWarp(torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64),
                              torch.full((d,), 0.3, dtype=F64), torch.full((d,), 0.8, dtype=F64)),
              RadialWarp(0.5 * torch.randn(d, generator=gen, dtype=F64), 0.7, 1.5)]
    if d >= 2:
        na, h = d // 2, 6
        layers.insert(2, CouplingWarp(d, torch.arange(na), torch.randn(h, na, generator=gen, dtype=F64),
                                      torch.randn(h, generator=gen, dtype=F64),
                                      0.4 * torch.randn(d - na, h, generator=gen, dtype=F64),
                                      1.0 * torch.randn(d - na, h, generator=gen, dtype=F64)))
    return WarpedTarget(_gauss_mix(d, seed) if base is None else base, layers)


def _cases(d: int) -> dict[str, Target]:
    out = {"tmix": _tmix(d), "shell": Shell(d, 1.5, 0.3, torch.linspace(-0.5, 0.5, d, dtype=F64)),
           "warped": _warped(d)}
    if d == 2:
        out["ring"] = Ring(1.0, 0.1, torch.tensor([0.3, -0.2], dtype=F64))
    return out


def _sinh_grid(n: int, half: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes x = sinh(v) on a uniform v grid and trapezoid weights dx = cosh(v) dv, reaching |x| ~ 1500
    (heavy Student-t tails) while resolving the bulk at spacing ~16/n."""
    v = torch.linspace(-half, half, n, dtype=F64)
    w = torch.full((n,), 2 * half / (n - 1), dtype=F64) * torch.cosh(v)
    w[0] *= 0.5
    w[-1] *= 0.5
    return torch.sinh(v), w


# --------------------------------------------------------------------------- log-densities and scores
def test_student_t_mixture_matches_scipy_multivariate_t():
    for d in (1, 3):
        target = _tmix(d, seed=d)
        x = 3.0 * torch.randn(50, d, generator=_gen(1), dtype=F64)
        comps = [np.log(float(w)) + stats.multivariate_t(loc.numpy(), shape.numpy(), df=float(nu)).logpdf(x.numpy())
                 for w, loc, shape, nu in zip(target.weights, target.locs,
                                              target.scale_tril @ target.scale_tril.mT, target.dfs)]
        expected = np.logaddexp.reduce(np.stack(comps).reshape(3, -1), axis=0)
        np.testing.assert_allclose(target.log_prob_t(x).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_batched_student_t_mixture_with_padding_matches_its_members():
    gen = _gen(3)
    w = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=F64)
    locs, scales = torch.randn(2, 3, 2, generator=gen, dtype=F64), _spd(6, 2, gen).reshape(2, 3, 2, 2)
    dfs = torch.tensor([[2.0, 5.0, 1.0], [3.0, 1.5, 9.0]], dtype=F64)
    batched = StudentTMixture(w, locs, dfs, scales=scales)
    x = torch.randn(2, 40, 2, generator=gen, dtype=F64)
    for b in range(2):
        keep = w[b] > 0
        single = StudentTMixture(w[b, keep], locs[b, keep], dfs[b, keep], scale_tril=torch.linalg.cholesky(scales[b, keep]))
        torch.testing.assert_close(batched.log_prob_t(x)[b], single.log_prob_t(x[b]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched.score_t(x)[b], single.score_t(x[b]), rtol=1e-11, atol=1e-11)
    samples = batched.sample(64, gen)
    assert samples.shape == (2, 64, 2) and bool(torch.isfinite(samples).all())


@pytest.mark.parametrize("d", [1, 2, 5])
def test_scores_match_autograd_of_log_density(d):
    x = 1.5 * torch.randn(64, d, generator=_gen(d), dtype=F64)
    for name, target in _cases(d).items():
        xg = x.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(target.log_prob_t(xg).sum(), xg)
        torch.testing.assert_close(target.score_t(x), auto, rtol=1e-9, atol=1e-10, msg=name)
        # the Oracle API under the no_grad it wraps itself in, numpy in -> numpy out
        log_p, score = target.log_density_and_score(x.numpy())
        np.testing.assert_allclose(score, auto.numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(log_p, target.log_prob_t(x).detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [1, 3])
def test_warped_score_matches_finite_differences(d):
    target = _warped(d, seed=d)
    x = target.sample(20, _gen(5))
    h = 1e-5
    eye = torch.eye(d, dtype=F64)
    fd = torch.stack([(target.log_prob_t(x + h * eye[i]) - target.log_prob_t(x - h * eye[i])) / (2 * h)
                      for i in range(d)], dim=-1)
    with torch.no_grad():
        score = target.score_t(x)
    torch.testing.assert_close(score, fd, rtol=1e-6, atol=1e-6)


def test_warped_target_with_a_student_t_and_a_shell_base():
    for base in (_tmix(2, seed=4), Shell(2, 1.0, 0.2)):
        target = _warped(2, seed=5, base=base)
        x = target.sample(30, _gen(6))
        xg = x.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(target.log_prob_t(xg).sum(), xg)
        torch.testing.assert_close(torch.as_tensor(target.score(x)), auto, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- normalisation
def test_normalised_in_one_dimension_by_quadrature():
    x, w = _sinh_grid(40001)
    for name, target in _cases(1).items():
        total = float((target.log_prob_t(x[:, None]).exp() * w).sum())
        assert abs(total - 1) < 1e-3, (name, total)


def test_normalised_in_two_dimensions_by_quadrature():
    x, w = _sinh_grid(601, half=7.5)  # reaches |x| ~ 900: the nu = 1.5 tail beyond holds < 1e-4
    pts = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    ww = (w[:, None] * w[None, :]).reshape(-1)
    for name, target in _cases(2).items():
        total = float((target.log_prob_t(pts).exp() * ww).sum())
        assert abs(total - 1) < 1e-3, (name, total)


@pytest.mark.parametrize("d", [2, 5, 20])
def test_shell_normaliser_matches_scipy_radial_quadrature(d):
    shell = Shell(d, 2.0, 0.15)
    radial, _ = integrate.quad(lambda r: r ** (d - 1) * math.exp(-0.5 * ((r - 2.0) / 0.15) ** 2), 0, 10.0,
                               points=[2.0], limit=200)
    log_area = math.log(2) + 0.5 * d * math.log(math.pi) - math.lgamma(d / 2)
    assert shell.log_normalizer == pytest.approx(math.log(radial) + log_area, abs=1e-9)


def test_normalised_in_five_dimensions_by_importance_sampling():
    n = 200_000
    for name, target in _cases(5).items():
        x = target.sample(4096, _gen(7))
        loc = x.median(0).values
        radius = (x - loc).norm(dim=1)
        cov = torch.cov(x[radius < torch.quantile(radius, 0.95)].T)  # trimmed: Student-t tails inflate it
        # a Cauchy-tailed proposal (multivariate t, nu = 1) over the target, so p / q is bounded
        proposal = StudentTMixture(torch.ones(1, dtype=F64), loc[None], torch.ones(1, dtype=F64), scales=cov[None])
        y = proposal.sample(n, _gen(8))
        ratio = torch.exp(target.log_prob_t(y) - proposal.log_prob_t(y))
        est, err = float(ratio.mean()), float(ratio.std() / math.sqrt(n))
        assert abs(est - 1) < 4 * err + 1e-3 and err < 0.03, (name, est, err)


# --------------------------------------------------------------------------- samplers
def test_one_dimensional_samples_follow_the_cdf_by_quadrature():
    x, w = _sinh_grid(40001)
    for name, target in _cases(1).items():
        dens = target.log_prob_t(x[:, None]).exp() * w
        cdf = torch.cumsum(dens, 0) - 0.5 * dens
        samples = target.sample(3000, _gen(11))[:, 0].numpy()
        p = stats.kstest(samples, lambda s: np.interp(s, x.numpy(), cdf.numpy())).pvalue
        assert p > 1e-3, (name, p)


@pytest.mark.parametrize("d", [3, 12])
def test_shell_radii_follow_the_radial_law(d):
    shell = Shell(d, 1.0, 0.25)
    r = torch.linalg.vector_norm(shell.sample(3000, _gen(d)) - shell.center, dim=1).numpy()
    grid = np.linspace(1e-9, 4.0, 20001)
    f = grid ** (d - 1) * np.exp(-0.5 * ((grid - 1.0) / 0.25) ** 2)
    cdf = integrate.cumulative_trapezoid(f, grid, initial=0)
    assert stats.kstest(r, lambda s: np.interp(s, grid, cdf / cdf[-1])).pvalue > 1e-3


@pytest.mark.parametrize("d", [2, 5])
def test_samples_satisfy_steins_identity(d):
    # E_p[s(x) x^T] = -I for any smooth density with decaying tails: ties the sampler to the score
    # (bounded here, even for nu = 1.5 Student-t components, since |s(x)| ~ 1 / |x| in the tails)
    for name, target in _cases(d).items():
        x = target.sample(40_000, _gen(20 + d))
        s = torch.as_tensor(target.score(x))
        prod = s[:, :, None] * x[:, None, :]
        # z-scores: the warped case has scores of norm ~10-100 on its ridges, so its error bar is wide
        z = (prod.mean(0) + torch.eye(d, dtype=F64)) / (prod.std(0) / math.sqrt(x.shape[0]) + 1e-12)
        assert float(z.abs().max()) < 5, (name, z)
        z_mean = s.mean(0) / (s.std(0) / math.sqrt(x.shape[0]))
        assert float(z_mean.abs().max()) < 5, (name, z_mean)


def test_samples_are_reproducible_from_the_generator():
    for target in list(_cases(2).values()) + [random_wide_mixture(3, _gen(1), student_t_prob=1.0)]:
        torch.testing.assert_close(target.sample(50, _gen(9)), target.sample(50, _gen(9)))


# --------------------------------------------------------------------------- warps
@pytest.mark.parametrize("d", [1, 2, 10])
def test_warps_invert_and_their_log_jacobians_cancel(d):
    for seed in range(4):
        target = _warped(d, seed) if seed == 0 else random_warped(d, _gen(seed), n_layers=(3, 3))
        u = target.base.sample(500, _gen(seed))
        with torch.no_grad():
            x, ld_fwd = target.forward(u)
            u_back, ld_inv = target.inverse(x)
        torch.testing.assert_close(u_back, u, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(ld_fwd + ld_inv, torch.zeros_like(ld_fwd), rtol=0, atol=1e-8)


def test_layer_log_jacobians_match_autograd_determinants():
    d = 3
    layers = list(_warped(d, seed=2).layers)
    u = torch.randn(6, d, generator=_gen(0), dtype=F64)
    for layer in layers:
        jac = torch.stack([torch.autograd.functional.jacobian(lambda v: layer.forward(v)[0], ui) for ui in u])
        torch.testing.assert_close(layer.forward(u)[1], torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10,
                                   msg=type(layer).__name__)


def test_tanh_warp_inverts_steep_maps_to_round_off():
    # a b close to -1: the derivative nearly vanishes at the bump, the hard case for the Newton solve
    layer = TanhWarp(torch.tensor([-0.999, 5.0, 20.0], dtype=F64), torch.tensor([1.0, 10.0, 0.1], dtype=F64),
                     torch.tensor([0.0, -3.0, 1.0], dtype=F64))
    u = 10.0 * torch.randn(2000, 3, generator=_gen(0), dtype=F64)
    x, _ = layer.forward(u)
    torch.testing.assert_close(layer.forward(layer.inverse(x)[0])[0], x, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.inverse(x)[0], u, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- validation
def test_student_t_mixture_validation_names_the_argument():
    w, locs, dfs = torch.tensor([0.5, 0.5], dtype=F64), torch.zeros(2, 2, dtype=F64), torch.full((2,), 3.0, dtype=F64)
    eye = torch.eye(2, dtype=F64).expand(2, 2, 2).clone()
    with pytest.raises(ValueError, match="weights must sum to 1"):
        StudentTMixture(torch.tensor([0.5, 0.6], dtype=F64), locs, dfs, scales=eye)
    with pytest.raises(ValueError, match="dfs must be positive"):
        StudentTMixture(w, locs, torch.tensor([3.0, 0.0], dtype=F64), scales=eye)
    with pytest.raises(ValueError, match="dfs must be finite"):
        StudentTMixture(w, locs, torch.tensor([3.0, float("nan")], dtype=F64), scales=eye)
    with pytest.raises(ValueError, match="locs must be finite"):
        StudentTMixture(w, torch.tensor([[0.0, float("nan")], [0.0, 0.0]], dtype=F64), dfs, scales=eye)
    skew = eye.clone()
    skew[1, 0, 1] = 0.3
    with pytest.raises(ValueError, match="scales must be symmetric"):
        StudentTMixture(w, locs, dfs, scales=skew)
    with pytest.raises(ValueError, match="scales must be symmetric positive definite"):
        StudentTMixture(w, locs, dfs, scales=-eye)
    with pytest.raises(ValueError, match="scale_tril must be lower triangular"):
        StudentTMixture(w, locs, dfs, scale_tril=skew)
    with pytest.raises(ValueError, match="exactly one"):
        StudentTMixture(w, locs, dfs, scales=eye, scale_tril=eye)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        StudentTMixture(w, locs, dfs[:1], scales=eye)


def test_shell_and_warp_validation_names_the_argument():
    with pytest.raises(ValueError, match="width"):
        Shell(3, 1.0, 0.0)
    with pytest.raises(ValueError, match="radius"):
        Shell(3, -1.0, 0.1)
    with pytest.raises(ValueError, match="center must have shape"):
        Shell(3, 1.0, 0.1, torch.zeros(2))
    one = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="a \\* b must be > -1"):
        TanhWarp(-one, one, one)
    with pytest.raises(ValueError, match="matrix must be invertible"):
        AffineWarp(torch.ones(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="matrix must be finite"):
        AffineWarp(torch.tensor([[1.0, float("inf")], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="delta must be positive"):
        SinhArcsinhWarp(one, one, one, -one)
    with pytest.raises(ValueError, match="scale must be positive"):
        SinhArcsinhWarp(one, 0 * one, one, one)
    with pytest.raises(ValueError, match="beta"):
        RadialWarp(one, 0.5, -0.5)
    with pytest.raises(ValueError, match="cond_index"):
        CouplingWarp(2, [0, 1], torch.zeros(3, 2), torch.zeros(3), torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        CouplingWarp(3, [0], torch.zeros(3, 2), torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="dimension"):
        WarpedTarget(Shell(3), [TanhWarp(one, one, one)])
    with pytest.raises(ValueError, match="unbatched"):
        WarpedTarget(StudentTMixture(torch.ones(2, 1, dtype=F64), torch.zeros(2, 1, 2, dtype=F64),
                                     torch.ones(2, 1, dtype=F64), scales=torch.eye(2, dtype=F64).expand(2, 1, 2, 2)),
                     [TanhWarp(one, one, one)])
    with pytest.raises(ValueError, match="families"):
        random_prior_target(2, _gen(0), families=("mixture",))


# --------------------------------------------------------------------------- the random prior
@pytest.mark.parametrize("d", [1, 2, 10, 128])
def test_random_prior_draws_are_finite_on_their_own_samples(d):
    for family in PRIOR_FAMILIES:
        for seed in range(2 if d == 128 else 3):
            target = random_prior_target(d, _gen(seed), families=(family,))
            assert target.dim == d and target.batch_shape == ()
            x = target.sample(256, _gen(seed + 50))
            log_p, score = target.log_density_and_score(x)
            assert bool(torch.isfinite(x).all() & torch.isfinite(log_p).all() & torch.isfinite(score).all()), \
                (family, seed, type(target).__name__)


def test_random_prior_is_reproducible_and_mixes_families():
    kinds = [type(random_prior_target(3, _gen(s))).__name__ for s in range(40)]
    assert {"GaussianMixture", "StudentTMixture", "WarpedTarget", "Shell"} <= set(kinds)
    a, b = random_prior_target(4, _gen(7)), random_prior_target(4, _gen(7))
    x = a.sample(20, _gen(1))
    torch.testing.assert_close(a.log_prob_t(x), b.log_prob_t(x))


def test_wide_mixture_covers_the_wide_prior():
    ks, ratios, scales, min_w, t_dfs = [], [], [], [], []
    for s in range(60):
        m = random_wide_mixture(4, _gen(s))
        cov = m.covariances if isinstance(m, GaussianMixture) else m.scale_tril @ m.scale_tril.mT
        ev = torch.linalg.eigvalsh(cov).sqrt()
        ks.append(m.weights.shape[0])
        ratios.append(float((ev[:, -1] / ev[:, 0]).max()))
        scales.append(float(ev.min()) / 3.0)
        min_w.append(float(m.weights.min()))
        if isinstance(m, StudentTMixture):
            t_dfs += m.dfs.tolist()
    assert 1 <= min(ks) and max(ks) <= 32 and max(ks) >= 16
    assert max(ratios) > 10 and max(ratios) <= 30 * (1 + 1e-9)
    assert min(scales) < 0.03 and min(min_w) < 0.02 and min(min_w) > 0.002
    assert t_dfs and 1.5 <= min(t_dfs) and max(t_dfs) <= 30
