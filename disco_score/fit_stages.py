"""The configuration of :meth:`DiScoFormer.fit <disco_score.discoformer.DiScoFormer.fit>` and the
stage of it that needs no network: cutting the sample set into components.

``fit`` runs these steps, each switched and tuned by a field of :class:`FitConfig`:

1. find components (:func:`find_components`: ``split_components``, ``split_min_dim``, ``split_gate``,
   ``max_components``, ``min_component_size``; then ``reassign``);
2. choose each part's network: where a dimension specialist serves its size, it and the general
   network compete by cross-fitted held-out score matching (``choose_network``);
3. fit each part with its network, as interleaved subsets averaged in log-density where a
   specialist's ``bag_size`` asks for it (no switch: the network's own limit);
4. lower each component's mixture weight by the network's level error on one Gaussian of its size
   (``level_offsets``);
5. cap each component's log-density far from its samples by a Gaussian envelope (``envelopes``);
6. blend the fit's score with a BIC Gaussian mixture's, the weight by held-out score matching
   (``blend``);
7. where ``summary`` asks for it, distil the fit into a fixed-size Gaussian mixture, the sampler's
   fast path (:func:`disco_score.summary.distil`), and return that.

``normalize`` and ``convolution_threshold`` shape the fitted oracle's answers; ``key_block`` and
``query_block`` bound its memory. This module imports no network, so the estimator imports it
without a circle.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_int, check_positive
from .components import SPLIT_GATE, find_split, reassign_to_gaussians
from .summary import SummaryConfig
from .whitening import Whitening

logger = logging.getLogger(__name__)

#: components are looked for from this dimension up: in high d whitening hides them from the
#: network, and at d = 10 it fits one component far better than several (docs/experiments.md,
#: "Design: the component stage from d = 5, with a minimum part size and reassignment")
SPLIT_MIN_DIM = 5
#: the fewest samples a found component may have (or 2 (d + 1), to whiten it): on fewer, the
#: network does worse on the parts than on the whole set (docs/experiments.md, "Design: the
#: component stage from d = 5, with a minimum part size and reassignment")
MIN_COMPONENT_SIZE = 192


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


@dataclass(frozen=True)
class FitConfig:
    """Every setting of :class:`~disco_score.discoformer.DiScoFormer` but its networks, validated on
    construction (``dataclasses.replace`` validates again). Frozen: change one with
    ``dataclasses.replace(config, field=value)``.

    Attributes:
        key_block: keys per attention block (memory is O(query_block x key_block x heads)).
        query_block: queries per forward pass.
        normalize: in d <= 2, divide the density by its integral over a grid (trapezoid rule in
            whitened coordinates, 1024 or 96 x 96 nodes over the sample range +- 4), so it
            integrates to 1 up to quadrature error. The network alone is normalised only
            approximately (its heads mix kernel estimates with learned, query-dependent weights).
        convolution_threshold: ``smoothed(sigma)`` returns the exact convolution of the samples with
            N(0, sigma^2 I) (a KDE with bandwidth sigma) from ``sigma >= convolution_threshold`` Scott
            bandwidths (``data_sd * n^(-1/(d+4))``) up, and the network refitted on a noised copy
            of the samples below. None (default): :data:`~disco_score.discoformer.SMOOTHED_CONVOLUTION_THRESHOLD`
            (1.5: the lowest score MSE against ``p * N(0, sigma^2 I)``), except in
            :func:`disco_score.samplers.annealed_langevin`, which uses
            :data:`disco_score.samplers.LANGEVIN_CONVOLUTION_THRESHOLD` (0.4).
        split_components: in ``d >= split_min_dim``, look for well-separated components first
            (:func:`disco_score.components.find_split`, rotation-equivariant projection pursuit) and,
            recursively, fit one network per component: ``fit`` then returns a
            :class:`~disco_score.discoformer.DiScoFormerMixture`. Whitening makes two distant
            components of a high-dimensional set nearly invisible to distances; fitted apart, each is easy.
        split_min_dim: the smallest dimension where components are looked for.
        split_gate: split only where the best two-way split leaves less than this fraction of the
            variance along its direction within the sides (Gaussian: 0.36; see
            :data:`disco_score.components.SPLIT_GATE`); in (0, 1).
        max_components: at most this many components (splits stop there).
        min_component_size: the fewest samples a component may have; at least ``2 (d + 1)``, enough
            to whiten it and estimate its covariance, whatever this says.
        reassign: after the cuts, move samples to the part whose Gaussian fit explains them best
            (:func:`disco_score.components.reassign_to_gaussians`), so a component a cut went
            through is made whole again.
        choose_network: where a specialist serves a part's (n, d), fit the part with whichever of
            it and the general network has the lower held-out Hyvärinen score-matching loss
            (:func:`disco_score.adaptation.heldout_hyvarinen`: no labels; cross-fitted on two
            interleaved halves, in whitened coordinates). Off: the specialist always serves. Why:
            the d = 10 specialist, trained on Gaussian mixtures only, is 2x better on them and up to
            5x worse on heavy tails and funnels (docs/experiments.md, "Choosing the network by held-out
            score matching").
        level_offsets: lower each found component's log-density by the network's mean error on one
            Gaussian of its size (:meth:`~disco_score.discoformer.DiScoFormer.unimodal_level_offset`;
            one extra, cached fit per size).
        envelopes: cap each found component's log-density far from its samples by an inflated
            Gaussian fit (:class:`disco_score.components.GaussianEnvelopes`), so that no part's
            tail takes the posterior in another component's region.
        blend: from :data:`~disco_score.blend.BLEND_MIN_N` samples up, blend the fit's score with that
            of a Gaussian mixture whose size BIC chooses (:func:`~disco_score.gaussian_mixture.bic_mixture`),
            the network's weight chosen by cross-fitted held-out score matching
            (:func:`~disco_score.blend.blend_weight`; :class:`~disco_score.blend.ScoreBlend`, or the fit
            itself where the weight is 1). Why: the mixture beats the network on mixtures of
            separated Gaussians and near-Gaussian posteriors, the network wins elsewhere, and the
            blend often beats both (docs/experiments.md, "Blending with a BIC mixture by held-out
            score matching").
        summary: distil the fit into a fixed-size Gaussian mixture
            (:class:`~disco_score.summary.MixtureSummary`, built by
            :func:`~disco_score.summary.distil` with these settings) and return that instead: a
            score step then costs ``m K d r`` whatever ``n``, and one summary serves every noise level
            of an annealed sampler exactly. ``True`` means ``SummaryConfig()``; None or False
            (default): the network itself. Its price, the held-out gap to the network, is
            :attr:`~disco_score.summary.MixtureSummary.teacher_gap` (docs/experiments.md,
            "Distilling the network into a fixed-size mixture").
    """

    key_block: int = 4096
    query_block: int = 1024
    normalize: bool = True
    convolution_threshold: float | None = None
    split_components: bool = True
    split_min_dim: int = SPLIT_MIN_DIM
    split_gate: float = SPLIT_GATE
    max_components: int = 8
    min_component_size: int = MIN_COMPONENT_SIZE
    reassign: bool = True
    choose_network: bool = True
    level_offsets: bool = True
    envelopes: bool = True
    blend: bool = True
    summary: SummaryConfig | None = None

    def __post_init__(self) -> None:
        checked = {
            "key_block": check_int(self.key_block, "key_block"),
            "query_block": check_int(self.query_block, "query_block"),
            "convolution_threshold": (None if self.convolution_threshold is None
                                      else check_positive(self.convolution_threshold, "convolution_threshold")),
            "split_min_dim": check_int(self.split_min_dim, "split_min_dim"),
            "split_gate": check_positive(self.split_gate, "split_gate"),
            "max_components": check_int(self.max_components, "max_components"),
            "min_component_size": check_int(self.min_component_size, "min_component_size", minimum=2),
        }
        if not checked["split_gate"] < 1:
            raise ValueError(f"split_gate must be below 1 (a fraction of variance); got {self.split_gate}")
        for name in ("normalize", "split_components", "reassign", "choose_network", "level_offsets", "envelopes",
                     "blend"):
            checked[name] = _check_bool(getattr(self, name), name)
        summary = self.summary
        if isinstance(summary, (bool, np.bool_)):
            summary = SummaryConfig() if summary else None
        if summary is not None and not isinstance(summary, SummaryConfig):
            raise TypeError(f"summary must be a SummaryConfig, a bool or None, got {type(summary).__name__}")
        checked["summary"] = summary
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_overrides(cls, config: "FitConfig | None" = None, **overrides: object) -> "FitConfig":
        """``config`` (default: the defaults) with some fields replaced; TypeError naming any
        keyword that is not a field."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown DiScoFormer setting(s) {unknown}; the settings are the FitConfig "
                            f"fields {sorted(names)}")
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
        return dataclasses.replace(config if config is not None else cls(), **overrides)

    def min_part_size(self, d: int) -> int:
        """The fewest samples a component may have in ``d`` dimensions: ``min_component_size``, and
        at least 2 (d + 1) so that each side can be whitened and its covariance estimated."""
        return max(2 * (d + 1), self.min_component_size)


def find_components(samples: torch.Tensor, whitening: Whitening, config: FitConfig) -> list[torch.Tensor]:
    """The sample set (n, d) cut into the components ``fit`` models separately: one part if none is
    found or ``config`` switches the search off.

    Why: whitening makes two distant components of a high-dimensional set nearly invisible to a
    network built on distances; fitted apart, each is easy (docs/experiments.md, "Design: a
    component-finding stage before the network"). The cuts are found breadth-first and recursively
    (:func:`_cut`), then made whole again by reassignment if ``config.reassign``.
    """
    n, d = samples.shape
    min_size = config.min_part_size(d)
    if not config.split_components or d < config.split_min_dim or n < 2 * min_size:
        return [samples]
    z_all = whitening.forward(samples.to(torch.float64))
    found = _cut(samples, z_all, whitening, min_size, config)
    if len(found) == 1:
        return [samples]
    labels = torch.empty(n, dtype=torch.long, device=samples.device)
    for j, idx in enumerate(found):
        labels[idx] = j
    if config.reassign:
        labels = _reassigned(samples, z_all, labels, min_size, len(found))
    return [samples[labels == j] for j in range(len(found))]


def _cut(samples: torch.Tensor, z_all: torch.Tensor, whitening: Whitening, min_size: int,
         config: FitConfig) -> list[torch.Tensor]:
    """Index sets of the parts found by recursive two-way splits (:func:`~disco_score.components.find_split`),
    at most ``config.max_components``; a part is kept whole where no split passes the gate or a
    side would not span R^d."""
    n = samples.shape[0]
    # index sets, each with its whitening (computed once: it also checks the part spans R^d)
    parts, done = [(torch.arange(n, device=samples.device), whitening)], []
    while parts and len(parts) + len(done) < config.max_components:
        idx, white = parts.pop(0)
        z = z_all if len(idx) == n else white.forward(samples[idx].to(torch.float64))
        split = find_split(z, min_size, config.split_gate)
        sides = [] if split is None else [idx[split.lower], idx[~split.lower]]
        whitenings = [_whitening_or_none(samples[side]) for side in sides]
        if split is None or None in whitenings:
            done.append((idx, white))  # no components, or one would lie in a subspace: fit the part whole
            continue
        logger.info("component split: %d / %d samples, within-split variance %.3f",
                    int(split.lower.sum()), int((~split.lower).sum()), split.within_fraction)
        parts += list(zip(sides, whitenings))
    return [idx for idx, _ in done + parts]


def _reassigned(samples: torch.Tensor, z_all: torch.Tensor, labels: torch.Tensor, min_size: int,
                k: int) -> torch.Tensor:
    """``labels`` after moving samples to the part whose Gaussian fit explains them best
    (:func:`~disco_score.components.reassign_to_gaussians`), so that a component a hyperplane cut
    went through is whole again; unchanged if a part would then not span R^d."""
    moved = reassign_to_gaussians(z_all, labels, min_size)
    if all(_whitening_or_none(samples[moved == j]) is not None for j in range(k)):
        return moved
    return labels


def _whitening_or_none(part: torch.Tensor) -> Whitening | None:
    """The whitening of a part (n, d), or None if it does not span all d dimensions (so it cannot
    be fitted on its own)."""
    try:
        return Whitening.from_samples(part)
    except ValueError:
        return None
