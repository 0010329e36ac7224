"""Label-free objectives for test-time adaptation (``DiScoFormerOracle.adapt``).

Both are cross-fitted: the network encodes one half of the samples and is scored on the other half,
so a fit cannot win by copying its own samples.

* ``"likelihood"``: held-out log-likelihood ``mean log f(y) - log Z``, with the normaliser ``Z``
  estimated by defensive importance sampling — draws from a mixture of a narrow KDE of the encoded
  half and a broad Gaussian, so the weights ``f / q`` stay bounded in the tails. It moves the level
  and the bandwidths together; the quantity the held-out likelihood tables report.
* ``"score_matching"``: held-out Hyvärinen score matching ``mean(|S|^2 / 2 + div S)`` plus the
  consistency loss between the score head and the gradient of the log-density head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from .components import interleaved_subsets
from .model import DensityNet
from .net_blocks import EncodedSamples
from .whitening import scott_factor

Objective = Literal["likelihood", "score_matching"]
OBJECTIVES = ("likelihood", "score_matching")
#: Adam learning rate per objective when ``adapt`` is not given one (the likelihood moves
#: log-bandwidths, which take larger steps; docs/experiments.md, "Adaptation by held-out likelihood")
DEFAULT_LR = {"likelihood": 0.1, "score_matching": 1e-2}

#: share of the proposal's draws from the broad Gaussian, and that Gaussian's sd (whitened units)
BROAD_FRACTION = 0.2
BROAD_SD = 2.0
#: the proposal's KDE bandwidth as a fraction of Scott's rule (narrower than any fit the network makes,
#: so q covers f's peaks; docs/experiments.md, "Adaptation by held-out likelihood")
PROPOSAL_FACTOR = 0.5


#: the likelihood objective is the default up to this dimension: it repaired W1 and the d = 2 W2
#: targets but raised the score error at d = 6, 11 (W3) and 100 (P2), where 512 importance draws
#: leave the normaliser's gradient noisy (docs/experiments.md, "Adaptation by held-out likelihood")
LIKELIHOOD_MAX_DIM = 2


def default_objective(network_objective: Objective, dim: int) -> Objective:
    """The objective ``adapt`` uses when none is given: the network's own up to
    :data:`LIKELIHOOD_MAX_DIM`, score matching above."""
    return network_objective if dim <= LIKELIHOOD_MAX_DIM else "score_matching"


@dataclass(frozen=True)
class Proposal:
    """Importance-sampling draws ``points`` (M, d) and their log-density ``log_q`` (M,) under q."""

    points: torch.Tensor
    log_q: torch.Tensor


def defensive_proposal(centres: torch.Tensor, n_points: int, generator: torch.Generator) -> Proposal:
    """Draws from ``q = (1 - a) KDE(centres, h) + a N(0, s^2 I)`` (whitened coordinates, float64 log q).

    ``h`` is :data:`PROPOSAL_FACTOR` times Scott's bandwidth for the centres, ``a`` and ``s`` are
    :data:`BROAD_FRACTION` and :data:`BROAD_SD`."""
    c = centres.detach().to(torch.float64)
    n, d = c.shape
    h = PROPOSAL_FACTOR * scott_factor(n, d)
    n_broad = max(1, int(round(BROAD_FRACTION * n_points)))
    pick = torch.randint(0, n, (n_points - n_broad,), generator=generator)
    narrow = c[pick] + h * torch.randn(n_points - n_broad, d, generator=generator, dtype=torch.float64)
    broad = BROAD_SD * torch.randn(n_broad, d, generator=generator, dtype=torch.float64)
    u = torch.cat([narrow, broad])
    sq = torch.cdist(u, c) ** 2
    log_kde = torch.logsumexp(-sq / (2 * h * h), 1) - math.log(n) - 0.5 * d * math.log(2 * math.pi * h * h)
    log_broad = -(u * u).sum(1) / (2 * BROAD_SD ** 2) - 0.5 * d * math.log(2 * math.pi * BROAD_SD ** 2)
    log_q = torch.logaddexp(math.log1p(-BROAD_FRACTION) + log_kde, math.log(BROAD_FRACTION) + log_broad)
    return Proposal(u.to(centres.device), log_q.to(centres.device))


def heldout_nll(net: DensityNet, encoded: EncodedSamples, held: torch.Tensor, proposal: Proposal) -> torch.Tensor:
    """``-(mean log f(held) - log Z)``, per point, for held-out points (1, m, d) in the net's dtype."""
    m = held.shape[1]
    points = torch.cat([held, proposal.points.to(held.dtype)[None]], 1)
    log_f, _ = net.query(encoded, points)
    log_f = log_f[0].to(torch.float64)
    log_z = torch.logsumexp(log_f[m:] - proposal.log_q, 0) - math.log(proposal.points.shape[0])
    return -(log_f[:m].mean() - log_z)


