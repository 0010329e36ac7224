"""Cells: the protocol's cell grids, the run-wide :class:`Options`, :func:`run_cells` (every row on every
target of every cell) and the reuse of finished cells (``--resume`` from the cell log, ``--reuse`` from
an earlier result file).

Cell definitions (P1, P2, P3, the scaling sweeps, the ISE cells): ``docs/benchmark-protocol.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..base import Oracle
from .problems import N_QUERIES, Problem, _jsonable, git_commit, make_problem
from .registry import DEFAULT_ESTIMATORS, SUITE_ROWS
from .rows import ESTIMATORS, Context, _add_ratios, _aggregate, _evaluate_row, _row_summary, query_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """A table cell: ``n_targets`` problems of one family at (d, n); ``shown`` metrics in the tables."""

    group: str
    family: str
    d: int
    n: int
    n_targets: int
    shown: tuple[str, ...]
    #: rows recorded as skipped in this cell (with the reason), not run
    skip_rows: tuple[str, ...] = ()
    skip_reason: str = ""

    @property
    def label(self) -> str:
        """``"<group> d=<d> n=<n>"``: the cell's key in the tables, the JSON, the cell log and ``--only``."""
        return f"{self.group} d={self.d} n={self.n}"


@dataclass
class Options:
    """Parsed command-line options shared by the suites."""

    quick: bool = False
    seed: int = 0
    estimators: list[str] | None = None
    only: str | None = None
    timeout: float | None = None
    progress: bool = True
    #: finished cells are appended here as they come (JSON lines), so a long run that is stopped
    #: loses at most one cell; with ``resume`` the cells already logged are reused, not re-run
    cell_log: Path | None = None
    resume: bool = False
    #: targets per cell instead of the protocol's (fewer: a cheaper, noisier sweep)
    targets: int | None = None
    #: an earlier result file (``benchmarks/<suite>.json``) whose cells are reused, with the commit they were
    #: measured at, except those matching ``rerun`` -- e.g. to re-measure only the cells a new
    #: dimension-specific checkpoint serves
    reuse: dict[str, Any] | None = None
    rerun: str | None = None
    #: with ``rerun``: only these rows are measured again in the cells it matches; the others are
    #: kept from ``reuse`` with the commit they were measured at (e.g. after a change to one estimator)
    rerun_rows: list[str] | None = None
    #: the torch device of the step suite (``cpu``, ``cuda``, ...)
    device: str = "cpu"

    def rows(self, suite: str) -> list[str]:
        """Row keys to run in ``suite``: ``--estimators`` (default: the suite's defaults), in that order,
        keeping only the keys the suite knows."""
        known = SUITE_ROWS.get(suite, ESTIMATORS)
        chosen = DEFAULT_ESTIMATORS[suite] if self.estimators is None else self.estimators
        return [key for key in chosen if key in known]

    def selected(self, label: str) -> bool:
        """Whether ``label`` matches ``--only`` (a regular expression, ``re.search``); always True without it."""
        return self.only is None or re.search(self.only, label) is not None


# ----------------------------------------------------------------------------------------------
# The cell grids of the accuracy, scaling, downstream and sampling suites
# ----------------------------------------------------------------------------------------------
_REL_LD = ("relative_score_mse", "log_density_mse")
_ABS = ("score_mse", "log_density_mse")


def accuracy_cells(quick: bool) -> list[Cell]:
    """The protocol's P1, P2, P3 cells (``quick``: small n, one or two targets)."""
    if quick:
        return [Cell("P1", "gmm", 2, 256, 2, ("relative_score_mse",)),
                Cell("P1", "gmm", 10, 256, 2, ("relative_score_mse",)),
                # adapt at d = 100 is 80 s (second-order autograd through the d x d local moments)
                Cell("P2", "p2", 100, 2048, 1, _ABS, skip_rows=("discoformer-adapt",),
                     skip_reason="quick run: adapt at d = 100 takes ~80 s; the full run measures it"),
                Cell("P3 more modes", "gmm-many", 2, 2048, 1, _REL_LD),
                Cell("P3 Laplace", "laplace", 2, 512, 1, _ABS),
                Cell("P3 Student-t", "student-t", 2, 128, 1, _ABS)]
    return ([Cell("P1", "gmm", d, n, 8, ("relative_score_mse",)) for d in (2, 10) for n in (256, 16384)]
            + [Cell("P2", "p2", 100, n, 4, _ABS) for n in (2048, 16384)]
            + [Cell("P3 more modes", "gmm-many", d, 2048, 8, _REL_LD) for d in (2, 10)]
            + [Cell("P3 Laplace", "laplace", 2, n, 8, _ABS) for n in (512, 1024, 2048, 4096)]
            + [Cell("P3 Student-t", "student-t", 2, n, 8, _ABS) for n in (128, 256, 512)])


