"""Error metrics exactly as defined in the benchmark protocol.

All take torch tensors or numpy arrays and return Python floats (computed in float64).
Shapes: scores (m, d); log-densities (m,).
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import ArrayLike


def _f64(value: ArrayLike, name: str) -> torch.Tensor:
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.to(torch.float64).cpu()
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains non-finite values")
    return tensor


def _pair(estimate: ArrayLike, truth: ArrayLike, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    est, tru = _f64(estimate, "estimate"), _f64(truth, "truth")
    if est.shape != tru.shape:
        raise ValueError(f"estimate has shape {tuple(est.shape)} but truth has shape {tuple(tru.shape)}")
    if est.ndim != ndim:
        raise ValueError(f"expected {ndim}-D arrays, got shape {tuple(est.shape)}")
    return est, tru


def score_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Mean over queries and coordinates of ``(s_hat - s)^2``."""
    est, tru = _pair(estimate, truth, 2)
    return float(((est - tru) ** 2).mean())


def relative_score_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """``sum |s_hat - s|^2 / sum |s|^2`` over queries (a zero predictor scores 1)."""
    est, tru = _pair(estimate, truth, 2)
    norm = (tru ** 2).sum()
    if not norm > 0:
        raise ValueError("truth is identically zero, so the relative score MSE is undefined (0/0)")
    return float(((est - tru) ** 2).sum() / norm)


def log_density_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Mean over queries of ``(log f_hat - log f)^2``."""
    est, tru = _pair(estimate, truth, 1)
    return float(((est - tru) ** 2).mean())


def centered_log_density_mse(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Variance over queries of ``log f_hat - log f`` (for targets known up to a constant)."""
    est, tru = _pair(estimate, truth, 1)
    diff = est - tru
    return float(((diff - diff.mean()) ** 2).mean())


def fisher_divergence(estimate: ArrayLike, truth: ArrayLike) -> float:
    """Monte-Carlo Fisher divergence ``E_p |s_hat - s|^2`` from scores at samples of ``p``."""
    est, tru = _pair(estimate, truth, 2)
    return float(((est - tru) ** 2).sum(1).mean())