def score_matching_and_consistency(net: DensityNet, encoded: EncodedSamples, y: torch.Tensor,
                                   generator: torch.Generator) -> torch.Tensor:
    """Held-out Hyvärinen loss mean(|S|^2/2 + div S) plus the consistency loss at queries y (1, m, d)
    (``y`` requires grad). The divergence is exact for d <= 4 and a Hutchinson estimate above."""
    log_f, score = net.query(encoded, y)
    d = y.shape[-1]
    if d <= 4:  # exact divergence: one backward pass per coordinate
        div = sum(torch.autograd.grad(score[..., i].sum(), y, create_graph=True)[0][..., i] for i in range(d))
    else:  # Hutchinson: E[v^T (dS/dy) v] with Rademacher v
        v = (torch.randint(0, 2, y.shape, generator=generator) * 2 - 1).to(y.dtype)
        div = (torch.autograd.grad((score * v).sum(), y, create_graph=True)[0] * v).sum(-1)
    hyvarinen = (0.5 * (score ** 2).sum(-1) + div).mean()
    (grad_log_f,) = torch.autograd.grad(log_f.sum(), y, create_graph=True)
    consistency = ((score - grad_log_f) ** 2).sum(-1).mean() / (score.detach() ** 2).sum(-1).mean().clamp_min(1e-12)
    return hyvarinen + consistency


#: the network choice (:func:`heldout_hyvarinen`) scores this many points of each held-out half
CHOICE_POINTS = 128
#: ... on an interleaved subset of at most this many samples (the choice costs four fits of half of it)
CHOICE_MAX_N = 4096
#: finite-difference step of the divergence, in whitened units (data standard deviations)
CHOICE_STEP = 1e-2
#: up to this d the divergence is exact along the d axes (2d + 1 score points per point); above it a
#: Hutchinson estimate along CHOICE_PROBES fixed Rademacher directions, the same for every estimator
#: compared (at d = 10 the exact divergence chose better than 2 or 4 directions: docs/experiments.md,
#: "Choosing the network by held-out score matching")
CHOICE_EXACT_MAX_DIM = 16
CHOICE_PROBES = 4


def heldout_score_terms(fits: Sequence[Callable[[torch.Tensor], Any]], z: torch.Tensor, points: int
                        ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Cross-fitted scores and divergences of several estimators on whitened samples ``z`` (n, d): for
    each of the two ways round (fit on one interleaved half, :func:`~disco_score.components.interleaved_subsets`,
    so permutation-invariant; score at up to ``points`` points of the other, spread along the set's
    range), one ``(score (m, d), divergence (m,))`` per estimator, all at the same points. ``fits[i](half)``
    returns an oracle with ``score``. The divergence is a central finite difference along the axes
    (d <= :data:`CHOICE_EXACT_MAX_DIM`) or along :data:`CHOICE_PROBES` fixed Rademacher directions
    (Hutchinson). A set above :data:`CHOICE_MAX_N` is first cut to an interleaved subset of that size."""
    n, d = z.shape
    if n > CHOICE_MAX_N:
        z = z[interleaved_subsets(z, -(-n // CHOICE_MAX_N))[0]]
    halves = interleaved_subsets(z, 2)
    exact = d <= CHOICE_EXACT_MAX_DIM
    if exact:
        directions = torch.eye(d, dtype=z.dtype, device=z.device)
    else:
        signs = torch.randint(0, 2, (CHOICE_PROBES, d), generator=torch.Generator().manual_seed(d))
        directions = (2.0 * signs - 1.0).to(dtype=z.dtype, device=z.device)
    k = directions.shape[0]
    out = []
    for fitted, held in ((halves[0], halves[1]), (halves[1], halves[0])):
        y = z[held][:: max(1, len(held) // points)][:points]
        m = y.shape[0]
        steps = CHOICE_STEP * directions
        grid = torch.cat([y, (y[:, None] + steps).reshape(-1, d), (y[:, None] - steps).reshape(-1, d)])
        terms = []
        for fit in fits:
            s = torch.as_tensor(fit(z[fitted]).score(grid)).to(torch.float64)
            plus, minus = s[m:m + m * k].reshape(m, k, d), s[m + m * k:].reshape(m, k, d)
            along = ((plus - minus) * directions).sum(-1) / (2 * CHOICE_STEP)  # v^T (ds/dy) v per direction
            terms.append((s[:m], along.sum(1) if exact else along.mean(1)))  # the trace: summed, or Hutchinson's mean
        out.append(terms)
    return out


def heldout_hyvarinen(fit: Callable[[torch.Tensor], Any], z: torch.Tensor) -> float:
    """Cross-fitted held-out Hyvärinen loss ``mean(|s|^2 / 2 + div s)`` of an estimator on whitened
    samples ``z`` (n, d) (:func:`heldout_score_terms` at :data:`CHOICE_POINTS` points per half, the
    two ways round averaged): ``fit(half)`` returns an oracle with ``score``. Lower is better: by
    integration by parts it is half the Fisher divergence from the sampling law plus a constant
    that no estimator changes."""
    halves = heldout_score_terms([fit], z, CHOICE_POINTS)
    return sum(float((0.5 * (s ** 2).sum(1) + div).mean()) for ((s, div),) in halves) / 2
