"""The benchmark: ``python -m disco_score.bench [suite] [options]`` (also ``disco-score bench``).

Definitions (the GMM prior, protocols P1/P2/P3 and W1–W3, metrics, baselines, reference values):
``docs/benchmark-protocol.md``.

* :mod:`.problems`: seeds, run metadata, targets and :class:`Problem` (:func:`make_problem`, :func:`draw`).
* :mod:`.rows`: the estimator rows (:class:`Context`, :class:`RowSpec`, :data:`ESTIMATORS`) and how a
  row is evaluated and aggregated.
* :mod:`.cells`: the cell grids, :class:`Options`, :func:`run_cells`, ``--resume`` / ``--reuse``.
* :mod:`.registry`: the suites in report order and their runners, renderers, plotters and rows.
* :mod:`.suites`: the GMM-prior suites (accuracy, scaling, speed, downstream, sampling, ppl); the
  published figures and protocol reference values they attach come from ``data/published.json``.
* :mod:`.wild`: the wild protocol (W1 toy sets, W2 exact non-mixture targets, W3 real posteriors)
  against the estimators a user would pick instead (:mod:`.baselines`, :mod:`.toys`, :mod:`.posteriors`).
* :mod:`.step_speed`: the sampler-step speed suite (``step``): fit time and the score at 1000
  particles against the package's KDE over the (d, n) grid, whole sampler runs, ``--device``.
* :mod:`.report`: BENCHMARKS.md, the plots and ``--compare``.
* :mod:`.cli`: the command line (:func:`main`).
"""

from __future__ import annotations

from .cells import Cell, Options, accuracy_cells, downstream_cells, run_cells, sampling_cells, scaling_cells
from .cli import build_parser, main  # imports .suites and .wild, which register every suite
from .problems import (FAMILIES, N_QUERIES, Problem, derive_seed, draw, git_commit, make_problem, make_target,
                       run_metadata)
from .registry import RUNNERS, SUITES, register_suite
from .report import compare, write_report
from .rows import ESTIMATORS, METRICS, ORACLE_KDE, Context, RowSpec, query_metrics
from .suites import SAMPLING_METHODS, integrated_squared_error, load_published, run_speed_config, speed_configs

__all__ = [
    "Cell", "Options", "accuracy_cells", "downstream_cells", "run_cells", "sampling_cells", "scaling_cells",
    "build_parser", "main",
    "FAMILIES", "N_QUERIES", "Problem", "derive_seed", "draw", "git_commit", "make_problem", "make_target",
    "run_metadata",
    "RUNNERS", "SUITES", "register_suite",
    "compare", "write_report",
    "ESTIMATORS", "METRICS", "ORACLE_KDE", "Context", "RowSpec", "query_metrics",
    "SAMPLING_METHODS", "integrated_squared_error", "load_published", "run_speed_config", "speed_configs",
]
