"""What ``estimator=None`` means everywhere: the pretrained DiScoFormer.

The one place that picks the package's default estimator. It sits above both the interface
(:mod:`disco_score.base`) and the implementation (:mod:`disco_score.discoformer`), so samplers,
particle solvers, information estimates and the integrations can take ``estimator=None`` without
the interface importing an implementation.
"""

from __future__ import annotations

from ._checks import ArrayLike
from .base import Estimator, Oracle, as_oracle
from .discoformer import DiScoFormer


def default_estimator() -> Estimator:
    """The package's default estimator: the pretrained DiScoFormer (used wherever ``estimator=None``)."""
    return DiScoFormer.pretrained()


def resolve_oracle(estimator: Estimator | Oracle | None, samples: ArrayLike | None = None) -> Oracle:
    """:func:`~disco_score.base.as_oracle` with ``None`` meaning :func:`default_estimator`."""
    return as_oracle(default_estimator() if estimator is None else estimator, samples)
