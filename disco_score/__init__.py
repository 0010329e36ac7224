"""disco-score: a score function for every sampler.

Hand it samples from any distribution; get the log-density and the score (gradient of the
log-density) at any point. Estimators share one interface (:class:`Estimator` -> :class:`Oracle`):
classical KDE baselines and the pretrained DiScoFormer transformer.
"""

from __future__ import annotations

import logging

from .base import Estimator, Oracle, as_oracle
from .discoformer import DiScoFormer, DiScoFormerAverage, DiScoFormerMixture, DiScoFormerOracle
from .fit_stages import FitConfig
from .kde import KDE, SDKDE, KDEOracle
from .samplers import ChainDiverged

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["DiScoFormer", "FitConfig", "DiScoFormerOracle", "DiScoFormerAverage", "DiScoFormerMixture", "KDE", "SDKDE", "KDEOracle", "Estimator", "Oracle", "as_oracle", "ChainDiverged", "__version__"]
