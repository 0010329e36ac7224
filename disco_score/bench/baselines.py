"""What a user would fit instead of DiScoFormer, as :class:`~disco_score.base.Estimator` objects.

* :class:`BICGaussianMixture`: scikit-learn's ``GaussianMixture`` (full covariance) with the number of
  components chosen by BIC over ``1 … max_components``; the fit is an exact
  :class:`~disco_score.targets.GaussianMixture`, so its ``smoothed`` is exact too.
* :class:`SplineFlow`: a zuko neural spline flow trained on the samples for a fixed CPU budget
  (whitened inputs, Adam, 10 % of the samples held out for early stopping), "what training per data
  set buys". Its ``smoothed(σ)`` is not available: a flow has no closed-form convolution with a
  Gaussian, and noise-conditional sampling would need a flow trained per noise level.

KDE with the leave-one-out CV bandwidth and with the score rule are :class:`~disco_score.kde.KDE`
itself (``KDE("cv")``, ``KDE("score")``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch

from .._checks import ArrayLike, as_samples, check_int, check_positive
from ..base import Estimator, Oracle
from ..targets import GaussianMixture
from ..whitening import Whitening

logger = logging.getLogger(__name__)


class BICGaussianMixture(Estimator):
    """Gaussian mixture by EM (scikit-learn), K chosen by the Bayesian information criterion.

    Args:
        max_components: largest K tried (K = 1 … max_components, capped so every component has
            at least ``d + 1`` samples on average).
        n_init: EM restarts per K (scikit-learn's ``n_init``).
        seed: ``random_state`` of every fit.
    """

    def __init__(self, max_components: int = 20, n_init: int = 1, seed: int = 0) -> None:
        self.max_components = check_int(max_components, "max_components")
        self.n_init = check_int(n_init, "n_init")
        self.seed = check_int(seed, "seed", minimum=0)

    def fit(self, samples: ArrayLike) -> GaussianMixture:
        """The BIC-best mixture as an exact :class:`~disco_score.targets.GaussianMixture` (float64)."""
        from sklearn.mixture import GaussianMixture as SkGaussianMixture

        x = as_samples(samples).detach().to("cpu", torch.float64).numpy()
        n, d = x.shape
        best: tuple[float, Any] | None = None
        for k in range(1, max(1, min(self.max_components, n // (d + 1))) + 1):
            em = SkGaussianMixture(n_components=k, covariance_type="full", n_init=self.n_init,
                                   reg_covar=1e-6, random_state=self.seed).fit(x)
            bic = float(em.bic(x))
            if best is None or bic < best[0]:
                best = (bic, em)
        assert best is not None
        em = best[1]
        logger.info("BIC chose K = %d", em.n_components)
        weights = torch.as_tensor(em.weights_, dtype=torch.float64)
        return GaussianMixture(weights / weights.sum(), torch.as_tensor(em.means_, dtype=torch.float64),
                               torch.as_tensor(em.covariances_, dtype=torch.float64))


class SplineFlowOracle(Oracle):
    """A trained zuko flow on whitened coordinates: exact log-density, score by autograd."""

    def __init__(self, flow: Any, whitening: Whitening, dim: int, steps: int, seconds: float,
                 validation_nll: float) -> None:
        self.flow = flow
        self.whitening = whitening
        self.dim = dim
        self.compute_dtype = torch.float64
        self.device = torch.device("cpu")
        #: optimiser steps taken, training wall time and held-out NLL (nats per point, whitened)
        self.steps = steps
        self.seconds = seconds
        self.validation_nll = validation_nll
        self._freeze()

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if y.shape[0] == 0:
            return y.new_zeros(0), (y.new_zeros(0, self.dim) if want_score else None)
        with torch.enable_grad():
            z = self.whitening.forward(y.detach().to(torch.float64)).to(torch.float32).requires_grad_(want_score)
            log_p = self.flow().log_prob(z)
            score = torch.autograd.grad(log_p.sum(), z)[0] if want_score else None
        log_p64 = self.whitening.log_density_out(log_p.detach().to(torch.float64))
        if score is None:
            return log_p64, None
        return log_p64, self.whitening.score_out(score.detach().to(torch.float64))

    def _smoothed(self, sigma: float) -> Oracle:
        raise NotImplementedError("a normalising flow has no closed-form convolution with N(0, sigma^2 I); "
                                  "noise-conditional sampling would need one flow trained per noise level")


class SplineFlow(Estimator):
    """A neural spline flow (zuko ``NSF``) trained on the samples under a wall-clock budget.

    Args:
        seconds: training budget (wall clock, on whatever threads torch uses).
        transforms: autoregressive spline transforms; ``hidden``: width of their two hidden layers.
        batch_size: minibatch size; ``lr``: Adam learning rate.
        seed: seeds the held-out split, the initialisation and the minibatches.
    """

    def __init__(self, seconds: float = 60.0, transforms: int = 3, hidden: int = 64, batch_size: int = 256,
                 lr: float = 1e-3, seed: int = 0) -> None:
        self.seconds = check_positive(seconds, "seconds")
        self.transforms = check_int(transforms, "transforms")
        self.hidden = check_int(hidden, "hidden")
        self.batch_size = check_int(batch_size, "batch_size")
        self.lr = check_positive(lr, "lr")
        self.seed = check_int(seed, "seed", minimum=0)

    def fit(self, samples: ArrayLike) -> SplineFlowOracle:
        """Train until the budget is spent; keep the weights with the best held-out likelihood."""
        import zuko

        x = as_samples(samples).detach().to("cpu", torch.float64)
        n, d = x.shape
        whitening = Whitening.from_samples(x)
        z = whitening.forward(x).to(torch.float32)
        gen = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n, generator=gen)
        n_val = max(1, n // 10)
        val, train = z[perm[:n_val]], z[perm[n_val:]]
        torch.manual_seed(self.seed)  # zuko initialises from the global generator
        # zuko's autoregressive transforms need >= 2 features; in d = 1 a single spline is the flow
        flow = zuko.flows.NSF(d, transforms=self.transforms if d > 1 else 1,
                              hidden_features=(self.hidden, self.hidden))
        opt = torch.optim.Adam(flow.parameters(), lr=self.lr)
        best_nll, best_state, steps = math.inf, copy.deepcopy(flow.state_dict()), 0
        start = time.perf_counter()
        while time.perf_counter() - start < self.seconds:
            idx = torch.randint(0, train.shape[0], (min(self.batch_size, train.shape[0]),), generator=gen)
            loss = -flow().log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
            steps += 1
            if steps % 50 == 0:
                with torch.no_grad():
                    nll = float(-flow().log_prob(val).mean())
                if np.isfinite(nll) and nll < best_nll:
                    best_nll, best_state = nll, copy.deepcopy(flow.state_dict())
        flow.load_state_dict(best_state)
        flow.eval()
        for p in flow.parameters():
            p.requires_grad_(False)
        return SplineFlowOracle(flow, whitening, d, steps, time.perf_counter() - start, best_nll)
