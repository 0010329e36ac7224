"""The public interface contract (kinds, dtypes, shapes, immutability) and bad input at every
public entry point: each failure is a ValueError/TypeError that names the argument."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from disco_score import KDE, SDKDE, Oracle, as_oracle
from disco_score.defaults import resolve_oracle
from disco_score.kde import oracle_tuned_kde
from disco_score.targets import ProductLaplace, random_gmm

ESTIMATORS = [KDE(), KDE(bandwidth=0.5, kernel="isotropic"), SDKDE()]


@pytest.fixture
def samples(rng) -> np.ndarray:
    return rng.normal(size=(200, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.7]])


@pytest.fixture
def queries(rng) -> np.ndarray:
    return rng.normal(size=(7, 3))


# --------------------------------------------------------------------------- interface
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
def test_numpy_in_numpy_out_torch_in_torch_out(estimator, samples, queries):
    oracle = estimator.fit(samples)
    log_p, score = oracle.log_density(queries), oracle.score(queries)
    assert isinstance(log_p, np.ndarray) and log_p.shape == (7,) and log_p.dtype == np.float64
    assert isinstance(score, np.ndarray) and score.shape == (7, 3) and score.dtype == np.float64
    assert isinstance(oracle.density(queries), np.ndarray)
    t_log_p, t_score = oracle.log_density_and_score(torch.as_tensor(queries))
    assert isinstance(t_log_p, torch.Tensor) and t_log_p.dtype == torch.float64
    assert isinstance(t_score, torch.Tensor) and t_score.shape == (7, 3)
    np.testing.assert_allclose(t_log_p.numpy(), log_p, rtol=1e-13)
    np.testing.assert_allclose(t_score.numpy(), score, rtol=1e-12)
    np.testing.assert_allclose(oracle.density(queries), np.exp(log_p), rtol=1e-13)
    # fitting on a tensor gives the same oracle
    np.testing.assert_allclose(estimator.fit(torch.as_tensor(samples)).log_density(queries), log_p, rtol=1e-13)


def test_dtypes_follow_the_caller(samples, queries):
    oracle64 = KDE().fit(samples)
    assert oracle64.compute_dtype == torch.float64
    # a float32 query on a float64 oracle is computed in float64 and returned as float32
    out32 = oracle64.score(queries.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, oracle64.score(queries.astype(np.float32).astype(np.float64)), rtol=1e-6)
    assert oracle64.log_density(torch.as_tensor(queries, dtype=torch.float32)).dtype == torch.float32
    oracle32 = KDE().fit(samples.astype(np.float32))
    assert oracle32.compute_dtype == torch.float32
    assert oracle32.log_density(queries.astype(np.float32)).dtype == np.float32
    assert oracle32.log_density(queries).dtype == np.float64
    np.testing.assert_allclose(oracle32.log_density(queries), oracle64.log_density(queries), rtol=1e-5)


def test_a_single_point_gives_a_scalar_and_a_vector(samples, queries):
    oracle = KDE().fit(samples)
    log_p = oracle.log_density(queries[0])
    assert np.ndim(log_p) == 0 and isinstance(float(log_p), float)
    assert log_p == pytest.approx(oracle.log_density(queries)[0], rel=1e-14)
    assert np.ndim(oracle.density(queries[0])) == 0
    score = oracle.score(queries[0])
    assert score.shape == (3,)
    np.testing.assert_allclose(score, oracle.score(queries)[0], rtol=1e-14)
    t_log_p, t_score = oracle.log_density_and_score(torch.as_tensor(queries[0]))
    assert t_log_p.shape == () and t_score.shape == (3,)
    assert oracle.log_density(queries[:0]).shape == (0,)  # no queries, no answers
    assert oracle.score(list(queries[0])).shape == (3,)  # plain lists work too


def test_oracles_are_immutable(samples):
    oracle = KDE().fit(samples)
    with pytest.raises(AttributeError, match="immutable"):
        oracle.bandwidth = 3.0
    with pytest.raises(AttributeError, match="immutable"):
        oracle.new_attribute = 1
    with pytest.raises(AttributeError, match="immutable"):
        ProductLaplace(2).scale = 2.0


def test_fit_leaves_the_estimator_and_the_samples_alone(samples, queries):
    estimator = SDKDE(bandwidth="cv", kernel="isotropic")
    before = copy.deepcopy(vars(estimator))
    original = samples.copy()
    oracle = estimator.fit(samples)
    assert vars(estimator) == before
    np.testing.assert_array_equal(samples, original)
    assert isinstance(oracle, Oracle) and oracle is not estimator.fit(samples)


def test_the_oracle_does_not_see_later_edits_to_the_samples(samples, queries):
    for as_input in (lambda a: a, torch.from_numpy):
        data = samples.copy()
        oracle = KDE().fit(as_input(data))
        expected = oracle.log_density(queries), oracle.smoothed(0.3).log_density(queries)
        data[:] = 0.0  # the caller reuses its buffer
        np.testing.assert_array_equal(oracle.log_density(queries), expected[0])
        np.testing.assert_array_equal(oracle.smoothed(0.3).log_density(queries), expected[1])


def test_integer_input_is_converted(rng):
    ints = rng.integers(-5, 6, size=(300, 2))
    floats = ints.astype(np.float64)
    q = rng.integers(-5, 6, size=(4, 2))
    ref = KDE().fit(floats).log_density(floats[:4])
    np.testing.assert_allclose(KDE().fit(ints).log_density(floats[:4]), ref, rtol=1e-14)
    np.testing.assert_allclose(KDE().fit(torch.as_tensor(ints)).log_density(floats[:4]), ref, rtol=1e-5)
    assert KDE().fit(floats).score(q).dtype == np.float64
    np.testing.assert_allclose(KDE().fit(ints.astype(np.uint8) + 10).log_density(floats[:4] + 10), ref,
                               rtol=1e-12)


def test_big_endian_arrays_are_accepted(samples, queries):
    ref = KDE().fit(samples).log_density(queries)
    np.testing.assert_allclose(KDE().fit(samples.astype(">f8")).log_density(queries.astype(">f8")), ref,
                               rtol=1e-14)


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.astype(np.float16), "float16"),
    (lambda a: torch.as_tensor(a, dtype=torch.float16), "float16"),
    (lambda a: torch.as_tensor(a, dtype=torch.bfloat16), "bfloat16"),
    (lambda a: a > 0, "boolean"),
    (lambda a: torch.as_tensor(a > 0), "boolean"),
    (lambda a: a.astype(np.complex128), "real-valued"),
    (lambda a: torch.as_tensor(a, dtype=torch.complex64), "real-valued"),
    (lambda a: a.astype(object), "array of numbers"),
    (lambda a: a.astype(str), "array of numbers"),
    (lambda a: a.astype(np.longdouble), "torch does not support"),
])
def test_unusable_dtypes_raise_type_error_naming_the_argument(bad, message, samples, queries):
    with pytest.raises(TypeError, match=f"samples .*{message}|samples.*{message}"):
        KDE().fit(bad(samples))
    with pytest.raises(TypeError, match=f"samples.*{message}"):
        SDKDE().fit(bad(samples))
    oracle = KDE().fit(samples)
    with pytest.raises(TypeError, match=f"x.*{message}"):
        oracle.score(bad(queries))


def test_ragged_input_raises_type_error():
    with pytest.raises(TypeError, match="samples must be an array of numbers"):
        KDE().fit([[1.0, 2.0], [3.0]])


# --------------------------------------------------------------------------- bad values and shapes
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_and_queries(value, samples, queries):
    bad = samples.copy()
    bad[3, 1] = value
    with pytest.raises(ValueError, match="samples contains 1 non-finite value"):
        KDE().fit(bad)
    with pytest.raises(ValueError, match="samples contains 1 non-finite value"):
        SDKDE().fit(torch.as_tensor(bad))
    bad_q = queries.copy()
    bad_q[0, 0] = value
    oracle = KDE().fit(samples)
    for method in (oracle.log_density, oracle.density, oracle.score, oracle.log_density_and_score):
        with pytest.raises(ValueError, match="x contains 1 non-finite value"):
            method(bad_q)
    with pytest.raises(ValueError, match="x contains"):
        random_gmm(3, generator=torch.Generator().manual_seed(0)).score(bad_q)


def test_wrong_ranks(samples, queries):
    with pytest.raises(ValueError, match=r"samples must have shape \(n, d\); got a 1-D array of length 200"):
        KDE().fit(samples[:, 0])
    with pytest.raises(ValueError, match=r"samples must have shape \(n, d\); got shape \(200, 3, 1\)"):
        KDE().fit(samples[..., None])
    with pytest.raises(ValueError, match=r"samples must have shape \(n, d\); got shape \(\)"):
        KDE().fit(np.float64(1.0))
    oracle = KDE().fit(samples)
    with pytest.raises(ValueError, match=r"x must have shape \(m, 3\) or \(3,\); got shape \(7, 3, 1\)"):
        oracle.score(queries[..., None])
    with pytest.raises(ValueError, match=r"x must have shape"):
        oracle.log_density(np.float64(0.5))


def test_dimension_mismatch(samples, queries):
    oracle = KDE().fit(samples)
    with pytest.raises(ValueError, match="x has dimension 2 but the oracle was fitted on 3-dimensional"):
        oracle.log_density(queries[:, :2])
    with pytest.raises(ValueError, match="x has dimension 4"):
        oracle.score(np.zeros(4))


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_samples(n, samples):
    with pytest.raises(ValueError, match=f"samples needs at least 2 points; got {n}"):
        KDE().fit(samples[:n])
    with pytest.raises(ValueError, match="samples needs at least 2 points"):
        SDKDE().fit(samples[:n])


def test_zero_and_rank_deficient_spread(rng):
    with pytest.raises(ValueError, match="covariance of samples is zero"):
        KDE().fit(np.full((50, 2), 3.0))
    t = rng.normal(size=(100, 1))
    on_a_line = t * np.array([[1.0, -2.0, 0.5]]) + np.array([1.0, 2.0, 3.0])
    for estimator in (KDE(), KDE(kernel="isotropic"), SDKDE(), KDE(bandwidth="cv")):
        with pytest.raises(ValueError, match="covariance of samples is rank-deficient: the samples span only 1 of 3"):
            estimator.fit(on_a_line)
    constant_coordinate = np.column_stack([rng.normal(size=(100, 2)), np.full(100, 7.0)])
    with pytest.raises(ValueError, match="rank-deficient: the samples span only 2 of 3"):
        KDE().fit(constant_coordinate)
    with pytest.raises(ValueError, match="rank-deficient"):
        KDE().fit(rng.normal(size=(3, 5)))  # fewer points than dimensions


@pytest.mark.parametrize("scale", [1e-8, 1e8])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_extreme_scales_are_affine_equivariant(scale, dtype, samples, queries):
    d = samples.shape[1]
    base = KDE().fit(samples)
    log_p, score = base.log_density_and_score(queries)
    scaled = KDE().fit((samples * scale).astype(dtype))
    s_log_p, s_score = scaled.log_density_and_score((queries * scale).astype(dtype))
    assert s_log_p.dtype == dtype
    tol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(s_log_p, log_p - d * math.log(scale), rtol=tol, atol=tol)
    np.testing.assert_allclose(s_score * scale, score, rtol=tol, atol=tol * np.abs(score).max())
    # smoothing by sigma in the scaled problem is smoothing by sigma / scale in the original
    np.testing.assert_allclose(KDE().fit(samples * scale).smoothed(0.3 * scale).log_density(queries * scale),
                               base.smoothed(0.3).log_density(queries) - d * math.log(scale), atol=1e-8)


def test_wildly_different_coordinate_scales_raise_clearly(rng):
    x = rng.normal(size=(100, 2)) * np.array([1e-8, 1e8])
    with pytest.raises(ValueError, match="rank-deficient.*scales"):
        KDE().fit(x)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(bandwidth="bogus"), ValueError, "bandwidth must be 'scott', 'silverman'"),
    (dict(bandwidth=-0.5), ValueError, "bandwidth must be a finite positive number, got -0.5"),
    (dict(bandwidth=0.0), ValueError, "bandwidth must be a finite positive number"),
    (dict(bandwidth=float("nan")), ValueError, "bandwidth must be a finite positive number"),
    (dict(bandwidth=True), TypeError, "bandwidth must be a number"),
    (dict(bandwidth=[0.5]), TypeError, "bandwidth must be a number"),
    (dict(kernel="bogus"), ValueError, "kernel must be 'full' or 'isotropic'; got 'bogus'"),
])
def test_bad_estimator_settings(kwargs, error, message):
    for cls in (KDE, SDKDE):
        with pytest.raises(error, match=message):
            cls(**kwargs)


@pytest.mark.parametrize("sigma, error", [(-0.1, ValueError), (float("nan"), ValueError),
                                          (float("inf"), ValueError), ("0.1", TypeError)])
def test_bad_sigma(sigma, error, samples):
    oracle = KDE().fit(samples)
    with pytest.raises(error, match="sigma must be"):
        oracle.smoothed(sigma)
    with pytest.raises(error, match="sigma must be"):
        random_gmm(3).smoothed(sigma)


def test_oracle_tuned_kde_validates(samples, queries):
    truth_lp, truth_s = np.zeros(7), np.zeros((7, 3))
    bad = queries.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="queries contains 1 non-finite"):
        oracle_tuned_kde(samples, bad, truth_lp, truth_s)
    with pytest.raises(ValueError, match="queries has dimension 2"):
        oracle_tuned_kde(samples, queries[:, :2], truth_lp, truth_s)
    with pytest.raises(ValueError, match="truth has shape"):
        oracle_tuned_kde(samples, queries, truth_lp[:3], truth_s + 1.0)


def test_as_oracle_and_resolve_oracle(samples):
    oracle = KDE().fit(samples)
    assert as_oracle(oracle) is oracle
    assert isinstance(as_oracle(KDE(), samples), Oracle)
    with pytest.raises(ValueError, match="needs samples"):
        as_oracle(KDE())
    with pytest.raises(TypeError, match="expected an Estimator or an Oracle, got str"):
        as_oracle("kde", samples)
    assert resolve_oracle(None, samples).dim == 3
    assert resolve_oracle(oracle) is oracle
