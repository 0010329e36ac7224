"""Generation from a score with no training, shared by ``disco-score sample`` and the benchmark's
sampling suites: annealed Langevin (:func:`disco_score.samplers.annealed_langevin`) or a diffusers
scheduler (DDIM, DDPM, Euler) driving :class:`disco_score.integrations.diffusers.EmpiricalDiffusionPipeline`;
and the scatter of generated points both of them plot.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .base import Estimator, Oracle

#: the samplers the benchmark compares, by their names in its tables
METHODS = ("annealed Langevin", "DDIM (diffusers)")
#: method names accepted by :func:`generate`: the benchmark's names map to these
_ALIASES = {"annealed Langevin": "annealed", "DDIM (diffusers)": "ddim"}
#: diffusers schedulers by method name
SCHEDULERS = ("ddim", "ddpm", "euler")


def _scheduler(method: str) -> Any:
    import diffusers

    if method == "ddim":
        return diffusers.DDIMScheduler(clip_sample=False)
    if method == "ddpm":
        return diffusers.DDPMScheduler(clip_sample=False)
    return diffusers.EulerDiscreteScheduler()


def generate(method: str, source: Estimator | Oracle, data: Any, n: int, *, steps: int | None = None,
             settings: dict[str, Any] | None = None, generator: torch.Generator | None = None,
             progress: bool = False, logger: logging.Logger | None = None) -> np.ndarray:
    """(n, d) float64 points generated from ``source``'s score with ``data`` (n_data, d) as context.

    ``method``: ``"annealed"`` (also ``"annealed Langevin"``) or a diffusers scheduler, ``"ddim"``
    (also ``"DDIM (diffusers)"``), ``"ddpm"`` or ``"euler"``. ``steps``: annealed Langevin steps per
    noise level (default: the sampler's, 20) or scheduler inference steps (default 50). ``settings``:
    further keyword arguments of :func:`disco_score.samplers.annealed_langevin` (e.g. ``n_levels``).
    ``logger``: where to report the annealed noise levels (at INFO), if anywhere.
    """
    method = _ALIASES.get(method, method)
    if method == "annealed":
        from . import samplers

        options = dict(settings or {})
        if steps is not None:
            options["steps_per_level"] = steps
        points, info = samplers.annealed_langevin(source, data, n_samples=n, generator=generator, progress=progress,
                                                  **options)
        if logger is not None:
            logger.info("annealed Langevin: %d noise levels %.3g -> %.3g, %d steps",
                        len(info.noise_levels), info.noise_levels[0], info.noise_levels[-1], info.n_steps)
        return np.asarray(points, dtype=np.float64)
    if method not in SCHEDULERS:
        raise ValueError(f"method must be 'annealed' or one of {SCHEDULERS} (or one of {METHODS}); got {method!r}")
    if settings:
        raise ValueError(f"settings apply to annealed Langevin only; got {settings!r} for {method!r}")
    from .integrations.diffusers import DiscoScoreModel, EmpiricalDiffusionPipeline

    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(source, data), _scheduler(method))
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    out = pipe(num_samples=n, num_inference_steps=steps or 50, generator=generator, output_type="np")
    return np.asarray(out.samples, dtype=np.float64)


def scatter_points(ax: Any, points: Any, color: str, size: float, label: str | None = None,
                   alpha: float | None = None) -> None:
    """Scatter the first two coordinates of ``points`` (n, >= 2) on the matplotlib axes ``ax``."""
    points = np.asarray(points)
    style = {key: value for key, value in (("label", label), ("alpha", alpha)) if value is not None}
    ax.scatter(points[:, 0], points[:, 1], s=size, color=color, **style)
