"""Shared fixtures. Kept minimal: no autouse fixtures, nothing slow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import settings

# property tests draw the same examples on every run: CI must not fail on a draw no earlier run saw
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded CPU torch.Generator (seed 0), so every test is deterministic."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded numpy Generator (seed 0)."""
    return np.random.default_rng(0)
