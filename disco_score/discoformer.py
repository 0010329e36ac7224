"""DiScoFormer as an estimator: the pretrained network behind the common Oracle interface.

``DiScoFormer.pretrained()`` loads the weights shipped in ``disco_score/weights`` (safetensors,
verified against the SHA-256 recorded beside them; no network access). ``fit(samples)`` whitens the
samples (exact affine equivariance), runs the sample encoder once and returns an immutable
:class:`DiScoFormerOracle`; queries then cost one cross-attention pass. Its settings live in one
:class:`~disco_score.fit_stages.FitConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import json
import math
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .adaptation import (DEFAULT_LR, OBJECTIVES, Objective, default_objective, defensive_proposal, heldout_hyvarinen,
                         heldout_nll, score_matching_and_consistency)
from ._checks import ArrayLike, as_samples, check_int, check_positive, check_squarable
from .base import Estimator, Oracle, grid_log_integral, with_autograd
from .blend import BLEND_MIN_N, ScoreBlend, blend_weight
from .components import GaussianEnvelopes, interleaved_subsets
from .gaussian_mixture import bic_mixture
from .fit_stages import MIN_COMPONENT_SIZE, SPLIT_MIN_DIM, FitConfig, find_components
from .geometric_net import DiScoFormerNet
from .kde import KDEOracle
from .model import DensityNet
from .net_blocks import EncodedSamples
from .set_transformer_net import SetTransformerNet
from .summary import MixtureSummary, distil, teacher_subset
from .weights_io import WEIGHTS_DIR, WEIGHTS_NAME, Specialist, load_specialists, load_weights
from .whitening import Whitening, scott_factor

__all__ = ["DiScoFormer", "DiScoFormerOracle", "DiScoFormerAverage", "DiScoFormerMixture", "FitConfig",
           "MIN_COMPONENT_SIZE", "SPLIT_MIN_DIM", "SMOOTHED_CONVOLUTION_THRESHOLD"]

#: ``smoothed(sigma)`` is the exact convolution of the samples from this many Scott bandwidths up
#: (the refitted network below): the score-MSE optimum per noise level
#: (docs/experiments.md, "Noise-conditional score of DiScoFormer: what `smoothed(σ)` should do")
SMOOTHED_CONVOLUTION_THRESHOLD = 1.5
#: queries further than this from the samples' mean (in whitened units, i.e. data standard
#: deviations) are refused: the network's float32 Gram features of its curvature channels
#: (~ radius^6) overflow beyond ~1e6
MAX_WHITENED_RADIUS = 1e6
#: the largest learning rate ``adapt`` accepts: its parameters are log-bandwidths and gate
#: biases, which a step above 1 throws out of the range the network was trained on
MAX_ADAPT_LR = 1.0
logger = logging.getLogger(__name__)
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(FitConfig))


class DiScoFormer(Estimator):
    """The pretrained density-and-score transformer.

    ``fit`` runs named steps: find components (:meth:`components`), choose each part's network
    (:meth:`serving_network`), fit each part (:meth:`_fit_part`, on interleaved subsets where a
    specialist asks for them), then, where
    several components were found, weigh them (:meth:`_log_weights`, with the level offsets) and cap
    them (:meth:`_envelopes`); blend the fit's score with a BIC Gaussian mixture's (:meth:`_blend`); where
    ``config.summary`` asks for it, distil the fit into a fixed-size
    mixture, the sampler's fast path (:meth:`_summarize`). Each step's switch and knobs are fields
    of :attr:`config`.

    Args:
        net: the general network, a :class:`~disco_score.geometric_net.DiScoFormerNet` serving every d
            (default: the packaged weights).
        specialists: dimension-specific networks, used instead of ``net`` where they serve (see
            :class:`Specialist`). None: the packaged ones when ``net`` is None, else none.
        config: the settings (:class:`~disco_score.fit_stages.FitConfig`; default: its defaults).
        **overrides: FitConfig fields replacing those of ``config``, e.g.
            ``DiScoFormer.pretrained(split_components=False)``.

    Attributes:
        config: the :class:`~disco_score.fit_stages.FitConfig` in force (the one place to read a
            setting; ``dataclasses.replace(estimator.config, ...)`` makes a variant to pass back in).
        net: the general network.
        specialists: the specialists, a tuple.

    Example:
        >>> import numpy as np
        >>> from disco_score import DiScoFormer
        >>> x = np.random.default_rng(0).normal(size=(500, 2))
        >>> oracle = DiScoFormer.pretrained().fit(x)
        >>> oracle.score(np.zeros((3, 2))).shape
        (3, 2)
        >>> DiScoFormer.pretrained(envelopes=False).config.envelopes
        False
    """

    def __init__(self, net: DensityNet | None = None, *, specialists: Sequence[Specialist] | None = None,
                 config: FitConfig | None = None, **overrides: Any) -> None:
        self.config = FitConfig.from_overrides(config, **overrides)
        if net is not None and not isinstance(net, (DiScoFormerNet, SetTransformerNet)):
            raise ValueError(f"net must be a DiScoFormerNet or SetTransformerNet (or None for the packaged "
                             f"weights); got {type(net).__name__}")
        if specialists is None:
            specialists = load_specialists() if net is None else ()
        specialists = tuple(specialists)
        if not all(isinstance(sp, Specialist) for sp in specialists):
            raise ValueError("specialists must be a sequence of Specialist")
        self.net = net if net is not None else load_weights()[0]
        dims = [sp.dim for sp in specialists]
        if len(set(dims)) != len(dims):
            raise ValueError(f"specialists: at most one per dimension, got dimensions {dims}")
        self.specialists = tuple(specialists)
        # a memo, not configuration: (n, d, id(net)) -> nats (see unimodal_level_offset)
        self._level_offset_cache: dict[tuple[int, int, int], float] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CONFIG_FIELDS:  # a setting assigned here would be silently ignored
            raise AttributeError(f"{name} is a FitConfig field: set estimator.config = "
                                 f"dataclasses.replace(estimator.config, {name}=...)")
        if name == "config" and not isinstance(value, FitConfig):
            raise TypeError(f"config must be a FitConfig, got {type(value).__name__}")
        object.__setattr__(self, name, value)

    @classmethod
    def pretrained(cls, weights_dir: str | Path | None = None, **kwargs: Any) -> "DiScoFormer":
        """The checkpoint shipped in the package (hash-verified), or one from ``weights_dir``;
        ``kwargs`` as for the constructor (``specialists``, ``config``, FitConfig fields)."""
        directory = Path(weights_dir) if weights_dir else WEIGHTS_DIR
        net, _ = load_weights(directory)
        kwargs.setdefault("specialists", load_specialists(directory))
        return cls(net, **kwargs)

    @staticmethod
    def model_card(weights_dir: str | Path | None = None) -> dict:
        """The JSON stored beside the weights (config, SHA-256, training metadata)."""
        return json.loads((Path(weights_dir or WEIGHTS_DIR) / f"{WEIGHTS_NAME}.json").read_text())

    def fit(self, samples: ArrayLike
            ) -> "DiScoFormerOracle | DiScoFormerAverage | DiScoFormerMixture | ScoreBlend | MixtureSummary":
        """Condition on ``samples`` (n, d): whiten them and run the sample encoder once (per
        component, where components are found; see :class:`~disco_score.fit_stages.FitConfig`).

        Returns an immutable :class:`DiScoFormerOracle`; a :class:`DiScoFormerAverage` of them for
        a set larger than its specialist's ``bag_size``; or a :class:`DiScoFormerMixture` of those,
        one per component (in the samples' dtype and on their device); any of these blended with a
        BIC Gaussian mixture, a :class:`~disco_score.blend.ScoreBlend`, where held-out score matching
        gives the mixture weight. All answer the same :class:`~disco_score.base.Oracle` interface,
        ``adapt`` and ``with_convolution_threshold`` included. With ``config.summary`` set, the fit distilled into a
        :class:`~disco_score.summary.MixtureSummary` instead (a plain Oracle). Raises ValueError if the samples are invalid, have no spread or are rank-deficient.
        """
        x = as_samples(samples)
        summary = self.config.summary
        teacher = x if summary is None else teacher_subset(x, summary)
        fit = self._blend(self._fit_network(teacher), teacher)
        return fit if summary is None else self._summarize(fit, x)

    def _fit_network(self, x: torch.Tensor) -> "DiScoFormerOracle | DiScoFormerAverage | DiScoFormerMixture":
        """Steps 1-5 on validated samples (n, d): the network fit, or the mixture of its parts."""
        whitening = Whitening.from_samples(x)  # validates the whole set before any cutting
        parts = self.components(x, whitening)
        nets = [self.serving_network(part) for part in parts]
        bags = [self._bags(part, net) for part, net in zip(parts, nets)]
        if len(parts) == 1:
            return self._fit_part(x, bags[0], nets[0], whitening)
        fits = [self._fit_part(part, part_bags, net) for part, part_bags, net in zip(parts, bags, nets)]
        log_weights = self._log_weights(parts, bags, nets)
        scale = _envelope_scale(x)
        return DiScoFormerMixture(self, x, fits, log_weights, self._envelopes(parts, fits, scale), scale)

    def components(self, samples: torch.Tensor, whitening: Whitening | None = None) -> list[torch.Tensor]:
        """Step 1: the sample set (n, d) cut into the components ``fit`` models separately
        (:func:`~disco_score.fit_stages.find_components`; one part if none is found or
        ``config.split_components`` is off)."""
        return find_components(samples, whitening if whitening is not None else Whitening.from_samples(samples),
                               self.config)

    def serving_network(self, part: torch.Tensor) -> DensityNet:
        """Step 2: the network that fits ``part`` (n, d). Where a specialist serves its size, it and
        the general network compete by cross-fitted held-out score matching in whitened
        coordinates (:func:`~disco_score.adaptation.heldout_hyvarinen`; so the choice is
        affine-invariant and needs no labels), unless ``config.choose_network`` is off."""
        candidate = self.net_for(*part.shape)
        if candidate is self.net or not self.config.choose_network:
            return candidate
        z = Whitening.from_samples(part).forward(part.to(torch.float64))
        losses = [heldout_hyvarinen(functools.partial(DiScoFormerOracle, self, net=net), z)
                  for net in (candidate, self.net)]
        logger.info("network choice at n=%d, d=%d: held-out score matching %.4g (specialist) vs %.4g (general)",
                    part.shape[0], part.shape[1], *losses)
        return candidate if losses[0] <= losses[1] else self.net

    def _bags(self, part: torch.Tensor, net: DensityNet) -> list[torch.Tensor]:
        """Step 3a: ``part`` (n, d) as the interleaved subsets ``net`` is fitted on: a specialist's
        ``bag_size`` (see :class:`Specialist`), else ``[part]``."""
        specialist = next((sp for sp in self.specialists if sp.net is net), None)
        if specialist is None or specialist.bag_size is None or part.shape[0] <= specialist.bag_size:
            return [part]
        # every subset at most the trained n: a found component above it, fitted whole, got worse with
        # more samples (docs/experiments.md, "Design: the component stage from d = 5, with a minimum
        # part size and reassignment")
        z = Whitening.from_samples(part).forward(part.to(torch.float64))
        return [part[idx] for idx in interleaved_subsets(z, -(-part.shape[0] // specialist.bag_size))]

    def _fit_part(self, part: torch.Tensor, bags: Sequence[torch.Tensor], net: DensityNet,
                  whitening: Whitening | None = None) -> "DiScoFormerOracle | DiScoFormerAverage":
        """Step 3b: one fit of ``part`` (n, d) by ``net``, or, for several ``bags`` (its subsets), the
        average in log-density of their fits (:class:`DiScoFormerAverage`: why not a mixture)."""
        if len(bags) == 1:
            return DiScoFormerOracle(self, part, net, whitening)
        counts = torch.tensor([float(b.shape[0]) for b in bags], dtype=torch.float64, device=part.device)
        return DiScoFormerAverage(self, part, [DiScoFormerOracle(self, b, net) for b in bags],
                                  torch.log(counts / counts.sum()))

    def _log_weights(self, parts: Sequence[torch.Tensor], bags: Sequence[Sequence[torch.Tensor]],
                     nets: Sequence[DensityNet]) -> torch.Tensor:
        """Step 4: the components' log mixture weights: their shares of the samples, each lowered
        (if ``config.level_offsets``) by its fit's level error on one Gaussian, the mean over its
        subsets weighted by their sizes (a subset average's level is its subsets' mean level)."""
        device = parts[0].device
        counts = torch.tensor([float(part.shape[0]) for part in parts], dtype=torch.float64, device=device)
        log_shares = torch.log(counts / counts.sum())
        if not self.config.level_offsets:
            return log_shares
        offsets = torch.tensor([sum(float(b.shape[0]) * self.unimodal_level_offset(*b.shape, net) for b in part_bags)
                                / float(part.shape[0]) for part, part_bags, net in zip(parts, bags, nets)],
                               dtype=torch.float64, device=device)
        return log_shares - offsets

    def unimodal_level_offset(self, n: int, d: int, net: DensityNet | None = None) -> float:
        """Mean error (nats) of the log-density ``net`` (default: :meth:`net_for`) gives a Gaussian: fitted on n
        standard-normal samples in d dimensions, evaluated at 1024 fresh draws (seeded; cached).

        Why: trained on the GMM prior, where most sets have several components, the network sets
        the level of its log-density for those; on one component it is too high (docs/experiments.md,
        "The components' log-density level"). A found component is one such set, so its
        log-density is lowered by this offset. It depends on (n, d) and the network only, so the fit
        stays exactly equivariant. The first call per (n, d) runs one extra network fit.
        """
        net = self.net_for(n, d) if net is None else net
        key = (n, d, id(net))
        cache = self._level_offset_cache
        if key not in cache:
            gen = torch.Generator().manual_seed(derive_level_seed(n, d))
            x = torch.randn(n, d, generator=gen, dtype=torch.float64)
            y = torch.randn(1024, d, generator=gen, dtype=torch.float64)
            truth = -0.5 * (y ** 2).sum(1) - 0.5 * d * math.log(2 * math.pi)
            oracle = DiScoFormerOracle(self, x, net)
            cache[key] = float((oracle.log_density(y) - truth).mean())
        return cache[key]


    def _envelopes(self, parts: Sequence[torch.Tensor], fits: Sequence[Oracle], scale: float
                   ) -> GaussianEnvelopes | None:
        """Step 5: each component's Gaussian envelope (:class:`~disco_score.components.GaussianEnvelopes`),
        in coordinates ``x / scale``, or None if ``config.envelopes`` is off. Why: a part's network
        can put density far from its samples, in another component's region, and take the
        posterior there."""
        if not self.config.envelopes:
            return None
        return GaussianEnvelopes.from_parts([part / scale for part in parts],
                                            [functools.partial(_log_density_scaled, fit, scale) for fit in fits])

    def _blend(self, fit: "DiScoFormerOracle | DiScoFormerAverage | DiScoFormerMixture", x: torch.Tensor
               ) -> "DiScoFormerOracle | DiScoFormerAverage | DiScoFormerMixture | ScoreBlend":
        """Step 6: ``fit`` of ``x`` (n, d) blended with a BIC Gaussian mixture of ``x``, the network's weight by
        cross-fitted held-out score matching on whitened halves (:func:`~disco_score.blend.blend_weight`;
        steps 1-5 fitted on each half); ``fit`` itself where the weight is 1, ``config.blend`` is off
        or n is below :data:`~disco_score.blend.BLEND_MIN_N`."""
        if not self.config.blend or x.shape[0] < BLEND_MIN_N:
            return fit
        whitening = Whitening.from_samples(x)
        z = whitening.forward(x.to(torch.float64))
        mixture = bic_mixture(z)  # in whitened coordinates, whatever the data's scale
        size = [int(mixture.weights.shape[-1])]  # the halves' mixtures take its size: one BIC search, not three
        weight = blend_weight(self._fit_network, functools.partial(bic_mixture, sizes=size), z)
        logger.info("blend at n=%d, d=%d: the network's weight %.3g (mixture of %d)", *x.shape, weight, size[0])
        if weight >= 1.0:
            return fit
        extent = torch.stack([z.min(0).values, z.max(0).values])
        return ScoreBlend(fit, mixture, weight, whitening, extent, self.config.normalize)

    def _summarize(self, fit: Oracle, samples: torch.Tensor) -> MixtureSummary:
        """Step 7: the fit distilled into a fixed-size mixture (:func:`~disco_score.summary.distil`,
        with ``config.summary``), built from all of ``samples``."""
        assert self.config.summary is not None
        return distil(fit, samples, self.config.summary)

    def net_for(self, n: int, d: int) -> DensityNet:
        """The candidate network for ``n`` samples in ``d`` dimensions: a specialist where one serves
        that size, else the general net (:meth:`serving_network` makes the choice on the data)."""
        specialist = self._specialist_for(n, d)
        return self.net if specialist is None else specialist.net

    def _specialist_for(self, n: int, d: int) -> Specialist | None:
        for sp in self.specialists:
            if sp.dim == d and (sp.max_n is None or n <= sp.max_n):
                return sp
        return None

    def __repr__(self) -> str:
        dims = f", specialists for d={[sp.dim for sp in self.specialists]}" if self.specialists else ""
        return (f"DiScoFormer(params={sum(p.numel() for p in self.net.parameters())}, "
                f"key_block={self.config.key_block}{dims})")


def _envelope_scale(x: torch.Tensor) -> float:
    """A power of two near the data's scale, the unit of the envelopes: exact for ordinary data, and
    their covariances stay in float64's range for data near 1e200 or 1e-200."""
    return 2.0 ** round(math.log2(_data_sd(x.to(torch.float64))))


def _log_density_scaled(fit: Oracle, scale: float, q: torch.Tensor) -> torch.Tensor:
    """``fit``'s log-density in the coordinates ``q = x / scale`` (a density per unit of q)."""
    return fit.log_density(q * scale) + q.shape[1] * math.log(scale)


def _data_sd(x: torch.Tensor) -> float:
    """sqrt(trace(cov) / d) of float64 samples (n, d), scaled first so that data near 1e200 do not
    overflow the variance."""
    centred = x - x.mean(0)
    scale = float(centred.abs().max())
    if scale == 0:
        return 0.0
    return scale * math.sqrt(float((centred / scale).var(0).sum()) / x.shape[1])


class _Convolution(KDEOracle):
    """A DiScoFormer fit smoothed past its convolution threshold: the exact convolution of its
    samples with N(0, sigma^2 I) (a KDE), which has no network to adapt."""

    def adapt(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: call ``adapt`` on the unsmoothed fit, then smooth the adapted oracle."""
        raise TypeError("adapt needs a network fit; this oracle is smoothed past the switch to the exact "
                        "convolution of the samples (a KDE). Call adapt() on the unsmoothed fit, then smoothed()")

    def with_convolution_threshold(self, threshold: float) -> Any:
        """Refused, as :meth:`adapt`."""
        raise TypeError("with_convolution_threshold needs a network fit; this oracle is already the exact "
                        "convolution of the samples (call it on the unsmoothed fit)")

    def _smoothed(self, sigma: float) -> "_Convolution":
        k = super()._smoothed(sigma)  # smoothed again: still a convolution, still no adapt
        return _Convolution(k.samples, k.kernel_covariance, k.bandwidth, k.log_weights)


_NETS_ON_DEVICES: "weakref.WeakKeyDictionary[DensityNet, dict[torch.device, DensityNet]]" = weakref.WeakKeyDictionary()


def _net_on(net: DensityNet, device: torch.device) -> DensityNet:
    """``net`` itself if it lives on ``device``, else its copy there (made once per device and kept
    while ``net`` lives): samples on a GPU are encoded and queried on that GPU."""
    if next(net.parameters()).device == device:
        return net
    copies = _NETS_ON_DEVICES.setdefault(net, {})
    if device not in copies:
        copies[device] = copy.deepcopy(net).to(device)
    return copies[device]


def _net_dtype(net: DensityNet) -> torch.dtype:
    """The dtype of a network's parameters (what its inputs must be cast to)."""
    return next(net.parameters()).dtype


class DiScoFormerOracle(Oracle):
    """A sample set encoded by DiScoFormer. Immutable; ``adapt`` returns a new oracle.

    Attributes:
        samples: (n, d) the fitted samples (torch, the caller's dtype).
        whitening: the affine map to standard position.
    """

    def __init__(self, estimator: DiScoFormer, samples: torch.Tensor, net: DensityNet,
                 whitening: Whitening | None = None) -> None:
        self.estimator = estimator
        # own copy: validated samples may be views of the caller's array, and the oracle is immutable
        self.samples = samples.clone()
        self.dim = int(samples.shape[1])
        self.compute_dtype = samples.dtype
        self.device = samples.device
        self.whitening = whitening if whitening is not None else Whitening.from_samples(samples)
        self._net = _net_on(net, samples.device)
        z = self._whitened(self.samples)[None]
        with torch.no_grad():
            self._encoded: EncodedSamples = net.encode(z, key_block=estimator.config.key_block)
        self._log_normalizer: float | None = None  # computed on the first log-density request
        self._convolution_threshold = (SMOOTHED_CONVOLUTION_THRESHOLD if estimator.config.convolution_threshold is None
                                       else estimator.config.convolution_threshold)
        self._freeze()

    @property
    def net_dtype(self) -> torch.dtype:
        """The dtype the network computes in (its parameters'; float32 for the packaged weights)."""
        return _net_dtype(self._net)

    def _whitened(self, y: torch.Tensor) -> torch.Tensor:
        """Points (m, d) -> whitened, in the network's dtype; ValueError for points so far from the
        samples that the network's arithmetic would overflow."""
        z = self.whitening.forward(y.to(torch.float64))
        if z.shape[0]:
            top = float(z.abs().max())  # bounds the radius within sqrt(d), without squaring 1e200s
            if not top * math.sqrt(self.dim) <= MAX_WHITENED_RADIUS \
                    and not float(z.norm(dim=1).max()) <= MAX_WHITENED_RADIUS:
                raise ValueError(f"x has points more than {MAX_WHITENED_RADIUS:.0e} data standard deviations "
                                 f"(Mahalanobis) from the samples' mean (up to {top:.3g} along an axis); beyond "
                                 f"that DiScoFormer's {self.net_dtype} arithmetic overflows")
        return z.to(self.net_dtype)

    def with_convolution_threshold(self, threshold: float) -> "DiScoFormerOracle":
        """The same fit (shared encoding, nothing recomputed) whose ``smoothed(sigma)`` switches to
        the exact convolution of the samples from ``threshold`` Scott bandwidths up."""
        new = copy.copy(self)
        object.__setattr__(new, "_convolution_threshold", check_positive(threshold, "threshold"))
        return new

    def with_default_convolution_threshold(self, threshold: float) -> "DiScoFormerOracle":
        """:meth:`with_convolution_threshold` unless the estimator fixed ``convolution_threshold``."""
        return self if self.estimator.config.convolution_threshold is not None else self.with_convolution_threshold(threshold)

    @property
    def log_normalizer(self) -> float:
        """log of the grid integral divided out in d <= 2 (0 otherwise); computed once, lazily,
        because score-only users (samplers, particle solvers) never need it."""
        if self._log_normalizer is None:
            value = 0.0
            if self.estimator.config.normalize and self.dim <= 2:
                value = self._grid_log_normalizer(self._whitened(self.samples))
            object.__setattr__(self, "_log_normalizer", value)
        assert self._log_normalizer is not None
        return self._log_normalizer

    def score(self, x: ArrayLike) -> Any:
        """Score at ``x`` (m, d) -> (m, d); skips the log-density normaliser (a constant)."""
        q = self._queries(x)
        with torch.no_grad():
            _, score = self._evaluate(q.points, want_log_density=False)
        assert score is not None
        return q.restore(score.to(q.points.dtype))

    def _grid_log_normalizer(self, z: torch.Tensor) -> float:
        """log of the integral of the network's density over a grid covering the samples +- 4."""
        def log_density(nodes: torch.Tensor) -> torch.Tensor:  # the network gets its own dtype
            return self._query(nodes.to(self.net_dtype))[0]

        return grid_log_integral(log_density, z)

    def _query(self, y: torch.Tensor, net: DensityNet | None = None, grad: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened queries (m, d) in the network's dtype -> whitened (log-density (m,), score (m, d))."""
        net = net or self._net
        if y.shape[0] == 0:  # no queries: empty results (torch.cat of nothing would fail)
            return y.new_zeros((0,)), y.new_zeros((0, y.shape[1]))
        outs_l, outs_s = [], []
        step = self.estimator.config.query_block
        with torch.set_grad_enabled(grad):
            for i0 in range(0, y.shape[0], step):
                lp, sc = net.query(self._encoded, y[None, i0:i0 + step], key_block=self.estimator.config.key_block)
                outs_l.append(lp[0])
                outs_s.append(sc[0])
        return torch.cat(outs_l), torch.cat(outs_s)

    def _evaluate(self, y: torch.Tensor, want_log_density: bool = True, want_score: bool = True,
                  normalized: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The one data path of every output: points (m, d) -> whitened -> the encoded samples
        queried -> back to the points' coordinates (float64 log-density, less the grid normaliser,
        and score; None where not wanted). FloatingPointError if the network's values are not finite."""
        lp, sc = self._query(self._whitened(y))
        log_p = score = None
        if want_log_density:  # (an empty query set needs no normaliser: skip its grid evaluation)
            offset = self.log_normalizer if normalized and y.shape[0] else 0.0
            log_p = self.whitening.log_density_out(lp.to(torch.float64)) - offset
        if want_score:
            score = self.whitening.score_out(sc.to(torch.float64))
        if any(t is not None and not bool(torch.isfinite(t).all()) for t in (log_p, score)):
            raise FloatingPointError("DiScoFormer produced non-finite values; the queries may be far outside "
                                     "the float32 range of the whitened samples")
        return log_p, score

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._log_density_and_score_in(y, want_score, normalized=True)

    def _unnormalized_log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._log_density_and_score_in(y, want_score, normalized=False)

    def _log_density_and_score_in(self, y: torch.Tensor, want_score: bool, normalized: bool
                                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_evaluate` in the queries' dtype."""
        log_p, score = self._evaluate(y, want_score=want_score, normalized=normalized)
        assert log_p is not None
        return log_p.to(y.dtype), None if score is None else score.to(y.dtype)

    def _smoothed(self, sigma: float) -> Oracle:
        # Two regimes. From the threshold up, the samples convolved with N(0, sigma^2 I) (a KDE of
        # kernel sigma^2 I, exact to evaluate) estimate p * N(0, sigma^2 I) better than a refit; below
        # it, the network refitted on one noised copy of the samples (a sample of the convolved law)
        # keeps its smoothing, so samplers do not copy the data. The default switch is the score-MSE
        # optimum; annealed Langevin asks for a lower one (samplers.LANGEVIN_CONVOLUTION_THRESHOLD).
        # One copy, because several make near-duplicate pairs the network reads as tight clusters
        # (docs/experiments.md, "Noise-conditional score of DiScoFormer: what `smoothed(σ)` should do").
        n = self.samples.shape[0]
        x = self.samples.to(torch.float64)
        data_sd = _data_sd(x)
        if sigma >= self._convolution_threshold * data_sd * scott_factor(n, self.dim):
            check_squarable(sigma, "sigma")
            kernel = sigma ** 2 * torch.eye(self.dim, dtype=torch.float64, device=x.device)
            return _Convolution(self.samples, kernel, sigma / data_sd)
        # seeded (repeatable); math.fmod keeps a huge sigma from overflowing int()
        seed = 1e6 * sigma
        gen = torch.Generator().manual_seed(int(math.fmod(seed, 2.0 ** 31)) if math.isfinite(seed)
                                            else hash(sigma) % (2 ** 31))
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device)
        return DiScoFormerOracle(self.estimator, (x + sigma * noise).to(self.samples.dtype), self._net)

    @with_autograd
    def adapt(self, steps: int = 16, lr: float | None = None, n_queries: int = 256, seed: int = 0,
              objective: Objective | None = None, n_proposal: int = 512) -> "DiScoFormerOracle":
        """Test-time adaptation with no labels; returns a new oracle, the shipped weights never change.

        ``steps`` Adam steps (learning rate ``lr``) on a copy of the query side's bandwidth factors
        and mixture biases (:meth:`~disco_score.geometric_net.DiScoFormerNet.temperature_parameters`), with
        the samples fixed. The loss is cross-fitted over two random halves of the samples (encode one
        half, score it at up to ``n_queries`` points of the other); ``objective``
        (:mod:`disco_score.adaptation`):

        * ``"likelihood"``: held-out negative log-likelihood, its normaliser estimated by
          defensive importance sampling with ``n_proposal`` draws per half;
        * ``"score_matching"``: held-out Hyvärinen score matching ``mean(|S|^2 / 2 + div S)`` plus the
          consistency loss between the score head and the gradient of the log-density head.

        ``None`` takes :func:`~disco_score.adaptation.default_objective`: the network's own
        (``adaptation_objective``: likelihood for the general network, whose knobs are bandwidths;
        score matching for a specialist, whose knobs are output biases that a normalised likelihood
        cannot see) up to d = 2, score matching above (where 512 importance draws no longer pin the
        normaliser down), and its learning rate (:data:`~disco_score.adaptation.DEFAULT_LR`).
        """
        objective = default_objective(self._net.adaptation_objective, self.dim) if objective is None else objective
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
        n_proposal = check_int(n_proposal, "n_proposal")
        steps = check_int(steps, "steps", minimum=0)
        lr = check_positive(DEFAULT_LR[objective] if lr is None else lr, "lr")
        if lr > MAX_ADAPT_LR:
            raise ValueError(f"lr must be at most {MAX_ADAPT_LR} (adapt moves log-bandwidths and gate biases; "
                             f"larger steps leave the range the network was trained on); got {lr}")
        n_queries = check_int(n_queries, "n_queries")
        seed = check_int(seed, "seed", minimum=0)
        n = self.samples.shape[0]
        if steps and n < 8:
            raise ValueError(f"adapt needs at least 8 samples (two halves to cross-fit); got {n}")
        net = copy.deepcopy(self._net)
        params = net.temperature_parameters()
        opt = torch.optim.Adam(params, lr=lr)
        z = self._whitened(self.samples)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=gen)
        halves = (perm[: n // 2], perm[n // 2:])
        for p in params:
            p.requires_grad_(True)
        with torch.no_grad():
            encoded = [net.encode(z[h][None], key_block=self.estimator.config.key_block) for h in halves]
        # fixed draws across steps: the same estimate of log Z is differentiated every step
        proposals = [defensive_proposal(z[h], n_proposal, gen) for h in halves]
        for _ in range(steps):
            loss = z.new_zeros((), dtype=torch.float64)
            for enc, proposal, held in zip(encoded, proposals, reversed(halves)):
                y = z[held[:n_queries]][None].clone()
                if objective == "likelihood":
                    loss = loss + heldout_nll(net, enc, y, proposal)
                else:
                    loss = loss + score_matching_and_consistency(net, enc, y.requires_grad_(True), gen)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"adapt: the loss became non-finite ({float(loss.detach())}) at lr={lr}; "
                                         f"use a smaller lr or fewer steps")
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p in net.parameters():
            p.requires_grad_(False)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise FloatingPointError(f"adapt: the adapted parameters became non-finite at lr={lr}; "
                                     f"use a smaller lr or fewer steps")
        new = copy.copy(self)
        object.__setattr__(new, "_net", net)
        object.__setattr__(new, "_log_normalizer", None)  # the adapted net has its own constant
        with torch.no_grad():  # an update can stay finite yet break the network: try it on the samples
            lp, sc = new._query(z[: min(n, 256)])
        if not (bool(torch.isfinite(lp).all()) and bool(torch.isfinite(sc).all())):
            raise FloatingPointError(f"adapt: the adapted network gives non-finite values at its own samples "
                                     f"(lr={lr}, steps={steps}); use a smaller lr or fewer steps")
        return new

    def __repr__(self) -> str:
        return f"DiScoFormerOracle(n={self.samples.shape[0]}, d={self.dim})"


class _FitParts(Oracle):
    """Shared by the two ways ``fit`` combines fits of parts of a sample set (immutable)."""

    def __init__(self, estimator: DiScoFormer, samples: torch.Tensor, components: Sequence[Oracle],
                 log_weights: torch.Tensor) -> None:
        self.estimator = estimator
        self.samples = samples.clone()  # own copy (the caller's array may change; see DiScoFormerOracle)
        self.dim = int(samples.shape[1])
        self.compute_dtype = samples.dtype
        self.device = samples.device
        self.components = tuple(components)
        self.log_weights = log_weights.to(torch.float64)
        self._freeze()

    def _with_components(self, components: Sequence[Oracle]) -> Any:
        return type(self)(self.estimator, self.samples, components, self.log_weights)

    def _smoothed(self, sigma: float) -> Oracle:
        return self._with_components([c.smoothed(sigma) for c in self.components])

    def _networks(self, method: str) -> list[Any]:
        if not all(isinstance(c, (DiScoFormerOracle, _FitParts)) for c in self.components):
            raise TypeError(f"{method} needs network components; this fit is smoothed past the switch "
                            "to exact convolutions (call it on the unsmoothed fit)")
        return list(self.components)

    def with_convolution_threshold(self, threshold: float) -> Any:
        """Every part with :meth:`DiScoFormerOracle.with_convolution_threshold`."""
        return self._with_components([c.with_convolution_threshold(threshold)
                                      for c in self._networks("with_convolution_threshold")])

    def with_default_convolution_threshold(self, threshold: float) -> Any:
        """:meth:`with_convolution_threshold` unless the estimator fixed ``convolution_threshold``."""
        return self if self.estimator.config.convolution_threshold is not None else self.with_convolution_threshold(threshold)

    def adapt(self, steps: int = 16, lr: float | None = None, n_queries: int = 256, seed: int = 0,
              objective: Objective | None = None, n_proposal: int = 512) -> Any:
        """:meth:`DiScoFormerOracle.adapt` on every part (each on its own samples)."""
        return self._with_components([c.adapt(steps, lr, n_queries, seed, objective, n_proposal)
                                      for c in self._networks("adapt")])

    def __repr__(self) -> str:
        sizes = [int(c.samples.shape[0]) for c in self.components]
        return f"{type(self).__name__}(n={self.samples.shape[0]}, d={self.dim}, part sizes={sizes})"


class DiScoFormerMixture(_FitParts):
    """Components of a sample set found and fitted separately by ``fit``, combined as a mixture.
    Immutable; ``adapt`` returns a new one.

    ``p(x) = sum_k w_k p_k(x)`` with ``p_k`` the fit of component k's samples (a
    :class:`DiScoFormerOracle`, or a :class:`DiScoFormerAverage` of subsets), capped far from them
    by a Gaussian envelope (``envelopes``, see :class:`~disco_score.components.GaussianEnvelopes`),
    and ``w_k`` its share of the samples, lowered by the network's level error on one Gaussian of
    that size. The score is the posterior-weighted mean of the capped components' scores (the
    exact gradient of ``log p`` given theirs); ``smoothed(sigma)`` is the mixture of the smoothed
    components (convolution is linear) under the smoothed envelopes.

    Attributes:
        samples: (n, d) all fitted samples (torch, the caller's dtype).
        components: the per-component oracles.
        log_weights: (K,) float64 log mixture weights.
        envelopes: the components' envelopes, or None (an exact mixture of the components).
        envelope_scale: the envelopes are in coordinates ``x / envelope_scale`` (a power of two near
            the data's scale, so that data near 1e200 or 1e-200 keep their covariances in range).
    """

    def __init__(self, estimator: DiScoFormer, samples: torch.Tensor, components: Sequence[Oracle],
                 log_weights: torch.Tensor, envelopes: GaussianEnvelopes | None = None,
                 envelope_scale: float = 1.0) -> None:
        if envelopes is not None and envelopes.levels.shape != (len(components),):
            raise ValueError(f"envelopes: one per component expected ({len(components)}), "
                             f"got {tuple(envelopes.levels.shape)}")
        object.__setattr__(self, "envelopes", envelopes)
        # the envelopes live in coordinates x / envelope_scale
        object.__setattr__(self, "envelope_scale", check_positive(envelope_scale, "envelope_scale"))
        super().__init__(estimator, samples, components, log_weights)

    def _with_components(self, components: Sequence[Oracle]) -> Any:
        return DiScoFormerMixture(self.estimator, self.samples, components, self.log_weights, self.envelopes,
                                  self.envelope_scale)

    def _smoothed(self, sigma: float) -> Oracle:
        components = [c.smoothed(sigma) for c in self.components]  # first: they validate sigma
        envelopes = None if self.envelopes is None else self.envelopes.smoothed(
            check_squarable(sigma / self.envelope_scale, "sigma"))
        return DiScoFormerMixture(self.estimator, self.samples, components, self.log_weights, envelopes,
                                  self.envelope_scale)

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = [c._log_density_and_score(y, want_score) for c in self.components]
        log_ps = torch.stack([lp.to(torch.float64) for lp, _ in parts], 1)  # (m, K)
        scores = torch.stack([sc.to(torch.float64) for _, sc in parts], 1) if want_score else None  # (m, K, d)
        if self.envelopes is not None:
            s, log_s = self.envelope_scale, self.dim * math.log(self.envelope_scale)
            log_ps, scores = self.envelopes.cap(y.to(torch.float64) / s, log_ps + log_s,
                                                None if scores is None else scores * s)
            log_ps, scores = log_ps - log_s, None if scores is None else scores / s
        joint = log_ps + self.log_weights
        log_p = torch.logsumexp(joint, 1)
        if scores is None:
            return log_p.to(y.dtype), None
        score = (torch.softmax(joint, 1)[..., None] * scores).sum(1)
        return log_p.to(y.dtype), score.to(y.dtype)


class DiScoFormerAverage(_FitParts):
    """Fits of interleaved subsets of one set (see :class:`Specialist`), averaged in log-density.
    Immutable; ``adapt`` returns a new one.

    ``log p(x) = sum_j v_j log p_j(x)`` and ``score = sum_j v_j s_j(x)`` (its exact gradient), with
    ``v_j`` the subsets' shares of the samples: a normalised geometric mean, up to the fits'
    disagreement. Why not their mixture: every subset estimates the same density, and far from the
    samples a mixture follows whichever fit has the heaviest tail there, more so the more subsets;
    in a mixture of components, that tail leaks into the other components' regions (there, one
    component's score error grew 30x; docs/experiments.md, "Design: subsets of one set are averaged
    in log-density, not mixed"). ``smoothed(sigma)`` averages the smoothed subsets.

    Attributes:
        samples: (n, d) all fitted samples.
        components: the per-subset oracles.
        log_weights: (J,) float64 log shares ``log v_j``.
    """

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shares = torch.exp(self.log_weights)
        parts = [c._log_density_and_score(y, want_score) for c in self.components]
        log_p = sum(v * lp.to(torch.float64) for v, (lp, _) in zip(shares, parts))
        assert isinstance(log_p, torch.Tensor)
        if not want_score:
            return log_p.to(y.dtype), None
        score = sum(v * sc.to(torch.float64) for v, (_, sc) in zip(shares, parts))
        assert isinstance(score, torch.Tensor)
        return log_p.to(y.dtype), score.to(y.dtype)


def derive_level_seed(n: int, d: int) -> int:
    """The fixed seed of the Gaussian reference set behind :meth:`DiScoFormer.unimodal_level_offset`."""
    return (1_000_003 * n + d) % (2 ** 31)

