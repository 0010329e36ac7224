"""The benchmark: ``python -m disco_score.bench [suite] [options]`` (also ``disco-score bench``).

* :mod:`.harness`: problems, rows, cells, resume, the GMM-prior suites (accuracy, scaling, speed,
  downstream, sampling, ppl), the report and the command line.
* :mod:`.wild`: the wild protocol (W1 toy sets, W2 exact non-mixture targets, W3 real posteriors)
  against the estimators a user would pick instead (:mod:`.baselines`).

Definitions: ``docs/benchmark-protocol.md``.
"""

from __future__ import annotations

from . import wild  # noqa: F401  (registers the wild suite)
from .harness import *  # noqa: F401,F403
from .harness import _speed_child_main  # noqa: F401
