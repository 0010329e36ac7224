"""Adapters that plug disco-score oracles into other libraries.

Installed as ``disco_score.integrations``; each adapter needs its host library, available as an
extra: ``pip install "disco-score[diffusers]"``, ``[jax]`` (blackjax, numpyro) or ``[pyro]``.
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise ImportError naming the extra that installs it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this adapter needs '{module}', which is not installed; install it with "
            f"pip install \"disco-score[{extra}]\"") from exc
