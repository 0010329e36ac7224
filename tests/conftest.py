"""Shared fixtures. Kept minimal: no autouse fixtures, nothing slow."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded CPU torch.Generator (seed 0), so every test is deterministic."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded numpy Generator (seed 0)."""
    return np.random.default_rng(0)
