"""Test-time adaptation objectives: the proposal is a normalised density, and adapting by held-out
likelihood raises the held-out likelihood of data the training prior did not cover."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from disco_score import DiScoFormer
from disco_score.adaptation import defensive_proposal
from disco_score.bench.toys import draw_toy


@pytest.mark.parametrize("d", [1, 2])
def test_defensive_proposal_log_density_integrates_to_one(d: int) -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(50, d, generator=gen, dtype=torch.float64)
    proposal = defensive_proposal(centres, 64, gen)
    assert proposal.points.shape == (64, d) and torch.isfinite(proposal.log_q).all()
    # if log_q is the log-density of the draws, importance weights of a normalised p average to 1
    big = defensive_proposal(centres, 200_000, torch.Generator().manual_seed(1))
    log_p = -(big.points ** 2).sum(1) / 2 - 0.5 * d * math.log(2 * math.pi)
    estimate = float(torch.exp(log_p - big.log_q).mean())
    assert abs(estimate - 1.0) < 0.02


@pytest.fixture(scope="module")
def model() -> DiScoFormer:
    return DiScoFormer.pretrained(blend=False)  # adaptation of the network itself (a blend adapts its network part)


@pytest.mark.parametrize("name", ["tight rings", "checkerboard"])
def test_likelihood_adaptation_raises_heldout_likelihood(model: DiScoFormer, name: str) -> None:
    # sets the training prior does not name, where the plain fit leaves held-out likelihood on the table
    x, y = draw_toy(name, 800, 1), draw_toy(name, 2000, 2)
    oracle = model.fit(x)
    before = float(np.mean(oracle.log_density(y)))
    after = float(np.mean(oracle.adapt(steps=8).log_density(y)))
    assert after > before + 0.05, (before, after)


def test_default_objective_is_score_matching_above_two_dimensions(model: DiScoFormer) -> None:
    from disco_score.adaptation import default_objective

    assert default_objective("likelihood", 2) == "likelihood"
    assert default_objective("likelihood", 3) == "score_matching"
    assert default_objective("score_matching", 1) == "score_matching"


def test_adapt_refuses_an_unknown_objective(model: DiScoFormer) -> None:
    oracle = model.fit(draw_toy("two moons", 200, 0))
    with pytest.raises(ValueError, match="objective"):
        oracle.adapt(objective="entropy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="n_proposal"):
        oracle.adapt(n_proposal=1.5)  # type: ignore[arg-type]
