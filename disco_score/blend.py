"""The fit's last network stage: its score blended with a BIC-chosen Gaussian mixture's.

Neither wins everywhere: on mixtures of well-separated Gaussians and on near-Gaussian posteriors the
mixture a scikit-learn user would fit (K by BIC) beats the network; on heavy tails, funnels and
shells the network wins by up to 100x. Their errors differ, so a blend often beats both. The blend is
the geometric mixture ``p ∝ p_net^w p_mix^(1 - w)``, whose score is ``w s_net + (1 - w) s_mix``: its
held-out Hyvärinen loss is quadratic in ``w``, so the cross-fitted weight has a closed form (no
labels; in whitened coordinates, so the blend is affine-equivariant). Far in the mixture's tail,
where its density is many nats below the network's, the blend hands over to the network, so a
Gaussian tail never cuts a heavy one short (the weight is fitted without that hand-over, which
held-out samples seldom reach). docs/experiments.md, "Blending
with a BIC mixture by held-out score matching".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from .adaptation import heldout_score_terms
from .base import Oracle, grid_log_integral
from .targets import GaussianMixture
from .whitening import Whitening

logger = logging.getLogger(__name__)

#: held-out points per half for the weight: all of them up to this many (256 chose worse weights on
#: heavy tails and shells: docs/experiments.md, "Blending with a BIC mixture by held-out score matching")
BLEND_POINTS = 1024
#: no blend below this many samples (halves too small to rank the two)
BLEND_MIN_N = 128
#: far in the mixture's tail the blend hands over to the network: the mixture's weight is scaled by
#: sigmoid((log p_mix - log p_net + TAIL_MARGIN) / TAIL_WIDTH), so Gaussian tails do not cut a heavy
#: tail short (P3 Student-t log-density MSE 0.17 -> 1.3 at n = 128 without it; docs/experiments.md,
#: "Blending with a BIC mixture by held-out score matching")
TAIL_MARGIN = 4.0
TAIL_WIDTH = 1.0


def blend_weight(fit_network: Callable[[torch.Tensor], Any], fit_mixture: Callable[[torch.Tensor], Any],
                 z: torch.Tensor) -> float:
    """The network's weight ``w`` in [0, 1] minimising the cross-fitted held-out Hyvärinen loss
    ``mean(|w s_net + (1 - w) s_mix|^2 / 2 + w div s_net + (1 - w) div s_mix)`` on whitened samples
    ``z`` (:func:`~disco_score.adaptation.heldout_score_terms`, :data:`BLEND_POINTS` per half);
    each ``fit_*(half)`` returns an oracle with ``score``."""
    num = den = 0.0
    for (s_net, div_net), (s_mix, div_mix) in heldout_score_terms([fit_network, fit_mixture], z, BLEND_POINTS):
        diff = s_net - s_mix
        num -= float(((diff * s_mix).sum(1) + div_net - div_mix).mean())
        den += float((diff * diff).sum(1).mean())
    if not den > 0 or not math.isfinite(num):
        return 1.0
    return min(1.0, max(0.0, num / den))


class ScoreBlend(Oracle):
    """``log p = log p_net + v(x) (log p_mix - log p_net)`` up to a constant, the mixture's local weight
    ``v = (1 - weight) sigmoid((log p_mix - log p_net + TAIL_MARGIN) / TAIL_WIDTH)``: the geometric blend
    ``p_net^weight p_mix^(1 - weight)`` wherever the two densities are within a few nats (score
    ``weight s_net + (1 - weight) s_mix``), the network alone far in the mixture's tail. The score is
    the exact gradient of that log-density given the parts' scores.

    In d <= 2 (with ``normalize``) the log-density is normalised by a 96 x 96 (d = 2) or 1024-node
    (d = 1) trapezoid rule over the samples' range +- 4 whitened units, as DiScoFormer's own fit is;
    above, like the network's, it is left unnormalised (the blend of two normalised densities
    integrates to at most 1). ``smoothed`` blends the two parts' smoothed oracles with the same weight
    (exact for each part where the part's is, an approximation for the blend).

    Attributes:
        network: the network's fit.
        whitened_mixture: the BIC Gaussian mixture (float64) in the samples' whitened coordinates
            (``mixture``: the same in theirs).
        weight: the network's weight in [0, 1].
        samples: the fitted samples (the network's).
    """

    def __init__(self, network: Oracle, whitened_mixture: GaussianMixture, weight: float, whitening: Whitening,
                 extent: torch.Tensor, normalize: bool) -> None:
        self.network, self.whitened_mixture, self.weight = network, whitened_mixture, float(weight)
        self.dim, self.compute_dtype, self.device = network.dim, network.compute_dtype, network.device
        self.samples = getattr(network, "samples", None)
        self._whitening, self._extent = whitening, extent
        self._normalize = bool(normalize) and self.dim <= 2
        self._log_normalizer: float | None = None if self._normalize else 0.0
        self._freeze()

    @property
    def mixture(self) -> GaussianMixture:
        """The mixture in the samples' coordinates (built on request; for samples near 1e200 its
        covariances overflow, while the blend itself evaluates it in whitened coordinates)."""
        w, inverse = self.whitened_mixture, self._whitening.inverse
        return GaussianMixture(w.weights, self._whitening.backward(w.means), inverse @ w.covariances @ inverse)

    @property
    def log_normalizer(self) -> float:
        """log of the blend's integral over the grid (0 above d = 2 or without ``normalize``); cached."""
        if self._log_normalizer is None:
            whitening = self._whitening

            def log_density_z(z: torch.Tensor) -> torch.Tensor:
                x = whitening.backward(z).to(self.compute_dtype)
                lp, _ = self._blend(x, want_score=False)
                return lp.to(torch.float64) - whitening.log_det

            object.__setattr__(self, "_log_normalizer", grid_log_integral(log_density_z, self._extent))
        assert self._log_normalizer is not None
        return self._log_normalizer

    def _blend(self, y: torch.Tensor, want_score: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        whitening = self._whitening
        lp_net, s_net = self.network._unnormalized_log_density_and_score(y, want_score)
        lp_z, s_z = self.whitened_mixture._log_density_and_score(whitening.forward(y.to(torch.float64)), want_score)
        # log p_mix - log p_net; below -1e4 the gate is exactly 0 (and an underflowed -inf stays finite)
        gap = (whitening.log_density_out(lp_z).to(lp_net.dtype) - lp_net).clamp_min(-1e4)
        gate = torch.sigmoid((gap + TAIL_MARGIN) / TAIL_WIDTH)
        local = (1.0 - self.weight) * gate  # the mixture's weight here
        lp = lp_net + local * gap
        if not want_score:
            return lp, None
        assert s_net is not None and s_z is not None
        # d lp = d log p_net + local * d gap + gap * d local, d local = local (1 - gate) d gap / TAIL_WIDTH
        slope = local * (1.0 + gap * (1.0 - gate) / TAIL_WIDTH)
        return lp, s_net + slope[:, None] * (whitening.score_out(s_z).to(s_net.dtype) - s_net)

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lp, score = self._blend(y, want_score)
        return lp - self.log_normalizer, score

    def _unnormalized_log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._blend(y, want_score)

    def _with_network(self, network: Oracle) -> "ScoreBlend":
        return ScoreBlend(network, self.whitened_mixture, self.weight, self._whitening, self._extent, self._normalize)

    def _smoothed(self, sigma: float) -> "ScoreBlend":
        # N(0, sigma^2 I) in x is N(0, (sigma W)(sigma W)^T) in whitened coordinates (W symmetric)
        network = self.network.smoothed(sigma)  # first: it names a sigma out of range
        noise = sigma * self._whitening.matrix
        mix = self.whitened_mixture
        smoothed_mixture = GaussianMixture(mix.weights, mix.means, mix.covariances + noise @ noise)
        return ScoreBlend(network, smoothed_mixture, self.weight, self._whitening, self._extent, self._normalize)

    def adapt(self, *args: Any, **kwargs: Any) -> "ScoreBlend":
        """The network part adapted (its ``adapt``, same arguments); the mixture and weight kept."""
        return self._with_network(self.network.adapt(*args, **kwargs))  # type: ignore[attr-defined]

    def with_convolution_threshold(self, threshold: float) -> "ScoreBlend":
        """The network part's ``with_convolution_threshold``; the mixture's convolution is exact."""
        return self._with_network(self.network.with_convolution_threshold(threshold))  # type: ignore[attr-defined]

    def with_default_convolution_threshold(self, threshold: float) -> "ScoreBlend":
        network = self.network.with_default_convolution_threshold(threshold)
        return self if network is self.network else self._with_network(network)

    def __repr__(self) -> str:
        return (f"ScoreBlend(weight={self.weight:.3g}, network={self.network!r}, "
                f"mixture components={self.whitened_mixture.weights.shape[-1]})")
