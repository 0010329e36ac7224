"""The benchmark harness: ``python -m disco_score.bench [suite] [options]`` (also ``disco-score bench``).

Suites (definitions: ``shared/docs/benchmark-protocol.md``):

* ``accuracy``: the protocol's P1, P2 and P3 cells. Every estimator row runs on the same targets,
  samples and queries (drawn once per target from a seeded :class:`torch.Generator`, float64).
  Each cell is the mean over targets of the per-target figure; the "x oracle KDE" columns divide
  that mean by the oracle-tuned KDE's mean in the same cell.
* ``scaling``: error against n (2^8 ... 2^17) at d = 2, 10, 100 and against d at fixed n, with
  fitted log-log slopes and KDE's theoretical n^(-4/(d+6)) score rate for reference.
* ``speed``: wall time and peak memory of fit + evaluate (n = m), one subprocess per configuration
  (peak RSS from ``resource.getrusage`` in the child; a time-out per configuration). Time-outs and
  out-of-memory are recorded as such.
* ``downstream``: integrated squared error of SD-KDE densities with the learned against the
  empirical score (d = 1, 2, exact GMM density on a grid), and entropy / Fisher-information
  estimates from :mod:`disco_score.information` when that module is present.
* ``sampling``: annealed Langevin (package defaults) and DDIM (diffusers, 50 steps) driven by the
  exact score, DiScoFormer, Scott KDE and the raw empirical score (KDE with a vanishing bandwidth)
  on GMM-prior targets in d = 2 and 10: energy distance to fresh target draws (with the noise
  floor of two fresh sets) and the memorization fraction.
* ``ppl``: NUTS in BlackJAX, NumPyro and Pyro on a conjugate Gaussian problem whose prior is known
  only through samples (DiScoFormer and Scott KDE priors), against the analytic posterior
  (:mod:`disco_score.integrations._conjugate`); needs the jax/numpyro/pyro extras.

Results go to ``<out-dir>/benchmarks/<suite>.json``; ``<out-dir>/BENCHMARKS.md`` and
``<out-dir>/docs/images/bench_*.png`` are regenerated from all suite JSON files present. A failing
row or suite is recorded (exception text in the JSON and the markdown) and the run goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics
from ..base import Estimator, Oracle
from ..kde import KDE, SDKDE, oracle_tuned_kde
from ..targets import GaussianMixture, ProductLaplace, ProductStudentT, Target, random_gmm

logger = logging.getLogger(__name__)

#: suite names in report order; :func:`register_suite` appends further suites (the wild suite)
SUITES: list[str] = ["accuracy", "scaling", "speed", "downstream", "sampling", "ppl"]
#: fresh query points per target (protocol: m = 1024)
N_QUERIES = 1024
METRICS = ("relative_score_mse", "score_mse", "log_density_mse")
#: figures averaged into a cell (per-target entries may carry more, e.g. the tuned bandwidth)
FIGURES = (*METRICS, "ise")
METRIC_TITLES = {"relative_score_mse": "rel. score MSE", "score_mse": "score MSE",
                 "log_density_mse": "log-density MSE", "ise": "ISE"}
ORACLE_KDE = "kde-oracle"

# Reference values from the protocol document (mean over targets, float64), keyed by cell and row key.
PROTOCOL_REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    "P1 d=2 n=256": {"kde-scott": {"relative_score_mse": 0.335}, "kde-oracle": {"relative_score_mse": 0.186},
                     "em": {"relative_score_mse": 1.28}},
    "P1 d=2 n=16384": {"kde-scott": {"relative_score_mse": 0.058}, "kde-oracle": {"relative_score_mse": 0.043},
                       "em": {"relative_score_mse": 0.030}},
    "P1 d=10 n=256": {"kde-scott": {"relative_score_mse": 0.637}, "kde-oracle": {"relative_score_mse": 0.375},
                      "em": {"relative_score_mse": 1.86}},
    "P1 d=10 n=16384": {"kde-scott": {"relative_score_mse": 0.396}, "kde-oracle": {"relative_score_mse": 0.227},
                        "em": {"relative_score_mse": 0.021}},
    "P2 d=100 n=2048": {"kde-scott": {"score_mse": 1.50, "log_density_mse": 750.0},
                        "kde-oracle": {"score_mse": 0.895, "log_density_mse": 517.0},
                        "em": {"score_mse": 0.926, "log_density_mse": 122.0}},
    "P2 d=100 n=16384": {"kde-scott": {"score_mse": 1.32, "log_density_mse": 536.0},
                         "kde-oracle": {"score_mse": 0.838, "log_density_mse": 402.0},
                         "em": {"score_mse": 0.028, "log_density_mse": 0.96}},
}

_PUB = "published, not re-measured"
_P2_PUBLISHED = [
    {"label": f"DiScoFormer ({_PUB}; own prior, n not stated)",
     "values": {"score_mse": 0.167, "log_density_mse": 20.8},
     "ratio_note": "vs published best KDE", "ratios": {"score_mse": 0.167 / 1.090, "log_density_mse": 20.8 / 781}},
    {"label": f"best KDE ({_PUB}; n not stated)", "values": {"score_mse": 1.090, "log_density_mse": 781.0}},
]
# Published figures (their own prior, which differs in details), keyed by cell.
PUBLISHED: dict[str, list[dict[str, Any]]] = {
    **{cell: [{"label": f"DiScoFormer ({_PUB}; own prior)", "values": {"relative_score_mse": disco}},
              {"label": f"KDE Scott ({_PUB}; own prior)", "values": {"relative_score_mse": scott}}]
       for cell, disco, scott in [("P1 d=2 n=256", 0.1467, 0.438), ("P1 d=2 n=16384", 0.0680, 0.172),
                                  ("P1 d=10 n=256", 0.0749, 0.656), ("P1 d=10 n=16384", 0.0283, 0.529)]},
    "P2 d=100 n=2048": _P2_PUBLISHED,
    "P2 d=100 n=16384": _P2_PUBLISHED,
}


# ----------------------------------------------------------------------------------------------
# Run metadata and seeds
# ----------------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str:
    """Short hash of the checkout holding this file, ``-dirty`` if tracked files are modified."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