SCALING_N_DIMS = (2, 10, 100)
#: DiScoFormer's sample encoder is exact O(n^2) attention: measured 167 s per target at d = 2,
#: n = 2^15 on one thread (docs/experiments.md), so 2^16 and 2^17 (~11 and ~45 min per target)
#: are recorded as not run rather than left out silently -- except at d = 10, where the specialist
#: fits a large set as subsets of at most 4096 points (about 40 s at 2^17; docs/experiments.md, "Design: subsets of one set are averaged in log-density, not mixed")
SCALING_DISCOFORMER_MAX_N = 2 ** 15
SCALING_DISCOFORMER_MAX_N_BY_DIM = {10: 2 ** 17}
SCALING_DISCOFORMER_SKIP = (f"not run above n = {SCALING_DISCOFORMER_MAX_N}: O(n^2) sample encoder, about 11 min "
                            "(n = 2^16) and 45 min (2^17) per target on one CPU thread")


#: the dimension sweep of the scaling suite (GMM prior, two targets per d)
DIM_SWEEP = (1, 2, 3, 5, 8, 10, 12, 16, 24, 32, 64, 128)
DIM_SWEEP_N = 2048


def scaling_cells(quick: bool) -> list[Cell]:
    """Error against n at d = 2, 10 (GMM prior) and 100 (P2-style; not in ``quick``), and against d
    at fixed n."""
    ns = [2 ** k for k in ((8, 10, 11) if quick else range(8, 18))]
    targets = 1 if quick else 4
    by_n = [Cell("vs n", "p2" if d == 100 else "gmm", d, n, targets, ("relative_score_mse",),
                 *((("discoformer",), SCALING_DISCOFORMER_SKIP)
                   if n > SCALING_DISCOFORMER_MAX_N_BY_DIM.get(d, SCALING_DISCOFORMER_MAX_N) else ()))
            for d in (SCALING_N_DIMS[:2] if quick else SCALING_N_DIMS) for n in ns]
    n_fixed = 2 ** 10 if quick else 2 ** 14
    dims = (1, 2, 5, 10) if quick else (1, 2, 5, 10, 20, 50, 100)
    by_d = [Cell("vs d", "gmm", d, n_fixed, targets, ("relative_score_mse",)) for d in dims]
    # every d served as well as its neighbours: a dense sweep at a size every d affords
    sweep = [] if quick else [Cell("dim sweep", "gmm", d, DIM_SWEEP_N, 2, ("relative_score_mse",)) for d in DIM_SWEEP]
    return by_n + by_d + sweep


def downstream_cells(quick: bool) -> list[Cell]:
    """The ISE cells: GMM-prior targets in d = 1, 2 at n = 256, 1024, 4096, 8 targets each
    (``quick``: n = 256, 1 target)."""
    ns = (256,) if quick else (256, 1024, 4096)
    return [Cell("ISE", "gmm", d, n, 1 if quick else 8, ("ise",)) for d in (1, 2) for n in ns]


def sampling_cells(quick: bool) -> list[Cell]:
    """GMM-prior targets; n training points; the samplers generate as many points as the fresh set."""
    if quick:
        return [Cell("sampling", "gmm", 2, 256, 1, ("energy_distance", "memorization"))]
    return [Cell("sampling", "gmm", d, 1024, 4, ("energy_distance", "memorization")) for d in (2, 10)]


# ----------------------------------------------------------------------------------------------
# Running cells, logging them, reusing them
# ----------------------------------------------------------------------------------------------
def run_cells(cells: Sequence[Cell], row_keys: Sequence[str], ctx: Context, opts: Options,
              measure: Callable[[Oracle, Problem], dict[str, float]] = query_metrics,
              desc: str = "cells") -> list[dict[str, Any]]:
    """Evaluate every row on every target of every cell; failures are recorded per target.

    Returns one dict per cell: its parameters, the per-target seeds, and ``rows``: per row label
    ``values`` (mean over targets of each figure, None if any target failed), ``per_target``,
    ``seconds`` (mean fit + evaluate time per target), ``status`` ("ok", "failed", "n/a"), ``error``.
    """
    specs = [ESTIMATORS[key] for key in row_keys]
    cells = [dataclasses.replace(cell, n_targets=opts.targets or cell.n_targets)
             for cell in cells if opts.selected(cell.label)]
    done = _logged_cells(opts, desc, row_keys)
    results = []
    bar = tqdm(total=sum(c.n_targets for c in cells), desc=desc, disable=not opts.progress, leave=False)
    for cell in cells:
        if cell.label in done:
            results.append(done[cell.label])
            bar.update(cell.n_targets)
            logger.info("%s: reused (measured at %s)", cell.label, done[cell.label]["measured_at"].get("commit"))
            continue
        kept = kept_rows(opts, desc, cell.label)
        measured = [spec for spec in specs if spec.key not in kept]
        per_row: dict[str, list[dict[str, Any]]] = {spec.key: [] for spec in measured}
        seeds = []
        for index in range(cell.n_targets):
            problem = make_problem(cell.family, cell.d, cell.n, index, opts.seed)
            seeds.append({"target": problem.target_seed, "samples": problem.samples_seed})
            for spec in measured:
                if spec.key in cell.skip_rows:
                    per_row[spec.key].append({"status": "skipped", "error": cell.skip_reason})
                else:
                    per_row[spec.key].append(_evaluate_row(spec, problem, ctx, measure))
            bar.update(1)
        rows = {spec.key: kept[spec.key] if spec.key in kept else _aggregate(spec, per_row[spec.key])
                for spec in specs}
        _add_ratios(rows)
        results.append({"cell": cell.label, "group": cell.group, "family": cell.family, "d": cell.d,
                        "n": cell.n, "m": N_QUERIES, "targets": cell.n_targets, "shown": list(cell.shown),
                        "seeds": seeds, "rows": rows})
        logger.info("%s: %s", cell.label, "; ".join(_row_summary(row, cell.shown) for row in rows.values()))
        _log_cell(opts, desc, row_keys, results[-1])
    bar.close()
    return results


