"""Input validation and the "numpy in, numpy out; torch in, torch out" conversion.

Every public entry point funnels its arrays through :func:`as_samples` or :func:`as_queries`, so
bad input fails here with a message naming the argument, never later inside torch as a NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor, or anything np.asarray accepts

_REFUSED_DTYPES = (torch.float16, torch.bfloat16)


def _to_tensor(value: ArrayLike, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, came_from_torch)``; integers become float, half precision is refused."""
    if isinstance(value, torch.Tensor):
        tensor, is_torch = value.detach(), True
    else:
        try:
            array = np.asarray(value)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}") from exc
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        ):
            raise TypeError(f"{name} must be an array of numbers, got dtype {array.dtype}")
        if np.iscomplexobj(array):
            raise TypeError(f"{name} must be real-valued, got dtype {array.dtype}")
        if array.dtype == np.float16:
            raise TypeError(f"{name} has dtype float16, which is too coarse for log-densities; cast to float32 or float64")
        if not array.dtype.isnative:  # big-endian data from files: torch only takes native order
            array = array.astype(array.dtype.newbyteorder("="))
        try:
            # (ascontiguousarray would turn a 0-d scalar into shape (1,), hiding a rank error)
            tensor, is_torch = torch.from_numpy(np.ascontiguousarray(array).reshape(array.shape)), False
        except TypeError as exc:  # e.g. longdouble, which torch has no dtype for
            raise TypeError(f"{name} has dtype {array.dtype}, which torch does not support; "
                            f"cast to float32 or float64") from exc
    if tensor.dtype in _REFUSED_DTYPES:
        raise TypeError(f"{name} has dtype {tensor.dtype}, which is too coarse for log-densities; cast to float32 or float64")
    if tensor.dtype == torch.bool:
        raise TypeError(f"{name} is boolean; pass numbers")
    if tensor.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        # Integers carry no fractional information to lose: promote them, as numpy would.
        tensor = tensor.to(torch.float64 if not is_torch else torch.get_default_dtype())
    return tensor, is_torch


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def as_samples(samples: ArrayLike, name: str = "samples", min_samples: int = 2) -> torch.Tensor:
    """Validate a sample set: a finite floating (n, d) array with n >= ``min_samples``.

    Returns a float32 or float64 tensor on the input's device (a view where possible).
    Rank deficiency is checked separately by :class:`disco_score.whitening.Whitening`.
    """
    tensor, _ = _to_tensor(samples, name)
    if tensor.ndim == 1:
        raise ValueError(f"{name} must have shape (n, d); got a 1-D array of length {tensor.shape[0]} "
                         f"(for one-dimensional data pass samples[:, None])")
    if tensor.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d); got shape {tuple(tensor.shape)}")
    n, d = tensor.shape
    if d < 1:
        raise ValueError(f"{name} must have at least one dimension; got shape {tuple(tensor.shape)}")
    if n < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} points; got {n}")
    _check_finite(tensor, name)
    return tensor


Restore = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class Queries:
    """Validated query points plus the recipe to hand results back in the caller's kind."""

    points: torch.Tensor  # (m, d) on the oracle's device, in the compute dtype
    single: bool  # the caller passed one point (d,)
    is_torch: bool
    dtype: torch.dtype  # the caller's floating dtype
    device: torch.device

    def restore(self, value: torch.Tensor) -> Any:
        """Map an (m, ...) result back to the caller's kind, dtype and device."""
        if self.single:
            value = value[0]
        value = value.to(dtype=self.dtype)
        if self.is_torch:
            return value.to(self.device)
        out = value.detach().cpu().numpy()
        return out[()] if out.ndim == 0 else out


def as_queries(x: ArrayLike, dim: int, compute_dtype: torch.dtype, device: torch.device,
               name: str = "x") -> Queries:
    """Validate query points against a fitted dimension ``dim``: shape (m, d) or a single point (d,)."""
    tensor, is_torch = _to_tensor(x, name)
    single = tensor.ndim == 1
    if single:
        tensor = tensor[None, :]
    if tensor.ndim != 2:
        raise ValueError(f"{name} must have shape (m, {dim}) or ({dim},); got shape {tuple(tensor.shape)}")
    if tensor.shape[1] != dim:
        raise ValueError(f"{name} has dimension {tensor.shape[1]} but the oracle was fitted on "
                         f"{dim}-dimensional samples")
    _check_finite(tensor, name)
    dtype = torch.promote_types(tensor.dtype, compute_dtype)
    return Queries(tensor.to(device=device, dtype=dtype), single, is_torch, tensor.dtype, tensor.device)


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """A finite positive (or non-negative) real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {bound} number, got {value}")
    return value


def check_int(value: int, name: str, minimum: int = 1) -> int:
    """An integer at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


#: the largest magnitude whose square (a variance, a kernel covariance) float64 still holds, with
#: room for sums over dimensions and samples
MAX_SQUARABLE = 1e150


def check_squarable(value: float, name: str) -> float:
    """A finite number small enough that ``value ** 2`` (and sums of such) stays in float64's range."""
    value = float(value)
    if not abs(value) <= MAX_SQUARABLE:
        raise ValueError(f"{name} = {value:g} is too large: its square overflows float64 "
                         f"(at most {MAX_SQUARABLE:g}; rescale the data)")
    return value