def run_metadata(command: str, seed: int, quick: bool) -> dict[str, Any]:
    """What stands above each table: command, commit, hardware, versions, date, seed."""
    return {"command": command, "commit": git_commit(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seed": seed, "quick": quick}


def derive_seed(base: int, *keys: object) -> int:
    """A stable 31-bit seed from the base seed and a key path (independent of which cells run)."""
    text = "/".join([str(base), *map(str, keys)])
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------
# Problems: a target, its samples and queries, with the exact values at the queries
# ----------------------------------------------------------------------------------------------
FAMILIES = ("gmm", "gmm-many", "p2", "laplace", "student-t")


def make_target(family: str, d: int, generator: torch.Generator) -> Target:
    """One target of a protocol family (float64).

    ``gmm``: the GMM prior; ``gmm-many``: the prior with K in 11..20; ``p2``: K = 2, no rotation;
    ``laplace``: product Laplace (loc 0, scale 1); ``student-t``: product Student-t (nu = 3, scale 1).
    """
    if family == "gmm":
        return random_gmm(d, generator=generator)
    if family == "gmm-many":
        return random_gmm(d, n_components=(11, 20), generator=generator)
    if family == "p2":
        return random_gmm(d, n_components=2, rotate=False, generator=generator)
    if family == "laplace":
        return ProductLaplace(d)
    if family == "student-t":
        return ProductStudentT(d, df=3.0)
    raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")


def draw(target: Target, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, d) samples, drawn in chunks: mixture sampling gathers one (d, d) factor per draw."""
    chunk = max(1024, (1 << 22) // (target.dim * target.dim))
    parts = [target.sample(min(chunk, n - start), generator) for start in range(0, n, chunk)]
    return torch.cat(parts).to(torch.float64)


@dataclass
class Problem:
    """One target with ``samples`` (n, d), ``queries`` (m, d) and the exact values at the queries."""

    target: Target
    samples: torch.Tensor
    queries: torch.Tensor
    true_log_density: torch.Tensor  # (m,)
    true_score: torch.Tensor  # (m, d)
    target_seed: int
    samples_seed: int
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def n_components(self) -> int | None:
        """K for mixture targets, None otherwise."""
        return int(self.target.weights.shape[-1]) if isinstance(self.target, GaussianMixture) else None

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``cache[key]``, calling ``build()`` on the first request only (e.g. one DiScoFormer fit or density
        grid shared by all rows of the problem)."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


def make_problem(family: str, d: int, n: int, index: int, seed: int, m: int = N_QUERIES) -> Problem:
    """Target ``index`` of a family: the target and its queries depend on (seed, family, d, index)
    only, so the same targets and queries are reused across n; the samples also depend on n."""
    target_seed = derive_seed(seed, family, d, index)
    samples_seed = derive_seed(seed, family, d, index, n)
    gen = torch.Generator().manual_seed(target_seed)
    target = make_target(family, d, gen)
    queries = draw(target, m, gen)
    samples = draw(target, n, torch.Generator().manual_seed(samples_seed))
    return Problem(target, samples, queries, target.log_prob_t(queries), target.score_t(queries),
                   target_seed, samples_seed)


# ----------------------------------------------------------------------------------------------
# Estimator rows
# ----------------------------------------------------------------------------------------------
class Context:
    """Run-wide state: the pretrained DiScoFormer, loaded once (or its load failure, kept)."""

    def __init__(self) -> None:
        self._discoformer: Estimator | None = None
        self._discoformer_error: str | None = None

    def discoformer(self) -> Estimator:
        """The pretrained DiScoFormer, loaded on the first call. If loading fails, the failure is kept and
        every call raises RuntimeError with its text (no retry)."""
        if self._discoformer is None and self._discoformer_error is None:
            try:
                from ..discoformer import DiScoFormer

                self._discoformer = DiScoFormer.pretrained()
            except Exception as exc:  # missing module or weights: every dependent row records this
                self._discoformer_error = f"{type(exc).__name__}: {exc}"
        if self._discoformer is None:
            raise RuntimeError(f"DiScoFormer unavailable: {self._discoformer_error}")
        return self._discoformer


def _discoformer_oracle(problem: Problem, ctx: Context) -> Oracle:
    return problem.cached("discoformer", lambda: ctx.discoformer().fit(problem.samples))


def _em_oracle(problem: Problem, ctx: Context) -> Oracle:
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    k = problem.n_components
    if k is None:
        raise ValueError("EM with the true K needs a mixture target")
    em = SkGaussianMixture(n_components=k, covariance_type="full", random_state=problem.samples_seed)
    em.fit(problem.samples.numpy())
    return GaussianMixture(torch.as_tensor(em.weights_, dtype=torch.float64),
                           torch.as_tensor(em.means_, dtype=torch.float64),
                           torch.as_tensor(em.covariances_, dtype=torch.float64))


@dataclass(frozen=True)
class RowSpec:
    """One estimator row.

    ``fit`` builds an oracle from a problem's samples; rows that pick their settings against the
    truth (the oracle-tuned KDE) instead give ``direct``, returning the metrics themselves.
    ``applies`` says whether the row exists for a problem (EM with the true K needs a mixture).
    """

    key: str
    label: str
    fit: Callable[[Problem, Context], Oracle] | None = None
    direct: Callable[[Problem], dict[str, Any]] | None = None
    applies: Callable[[Problem], bool] = lambda problem: True
    #: above this n the row is recorded as skipped (with ``skip_reason``), not run
    max_n: int | None = None
    skip_reason: str = ""


def _oracle_tuned(problem: Problem) -> dict[str, Any]:
    best = oracle_tuned_kde(problem.samples, problem.queries, problem.true_log_density, problem.true_score)
    return {"relative_score_mse": best.relative_score_mse, "score_mse": best.score_mse,
            "log_density_mse": best.log_density_mse, "score_factor": best.score_factor,
            "score_kernel": best.score_kernel, "log_density_factor": best.log_density_factor,
            "log_density_kernel": best.log_density_kernel}


#: every row the accuracy, scaling and downstream suites know, by CLI key
ESTIMATORS: dict[str, RowSpec] = {spec.key: spec for spec in [
    RowSpec("discoformer", "DiScoFormer", fit=_discoformer_oracle),
    RowSpec("discoformer-adapt", "DiScoFormer + adapt (4 steps)",
            fit=lambda p, ctx: _discoformer_oracle(p, ctx).adapt(steps=4)),  # type: ignore[attr-defined]
    RowSpec("kde-scott", "KDE (Scott)", fit=lambda p, ctx: KDE("scott").fit(p.samples)),
    RowSpec(ORACLE_KDE, "KDE (oracle-tuned)", direct=_oracle_tuned),
    RowSpec("sdkde-empirical", "SD-KDE (empirical score)", fit=lambda p, ctx: SDKDE().fit(p.samples)),
    RowSpec("sdkde-discoformer", "SD-KDE (DiScoFormer score)",
            fit=lambda p, ctx: SDKDE(score=_discoformer_oracle(p, ctx)).fit(p.samples), max_n=4096,
            skip_reason="needs DiScoFormer's score at all n samples (n queries, O(n^2)); over 4 min per "
                        "target at n = 16384 on 2 cores"),
    RowSpec("sdkde-exact", "SD-KDE (exact score, reference)",
            fit=lambda p, ctx: SDKDE(score=p.target).fit(p.samples)),
    RowSpec("em", "EM Gaussian mixture (true K)", fit=_em_oracle,
            applies=lambda p: p.n_components is not None),
]}

#: rows of the speed suite, by CLI key
SPEED_ESTIMATORS = {"discoformer": "DiScoFormer", "kde-scott": "KDE (disco-score)",
                    "scipy-kde": "scipy.stats.gaussian_kde", "sklearn-kde": "sklearn KernelDensity"}

#: score sources of the sampling suite, by key: what drives the samplers
SAMPLING_SOURCES = {"exact": "exact score (reference)", "discoformer": "DiScoFormer", "kde-scott": "KDE (Scott)",
                    "empirical": "raw empirical score (KDE, bandwidth 1e-3)"}
#: prior estimators of the ppl suite, by key
PPL_ESTIMATORS = {"discoformer": "DiScoFormer", "kde-scott": "KDE (Scott)"}
#: rows of each suite that take other keys than ESTIMATORS
SUITE_ROWS: dict[str, dict[str, str]] = {"speed": SPEED_ESTIMATORS, "sampling": SAMPLING_SOURCES, "ppl": PPL_ESTIMATORS}

DEFAULT_ESTIMATORS = {
    "accuracy": ["discoformer", "discoformer-adapt", "kde-scott", ORACLE_KDE, "sdkde-empirical",
                 "sdkde-discoformer", "em"],
    "scaling": ["discoformer", "kde-scott", ORACLE_KDE, "sdkde-empirical", "em"],
    "speed": list(SPEED_ESTIMATORS),
    "downstream": ["discoformer", "kde-scott", "sdkde-empirical", "sdkde-discoformer", "sdkde-exact"],
    "sampling": list(SAMPLING_SOURCES),
    "ppl": list(PPL_ESTIMATORS),
}


def query_metrics(oracle: Oracle, problem: Problem) -> dict[str, float]:
    """The protocol's three figures at the problem's queries."""
    log_p, score = oracle.log_density_and_score(problem.queries)
    return {"relative_score_mse": metrics.relative_score_mse(score, problem.true_score),
            "score_mse": metrics.score_mse(score, problem.true_score),
            "log_density_mse": metrics.log_density_mse(log_p, problem.true_log_density)}


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


# ----------------------------------------------------------------------------------------------
# Cells: shared by the accuracy, scaling and downstream suites
# ----------------------------------------------------------------------------------------------
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

    def rows(self, suite: str) -> list[str]:
        """Row keys to run in ``suite``: ``--estimators`` (default: the suite's defaults), in that order,
        keeping only the keys the suite knows."""
        known = SUITE_ROWS.get(suite, ESTIMATORS)
        chosen = DEFAULT_ESTIMATORS[suite] if self.estimators is None else self.estimators
        return [key for key in chosen if key in known]

    def selected(self, label: str) -> bool:
        """Whether ``label`` matches ``--only`` (a regular expression, ``re.search``); always True without it."""
        return self.only is None or re.search(self.only, label) is not None


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
        per_row: dict[str, list[dict[str, Any]]] = {spec.key: [] for spec in specs}
        seeds = []
        for index in range(cell.n_targets):
            problem = make_problem(cell.family, cell.d, cell.n, index, opts.seed)
            seeds.append({"target": problem.target_seed, "samples": problem.samples_seed})
            for spec in specs:
                if spec.key in cell.skip_rows:
                    per_row[spec.key].append({"status": "skipped", "error": cell.skip_reason})
                else:
                    per_row[spec.key].append(_evaluate_row(spec, problem, ctx, measure))
            bar.update(1)
        rows = {spec.key: _aggregate(spec, per_row[spec.key]) for spec in specs}
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
    if result is None or result.get("suite") != suite:
        return {}
    meta = result.get("meta", {})  # seed, size and rows: main() refuses a file that differs
    done = {}
    for cell in result.get("cells", []):
        if opts.targets is not None and cell.get("targets") != opts.targets:
            continue
        if opts.rerun is not None and re.search(opts.rerun, cell["cell"]):
            continue
        done[cell["cell"]] = {**cell, "measured_at": cell.get("measured_at") or {
            "commit": meta.get("commit"), "date": meta.get("date")}}
    return done


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


def _evaluate_row(spec: RowSpec, problem: Problem, ctx: Context,
                  measure: Callable[[Oracle, Problem], dict[str, float]]) -> dict[str, Any]:
    if not spec.applies(problem):
        return {"status": "n/a"}
    if spec.max_n is not None and problem.samples.shape[0] > spec.max_n:
        return {"status": "skipped", "error": f"not run above n = {spec.max_n}: {spec.skip_reason}"}
    start = time.perf_counter()
    try:
        if spec.direct is not None:
            if measure is not query_metrics:
                return {"status": "n/a"}
            values = spec.direct(problem)
        else:
            assert spec.fit is not None
            values = measure(spec.fit(problem, ctx), problem)
    except Exception as exc:  # recorded, never raised: the run goes on
        logger.debug("row %s failed", spec.key, exc_info=True)
        return {"status": "failed", "error": _error_text(exc)}
    return {"status": "ok", "seconds": time.perf_counter() - start, **values}


def _aggregate(spec: RowSpec, per_target: list[dict[str, Any]]) -> dict[str, Any]:
    statuses = {entry["status"] for entry in per_target}
    row: dict[str, Any] = {"label": spec.label, "per_target": per_target, "values": None, "seconds": None,
                           "error": None, "ratio_to_oracle_kde": None}
    if statuses == {"n/a"}:
        row["status"] = "n/a"
        return row
    if statuses == {"skipped"}:
        row["status"] = "skipped"
        row["error"] = per_target[0]["error"]
        return row
    failures = [entry["error"] for entry in per_target if entry["status"] == "failed"]
    if failures:
        row["status"] = "failed"
        row["error"] = f"{len(failures)}/{len(per_target)} targets failed; first: {failures[0]}"
        return row
    ok = [entry for entry in per_target if entry["status"] == "ok"]
    keys = [k for k in ok[0] if k in FIGURES]
    row["status"] = "ok"
    row["values"] = {k: float(np.mean([entry[k] for entry in ok])) for k in keys}
    row["seconds"] = float(np.mean([entry["seconds"] for entry in ok]))
    return row


def _add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Ratio of each row's cell mean to the oracle-tuned KDE's cell mean, per figure."""
    reference = rows.get(ORACLE_KDE)
    if reference is None or reference["status"] != "ok":
        return
    for row in rows.values():
        if row["status"] == "ok":
            row["ratio_to_oracle_kde"] = {
                k: (v / reference["values"][k] if reference["values"].get(k) else None)
                for k, v in row["values"].items() if k in reference["values"]}


def _row_summary(row: dict[str, Any], shown: Sequence[str]) -> str:
    if row["status"] != "ok":
        return f"{row['label']} {row['status']}"
    return f"{row['label']} " + ", ".join(_fmt(row["values"].get(k), k) for k in shown)


# ----------------------------------------------------------------------------------------------
# Suites
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


def run_accuracy(opts: Options, ctx: Context) -> dict[str, Any]:
    """P1/P2/P3 against the baselines, with the published and protocol-reference figures attached."""
    cells = run_cells(accuracy_cells(opts.quick), opts.rows("accuracy"), ctx, opts, desc="accuracy")
    for cell in cells:
        cell["published"] = PUBLISHED.get(cell["cell"], [])
        cell["reference"] = PROTOCOL_REFERENCE.get(cell["cell"], {})
    return {"cells": cells}


SCALING_N_DIMS = (2, 10, 100)
#: DiScoFormer's sample encoder is exact O(n^2) attention: measured 167 s per target at d = 2,
#: n = 2^15 on one thread (docs/experiments.md), so 2^16 and 2^17 (~11 and ~45 min per target)
#: are recorded as not run rather than left out silently -- except at d = 10, where the specialist
#: fits a large set as subsets of at most 4096 points (about 40 s at 2^17; session 10)
SCALING_DISCOFORMER_MAX_N = 2 ** 15
SCALING_DISCOFORMER_MAX_N_BY_DIM = {10: 2 ** 17}
SCALING_DISCOFORMER_SKIP = (f"not run above n = {SCALING_DISCOFORMER_MAX_N}: O(n^2) sample encoder, about 11 min "
                            "(n = 2^16) and 45 min (2^17) per target on one CPU thread")


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
    return by_n + by_d


def fitted_slopes(cells: list[dict[str, Any]], metric: str = "relative_score_mse"
                  ) -> dict[str, dict[str, float]]:
    """Least-squares slope of log(error) against log(n), per d and row (rows with >= 2 points)."""
    slopes: dict[str, dict[str, float]] = {}
    for d in sorted({c["d"] for c in cells if c["group"] == "vs n"}):
        sweep = [c for c in cells if c["group"] == "vs n" and c["d"] == d]
        for key in sweep[0]["rows"] if sweep else []:
            points = [(c["n"], c["rows"][key]["values"][metric]) for c in sweep
                      if c["rows"][key]["status"] == "ok" and c["rows"][key]["values"].get(metric, 0) > 0]
            if len(points) >= 2:
                ns, errs = np.log([p[0] for p in points]), np.log([p[1] for p in points])
                slopes.setdefault(str(d), {})[key] = float(np.polyfit(ns, errs, 1)[0])
    return slopes


def run_scaling(opts: Options, ctx: Context) -> dict[str, Any]:
    """Error against n (per d) and against d; adds the fitted log-log slopes and, per d, the slope
    ``-4/(d+6)`` of KDE's theoretical score rate."""
    cells = run_cells(scaling_cells(opts.quick), opts.rows("scaling"), ctx, opts, desc="scaling")
    theory = {str(d): -4.0 / (d + 6) for d in SCALING_N_DIMS}
    return {"cells": cells, "slopes": fitted_slopes(cells), "kde_theory_slopes": theory}


# -- speed -------------------------------------------------------------------------------------
def speed_configs(quick: bool) -> list[tuple[int, int]]:
    """(d, n = m) pairs."""
    ns = (2 ** 10,) if quick else (2 ** 10, 2 ** 12, 2 ** 14, 2 ** 17)
    dims = (2,) if quick else (2, 10, 100)  # quick: each configuration is a fresh interpreter (~3 s)
    return [(d, n) for d in dims for n in ns]


def _speed_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Runs in a child process: fit + evaluate one estimator once; peak RSS from /proc (VmHWM)."""
    import resource

    def rss_mb() -> float:
        # VmHWM belongs to this process's own address space; getrusage's ru_maxrss survives
        # fork + exec, so a child would report its parent's peak when that is larger.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return float(line.split()[1]) / 1024.0  # kB
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    key, d, n = config["estimator"], int(config["d"]), int(config["n"])
    gen = torch.Generator().manual_seed(int(config["seed"]))
    target = make_target("p2" if d >= 100 else "gmm", d, gen)
    samples = draw(target, n, gen).to(torch.float32)
    queries = draw(target, n, gen).to(torch.float32)
    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    try:
        if key == "discoformer":
            estimator = Context().discoformer()  # loading the weights is not part of fit
        elif key == "kde-scott":
            estimator = KDE()
        elif key == "scipy-kde":
            from scipy.stats import gaussian_kde
        elif key == "sklearn-kde":
            from sklearn.neighbors import KernelDensity
        else:
            raise ValueError(f"unknown speed estimator {key!r}")
        x64, q64 = samples.numpy().astype(np.float64), queries.numpy().astype(np.float64)
        result["rss_before_mb"] = rss_mb()
        start = time.perf_counter()
        if key in ("discoformer", "kde-scott"):
            oracle = estimator.fit(samples)
            fitted = time.perf_counter()
            oracle.log_density_and_score(queries)
        elif key == "scipy-kde":
            kde = gaussian_kde(x64.T)  # Scott's rule, full covariance, as its users call it
            fitted = time.perf_counter()
            kde.logpdf(q64.T)
        else:
            tree = KernelDensity(bandwidth="scott").fit(x64)
            fitted = time.perf_counter()
            tree.score_samples(q64)
        done = time.perf_counter()
        result.update(status="ok", fit_seconds=fitted - start, eval_seconds=done - fitted,
                      seconds=done - start)
    except MemoryError as exc:
        result.update(status="oom", error=_error_text(exc))
    except RuntimeError as exc:
        oom = "memory" in str(exc).lower() and ("allocate" in str(exc).lower() or "out of" in str(exc).lower())
        result.update(status="oom" if oom else "failed", error=_error_text(exc))
    except Exception as exc:
        result.update(status="failed", error=_error_text(exc))
    result["peak_rss_mb"] = rss_mb()
    return result


def _speed_child_main(config_json: str) -> None:
    """Entry point of the child process: prints one JSON line."""
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write(json.dumps(_speed_worker(json.loads(config_json))) + "\n")


def run_speed_config(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; time-outs and kills are recorded."""
    code = "import sys; from disco_score.bench.harness import _speed_child_main; _speed_child_main(sys.argv[1])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"exceeded the {timeout:g} s time-out"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == -signal.SIGKILL:
        return {"status": "oom", "error": "killed by SIGKILL (the kernel's out-of-memory killer)"}
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "error": f"exit code {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def run_speed(opts: Options, ctx: Context) -> dict[str, Any]:
    """Fit + evaluate timings; after a time-out or OOM the larger n for that (estimator, d) are skipped."""
    timeout = opts.timeout if opts.timeout is not None else (60.0 if opts.quick else 300.0)
    keys = opts.rows("speed")
    configs = [(d, n) for d, n in speed_configs(opts.quick) if opts.selected(f"speed d={d} n={n}")]
    gave_up: dict[tuple[str, int], str] = {}
    done = _reused_result_cells(opts, "speed")
    cells = []
    bar = tqdm(total=len(configs) * len(keys), desc="speed", disable=not opts.progress, leave=False)
    for d, n in configs:
        label = f"speed d={d} n={n}"
        if label in done:
            cells.append(done[label])
            for key, row in done[label]["rows"].items():
                if row["status"] in ("timeout", "oom"):
                    gave_up[(key, d)] = f"{row['status']} at n={n}"
            bar.update(len(keys))
            logger.info("%s: reused (measured at %s)", label, done[label]["measured_at"].get("commit"))
            continue
        rows: dict[str, dict[str, Any]] = {}
        for key in keys:
            if (key, d) in gave_up:
                entry = {"status": "skipped", "error": gave_up[(key, d)]}
            else:
                config = {"estimator": key, "d": d, "n": n, "seed": derive_seed(opts.seed, "speed", d, n)}
                entry = run_speed_config(config, timeout)
                if entry["status"] in ("timeout", "oom"):
                    gave_up[(key, d)] = f"{entry['status']} at n={n}"
            values = {k: entry[k] for k in ("fit_seconds", "eval_seconds", "seconds", "peak_rss_mb",
                                           "rss_before_mb") if k in entry}
            rows[key] = {"label": SPEED_ESTIMATORS[key], "status": entry["status"],
                         "error": entry.get("error"), "values": values, "threads": entry.get("threads")}
            bar.update(1)
        base = rows.get("kde-scott")
        for row in rows.values():
            ok = row["status"] == "ok" and base is not None and base["status"] == "ok"
            row["ratio_to_kde"] = row["values"]["seconds"] / base["values"]["seconds"] if ok else None
        cells.append({"cell": label, "d": d, "n": n, "m": n, "rows": rows})
        logger.info("speed d=%d n=m=%d: %s", d, n, "; ".join(
            f"{r['label']} " + (f"{r['values']['seconds']:.3g} s, {r['values']['peak_rss_mb']:.0f} MB"
                                if r["status"] == "ok" else r["status"]) for r in rows.values()))
    bar.close()
    return {"cells": cells, "timeout_seconds": timeout, "dtype": "float32 (scipy/sklearn: float64)",
            "evaluates": "log-density and score (scipy/sklearn: log-density only)"}


# -- downstream ----------------------------------------------------------------------------------
def density_grid(target: Target, points_per_axis: int) -> tuple[torch.Tensor, float]:
    """A regular grid covering a mixture target (means +- 8 sd) and its cell volume."""
    assert isinstance(target, GaussianMixture)
    spread = 8.0 * float(torch.linalg.eigvalsh(target.covariances).max().sqrt())
    lo = target.means.min(0).values - spread
    hi = target.means.max(0).values + spread
    axes = [torch.linspace(float(a), float(b), points_per_axis, dtype=torch.float64) for a, b in zip(lo, hi)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, target.dim)
    volume = float(torch.prod((hi - lo) / (points_per_axis - 1)))
    return grid, volume


def integrated_squared_error(oracle: Oracle, problem: Problem) -> dict[str, float]:
    """``int (f_hat - f)^2 dx`` by a Riemann sum on the target's grid (d = 1: 4001 points, d = 2: 301^2)."""
    grid, volume, truth = problem.cached("grid", lambda: _grid_with_truth(problem.target))
    estimate = torch.as_tensor(oracle.density(grid)).to(torch.float64)
    if not bool(torch.isfinite(estimate).all()):
        raise ValueError("estimated density has non-finite values on the grid")
    return {"ise": float(((estimate - truth) ** 2).sum() * volume)}


def _grid_with_truth(target: Target) -> tuple[torch.Tensor, float, torch.Tensor]:
    grid, volume = density_grid(target, 4001 if target.dim == 1 else 301)
    return grid, volume, target.log_prob_t(grid).exp()


def downstream_cells(quick: bool) -> list[Cell]:
    """The ISE cells: GMM-prior targets in d = 1, 2 at n = 256, 1024, 4096, 8 targets each
    (``quick``: n = 256, 1 target)."""
    ns = (256,) if quick else (256, 1024, 4096)
    return [Cell("ISE", "gmm", d, n, 1 if quick else 8, ("ise",)) for d in (1, 2) for n in ns]


def run_downstream(opts: Options, ctx: Context) -> dict[str, Any]:
    """SD-KDE ISE with learned / empirical / exact scores; entropy and Fisher information."""
    keys = opts.rows("downstream")
    cells = run_cells(downstream_cells(opts.quick), keys, ctx, opts, measure=integrated_squared_error,
                      desc="downstream ISE")
    for cell in cells:  # ratios against SD-KDE with the empirical score
        base = cell["rows"].get("sdkde-empirical")
        for row in cell["rows"].values():
            ok = row["status"] == "ok" and base is not None and base["status"] == "ok"
            row["ratio_to_sdkde_empirical"] = row["values"]["ise"] / base["values"]["ise"] if ok else None
    information: dict[str, Any] = {"rows": [], "error": None, "estimators": []}
    if opts.selected("information"):
        information.update(_run_information(keys, ctx, opts))
    return {"cells": cells, "information": information}


def _run_information(keys: Sequence[str], ctx: Context, opts: Options) -> dict[str, Any]:
    estimators: dict[str, Estimator] = {}
    notes = []
    for key in keys:
        try:
            if key == "discoformer":
                estimators[ESTIMATORS[key].label] = ctx.discoformer()
            elif key == "kde-scott":
                estimators[ESTIMATORS[key].label] = KDE()
            elif key == "sdkde-empirical":
                estimators[ESTIMATORS[key].label] = SDKDE()
        except Exception as exc:
            notes.append(f"{ESTIMATORS[key].label}: {_error_text(exc)}")
    dims, n = ((1, 2), 512) if opts.quick else ((1, 2, 10), 2048)
    # quick: fewer Monte-Carlo samples for the exact values (the module's default is 200 000)
    extra = {"n_truth": 20_000} if opts.quick else {}
    try:
        from .. import information as info_module

        rows = info_module.compare_estimators(estimators, dims=dims, n=n, seed=opts.seed, **extra)
    except Exception as exc:
        logger.warning("information estimates failed: %s", _error_text(exc))
        return {"error": _error_text(exc), "rows": [], "estimators": list(estimators), "notes": notes}
    return {"rows": _jsonable(list(rows)), "error": None, "estimators": list(estimators), "notes": notes,
            "dims": list(dims), "n": n}


# -- sampling ----------------------------------------------------------------------------------
SAMPLING_METHODS = ("annealed Langevin", "DDIM (diffusers)")
#: points of target 0 kept in the JSON for the scatter plot (d = 2)
_KEPT_POINTS = 400


def sampling_cells(quick: bool) -> list[Cell]:
    """GMM-prior targets; n training points; the samplers generate as many points as the fresh set."""
    if quick:
        return [Cell("sampling", "gmm", 2, 256, 1, ("energy_distance", "memorization"))]
    return [Cell("sampling", "gmm", d, 1024, 4, ("energy_distance", "memorization")) for d in (2, 10)]


def _sampling_source(key: str, problem: Problem, ctx: Context) -> Estimator | Oracle:
    if key == "exact":
        return problem.target
    if key == "discoformer":
        from ..discoformer import DiScoFormer

        # scores only: skip the d <= 2 grid normalisation that each noise level would repeat
        base = ctx.discoformer()
        return DiScoFormer(base.net, normalize=False, specialists=base.specialists)  # type: ignore[attr-defined]
    if key == "kde-scott":
        return KDE("scott")
    if key == "empirical":
        return KDE(bandwidth=1e-3)
    raise ValueError(f"unknown sampling source {key!r}")


#: points generated per target in the full sampling suite (the quick run: 200); 3000, up from 1000,
#: because the energy statistic's noise under the null falls only as 1/n
SAMPLING_N_GENERATED = 3000
#: sampler settings: the package defaults for annealed Langevin (levels from the data, 20 steps per
#: level) and 50 DDIM steps; quick: 10 levels x 3 steps and 10 DDIM steps (a smoke test only)
SAMPLING_SETTINGS = {False: {"annealed": {}, "ddim_steps": 50},
                     True: {"annealed": {"n_levels": 10, "steps_per_level": 3}, "ddim_steps": 10}}


def _generate(method: str, source: Estimator | Oracle, data: torch.Tensor, n_gen: int, quick: bool,
              generator: torch.Generator) -> np.ndarray:
    from .. import samplers

    if method == SAMPLING_METHODS[0]:
        points, _ = samplers.annealed_langevin(source, data, n_samples=n_gen, generator=generator, progress=False,
                                               **SAMPLING_SETTINGS[quick]["annealed"])
        return np.asarray(points, dtype=np.float64)
    from disco_score.integrations.diffusers import DiscoScoreModel, EmpiricalDiffusionPipeline
    from diffusers import DDIMScheduler

    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(source, data), DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_samples=n_gen, num_inference_steps=SAMPLING_SETTINGS[quick]["ddim_steps"], generator=generator,
               output_type="np")
    return np.asarray(out.samples, dtype=np.float64)


def run_sampling(opts: Options, ctx: Context) -> dict[str, Any]:
    """Generate with each (score source, sampler); energy distance to fresh draws, memorization."""
    from .. import samplers

    sources = opts.rows("sampling")
    cells = [dataclasses.replace(c, n_targets=opts.targets or c.n_targets)
             for c in sampling_cells(opts.quick) if opts.selected(c.label)]
    done = _logged_cells(opts, "sampling", sources)
    results = []
    for cell in cells:
        if cell.label in done:
            results.append(done[cell.label])
            logger.info("%s: reused (measured at %s)", cell.label, done[cell.label]["measured_at"].get("commit"))
            continue
        n_gen = 200 if opts.quick else SAMPLING_N_GENERATED
        per: dict[str, list[dict[str, Any]]] = {f"{s}|{m}": [] for s in sources for m in SAMPLING_METHODS}
        floors, floor_statistics, references, kept = [], [], [], {}
        for index in tqdm(range(cell.n_targets), desc=f"sampling d={cell.d}", disable=not opts.progress,
                          leave=False):
            # the queries are fresh draws of the target (independent of the training samples)
            problem = make_problem(cell.family, cell.d, cell.n, index, opts.seed, m=n_gen)
            fresh = problem.queries.numpy()
            second = draw(problem.target, n_gen, torch.Generator().manual_seed(
                derive_seed(opts.seed, "sampling-floor", cell.d, index))).numpy()
            data = problem.samples
            floors.append(samplers.energy_distance(second, fresh))
            floor_statistics.append(samplers.energy_statistic(second, fresh))
            references.append(samplers.memorization_fraction(second, data))
            if index == 0:
                kept["data"] = data[:_KEPT_POINTS, :2].tolist()
                kept["fresh"] = fresh[:_KEPT_POINTS, :2].tolist()
            for source_key in sources:
                for method in SAMPLING_METHODS:
                    key = f"{source_key}|{method}"
                    start = time.perf_counter()
                    try:
                        source = _sampling_source(source_key, problem, ctx)
                        gen = torch.Generator().manual_seed(derive_seed(opts.seed, "sampling", cell.d, index))
                        points = _generate(method, source, data, n_gen, opts.quick, gen)
                        if not np.isfinite(points).all():
                            raise FloatingPointError("non-finite generated points")
                        entry = {"status": "ok", "seconds": time.perf_counter() - start,
                                 "energy_distance": samplers.energy_distance(points, fresh),
                                 "energy_statistic": samplers.energy_statistic(points, fresh),
                                 "memorization": samplers.memorization_fraction(points, data)}
                        if index == 0:
                            kept[key] = np.round(points[:_KEPT_POINTS, :2], 4).tolist()
                    except Exception as exc:  # recorded, the run goes on
                        logger.debug("sampling %s failed", key, exc_info=True)
                        entry = {"status": "failed", "error": _error_text(exc)}
                    per[key].append(entry)
        rows = {}
        for key, entries in per.items():
            source_key, method = key.split("|")
            failures = [e["error"] for e in entries if e["status"] != "ok"]
            row: dict[str, Any] = {"label": f"{SAMPLING_SOURCES[source_key]}, {method}",
                                   "source": SAMPLING_SOURCES[source_key], "method": method,
                                   "per_target": entries, "status": "failed" if failures else "ok",
                                   "error": failures[0] if failures else None, "values": None}
            if not failures:
                row["values"] = {f: float(np.mean([e[f] for e in entries]))
                                 for f in ("energy_distance", "energy_statistic", "memorization", "seconds")}
                # spread over targets: the statistic's noise and the targets' differences together
                row["values"]["energy_statistic_se"] = (
                    float(np.std([e["energy_statistic"] for e in entries], ddof=1) / math.sqrt(len(entries)))
                    if len(entries) > 1 else None)
            rows[key] = row
        for key, row in rows.items():  # energy distance relative to the exact score, same sampler
            exact = rows.get(f"exact|{row['method']}")
            ok = row["status"] == "ok" and exact is not None and exact["status"] == "ok"
            row["ratio_to_exact"] = (row["values"]["energy_distance"] / exact["values"]["energy_distance"]
                                     if ok else None)
        results.append({"cell": cell.label, "d": cell.d, "n": cell.n, "n_generated": n_gen,
                        "targets": cell.n_targets, "settings": SAMPLING_SETTINGS[opts.quick], "floor": float(np.mean(floors)),
                        "floor_statistic": float(np.mean(floor_statistics)),
                        "memorization_reference": float(np.mean(references)), "rows": rows, "kept": kept})
        logger.info("%s: floor %.4f; %s", cell.label, results[-1]["floor"], "; ".join(
            f"{r['source']}, {r['method']}: " + (f"{r['values']['energy_distance']:.4f}" if r["values"] else "failed")
            for r in rows.values()))
        _log_cell(opts, "sampling", sources, results[-1])
    return {"cells": results}


# -- ppl ---------------------------------------------------------------------------------------


def run_ppl(opts: Options, ctx: Context) -> dict[str, Any]:
    """NUTS in BlackJAX, NumPyro and Pyro on (sample-based prior) x Gaussian likelihood, against the
    analytic posterior (``disco_score.integrations._conjugate``)."""
    from disco_score.integrations import _conjugate as conj

    keys = opts.rows("ppl")
    if opts.quick and opts.estimators is None:
        keys = ["kde-scott"]  # a DiScoFormer prior costs ~10x per gradient (n = 4000 keys); not a smoke test
    dims = (2,) if opts.quick else (2, 5)
    chains, warmup, draws = (2, 100, 100) if opts.quick else (4, 300, 500)
    results = []
    for d in dims:
        label = f"ppl d={d}"
        if not opts.selected(label):
            continue
        problem = conj.make_problem(d, seed=opts.seed)
        mean, cov = problem.posterior()
        rows: dict[str, Any] = {}
        for key in keys:
            try:
                estimator: Any = ctx.discoformer() if key == "discoformer" else KDE("scott")
                fitted = estimator.fit(problem.prior_samples)
                # the posterior under the prior density the samplers are given: exact for KDE,
                # importance sampling for DiScoFormer; separates estimator error from sampler error
                own_mean, own_cov = conj.own_reference(problem, fitted, seed=opts.seed)
                gap = conj.posterior_gap(problem, own_mean, own_cov)
            except Exception as exc:
                for host in conj.HOSTS:
                    rows[f"{key}|{host}"] = {"label": f"{PPL_ESTIMATORS[key]} / {host}",
                                             "estimator": PPL_ESTIMATORS[key], "host": host, "status": "failed",
                                             "error": _error_text(exc), "values": None}
                continue
            for host in tqdm(conj.HOSTS, desc=f"ppl d={d} {key}", disable=not opts.progress, leave=False):
                row: dict[str, Any] = {"label": f"{PPL_ESTIMATORS[key]} / {host}",
                                       "estimator": PPL_ESTIMATORS[key], "host": host, "values": None,
                                       "error": None, "status": "ok"}
                start = time.perf_counter()
                try:
                    host_chains = 1 if host == "pyro" else chains  # Pyro: one chain of chains x draws
                    samples, ess = conj.nuts_draws(host, problem, estimator, chains=host_chains, warmup=warmup,
                                                   draws=draws * chains // host_chains, seed=opts.seed)
                    errors = conj.moment_errors(samples, mean, cov, ess)
                    own = conj.moment_errors(samples, own_mean, own_cov, ess)
                    row["values"] = {**dataclasses.asdict(errors), "seconds": time.perf_counter() - start,
                                     "estimator_mean_gap": gap[0], "estimator_cov_gap": gap[1],
                                     "own_mean_z": own.mean_z, "own_cov_z": own.cov_z}
                except Exception as exc:
                    logger.debug("ppl %s %s failed", key, host, exc_info=True)
                    row.update(status="failed", error=_error_text(exc))
                rows[f"{key}|{host}"] = row
        results.append({"cell": label, "d": d, "n_prior_samples": int(problem.prior_samples.shape[0]),
                        "n_observations": int(problem.observations.shape[0]), "chains": chains,
                        "warmup": warmup, "draws": draws, "rows": rows})
        logger.info("%s: %s", label, "; ".join(
            f"{r['estimator']} / {r['host']}: " + (f"mean err {r['values']['mean_err']:.3f} sd, cov {r['values']['cov_rel']:.3f}"
                                                   if r["values"] else "failed") for r in rows.values()))
    return {"cells": results}


RUNNERS: dict[str, Callable[[Options, Context], dict[str, Any]]] = {
    "accuracy": run_accuracy, "scaling": run_scaling, "speed": run_speed, "downstream": run_downstream,
    "sampling": run_sampling, "ppl": run_ppl}


# ----------------------------------------------------------------------------------------------
# Comparison with an earlier run
# ----------------------------------------------------------------------------------------------
def flatten(result: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """(cell, row label, figure) -> value for every numeric cell value of a suite result."""
    flat = {}
    for cell in result.get("cells") or []:
        for row in cell["rows"].values():
            for name, value in (row.get("values") or {}).items():
                if isinstance(value, (int, float)) and row.get("status") == "ok":
                    flat[(cell["cell"], row["label"], name)] = float(value)
    return flat


def compare(old: dict[str, Any], new: dict[str, Any], source: str) -> dict[str, Any]:
    """Per-cell comparison of two results of the same suite (cells present in both)."""
    before, after = flatten(old), flatten(new)
    common = [key for key in after if key in before]
    rows = [{"cell": c, "row": r, "figure": f, "old": before[(c, r, f)], "new": after[(c, r, f)],
             "ratio": (after[(c, r, f)] / before[(c, r, f)]) if before[(c, r, f)] else None}
            for c, r, f in common]
    return {"against": source, "old_meta": old.get("meta", {}), "rows": rows,
            "only_old": len(set(before) - set(after)), "only_new": len(set(after) - set(before))}


# ----------------------------------------------------------------------------------------------
# Markdown and plots
# ----------------------------------------------------------------------------------------------
def _fmt(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if metric in ("relative_score_mse",):
        return f"{100 * value:.3g} %"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}×"


def _short(error: str | None, limit: int = 90) -> str:
    text = (error or "").replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _header(meta: dict[str, Any]) -> str:
    return (f"Command: `{meta.get('command')}` · commit `{meta.get('commit')}` · "
            f"{meta.get('cpu_count')} CPUs (torch threads {meta.get('torch_threads')}) · "
            f"torch {meta.get('torch')} · {meta.get('date')} · seed {meta.get('seed')}"
            + (" · **quick**" if meta.get("quick") else ""))


def _reused_cells(result: dict[str, Any]) -> list[str]:
    """A line naming the cells reused from earlier runs (``--resume``) measured at another commit."""
    commit = result.get("meta", {}).get("commit")
    earlier = [(c["cell"], c["measured_at"]) for c in result.get("cells", [])
               if isinstance(c, dict) and c.get("measured_at") and c["measured_at"].get("commit") != commit]
    if not earlier:
        return []
    parts = [f"{label} (commit `{at.get('commit')}`" + (f", {at['date']})" if at.get("date") else ")")
             for label, at in earlier]
    return ["Cells reused from earlier runs of the same suite (`--resume` or `--reuse`), measured at another commit: "
            + "; ".join(parts) + ".", ""]


def _skip_limit(row: dict[str, Any]) -> str:
    match = re.search(r"above n = (\d+)", row.get("error") or "")
    return match.group(1) if match else ""


def _cell_text(row: dict[str, Any], metric: str) -> tuple[str, str]:
    if row["status"] == "n/a":
        return "n/a", ""
    if row["status"] == "skipped":
        limit = _skip_limit(row)
        return (f"not run (n > {limit})" if limit else "not run"), ""
    if row["status"] != "ok":
        return f"failed: {_short(row.get('error'))}", ""
    ratios = row.get("ratio_to_oracle_kde") or {}
    return _fmt(row["values"].get(metric), metric), _ratio(ratios.get(metric))


def render_accuracy(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the accuracy suite: a table per group (P1, P2, P3 ...) with the ratios to the
    oracle-tuned KDE and the published figures, then the check against the protocol's reference values."""
    lines: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in result["cells"]:
        groups.setdefault(cell["group"], []).append(cell)
    for group, cells in groups.items():
        shown = cells[0]["shown"]
        lines += [f"### {group}", "", f"Mean over {cells[0]['targets']} target(s) per cell, m = {cells[0]['m']} "
                  f"queries per target; ×: ratio of the cell mean to the oracle-tuned KDE's; s / target: "
                  f"wall time of fit + evaluate (rows reusing the DiScoFormer fit are charged for their "
                  f"own work only).", ""]
        head = ["cell", "estimator"] + [x for m in shown for x in (METRIC_TITLES[m], "× oracle KDE")] + ["s / target"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cell in cells:
            for row in cell["rows"].values():
                texts = [t for m in shown for t in _cell_text(row, m)]
                secs = f"{row['seconds']:.2g}" if row.get("seconds") is not None else ""
                lines.append("| " + " | ".join([cell["cell"], row["label"], *texts, secs]) + " |")
            for pub in cell.get("published", []):
                texts = []
                for m in shown:
                    ratio = (pub.get("ratios") or {}).get(m)
                    texts += [_fmt(pub["values"].get(m), m),
                              f"{_ratio(ratio)} ({pub['ratio_note']})" if ratio is not None else "—"]
                lines.append("| " + " | ".join([cell["cell"], pub["label"], *texts, ""]) + " |")
        lines.append("")
    checks = []
    for cell in result["cells"]:
        for key, figures in cell.get("reference", {}).items():
            row = cell["rows"].get(key)
            if row is None:  # that estimator was not run
                continue
            for metric, ref in figures.items():
                measured = row["values"].get(metric) if row["status"] == "ok" else None
                checks.append((cell["cell"], row["label"], metric, measured, ref))
    if checks:
        lines += ["### Check against the protocol's reference values", "",
                  "| cell | estimator | figure | measured | protocol reference | measured / reference |",
                  "|---|---|---|---|---|---|"]
        for cell_label, label, metric, measured, ref in checks:
            ratio = _ratio(measured / ref) if measured is not None else "—"
            lines.append(f"| {cell_label} | {label} | {METRIC_TITLES[metric]} | {_fmt(measured, metric)} | "
                         f"{_fmt(ref, metric)} | {ratio} |")
        lines.append("")
    return lines


def _sweep_table(cells: list[dict[str, Any]], axis: str, metric: str,
                 slopes: dict[str, float] | None = None, theory: float | None = None) -> list[str]:
    keys = list(cells[0]["rows"])
    head = ["estimator"] + [f"{axis}={c[axis]}" for c in cells] + (["slope"] if slopes is not None else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        texts = []
        for cell in cells:
            row = cell["rows"][key]
            texts.append(_cell_text(row, metric)[0] if row["status"] != "failed"
                         else f"failed: {_short(row.get('error'), 40)}")
        if slopes is not None:
            texts.append(f"{slopes[key]:.2f}" if key in slopes else "—")
        lines.append("| " + " | ".join([cells[0]["rows"][key]["label"], *texts]) + " |")
    if theory is not None:
        lines.append("| KDE theory n^(-4/(d+6)) | " + " | ".join([""] * len(cells)) + f" | {theory:.2f} |")
    reasons = {f"{cell['rows'][key]['label']}: {cell['rows'][key]['error']}" for cell in cells for key in keys
               if cell["rows"][key]["status"] == "skipped" and cell["rows"][key].get("error")}
    if reasons:
        lines += [""] + [f"- {reason}" for reason in sorted(reasons)]
    return lines


def render_scaling(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the scaling suite: error against n per d (with fitted slopes and KDE's
    theoretical slope), error against d, and the cells left out of this run."""
    lines: list[str] = []
    cells = result["cells"]
    for d in sorted({c["d"] for c in cells if c["group"] == "vs n"}):
        sweep = [c for c in cells if c["group"] == "vs n" and c["d"] == d]
        family = "P2-style targets (K = 2, no rotation)" if sweep[0]["family"] == "p2" else "GMM prior"
        lines += [f"### Relative score MSE against n, d = {d} ({family}; {sweep[0]['targets']} targets per point)", ""]
        lines += _sweep_table(sweep, "n", "relative_score_mse", result.get("slopes", {}).get(str(d), {}),
                              result.get("kde_theory_slopes", {}).get(str(d)))
        lines.append("")
    sweep = [c for c in cells if c["group"] == "vs d"]
    if sweep:
        lines += [f"### Relative score MSE against d at n = {sweep[0]['n']} (GMM prior; "
                  f"{sweep[0]['targets']} targets per point)", ""]
        lines += _sweep_table(sweep, "d", "relative_score_mse") + [""]
    missing = [c.label for c in scaling_cells(bool(result.get("meta", {}).get("quick")))
               if c.label not in {cell["cell"] for cell in cells}]
    if missing:
        lines += [f"Not run in this run (left out with `--only`): {', '.join(missing)}.", ""]
    return lines


def render_speed(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the speed suite: per d, wall time (with the ratio to the package's KDE) and
    peak RSS against n = m; time-outs, OOM and failures by status."""
    lines = [f"Fit + evaluate with n = m; {result.get('dtype')}; evaluates {result.get('evaluates')}; "
             f"time-out {result.get('timeout_seconds'):g} s per configuration, each in its own process "
             f"(peak RSS includes the interpreter and the data). ×: time relative to the package's KDE "
             f"in the same run.", ""]
    cells = result["cells"]
    for d in sorted({c["d"] for c in cells}):
        sweep = [c for c in cells if c["d"] == d]
        head = ["estimator"] + [f"n=m={c['n']}" for c in sweep]
        lines += [f"### d = {d}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in sweep[0]["rows"]:
            texts = []
            for cell in sweep:
                row = cell["rows"][key]
                if row["status"] == "ok":
                    v = row["values"]
                    texts.append(f"{v['seconds']:.3g} s ({_ratio(row.get('ratio_to_kde'))}), "
                                 f"{v['peak_rss_mb']:.0f} MB")
                else:
                    texts.append(f"**{row['status']}**: {_short(row.get('error'), 60)}")
            lines.append("| " + " | ".join([sweep[0]["rows"][key]["label"], *texts]) + " |")
        lines.append("")
    return lines


def render_downstream(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the downstream suite: density ISE against n per d with ratios to SD-KDE
    (empirical score), then the entropy / Fisher-information table and the estimators left out."""
    lines: list[str] = []
    cells = result["cells"]
    for d in sorted({c["d"] for c in cells}):
        sweep = [c for c in cells if c["d"] == d]
        lines += [f"### Integrated squared error of the density, d = {d} (GMM prior; "
                  f"{sweep[0]['targets']} targets per point)", ""]
        lines += _sweep_table(sweep, "n", "ise")
        ratios = []
        for key in sweep[0]["rows"]:
            vals = [c["rows"][key].get("ratio_to_sdkde_empirical") for c in sweep]
            ratios.append(f"{sweep[0]['rows'][key]['label']}: " + ", ".join(_ratio(v) for v in vals))
        lines += ["", "ISE relative to SD-KDE (empirical score), by n: " + "; ".join(ratios), ""]
    info = result.get("information") or {}
    lines += ["### Entropy and Fisher information against exact values (disco_score.information)", ""]
    if info.get("error"):
        lines += [f"failed: {_short(info['error'], 300)}", ""]
    elif info.get("rows"):
        columns: list[str] = []
        for row in info["rows"]:
            columns += [k for k in row if k not in columns]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in info["rows"]:
            lines.append("| " + " | ".join(
                f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in columns) + " |")
        lines.append("")
    else:
        lines += ["(not run)", ""]
    for note in info.get("notes") or []:
        lines.append(f"- not included: {note}")
    return lines


def _milli(value: float | None) -> str:
    """A squared energy distance in units of 10^-3 ("n/a" when missing)."""
    return "n/a" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{1e3 * value:.2f}"


def render_sampling(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the sampling suite: per cell, energy distance (with the noise floor and the
    ratio to the exact score), the unbiased squared energy distance, memorization and seconds per
    target for each (score source, sampler)."""
    lines: list[str] = []
    for cell in result["cells"]:
        lines += [f"### d = {cell['d']}: {cell['n']} training points, {cell['n_generated']} generated, "
                  f"{cell['targets']} GMM-prior target(s)", "",
                  f"Energy distance to {cell['n_generated']} fresh target draws (lower is better); its noise floor, "
                  f"two independent fresh sets, is **{cell['floor']:.4g}**. Memorization: fraction of generated "
                  f"points closer to a training point than that point's own nearest training neighbour; fresh "
                  f"draws give **{cell['memorization_reference']:.3g}**, copies of the data give 1. "
                  f"× exact: energy distance over the same sampler's with the exact score. Unbiased ED²: the "
                  f"U-statistic estimate of the squared energy distance (`samplers.energy_statistic`, ×10⁻³; "
                  f"expectation 0 for draws of the target itself, two fresh sets give "
                  f"**{_milli(cell.get('floor_statistic'))}**), ± its standard error over the targets. "
                  f"Settings: annealed Langevin {cell['settings']['annealed'] or 'package defaults'}, "
                  f"DDIM {cell['settings']['ddim_steps']} steps.", "",
                  "| score source | sampler | energy distance | × exact | unbiased ED² (×10⁻³) | memorization | s / target |",
                  "|---|---|---|---|---|---|---|"]
        for row in cell["rows"].values():
            if row["status"] != "ok":
                lines.append(f"| {row['source']} | {row['method']} | failed: {_short(row.get('error'))} |  |  |  |  |")
                continue
            v = row["values"]
            statistic = (f"{_milli(v['energy_statistic'])} ± {_milli(v.get('energy_statistic_se'))}"
                         if "energy_statistic" in v else "not measured")
            lines.append(f"| {row['source']} | {row['method']} | {v['energy_distance']:.4g} | "
                         f"{_ratio(row.get('ratio_to_exact'))} | {statistic} | {v['memorization']:.3g} | "
                         f"{v['seconds']:.3g} |")
        lines.append("")
    return lines


def render_ppl(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the ppl suite: per d, the NUTS posterior errors of each (prior estimator, host)
    with Monte-Carlo standard errors, z-scores and the estimator's own error."""
    lines: list[str] = []
    for cell in result["cells"]:
        lines += [f"### d = {cell['d']}: prior N(mu0, Sigma0) seen through {cell['n_prior_samples']} samples, "
                  f"{cell['n_observations']} Gaussian observations", "",
                  f"NUTS, {cell['warmup']} warm-up steps, {cell['chains']} chains x {cell['draws']} draws (Pyro: one "
                  f"chain of {cell['chains'] * cell['draws']}). Errors against the analytic posterior: mean error = "
                  f"max over coordinates of |mean error| in posterior sds, with its Monte-Carlo standard error "
                  f"1/sqrt(ESS); covariance error = relative Frobenius error, with the error a sample covariance of "
                  f"ESS exact draws would have; z = the largest error in standard errors (covariance: whitened "
                  f"entries). \"Estimator's own error\": the distance of the posterior under the fitted prior density "
                  f"(exact for KDE, a Gaussian mixture; importance sampling with 20000 draws for DiScoFormer) "
                  f"from the analytic one, before any sampling. \"z vs own\": the NUTS draws against that "
                  f"posterior, i.e. the sampler's error alone (mean, covariance; about 2-3 is the largest of "
                  f"d or d^2 standard normal errors).", "",
                  "| prior estimator | host | mean error [sd] | MC s.e. | z | cov. error | MC s.e. | z | min ESS | "
                  "estimator's own error (mean, cov) | z vs own (mean, cov) | s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in cell["rows"].values():
            if row["status"] != "ok":
                lines.append(f"| {row['estimator']} | {row['host']} | failed: {_short(row.get('error'))} |"
                             + " |" * 10)
                continue
            v = row["values"]
            own = (f"{v['estimator_mean_gap']:.3f}, {v['estimator_cov_gap']:.3f}" if "estimator_mean_gap" in v
                   else "—")
            own_z = f"{v['own_mean_z']:.2f}, {v['own_cov_z']:.2f}" if "own_mean_z" in v else "—"
            lines.append(f"| {row['estimator']} | {row['host']} | {v['mean_err']:.3f} | {v['mean_se']:.3f} | "
                         f"{v['mean_z']:.2f} | {v['cov_rel']:.3f} | {v['cov_se']:.3f} | {v['cov_z']:.2f} | "
                         f"{min(v['ess_mean'], v['ess_cov']):.0f} | {own} | {own_z} | {v['seconds']:.3g} |")
        lines.append("")
    return lines


RENDERERS = {"accuracy": render_accuracy, "scaling": render_scaling, "speed": render_speed,
             "downstream": render_downstream, "sampling": render_sampling, "ppl": render_ppl}
TITLES = {"accuracy": "Accuracy (protocols P1, P2, P3)", "scaling": "Scaling with n and d",
          "speed": "Speed and memory", "downstream": "Downstream: SD-KDE, entropy, Fisher information",
          "sampling": "Sampling with no training: annealed Langevin and DDIM driven by each score",
          "ppl": "Probabilistic programming: NUTS with a sample-based prior against the analytic posterior"}


def render_comparison(comparison: dict[str, Any]) -> list[str]:
    """Markdown lines for a :func:`compare` result: old, new and new / old for every figure in both runs."""
    old = comparison.get("old_meta", {})
    lines = [f"#### Compared with `{comparison['against']}` (commit `{old.get('commit')}`, {old.get('date')})", "",
             f"{len(comparison['rows'])} figures in both runs; {comparison['only_old']} only in the old run, "
             f"{comparison['only_new']} only in this one.", "",
             "| cell | estimator | figure | old | new | new / old |", "|---|---|---|---|---|---|"]
    for r in comparison["rows"]:
        lines.append(f"| {r['cell']} | {r['row']} | {r['figure']} | {r['old']:.4g} | {r['new']:.4g} | "
                     f"{_ratio(r['ratio'])} |")
    return lines + [""]


def write_report(out_dir: Path) -> Path:
    """Regenerate BENCHMARKS.md and docs/images/bench_*.png from every suite JSON in benchmarks/."""
    path = out_dir / "BENCHMARKS.md"
    lines = ["# Benchmarks", "",
             "Generated by `python -m disco_score.bench` (also `disco-score bench`) from the JSON files in "
             "`benchmarks/`; do not edit by hand. Definitions: the benchmark protocol "
             "(GMM prior, P1/P2/P3, metrics, baselines). Every figure below comes from the run whose "
             "command, commit, CPU count and date stand above its tables; figures labelled "
             "\"published, not re-measured\" are quoted from the paper for orientation only.", ""]
    for suite in SUITES:
        file = out_dir / "benchmarks" / f"{suite}.json"
        if not file.exists():
            continue
        result = json.loads(file.read_text())
        lines += [f"## {TITLES[suite]}", "", _header(result.get("meta", {})), ""]
        lines += _reused_cells(result)
        if result.get("status") != "ok":
            lines += ["**Suite failed:**", "", "```", str(result.get("error", "")).strip()[-3000:], "```", ""]
        else:
            lines += RENDERERS[suite](result)
            for image in _plot(suite, result, out_dir / "docs" / "images"):
                lines += [f"![{suite}](docs/images/{image.name})", ""]
        if result.get("comparison"):
            lines += render_comparison(result["comparison"])
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _plot(suite: str, result: dict[str, Any], image_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'disco-score[bench]'); no plots")
        return []
    if not result.get("cells"):
        return []
    image_dir.mkdir(parents=True, exist_ok=True)
    try:
        paths = PLOTTERS[suite](result, image_dir, plt)
    except Exception:  # a broken plot must not lose the tables
        logger.exception("plotting the %s suite failed", suite)
        return []
    finally:
        plt.close("all")
    return paths


def _plot_accuracy(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    panels = [m for m in METRICS if any(m in c["shown"] for c in result["cells"])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for ax, metric in zip(axes[:, 0], panels):
        cells = [c for c in result["cells"] if metric in c["shown"]]
        keys = [k for k in cells[0]["rows"] if k != ORACLE_KDE]
        width = 0.8 / max(1, len(keys))
        for j, key in enumerate(keys):
            heights = [((c["rows"][key].get("ratio_to_oracle_kde") or {}).get(metric) or np.nan) for c in cells]
            ax.bar(np.arange(len(cells)) + j * width, heights, width, label=cells[0]["rows"][key]["label"])
        ax.axhline(1.0, color="k", lw=1, ls="--", label="KDE (oracle-tuned)")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(cells)) + 0.4 - width / 2, [c["cell"] for c in cells], rotation=15, fontsize=8)
        ax.set_ylabel(f"{METRIC_TITLES[metric]} / oracle-tuned KDE")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Accuracy relative to oracle-tuned KDE (lower is better)")
    fig.tight_layout()
    path = image_dir / "bench_accuracy.png"
    fig.savefig(path, dpi=110)
    return [path]


def _plot_scaling(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    metric = "relative_score_mse"
    cells = result["cells"]
    dims = sorted({c["d"] for c in cells if c["group"] == "vs n"})
    paths = []
    if dims:
        fig, axes = plt.subplots(1, len(dims), figsize=(4.6 * len(dims), 4), squeeze=False)
        for ax, d in zip(axes[0], dims):
            sweep = [c for c in cells if c["group"] == "vs n" and c["d"] == d]
            slopes = result.get("slopes", {}).get(str(d), {})
            for key in sweep[0]["rows"]:
                pts = [(c["n"], c["rows"][key]["values"][metric]) for c in sweep if c["rows"][key]["status"] == "ok"]
                if pts:
                    label = sweep[0]["rows"][key]["label"] + (f" (slope {slopes[key]:.2f})" if key in slopes else "")
                    ax.loglog(*zip(*pts), marker="o", label=label)
            anchor = next((c["rows"][k]["values"][metric] for k in (ORACLE_KDE, "kde-scott") for c in sweep[:1]
                           if k in c["rows"] and c["rows"][k]["status"] == "ok"), None)
            if anchor is not None:
                ns = np.array([c["n"] for c in sweep], dtype=float)
                rate = -4.0 / (d + 6)
                ax.loglog(ns, anchor * (ns / ns[0]) ** rate, "k--", lw=1, label=f"n^(-4/(d+6)) = n^{rate:.2f}")
            ax.set_title(f"d = {d}")
            ax.set_xlabel("n")
            ax.set_ylabel(METRIC_TITLES[metric])
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(image_dir / "bench_scaling_n.png")
        fig.savefig(paths[-1], dpi=110)
    sweep = [c for c in cells if c["group"] == "vs d"]
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in sweep[0]["rows"]:
            pts = [(c["d"], c["rows"][key]["values"][metric]) for c in sweep if c["rows"][key]["status"] == "ok"]
            if pts:
                ax.semilogx(*zip(*pts), marker="o", label=sweep[0]["rows"][key]["label"])
        ax.set_xlabel("d")
        ax.set_ylabel(METRIC_TITLES[metric])
        ax.set_title(f"n = {sweep[0]['n']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(image_dir / "bench_scaling_d.png")
        fig.savefig(paths[-1], dpi=110)
    return paths


def _plot_speed(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    cells = result["cells"]
    dims = sorted({c["d"] for c in cells})
    fig, axes = plt.subplots(2, len(dims), figsize=(4.6 * len(dims), 7), squeeze=False)
    for col, d in enumerate(dims):
        sweep = [c for c in cells if c["d"] == d]
        for key in sweep[0]["rows"]:
            ok = [c for c in sweep if c["rows"][key]["status"] == "ok"]
            label = sweep[0]["rows"][key]["label"]
            if ok:
                ns = [c["n"] for c in ok]
                axes[0, col].loglog(ns, [c["rows"][key]["values"]["seconds"] for c in ok], marker="o", label=label)
                axes[1, col].loglog(ns, [c["rows"][key]["values"]["peak_rss_mb"] for c in ok], marker="o", label=label)
            timed_out = [c["n"] for c in sweep if c["rows"][key]["status"] in ("timeout", "oom")]
            if timed_out:
                axes[0, col].scatter(timed_out, [result["timeout_seconds"]] * len(timed_out), marker="x", color="r")
        axes[0, col].set_title(f"d = {d} (x: time-out / OOM)")
        axes[0, col].set_ylabel("fit + evaluate [s]")
        axes[1, col].set_ylabel("peak RSS [MB]")
        axes[1, col].set_xlabel("n = m")
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    path = image_dir / "bench_speed.png"
    fig.savefig(path, dpi=110)
    return [path]


def _plot_downstream(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    cells = result["cells"]
    dims = sorted({c["d"] for c in cells})
    if not dims:
        return []
    fig, axes = plt.subplots(1, len(dims), figsize=(5 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        sweep = [c for c in cells if c["d"] == d]
        for key in sweep[0]["rows"]:
            pts = [(c["n"], c["rows"][key]["values"]["ise"]) for c in sweep if c["rows"][key]["status"] == "ok"]
            if pts:
                ax.loglog(*zip(*pts), marker="o", label=sweep[0]["rows"][key]["label"])
        ax.set_title(f"density ISE, d = {d}")
        ax.set_xlabel("n")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = image_dir / "bench_downstream.png"
    fig.savefig(path, dpi=110)
    return [path]


def _plot_sampling(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    cell = next((c for c in result["cells"] if c["d"] == 2 and c.get("kept")), None)
    if cell is None:
        return []
    kept = cell["kept"]
    sources = list(dict.fromkeys(key.split("|")[0] for key in cell["rows"]))
    fig, axes = plt.subplots(len(SAMPLING_METHODS), len(sources) + 1,
                             figsize=(3.2 * (len(sources) + 1), 3.2 * len(SAMPLING_METHODS)),
                             sharex=True, sharey=True, squeeze=False)
    data, fresh = np.asarray(kept["data"]), np.asarray(kept["fresh"])
    axes[0, 0].scatter(data[:, 0], data[:, 1], s=2, c="0.3")
    axes[0, 0].set_title("training data (first target)", fontsize=8)
    axes[1, 0].scatter(fresh[:, 0], fresh[:, 1], s=2, c="0.3")
    axes[1, 0].set_title("fresh target draws", fontsize=8)
    for col, source in enumerate(sources, start=1):
        for row_index, method in enumerate(SAMPLING_METHODS):
            key = f"{source}|{method}"
            ax = axes[row_index, col]
            if key in kept:
                pts = np.asarray(kept[key])
                ax.scatter(pts[:, 0], pts[:, 1], s=2, c=f"C{col}")
            ax.set_title(f"{SAMPLING_SOURCES[source]}\n{method}", fontsize=8)
    fig.suptitle("Generated points, d = 2 (the first target of the sampling suite)")
    fig.tight_layout()
    path = image_dir / "bench_sampling.png"
    fig.savefig(path, dpi=100)
    return [path]


def _plot_ppl(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    cells = [c for c in result["cells"] if any(r["status"] == "ok" for r in c["rows"].values())]
    if not cells:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (figure, se, title) in zip(axes, [("mean_err", "mean_se", "max mean error [posterior sd]"),
                                               ("cov_rel", "cov_se", "relative covariance error")]):
        labels, values, errors = [], [], []
        for cell in cells:
            for row in cell["rows"].values():
                if row["status"] == "ok":
                    labels.append(f"d={cell['d']} {row['estimator']} / {row['host']}")
                    values.append(row["values"][figure])
                    errors.append(row["values"][se])
        y = np.arange(len(labels))
        ax.barh(y, values, color=["C0" if "DiScoFormer" in lab else "C1" for lab in labels])
        ax.errorbar(errors, y, fmt="k|", ms=12, label="Monte-Carlo s.e.")
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlabel(title)
        ax.legend(fontsize=7)
    fig.suptitle("NUTS posterior with a sample-based prior vs the analytic posterior")
    fig.tight_layout()
    path = image_dir / "bench_ppl.png"
    fig.savefig(path, dpi=110)
    return [path]


PLOTTERS = {"accuracy": _plot_accuracy, "scaling": _plot_scaling, "speed": _plot_speed,
            "downstream": _plot_downstream, "sampling": _plot_sampling, "ppl": _plot_ppl}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Plain JSON: numpy/torch scalars to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def register_suite(name: str, runner: Callable[[Options, Context], dict[str, Any]],
                   renderer: Callable[[dict[str, Any]], list[str]], title: str,
                   plotter: Callable[[dict[str, Any], Path, Any], list[Path]] | None = None,
                   rows: dict[str, str] | None = None, defaults: list[str] | None = None) -> None:
    """Add a suite defined in another module of the benchmark package (run, report, plot, rows)."""
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m disco_score.bench`` (also ``disco-score bench``); see :func:`main`."""
    known = sorted(set(ESTIMATORS).union(*SUITE_ROWS.values()))
    parser = argparse.ArgumentParser(
        prog="python -m disco_score.bench",
        description="Benchmarks of disco-score against classical baselines; writes benchmarks/<suite>.json, "
                    "BENCHMARKS.md and docs/images/bench_*.png under --out-dir.")
    parser.add_argument("suite", nargs="?", default="all", choices=[*SUITES, "all"])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1-2 targets per cell (smoke test)")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where benchmarks/, BENCHMARKS.md and "
                        "docs/images/ go (default: the current directory)")
    parser.add_argument("--compare", type=Path, default=None, metavar="OLD_JSON",
                        help="an earlier benchmarks/<suite>.json to compare this run's same suite with")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--estimators", nargs="+", default=None, metavar="KEY",
                        help=f"rows to run (each suite takes those it knows); keys: {', '.join(known)}")
    parser.add_argument("--only", default=None, metavar="REGEX",
                        help="run only the cells whose label matches (e.g. 'P1 d=2', 'speed d=2 n=1024')")
    parser.add_argument("--timeout", type=float, default=None,
                        help="speed suite: seconds per configuration (default 300, quick 60)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--targets", type=int, default=None, metavar="N",
                        help="targets per cell instead of the protocol's 8 (P2: 4) — cheaper, noisier")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the cells an interrupted run of the same suite, seed and rows logged "
                        "in <out-dir>/benchmarks/cells.jsonl")
    parser.add_argument("--reuse", type=Path, default=None, metavar="JSON",
                        help="reuse the cells of this earlier benchmarks/<suite>.json (one suite; same seed and "
                        "rows), keeping the commit each was measured at, except those matching --rerun")
    parser.add_argument("--rerun", default=None, metavar="REGEX",
                        help="with --reuse: cells to measure again (e.g. 'd=10' after a new d = 10 checkpoint)")
    return parser


def _command_line(argv: Sequence[str]) -> str:
    prog = "disco-score bench" if Path(sys.argv[0]).name == "disco-score" else "python -m disco_score.bench"
    return " ".join([prog, *map(shlex.quote, argv)])


def _check_regex(parser: argparse.ArgumentParser, flag: str, pattern: str | None) -> None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            parser.error(f"{flag} is not a valid regular expression: {exc}")


def _read_result(parser: argparse.ArgumentParser, flag: str, path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        parser.error(f"{flag}: cannot read {path}: {exc}")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen suite(s), write JSON and regenerate BENCHMARKS.md and plots.

    Returns 0 when every suite ran (rows that failed are recorded in the results, not raised),
    1 if a whole suite failed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    known = set(ESTIMATORS).union(*SUITE_ROWS.values())
    unknown = [key for key in args.estimators or [] if key not in known]
    if unknown:
        parser.error(f"unknown estimator key(s) {unknown}; choose from {sorted(known)}")
    _check_regex(parser, "--only", args.only)
    if args.targets is not None and args.targets < 1:
        parser.error("--targets must be a positive integer")
    if args.timeout is not None and not args.timeout > 0:
        parser.error("--timeout must be a positive number of seconds")
    reuse = _read_result(parser, "--reuse", args.reuse)
    if reuse is not None and args.suite != reuse.get("suite"):
        parser.error(f"--reuse: {args.reuse} holds the {reuse.get('suite')!r} suite; run that suite alone")
    if args.rerun is not None and args.reuse is None:
        parser.error("--rerun needs --reuse")
    _check_regex(parser, "--rerun", args.rerun)
    old = _read_result(parser, "--compare", args.compare)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    opts = Options(quick=args.quick, seed=args.seed, estimators=args.estimators, only=args.only,
                   timeout=args.timeout, progress=not args.no_progress,
                   cell_log=args.out_dir / "benchmarks" / "cells.jsonl", resume=args.resume,
                   targets=args.targets, reuse=reuse, rerun=args.rerun)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if reuse is not None:
        meta = reuse.get("meta", {})
        ours = (opts.seed, opts.quick, opts.rows(args.suite))
        if (meta.get("seed"), meta.get("quick"), meta.get("estimators")) != ours:
            parser.error(f"--reuse: {args.reuse} was run with seed {meta.get('seed')}, quick {meta.get('quick')}, "
                         f"rows {meta.get('estimators')}; this run has seed {ours[0]}, quick {ours[1]}, rows {ours[2]}")
    (args.out_dir / "benchmarks").mkdir(parents=True, exist_ok=True)
    command = _command_line(argv)
    logger.info("%s\nseed %d (per-target seeds: crc32 of 'seed/family/d/index[/n]', recorded in the JSON)",
                command, opts.seed)
    ctx = Context()
    failed = []
    for suite in suites:
        meta = run_metadata(command, opts.seed, opts.quick)
        meta["estimators"] = opts.rows(suite)
        start = time.perf_counter()
        logger.info("== %s ==", suite)
        try:
            result: dict[str, Any] = {"status": "ok", **RUNNERS[suite](opts, ctx)}
        except Exception:
            logger.exception("suite %s failed", suite)
            result = {"status": "failed", "error": traceback.format_exc()}
            failed.append(suite)
        result = {"suite": suite, "meta": meta, "seconds": time.perf_counter() - start, **result}
        if old is not None:
            if old.get("suite") == suite:
                result["comparison"] = compare(old, result, str(args.compare))
                for line in render_comparison(result["comparison"]):
                    logger.info("%s", line)
            elif len(suites) == 1:
                logger.warning("--compare file holds suite %r, not %r: nothing compared", old.get("suite"), suite)
        out = args.out_dir / "benchmarks" / f"{suite}.json"
        out.write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n")
        logger.info("%s suite: %.0f s, wrote %s", suite, result["seconds"], out)
    report = write_report(args.out_dir)
    logger.info("wrote %s", report)
    return 1 if failed else 0


