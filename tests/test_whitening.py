"""Whitening: the symmetric inverse square root of a covariance, and the change of variables."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from disco_score.targets import haar_orthogonal
from disco_score.whitening import Whitening

F64 = torch.float64


def _correlated(generator: torch.Generator, n: int = 2000, d: int = 3) -> torch.Tensor:
    a = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-1.0, 0.3, 0.1]], dtype=F64)[:d, :d]
    return torch.randn(n, d, generator=generator, dtype=F64) @ a.T + torch.tensor([5.0, -3.0, 1.0][:d], dtype=F64)


def test_from_samples_standardises(generator):
    x = _correlated(generator)
    white = Whitening.from_samples(x)
    z = white.forward(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(3, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(white.backward(z), x, atol=1e-12, rtol=1e-12)
    # symmetric square root, matrix and inverse are inverse to each other
    torch.testing.assert_close(white.matrix, white.matrix.T, atol=1e-14, rtol=0)
    torch.testing.assert_close(white.matrix @ white.inverse, torch.eye(3, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(white.inverse @ white.inverse, torch.cov(x.T), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(white.log_det, -0.5 * torch.logdet(torch.cov(x.T)))
    assert white.dim == 3


def test_change_of_variables_gives_the_gaussian_log_density_and_score(generator):
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=F64)
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    white = Whitening.from_covariance(cov, mean)
    x = torch.randn(40, 2, generator=generator, dtype=F64) * 2
    z = white.forward(x)
    log_p_z = -0.5 * (z * z).sum(1) - torch.log(torch.tensor(2 * torch.pi, dtype=F64))
    gaussian = MultivariateNormal(mean, cov)
    torch.testing.assert_close(white.log_density_out(log_p_z), gaussian.log_prob(x), rtol=1e-12, atol=1e-12)
    expected_score = -torch.linalg.solve(cov, (x - mean).T).T
    torch.testing.assert_close(white.score_out(-z), expected_score, rtol=1e-12, atol=1e-12)


def test_affine_change_of_data_only_rotates_the_whitened_points(generator):
    # the symmetric root makes whitening unique: z(X A + b) = z(X) R with R orthogonal
    x = _correlated(generator, n=500)
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.0, 1.0]], dtype=F64)
    y = x @ a + torch.tensor([10.0, 0.0, -4.0], dtype=F64)
    zx, zy = Whitening.from_samples(x).forward(x), Whitening.from_samples(y).forward(y)
    r = torch.linalg.lstsq(zx, zy).solution
    torch.testing.assert_close(zx @ r, zy, atol=1e-9, rtol=0)
    torch.testing.assert_close(r.T @ r, torch.eye(3, dtype=F64), atol=1e-9, rtol=0)
    # a pure rotation of the data rotates z by the same matrix
    q = haar_orthogonal(3, generator=generator)
    zq = Whitening.from_samples(x @ q).forward(x @ q)
    torch.testing.assert_close(zq, zx @ q, atol=1e-9, rtol=0)


def test_forward_keeps_the_input_dtype(generator):
    white = Whitening.from_samples(_correlated(generator))
    assert white.forward(torch.zeros(2, 3)).dtype == torch.float32
    assert white.backward(torch.zeros(2, 3, dtype=F64)).dtype == F64


def test_singular_covariances_raise():
    with pytest.raises(ValueError, match="covariance of samples is zero"):
        Whitening.from_samples(torch.ones(10, 2, dtype=F64))
    t = torch.linspace(0, 1, 20, dtype=F64)[:, None]
    on_a_line = t * torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)
    with pytest.raises(ValueError, match="rank-deficient: the samples span only 1 of 3"):
        Whitening.from_samples(on_a_line)
    with pytest.raises(ValueError, match="my_matrix is rank-deficient"):
        Whitening.from_covariance(torch.diag(torch.tensor([1.0, 0.0], dtype=F64)), name="my_matrix")
