"""Estimator rows: the run-wide :class:`Context`, :class:`RowSpec`, :data:`ESTIMATORS` (the rows of the
accuracy, scaling and downstream suites), the row keys of the speed, sampling and ppl suites, and
how one row is evaluated on one problem and aggregated over a cell's targets.

Baselines and metrics: ``docs/benchmark-protocol.md``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..base import Estimator, Oracle
from ..kde import KDE, SDKDE, oracle_tuned_kde
from ..targets import GaussianMixture
from .problems import Problem, _error_text

logger = logging.getLogger(__name__)

METRICS = ("relative_score_mse", "score_mse", "log_density_mse")
#: figures averaged into a cell (per-target entries may carry more, e.g. the tuned bandwidth)
FIGURES = (*METRICS, "ise")
METRIC_TITLES = {"relative_score_mse": "rel. score MSE", "score_mse": "score MSE",
                 "log_density_mse": "log-density MSE", "ise": "ISE"}
ORACLE_KDE = "kde-oracle"


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


def query_metrics(oracle: Oracle, problem: Problem) -> dict[str, float]:
    """The protocol's three figures at the problem's queries."""
    log_p, score = oracle.log_density_and_score(problem.queries)
    return {"relative_score_mse": metrics.relative_score_mse(score, problem.true_score),
            "score_mse": metrics.score_mse(score, problem.true_score),
            "log_density_mse": metrics.log_density_mse(log_p, problem.true_log_density)}


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


# ----------------------------------------------------------------------------------------------
# Figures as text: the log lines of every suite and the tables of BENCHMARKS.md
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


def _row_summary(row: dict[str, Any], shown: Any) -> str:
    if row["status"] != "ok":
        return f"{row['label']} {row['status']}"
    return f"{row['label']} " + ", ".join(_fmt(row["values"].get(k), k) for k in shown)
