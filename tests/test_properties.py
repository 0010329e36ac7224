"""Property-based tests of the public entry points (hypothesis, small budgets).

For any finite valid input -- shapes from n = d + 1 up, float32 or float64, numpy or torch, scales
from 1e-6 to 1e6 -- outputs are finite and have the documented shape, dtype, kind and device; for
invalid input the error is a ValueError or TypeError naming the argument.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from disco_score import KDE, metrics, samplers  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def sample_sets(draw: st.DrawFn, max_dim: int = 3) -> dict:
    """A finite (n, d) sample set, queries near and far from it, the kind and dtype to pass them in."""
    d = draw(st.integers(1, max_dim))
    n = draw(st.integers(d + 1, 40))
    scale = 10.0 ** draw(st.floats(-6, 6))
    shift = draw(st.floats(-3, 3)) * scale * draw(st.sampled_from([0.0, 1.0, 100.0]))
    heavy = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    raw = rng.standard_t(2.0, size=(n, d)) if heavy else rng.normal(size=(n, d))
    samples = shift + scale * raw
    queries = shift + scale * rng.normal(size=(draw(st.integers(1, 7)), d)) * draw(st.sampled_from([1.0, 10.0]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    as_torch = draw(st.booleans())

    def kind(a: np.ndarray):
        a = a.astype(dtype)
        return torch.from_numpy(a) if as_torch else a

    return {"samples": kind(samples), "queries": kind(queries), "scale": scale, "d": d, "n": n,
            "dtype": dtype, "torch": as_torch}


def _check_output(value, shape: tuple[int, ...], case: dict) -> None:
    if case["torch"]:
        assert isinstance(value, torch.Tensor) and value.device.type == "cpu"
        assert value.dtype == getattr(torch, case["dtype"])
        array = value.detach().numpy()
    else:
        assert isinstance(value, np.ndarray) and value.dtype == np.dtype(case["dtype"])
        array = value
    assert array.shape == shape
    assert np.isfinite(array).all(), array


def _rank_ok(samples) -> bool:
    """KDE whitens with the sample covariance, which needs n > d distinct, non-degenerate points."""
    x = np.asarray(samples, dtype=np.float64)
    centred = x - x.mean(0)
    s = np.linalg.svd(centred, compute_uv=False)
    return bool(s.min() > 1e-4 * s.max())


# -- KDE ------------------------------------------------------------------------------------------

@SETTINGS
@given(sample_sets())
def test_kde_outputs_are_finite_with_the_documented_shape_and_dtype(case: dict) -> None:
    hypothesis.assume(_rank_ok(case["samples"]))
    oracle = KDE().fit(case["samples"])
    q = case["queries"]
    m, d = q.shape
    _check_output(oracle.log_density(q), (m,), case)
    _check_output(oracle.score(q), (m, d), case)
    log_p, score = oracle.log_density_and_score(q)
    _check_output(log_p, (m,), case)
    _check_output(score, (m, d), case)
    smoothed = oracle.smoothed(0.5 * case["scale"])
    _check_output(smoothed.log_density(q), (m,), case)
    _check_output(smoothed.score(q), (m, d), case)
    _check_output(oracle.score(q[0]), (d,), case)  # a single point


@SETTINGS
@given(sample_sets(), st.sampled_from(["nan", "inf", "shape", "rank", "string", "complex"]))
def test_kde_invalid_input_names_the_argument(case: dict, defect: str) -> None:
    samples = np.asarray(case["samples"], dtype=np.float64).copy()
    if defect in ("nan", "inf"):
        samples[0, 0] = math.nan if defect == "nan" else math.inf
        with pytest.raises(ValueError, match="samples contains .* non-finite"):
            KDE().fit(samples)
    elif defect == "shape":
        with pytest.raises(ValueError, match=r"samples must have shape \(n, d\)"):
            KDE().fit(samples[:, 0] if samples.shape[1] == 1 else samples[None])
    elif defect == "rank":
        hypothesis.assume(_rank_ok(samples))
        oracle = KDE().fit(samples)
        with pytest.raises(ValueError, match="x has dimension"):
            oracle.score(np.zeros((2, case["d"] + 1)))
        with pytest.raises(ValueError, match="x contains .* non-finite"):
            oracle.log_density(np.full((2, case["d"]), math.nan))
        with pytest.raises(ValueError, match="sigma must be a finite non-negative"):
            oracle.smoothed(-1.0)
    elif defect == "string":
        with pytest.raises(TypeError, match="samples must be an array of numbers"):
            KDE().fit(samples.astype(str))
    else:
        with pytest.raises(TypeError, match="samples must be real-valued"):
            KDE().fit(samples.astype(complex))


# -- samplers -------------------------------------------------------------------------------------

@SETTINGS
@given(sample_sets(max_dim=2), st.sampled_from(["langevin", "mala"]), st.integers(1, 5))
def test_langevin_and_mala_outputs_are_finite_and_shaped_like_x0(case: dict, method: str, chains: int) -> None:
    hypothesis.assume(_rank_ok(case["samples"]))
    oracle = KDE().fit(case["samples"])
    x0 = case["samples"][:chains]
    run = samplers.langevin if method == "langevin" else samplers.mala
    with np.errstate(all="ignore"), _no_warnings():
        # stable for the KDE's kernel (variance >= 0.2 x the data's smallest variance at these n)
        step_size = 1e-3 * float(np.asarray(case["samples"], dtype=np.float64).var(0).min())
        out, info = run(oracle, x0, step_size=step_size, n_steps=5,
                        generator=torch.Generator().manual_seed(0), progress=False)
    _check_output(out, (x0.shape[0], case["d"]), case)
    assert info.n_steps == 5 and np.isfinite(info.step_sizes).all()
    if method == "langevin":
        assert info.mean_squared_score.shape == (5,) and np.isfinite(info.mean_squared_score).all()
    else:
        assert 0.0 <= info.acceptance_rate <= 1.0
        assert info.chain_acceptance_rates.shape == (x0.shape[0],)


def _no_warnings():
    """Low MALA acceptance on odd targets warns; that is not what these properties are about."""
    import warnings

    manager = warnings.catch_warnings()
    manager.__enter__()
    warnings.simplefilter("ignore", samplers.LowAcceptanceWarning)

    class _Exit:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return manager.__exit__(*exc)

    return _Exit()


@SETTINGS
@given(st.sampled_from(["step_size", "n_steps", "x0", "generator", "x0_nan"]),
       st.sampled_from([samplers.langevin, samplers.mala]))
def test_sampler_invalid_input_names_the_argument(argument: str, run) -> None:
    oracle = KDE().fit(np.random.default_rng(0).normal(size=(30, 2)))
    kwargs: dict = {"step_size": 0.1, "n_steps": 3, "progress": False}
    x0 = np.zeros((4, 2))
    if argument == "step_size":
        kwargs["step_size"] = -0.1
        error, fragment = ValueError, "step_size must be a finite positive"
    elif argument == "n_steps":
        kwargs["n_steps"] = 2.5
        error, fragment = TypeError, "n_steps must be an integer"
    elif argument == "x0":
        x0 = np.zeros((4, 3))
        error, fragment = ValueError, "x0 has dimension 3"
    elif argument == "generator":
        kwargs["generator"] = 0
        error, fragment = TypeError, "generator must be a torch.Generator"
    else:
        x0 = np.full((4, 2), math.nan)
        error, fragment = ValueError, "x0 contains .* non-finite"
    with pytest.raises(error, match=fragment):
        run(oracle, x0, **kwargs)


# -- metrics --------------------------------------------------------------------------------------

METRICS_2D = [metrics.score_mse, metrics.relative_score_mse, metrics.fisher_divergence]
METRICS_1D = [metrics.log_density_mse, metrics.centered_log_density_mse]


@SETTINGS
@given(st.integers(1, 30), st.integers(1, 4), st.floats(-6, 6), st.sampled_from(["float32", "float64"]),
       st.booleans(), st.integers(0, 2 ** 31 - 1))
def test_metrics_are_finite_non_negative_floats(m: int, d: int, log_scale: float, dtype: str, as_torch: bool,
                                                seed: int) -> None:
    rng = np.random.default_rng(seed)
    scale = 10.0 ** log_scale

    def kind(a: np.ndarray):
        a = a.astype(dtype)
        return torch.from_numpy(a) if as_torch else a

    est, tru = kind(scale * rng.normal(size=(m, d))), kind(scale * rng.normal(size=(m, d)) + scale)
    for metric in METRICS_2D:
        value = metric(est, tru)
        assert isinstance(value, float) and math.isfinite(value) and value >= 0.0
    assert metrics.score_mse(tru, tru) == 0.0
    for metric in METRICS_1D:
        value = metric(est[:, 0], tru[:, 0])
        assert isinstance(value, float) and math.isfinite(value) and value >= 0.0


@SETTINGS
@given(st.sampled_from(METRICS_2D + METRICS_1D), st.sampled_from(["nan", "shape"]))
def test_metrics_invalid_input_names_the_argument(metric, defect: str) -> None:
    shape = (5, 2) if metric in METRICS_2D else (5,)
    good = np.ones(shape)
    if defect == "nan":
        bad = good.copy()
        bad[0] = math.nan
        with pytest.raises(ValueError, match="estimate contains non-finite"):
            metric(bad, good)
        with pytest.raises(ValueError, match="truth contains non-finite"):
            metric(good, bad)
    else:
        with pytest.raises(ValueError, match="estimate has shape .* but truth has shape"):
            metric(good, np.ones(shape[:-1] + (shape[-1] + 1,)))


# -- information ------------------------------------------------------------------------------------

@SETTINGS
@given(sample_sets(max_dim=2))
def test_information_estimates_are_finite_floats(case: dict) -> None:
    from disco_score import information

    x = case["samples"]
    hypothesis.assume(case["n"] >= 8 and _rank_ok(x[: case["n"] // 2]) and _rank_ok(x[case["n"] // 2:]))
    h = information.entropy(x, KDE(), folds=2, seed=0)
    fisher = information.fisher_information(x, KDE(), folds=2, seed=0)
    assert isinstance(h, float) and math.isfinite(h)
    assert isinstance(fisher, float) and math.isfinite(fisher)
    ksd = information.kernel_stein_discrepancy(x, KDE().fit(x))
    assert math.isfinite(float(ksd)) and float(ksd) >= 0.0
