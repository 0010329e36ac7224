"""The suite registry: which suites exist, in report order, and how each is run, reported and plotted.

Every suite registers itself with :func:`register_suite` when its module is imported: the six
GMM-prior suites in :mod:`.suites`, the wild suite in :mod:`.wild`. This module imports no other
module of the benchmark, so any of them can register without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cells import Options
    from .rows import Context

#: suite names in report order (the order of registration)
SUITES: list[str] = []
#: suite -> ``runner(opts, ctx)``, returning the suite's result (its ``cells`` and more)
RUNNERS: dict[str, Callable[[Options, Context], dict[str, Any]]] = {}
#: suite -> ``renderer(result)``, the markdown lines of BENCHMARKS.md below the suite's header
RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {}
#: suite -> the section title in BENCHMARKS.md
TITLES: dict[str, str] = {}
#: suite -> ``plotter(result, image_dir, plt)``, the PNG files written
PLOTTERS: dict[str, Callable[[dict[str, Any], Path, Any], list[Path]]] = {}
#: row keys (-> labels) of the suites whose rows are not :data:`.rows.ESTIMATORS`
SUITE_ROWS: dict[str, dict[str, str]] = {}
#: suite -> row keys run without ``--estimators``
DEFAULT_ESTIMATORS: dict[str, list[str]] = {}


def register_suite(name: str, runner: Callable[[Options, Context], dict[str, Any]],
                   renderer: Callable[[dict[str, Any]], list[str]], title: str,
                   plotter: Callable[[dict[str, Any], Path, Any], list[Path]] | None = None,
                   rows: dict[str, str] | None = None, defaults: list[str] | None = None) -> None:
    """Add a suite (run, report, plot, rows); a suite registered again keeps its place in the report."""
    if name not in SUITES:
        SUITES.append(name)
    RUNNERS[name] = runner
    RENDERERS[name] = renderer
    TITLES[name] = title
    if plotter is not None:
        PLOTTERS[name] = plotter
    if rows is not None:
        SUITE_ROWS[name] = rows
    if defaults is not None:
        DEFAULT_ESTIMATORS[name] = defaults
