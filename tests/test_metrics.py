"""Metrics on hand-computed examples, exactly as the benchmark protocol defines them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disco_score import metrics

ESTIMATE = np.array([[1.0, 2.0], [0.0, -1.0]])
TRUTH = np.array([[0.0, 2.0], [2.0, 1.0]])
# squared errors per entry: [[1, 0], [4, 4]] -> total 9 over 4 entries; |truth|^2 total = 4 + 5 = 9


def test_score_metrics_by_hand():
    assert metrics.score_mse(ESTIMATE, TRUTH) == pytest.approx(9 / 4)
    assert metrics.relative_score_mse(ESTIMATE, TRUTH) == pytest.approx(9 / 9)
    assert metrics.relative_score_mse(ESTIMATE * 0 + TRUTH * 0.5, TRUTH) == pytest.approx(0.25)
    # Fisher divergence: mean over points of the squared norm: (1 + 8) / 2
    assert metrics.fisher_divergence(ESTIMATE, TRUTH) == pytest.approx(4.5)


def test_zero_predictor_has_relative_score_mse_one(rng):
    truth = rng.normal(size=(100, 5))
    assert metrics.relative_score_mse(np.zeros_like(truth), truth) == pytest.approx(1.0)
    assert metrics.relative_score_mse(truth, truth) == 0.0


def test_log_density_metrics_by_hand():
    est = np.array([1.0, 2.0, 6.0])
    tru = np.array([0.0, 0.0, 3.0])
    # differences 1, 2, 3
    assert metrics.log_density_mse(est, tru) == pytest.approx((1 + 4 + 9) / 3)
    assert metrics.centered_log_density_mse(est, tru) == pytest.approx(((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / 3)
    # a constant offset is invisible to the centred metric only
    assert metrics.centered_log_density_mse(tru + 7.0, tru) == pytest.approx(0.0, abs=1e-20)
    assert metrics.log_density_mse(tru + 7.0, tru) == pytest.approx(49.0)


def test_metrics_accept_torch_and_return_floats():
    value = metrics.score_mse(torch.tensor(ESTIMATE, dtype=torch.float32), torch.tensor(TRUTH))
    assert isinstance(value, float) and value == pytest.approx(9 / 4)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match=r"estimate has shape \(2, 2\) but truth has shape \(2, 3\)"):
        metrics.score_mse(ESTIMATE, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="expected 2-D"):
        metrics.score_mse(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="expected 1-D"):
        metrics.log_density_mse(ESTIMATE, TRUTH)
    with pytest.raises(ValueError, match="estimate contains non-finite"):
        metrics.log_density_mse(np.array([np.nan, 1.0]), np.zeros(2))
    with pytest.raises(ValueError, match="truth contains non-finite"):
        metrics.fisher_divergence(ESTIMATE, np.full((2, 2), np.inf))
    with pytest.raises(ValueError, match="truth is identically zero"):
        metrics.relative_score_mse(ESTIMATE, np.zeros((2, 2)))  # 0/0, not a silent NaN
