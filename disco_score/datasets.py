"""Small built-in 2-D data sets for demos, examples and tests (made on the fly; no downloads).

* :func:`two_moons`: the classic interleaved half circles (samples only; no closed-form density).
* :func:`ring_mixture`: ``n_modes`` equal Gaussians evenly spaced on a circle, an exact
  :class:`~disco_score.targets.GaussianMixture`.
* :func:`demo_mixture`: a fixed, deliberately uneven 2-D Gaussian mixture (different weights,
  orientations and scales), an exact :class:`~disco_score.targets.GaussianMixture`; the ``demo``
  command's default.
* :func:`load`: any of them by name, as ``(samples, target or None)``.

Samples come back as float64 numpy arrays of shape (n, 2), reproducible from ``seed``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_int, check_positive
from .targets import GaussianMixture

#: names accepted by :func:`load`
NAMES = ("gmm", "ring", "moons")


def two_moons(n: int, noise: float = 0.08, seed: int = 0) -> np.ndarray:
    """Two interleaved half circles of radius 1 with isotropic Gaussian noise.

    Args:
        n: number of points (split as evenly as possible between the moons).
        noise: standard deviation of the added noise (units of x).
        seed: seed of the numpy generator.
    Returns:
        (n, 2) float64 array.
    """
    n = check_int(n, "n")
    noise = check_positive(noise, "noise", allow_zero=True)
    rng = np.random.default_rng(seed)
    n_upper = (n + 1) // 2
    angle = rng.uniform(0.0, math.pi, size=n)
    upper = np.arange(n) < n_upper
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return points[rng.permutation(n)]


def ring_mixture(n_modes: int = 8, radius: float = 2.0, std: float = 0.3) -> GaussianMixture:
    """``n_modes`` equally weighted isotropic Gaussians centred on a circle (exact target, float64).

    Args:
        n_modes: number of components.
        radius: radius of the circle of means (units of x).
        std: per-coordinate standard deviation of every component (units of x).
    """
    n_modes = check_int(n_modes, "n_modes")
    radius = check_positive(radius, "radius")
    std = check_positive(std, "std")
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    covariances = (std ** 2) * torch.eye(2, dtype=torch.float64).expand(n_modes, 2, 2)
    return GaussianMixture(torch.full((n_modes,), 1.0 / n_modes, dtype=torch.float64), means, covariances)


def _rotated_covariance(angle: float, std_major: float, std_minor: float) -> list[list[float]]:
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    return (rotation @ np.diag([std_major ** 2, std_minor ** 2]) @ rotation.T).tolist()


def demo_mixture() -> GaussianMixture:
    """A fixed four-component 2-D Gaussian mixture (exact target, float64).

    Uneven on purpose: a heavy broad mode, two elongated modes at different angles and a small
    tight one, so a single global bandwidth cannot fit all of them.
    """
    weights = torch.tensor([0.4, 0.25, 0.25, 0.1], dtype=torch.float64)
    means = torch.tensor([[-1.5, -0.5], [1.5, 1.5], [1.8, -1.6], [-0.6, 2.2]], dtype=torch.float64)
    covariances = torch.tensor([_rotated_covariance(0.3, 0.9, 0.6),
                                _rotated_covariance(0.8, 0.8, 0.2),
                                _rotated_covariance(-0.5, 0.7, 0.25),
                                _rotated_covariance(0.0, 0.2, 0.2)], dtype=torch.float64)
    return GaussianMixture(weights, means, covariances)


def load(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, GaussianMixture | None]:
    """A built-in data set by name: ``(samples (n, 2) float64, exact target or None)``.

    Args:
        name: one of :data:`NAMES`: ``"gmm"`` (:func:`demo_mixture`), ``"ring"``
            (:func:`ring_mixture`) or ``"moons"`` (:func:`two_moons`, no exact target).
        n: number of samples.
        seed: sampling seed.
    """
    n = check_int(n, "n")
    if name == "moons":
        return two_moons(n, seed=seed), None
    if name == "gmm":
        target = demo_mixture()
    elif name == "ring":
        target = ring_mixture()
    else:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(NAMES)}")
    samples = target.sample(n, torch.Generator().manual_seed(seed))
    return samples.numpy(), target