def _log_cell(opts: Options, suite: str, row_keys: Sequence[str], result: dict[str, Any]) -> None:
    """Append a finished cell to the cell log (``--resume`` reuses it)."""
    if opts.cell_log is not None:
        entry = {"suite": suite, "seed": opts.seed, "quick": opts.quick, "rows": list(row_keys),
                 "targets": opts.targets, "commit": git_commit(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "result": result}
        with open(opts.cell_log, "a") as fh:
            fh.write(json.dumps(_jsonable(entry), allow_nan=False) + "\n")


def _reused_result_cells(opts: Options, suite: str) -> dict[str, dict[str, Any]]:
    """Cells of ``opts.reuse`` (same suite, seed, size, rows and targets) not matching ``opts.rerun``."""
    result = opts.reuse
    # the wild suite's file holds two cell lists: its accuracy cells and, under "sampling", W1 sampling's
    section = "sampling" if suite == "wild-sampling" else "cells"
    if result is None or result.get("suite") != ("wild" if suite == "wild-sampling" else suite):
        return {}
    meta = result.get("meta", {})  # seed, size and rows: main() refuses a file that differs
    done = {}
    for cell in result.get(section, []):
        if opts.targets is not None and cell.get("targets") != opts.targets:
            continue
        if opts.rerun is not None and re.search(opts.rerun, cell["cell"]):
            continue
        done[cell["cell"]] = {**cell, "measured_at": cell.get("measured_at") or {
            "commit": meta.get("commit"), "date": meta.get("date")}}
    return done


def kept_rows(opts: Options, suite: str, label: str) -> dict[str, dict[str, Any]]:
    """With ``--rerun-rows``: the rows of cell ``label`` in ``--reuse`` that are not measured again, each
    with the commit it was measured at (``measured_at``); empty otherwise."""
    result = opts.reuse
    if opts.rerun_rows is None or result is None or opts.rerun is None or not re.search(opts.rerun, label):
        return {}
    section = "sampling" if suite == "wild-sampling" else "cells"
    meta = result.get("meta", {})
    for cell in result.get(section, []):
        if cell.get("cell") == label and (opts.targets is None or cell.get("targets") == opts.targets):
            at = cell.get("measured_at") or {"commit": meta.get("commit"), "date": meta.get("date")}
            return {key: {**row, "measured_at": row.get("measured_at") or at}
                    for key, row in cell.get("rows", {}).items() if key not in opts.rerun_rows}
    return {}


def _logged_cells(opts: Options, suite: str, row_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Cells to reuse instead of running: those of ``--reuse`` (see :func:`_reused_result_cells`),
    then those an earlier, interrupted run with the same suite, seed, size and rows logged (``--resume``)."""
    done = _reused_result_cells(opts, suite)
    if not opts.resume or opts.cell_log is None or not opts.cell_log.exists():
        return done
    for line in opts.cell_log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the run was killed
            continue
        if (entry.get("suite"), entry.get("seed"), entry.get("quick"), entry.get("rows"), entry.get("targets")) == \
                (suite, opts.seed, opts.quick, list(row_keys), opts.targets):
            # provenance: the report names the commit each reused cell was measured at
            done[entry["result"]["cell"]] = {**entry["result"], "measured_at": {
                "commit": entry.get("commit"), "date": entry.get("date")}}
    return done


def timed_rows(keys: Sequence[str], d: int, n: int, gave_up: dict[tuple[str, int], str],
               measure: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each row's entry at (d, n) from ``measure(key)``, grid order small n first: a row that timed
    out or ran out of memory at this d is skipped at every larger n (recorded in ``gave_up``)."""
    entries: dict[str, dict[str, Any]] = {}
    for key in keys:
        if (key, d) in gave_up:
            entries[key] = {"status": "skipped", "error": gave_up[(key, d)]}
            continue
        entries[key] = measure(key)
        if entries[key]["status"] in ("timeout", "oom"):
            gave_up[(key, d)] = f"{entries[key]['status']} at n={n}"
    return entries
