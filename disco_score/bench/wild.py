"""The wild suite: ``python -m disco_score.bench wild`` (protocol W1–W3 of docs/benchmark-protocol.md).

Data the model was not built around, against the estimators a user can run without the truth:

* **W1** classic 2-D toy sets (:mod:`.toys`), n training and n fresh test draws: held-out
  log-likelihood per point (every row is normalised: KDE, mixtures and flows by construction,
  DiScoFormer by its d <= 2 grid quadrature). ``W1 sampling``: annealed Langevin and DDIM driven by
  each estimator, unbiased energy statistic to fresh draws (± s.e. over blocks) and memorisation.
* **W2** exact non-mixture targets across dimensions: relative score MSE and centred log-density MSE
  (DiScoFormer is not normalised above d = 2, so every row is compared up to a constant).
* **W3** real posteriors (:mod:`.posteriors`), NUTS draws cached in the package: relative score MSE
  and centred log-density MSE against the exact unnormalised log-posterior.

Rows: DiScoFormer with and without ``adapt``, KDE with the LOO-CV bandwidth, the score rule and
Scott's rule, scikit-learn's GaussianMixture with K by BIC, a zuko spline flow under a fixed
budget (:mod:`.baselines`), and the oracle-tuned KDE where the truth is known. Fit and evaluation
seconds are recorded beside every figure; the tables mark the best row per line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics
from ..base import Oracle
from ..kde import KDE, KDEOracle, _kernel_covariance, _sample_covariance, oracle_tuned_kde
from ..summary import SummaryConfig, distil, teacher_subset
from ..targets import Banana, Funnel, GaussianMixture, ProductStudentT, Target
from ..whitening import scott_factor
from .baselines import BICGaussianMixture, SplineFlow
from .cells import Options, _log_cell, _logged_cells, kept_rows
from .problems import _error_text, derive_seed, draw
from .registry import register_suite
from .rows import ORACLE_KDE, Context, _short
from .suites import SAMPLING_METHODS, _generate
from .suites import _sampling_source as _gmm_sampling_source

logger = logging.getLogger(__name__)

#: rows of the wild suite, by CLI key
WILD_ROWS = {
    "discoformer": "DiScoFormer",
    "discoformer-adapt": "DiScoFormer + adapt",
    "kde-cv": "KDE (LOO-CV)",
    "kde-score": "KDE (score rule)",
    "kde-scott": "KDE (Scott)",
    "gmm-bic": "GaussianMixture (K by BIC)",
    "flow": "spline flow (zuko NSF)",
    ORACLE_KDE: "KDE (oracle-tuned)",
    "discoformer-summary": "DiScoFormer summary",
}
#: the rows ``bench wild`` runs by default (the summary is measured in the ``summary`` suite)
WILD_DEFAULTS = [key for key in WILD_ROWS if key != "discoformer-summary"]
#: training budget of the per-data-set flow (wall clock, 2 CPU cores); the quick run's is a smoke test
#: per protocol: 60 s where the figure is the held-out likelihood a flow is trained for (W1), 30 s for
#: the score and log-density errors of W2/W3, whose many cells would otherwise be mostly flow training
FLOW_SECONDS = {False: {"W1": 60.0, "W2": 30.0, "W3": 30.0}, True: {"W1": 2.0, "W2": 2.0, "W3": 2.0}}
ADAPT_STEPS = {False: 16, True: 2}
W1_SIZES = (500, 2000, 8000)
W2_SIZES = (512, 2048, 16384)
W3_SIZES = (512, 2048, 8192)
N_QUERIES = 1024
#: generated points per W1 sampling run, and the blocks its standard error is estimated over
SAMPLING_POINTS = {False: 2000, True: 200}
SAMPLING_BLOCKS = 5
SAMPLING_SOURCES = ("discoformer", "kde-cv", "kde-scott", "gmm-bic", "flow")


@dataclass
class WildProblem:
    """One data set: ``samples`` (n, d), ``queries`` (m, d) and, where known, the exact values there.

    ``true_log_density`` is normalised for W2 targets and up to a constant for W3 posteriors; W1 toy
    sets have none (their figure is the held-out likelihood)."""

    protocol: str
    name: str
    samples: torch.Tensor
    queries: torch.Tensor
    true_log_density: torch.Tensor | None = None
    true_score: torch.Tensor | None = None
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.samples.shape[1])


# ----------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------
def w1_problem(name: str, n: int, seed: int) -> WildProblem:
    """Toy set ``name``: n training draws and n fresh test draws, from seeds derived from (seed, name, n)."""
    from .toys import draw_toy

    train_seed, test_seed = derive_seed(seed, "W1", name, n), derive_seed(seed, "W1-test", name, n)
    samples = torch.as_tensor(draw_toy(name, n, train_seed), dtype=torch.float64)
    queries = torch.as_tensor(draw_toy(name, n, test_seed), dtype=torch.float64)
    return WildProblem("W1", name, samples, queries, seed=train_seed)


def _log_uniform(gen: torch.Generator, low: float, high: float) -> float:
    return math.exp(math.log(low) + (math.log(high) - math.log(low)) * float(torch.rand((), generator=gen)))


def _tight_mixture(d: int, gen: torch.Generator) -> GaussianMixture:
    """4–12 equal-ish components whose sd is 1–10 % of the spread of their means (log-uniform)."""
    k = int(torch.randint(4, 13, (), generator=gen))
    means = 4.0 * (torch.rand(k, d, generator=gen, dtype=torch.float64) * 2 - 1)
    sds = torch.tensor([_log_uniform(gen, 0.01, 0.1) * 4.0 for _ in range(k)], dtype=torch.float64)
    weights = torch.distributions.Dirichlet(torch.full((k,), 5.0, dtype=torch.float64)).sample()
    return GaussianMixture(weights, means, sds[:, None, None] ** 2 * torch.eye(d, dtype=torch.float64))


def _mixed_scale_mixture(d: int, gen: torch.Generator) -> GaussianMixture:
    """3–6 components with sds over 1.7 decades and weights down to 1 %, anisotropic and rotated."""
    k = int(torch.randint(3, 7, (), generator=gen))
    means = 3.0 * (torch.rand(k, d, generator=gen, dtype=torch.float64) * 2 - 1)
    raw = torch.rand(k, generator=gen, dtype=torch.float64) ** 3 + 0.01
    weights = raw / raw.sum()
    covs = []
    for _ in range(k):
        sd = _log_uniform(gen, 0.02, 1.0)
        axes = torch.tensor([sd * _log_uniform(gen, 0.3, 1.0) for _ in range(d)], dtype=torch.float64)
        q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        covs.append(q @ torch.diag(axes ** 2) @ q.T)
    return GaussianMixture(weights, means, torch.stack(covs))


def _families() -> dict[str, tuple[tuple[int, ...], Callable[[int, torch.Generator], Target]]]:
    """W2 family name -> (dimensions, builder of one random member)."""
    fams: dict[str, tuple[tuple[int, ...], Callable[[int, torch.Generator], Target]]] = {
        "banana": ((2, 10), lambda d, g: Banana(d, curvature=_log_uniform(g, 0.3, 1.0), scale=2.0)),
        "funnel": ((2, 10), lambda d, g: Funnel(d, scale=_log_uniform(g, 1.0, 2.0))),
        "student-t product": ((2, 10), lambda d, g: ProductStudentT(d, df=_log_uniform(g, 1.5, 10.0))),
        "tight mixture": ((2, 10), _tight_mixture),
        "mixed-scale mixture": ((2, 10), _mixed_scale_mixture),
    }
    try:
        from .. import families
    except ImportError:  # the wider families have not landed in this checkout
        return fams
    if hasattr(families, "StudentTMixture"):
        fams["student-t mixture"] = ((2, 10), _student_t_mixture)
    if hasattr(families, "Shell"):
        fams["shell"] = ((2, 5, 20), _shell)
    return fams


def _student_t_mixture(d: int, gen: torch.Generator) -> Target:
    from ..families import StudentTMixture

    k = int(torch.randint(2, 6, (), generator=gen))
    locs = 3.0 * (torch.rand(k, d, generator=gen, dtype=torch.float64) * 2 - 1)
    scales = torch.stack([torch.eye(d, dtype=torch.float64) * _log_uniform(gen, 0.2, 0.8) for _ in range(k)])
    dfs = torch.tensor([_log_uniform(gen, 1.5, 10.0) for _ in range(k)], dtype=torch.float64)
    weights = torch.distributions.Dirichlet(torch.full((k,), 2.0, dtype=torch.float64)).sample()
    return StudentTMixture(weights / weights.sum(), locs, dfs, scales=scales)


def _shell(d: int, gen: torch.Generator) -> Target:
    from ..families import Shell

    return Shell(d, radius=3.0, width=_log_uniform(gen, 0.05, 0.5))


def w2_problem(family: str, d: int, n: int, index: int, seed: int, m: int = N_QUERIES) -> WildProblem:
    """Member ``index`` of a W2 family; the target and queries depend on (seed, family, d, index)."""
    build = _families()[family][1]
    target_seed = derive_seed(seed, "W2", family, d, index)
    gen = torch.Generator().manual_seed(target_seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(target_seed)  # Dirichlet draws use the global generator; keep them seeded
    try:
        target = build(d, gen)
    finally:
        torch.random.set_rng_state(torch_state)
    queries = draw(target, m, gen)
    samples = draw(target, n, torch.Generator().manual_seed(derive_seed(seed, "W2", family, d, index, n)))
    return WildProblem("W2", f"{family} d={d}", samples, queries, target.log_prob_t(queries),
                       target.score_t(queries), seed=target_seed)


def w3_problem(name: str, n: int, m: int = N_QUERIES) -> WildProblem:
    """Posterior ``name``: the first n cached NUTS draws as samples, the last m as queries."""
    from .posteriors import get_posterior, load_posterior_draws

    draws = torch.as_tensor(load_posterior_draws(name), dtype=torch.float64)
    if draws.shape[0] < n + m:
        raise ValueError(f"posterior {name!r} has {draws.shape[0]} cached draws; {n} + {m} needed")
    posterior = get_posterior(name)
    queries = draws[-m:]
    log_p = posterior.log_density_unnormalised(queries).detach()
    return WildProblem("W3", name, draws[:n], queries, log_p, posterior.score(queries).detach())


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------
def _discoformer(problem: WildProblem, ctx: Context) -> Oracle:
    if "discoformer" not in problem.cache:  # (setdefault would fit again on every call)
        problem.cache["discoformer"] = ctx.discoformer().fit(problem.samples)
    return problem.cache["discoformer"]


def _fit(key: str, problem: WildProblem, ctx: Context, quick: bool) -> Oracle:
    if key == "discoformer":
        return _discoformer(problem, ctx)
    if key == "discoformer-adapt":
        return _discoformer(problem, ctx).adapt(steps=ADAPT_STEPS[quick])  # type: ignore[attr-defined]
    if key == "discoformer-summary":  # what DiScoFormer.pretrained(summary=True) fits
        config = SummaryConfig(steps=20 if quick else 150)
        subset = teacher_subset(problem.samples, config)
        teacher = _discoformer(problem, ctx) if subset is problem.samples else ctx.discoformer().fit(subset)
        return distil(teacher, problem.samples, config)
    if key == "kde-cv":
        return KDE("cv").fit(problem.samples)
    if key == "kde-score":
        return KDE("score").fit(problem.samples)
    if key == "kde-scott":
        return KDE("scott").fit(problem.samples)
    if key == "gmm-bic":
        return BICGaussianMixture(seed=problem.seed % (2 ** 31)).fit(problem.samples)
    if key == "flow":
        return SplineFlow(seconds=FLOW_SECONDS[quick][problem.protocol], seed=problem.seed % (2 ** 31)).fit(problem.samples)
    raise ValueError(f"unknown wild row {key!r}")


def problem_metrics(log_p: torch.Tensor, score: torch.Tensor | None, problem: WildProblem) -> dict[str, float]:
    """W1: held-out log-likelihood; W2/W3: relative score MSE and centred log-density MSE."""
    if problem.protocol == "W1":
        return {"heldout_loglik": float(log_p.mean())}
    assert problem.true_log_density is not None and problem.true_score is not None and score is not None
    return {"relative_score_mse": metrics.relative_score_mse(score, problem.true_score),
            "centered_log_density_mse": metrics.centered_log_density_mse(log_p, problem.true_log_density)}


def _oracle_tuned(problem: WildProblem) -> dict[str, Any]:
    """The oracle-tuned KDE: score bandwidth from the protocol's search; the log-density bandwidth
    chosen on the centred error (the truth of W3 is known only up to a constant)."""
    assert problem.true_log_density is not None and problem.true_score is not None
    best = oracle_tuned_kde(problem.samples, problem.queries, problem.true_log_density, problem.true_score)
    x = problem.samples
    n, d = x.shape
    cov, scott = _sample_covariance(x), scott_factor(n, d)
    centred = math.inf
    for kernel in ("full", "isotropic"):
        for rel in np.logspace(-1.5, 1.0, 26):
            oracle = KDEOracle(x, _kernel_covariance(cov, scott * rel, kernel), scott * rel)
            lp, _ = oracle._log_density_and_score(problem.queries, want_score=False)
            centred = min(centred, metrics.centered_log_density_mse(lp, problem.true_log_density))
    return {"relative_score_mse": best.relative_score_mse, "centered_log_density_mse": centred,
            "score_factor": best.score_factor}


def evaluate_row(key: str, problem: WildProblem, ctx: Context, quick: bool) -> dict[str, Any]:
    """One row on one problem: its figures, fit and evaluation seconds; failures recorded, not raised."""
    if key == ORACLE_KDE:
        if problem.true_score is None:
            return {"status": "n/a"}
        start = time.perf_counter()
        try:
            return {"status": "ok", **_oracle_tuned(problem), "fit_seconds": time.perf_counter() - start,
                    "eval_seconds": 0.0}
        except Exception as exc:
            return {"status": "failed", "error": _error_text(exc)}
    start = time.perf_counter()
    try:
        oracle = _fit(key, problem, ctx, quick)
        fitted = time.perf_counter()
        if problem.protocol == "W1":
            log_p, score = oracle.log_density(problem.queries), None
        else:
            log_p, score = oracle.log_density_and_score(problem.queries)
        values = problem_metrics(torch.as_tensor(log_p), None if score is None else torch.as_tensor(score), problem)
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"non-finite figures {values}")
    except Exception as exc:  # recorded, never raised: the run goes on
        logger.debug("wild row %s failed", key, exc_info=True)
        return {"status": "failed", "error": _error_text(exc)}
    if key in ("discoformer-adapt", "discoformer-summary"):  # its cost includes the plain fit it starts from
        fit_seconds = fitted - start + problem.cache.get("discoformer_seconds", 0.0)
    else:
        fit_seconds = fitted - start
        if key == "discoformer":
            problem.cache["discoformer_seconds"] = fit_seconds
    extra = {"K": int(oracle.weights.shape[-1])} if isinstance(oracle, GaussianMixture) else {}
    if isinstance(oracle, KDEOracle):
        extra["bandwidth_factor"] = float(oracle.bandwidth)
    return {"status": "ok", **values, "fit_seconds": fit_seconds, "eval_seconds": time.perf_counter() - fitted,
            **extra}


def _aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over a cell's problems; a row that failed on any problem is failed."""
    statuses = {e["status"] for e in entries}
    if statuses == {"n/a"}:
        return {"status": "n/a", "per_target": entries}
    failures = [e["error"] for e in entries if e["status"] == "failed"]
    if failures:
        return {"status": "failed", "error": f"{len(failures)}/{len(entries)} failed; first: {failures[0]}",
                "per_target": entries}
    ok = [e for e in entries if e["status"] == "ok"]
    figures = [k for k in ok[0] if k in ("heldout_loglik", "relative_score_mse", "centered_log_density_mse",
                                         "fit_seconds", "eval_seconds")]
    return {"status": "ok", "values": {k: float(np.mean([e[k] for e in ok])) for k in figures},
            "per_target": entries}


# ----------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WildCell:
    """``protocol`` problems ``name`` (a toy set, a W2 family at d, a posterior) at n; ``targets`` members."""

    protocol: str
    name: str
    n: int
    targets: int = 1
    d: int = 2

    @property
    def label(self) -> str:
        return f"{self.protocol} {self.name} n={self.n}"

    def problems(self, seed: int) -> list[WildProblem]:
        if self.protocol == "W1":
            return [w1_problem(self.name, self.n, seed)]
        if self.protocol == "W2":
            family = self.name.rsplit(" d=", 1)[0]
            return [w2_problem(family, self.d, self.n, i, seed) for i in range(self.targets)]
        return [w3_problem(self.name, self.n)]


def wild_cells(quick: bool) -> list[WildCell]:
    """Every W1/W2/W3 accuracy cell (``quick``: one or two per protocol at the smallest n)."""
    from .posteriors import POSTERIORS, get_posterior
    from .toys import TOY_SETS

    if quick:
        toys, fams, posts = list(TOY_SETS)[:2], ["banana"], list(POSTERIORS)[:1]
        return ([WildCell("W1", t, 500) for t in toys]
                + [WildCell("W2", f"{f} d=2", 512, 1, 2) for f in fams]
                + [WildCell("W3", p, 512, d=get_posterior(p).dim) for p in posts])
    cells = [WildCell("W1", t, n) for n in W1_SIZES for t in TOY_SETS]
    for n in W2_SIZES:
        for family, (dims, _) in _families().items():
            cells += [WildCell("W2", f"{family} d={d}", n, 2, d) for d in dims]
    cells += [WildCell("W3", p, n, d=get_posterior(p).dim) for n in W3_SIZES for p in POSTERIORS]
    return cells


def _run_accuracy_cells(opts: Options, ctx: Context, rows: list[str]) -> list[dict[str, Any]]:
    cells = [c for c in wild_cells(opts.quick) if opts.selected(c.label)]
    done = _logged_cells(opts, "wild", rows)
    results = []
    for cell in tqdm(cells, desc="wild", disable=not opts.progress, leave=False):
        if cell.label in done:
            results.append(done[cell.label])
            continue
        try:
            problems = cell.problems(opts.seed)
        except Exception as exc:  # e.g. a family whose module is absent: the cell says why
            results.append({"cell": cell.label, "protocol": cell.protocol, "name": cell.name, "n": cell.n,
                            "status": "failed", "error": _error_text(exc), "rows": {}})
            continue
        kept = kept_rows(opts, "wild", cell.label)
        per_row: dict[str, list[dict[str, Any]]] = {key: [] for key in rows if key not in kept}
        for problem in problems:
            for key in per_row:
                per_row[key].append(evaluate_row(key, problem, ctx, opts.quick))
        result = {"cell": cell.label, "protocol": cell.protocol, "name": cell.name, "n": cell.n,
                  "d": problems[0].dim, "targets": len(problems), "status": "ok",
                  "rows": {key: kept[key] if key in kept else {"label": WILD_ROWS[key], **_aggregate(per_row[key])}
                           for key in rows}}
        results.append(result)
        logger.info("%s: %s", cell.label, "; ".join(
            f"{r['label']} " + (", ".join(f"{v:.4g}" for k, v in r["values"].items() if "seconds" not in k)
                                if r["status"] == "ok" else r["status"]) for r in result["rows"].values()))
        _log_cell(opts, "wild", rows, result)
    return results


# ----------------------------------------------------------------------------------------------
# W1 sampling
# ----------------------------------------------------------------------------------------------
def _block_statistic(points: np.ndarray, fresh: np.ndarray) -> tuple[float, float]:
    """Unbiased energy statistic of all points, and its s.e. from ``SAMPLING_BLOCKS`` disjoint blocks
    (sd of the block statistics / sqrt(blocks): the statistic's variance falls as 1 / size)."""
    full = metrics.energy_statistic(points, fresh)
    blocks = [metrics.energy_statistic(a, b) for a, b in zip(np.array_split(points, SAMPLING_BLOCKS),
                                                              np.array_split(fresh, SAMPLING_BLOCKS))]
    return full, float(np.std(blocks, ddof=1) / math.sqrt(SAMPLING_BLOCKS))


def _sampling_source(key: str, problem: WildProblem, ctx: Context, quick: bool) -> Any:
    if key in ("discoformer", "kde-scott"):
        return _gmm_sampling_source(key, problem, ctx)  # type: ignore[arg-type]
    if key == "flow":
        raise NotImplementedError("a flow has no noise-conditional score (one flow per noise level "
                                  "would be needed)")
    return _fit(key, problem, ctx, quick)


def sampling_cells(quick: bool) -> list[WildCell]:
    from .toys import TOY_SETS

    return [WildCell("W1 sampling", t, 500 if quick else 2000) for t in (list(TOY_SETS)[:1] if quick else TOY_SETS)]


def _run_sampling_cells(opts: Options, ctx: Context) -> list[dict[str, Any]]:
    sources = [s for s in SAMPLING_SOURCES if s in opts.rows("wild")]
    cells = [c for c in sampling_cells(opts.quick) if opts.selected(c.label)]
    done = _logged_cells(opts, "wild-sampling", sources)
    results = []
    n_gen = SAMPLING_POINTS[opts.quick]
    for cell in tqdm(cells, desc="wild sampling", disable=not opts.progress, leave=False):
        if cell.label in done:
            results.append(done[cell.label])
            continue
        from .toys import draw_toy

        problem = w1_problem(cell.name, cell.n, opts.seed)
        fresh = draw_toy(cell.name, n_gen, derive_seed(opts.seed, "W1-fresh", cell.name))
        second = draw_toy(cell.name, n_gen, derive_seed(opts.seed, "W1-floor", cell.name))
        floor, floor_se = _block_statistic(second, fresh)
        rows: dict[str, Any] = {}
        for source_key in sources:
            for method in SAMPLING_METHODS:
                start = time.perf_counter()
                try:
                    source = _sampling_source(source_key, problem, ctx, opts.quick)
                    gen = torch.Generator().manual_seed(derive_seed(opts.seed, "W1-sampling", cell.name))
                    points = _generate(method, source, problem.samples, n_gen, opts.quick, gen)
                    if not np.isfinite(points).all():
                        raise FloatingPointError("non-finite generated points")
                    stat, se = _block_statistic(points, fresh)
                    entry = {"status": "ok", "energy_statistic": stat, "energy_statistic_se": se,
                             "memorization": metrics.memorization_fraction(points, problem.samples.numpy()),
                             "seconds": time.perf_counter() - start}
                except NotImplementedError as exc:
                    entry = {"status": "skipped", "error": str(exc)}
                except Exception as exc:  # recorded, the run goes on
                    entry = {"status": "failed", "error": _error_text(exc)}
                rows[f"{source_key}|{method}"] = {"source": WILD_ROWS[source_key], "method": method, **entry}
        results.append({"cell": cell.label, "name": cell.name, "n": cell.n, "n_generated": n_gen,
                        "floor": floor, "floor_se": floor_se,
                        "memorization_reference": metrics.memorization_fraction(second, problem.samples.numpy()),
                        "rows": rows})
        _log_cell(opts, "wild-sampling", sources, results[-1])
    return results


def run_wild(opts: Options, ctx: Context) -> dict[str, Any]:
    """W1, W2, W3 accuracy cells, then W1 sampling."""
    rows = opts.rows("wild")
    accuracy = _run_accuracy_cells(opts, ctx, rows)
    sampling = _run_sampling_cells(opts, ctx)
    return {"cells": accuracy, "sampling": sampling, "flow_seconds": FLOW_SECONDS[opts.quick],
            "adapt_steps": ADAPT_STEPS[opts.quick]}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
_HIGHER_IS_BETTER = {"heldout_loglik": True, "relative_score_mse": False, "centered_log_density_mse": False}
_FIGURE_TITLES = {"heldout_loglik": "held-out log-likelihood, nats per point (higher is better)",
                  "relative_score_mse": "relative score MSE (lower is better)",
                  "centered_log_density_mse": "centred log-density MSE (lower is better)"}


def _value_text(value: float, figure: str) -> str:
    if figure == "relative_score_mse":
        return f"{100 * value:.3g} %"
    if figure == "heldout_loglik":
        return f"{value:.3f}"
    return f"{value:.3g}"


def _table(cells: list[dict[str, Any]], figure: str, rows: list[str]) -> list[str]:
    """One line per cell, one column per row (figure, then fit + eval seconds); best in bold."""
    present = [k for k in rows if any(k in c.get("rows", {}) and c["rows"][k]["status"] != "n/a" for c in cells)]
    lines = ["| data | " + " | ".join(WILD_ROWS[k] for k in present) + " | best | DiScoFormer − best rival |",
             "|---" * (len(present) + 3) + "|"]
    sign = 1.0 if _HIGHER_IS_BETTER[figure] else -1.0
    for cell in cells:
        if cell.get("status") == "failed":
            lines.append(f"| {cell['cell']} | " + " | ".join("—" for _ in present)
                         + f" | failed: {_short(cell.get('error'))} | |")
            continue
        values = {k: r["values"][figure] for k, r in cell["rows"].items()
                  if r["status"] == "ok" and figure in r.get("values", {})}
        best = max(values, key=lambda k: sign * values[k]) if values else None
        texts = []
        for k in present:
            r = cell["rows"].get(k)
            if r is None or r["status"] == "n/a":
                texts.append("—")
            elif r["status"] != "ok":
                texts.append(f"{r['status']}: {_short(r.get('error'), 60)}")
            else:
                v = r["values"]
                text = _value_text(v[figure], figure)
                text = f"**{text}**" if k == best else text
                texts.append(f"{text} ({v['fit_seconds']:.2g}+{v['eval_seconds']:.2g} s)")
        rivals = {k: values[k] for k in values if not k.startswith("discoformer") and k != ORACLE_KDE}
        gap = "—"
        if "discoformer" in values and rivals:
            best_rival = max(rivals.values(), key=lambda v: sign * v)
            if figure == "heldout_loglik":
                gap = f"{values['discoformer'] - best_rival:+.3f} nats"
            else:
                gap = f"{values['discoformer'] / best_rival:.3g}×"
        name = cell["name"] if cell.get("protocol") == "W2" else f"{cell['name']} d={cell.get('d', '')}"
        lines.append(f"| {name} n={cell['n']} | " + " | ".join(texts)
                     + f" | {WILD_ROWS[best] if best else '—'} | {gap} |")
    return lines + [""]


def _flow_budget_text(budget: Any) -> str:
    if isinstance(budget, dict):
        return ", ".join(f"{seconds:g} s ({protocol})" for protocol, seconds in budget.items())
    return f"{budget:g} s"


def render_wild(result: dict[str, Any]) -> list[str]:
    """Markdown: W1 held-out likelihood, W2/W3 score and log-density errors, W1 sampling."""
    rows = list(WILD_ROWS)
    lines = [f"Rows: DiScoFormer (+ `adapt`, {result.get('adapt_steps', ADAPT_STEPS[False])} steps), KDE with the leave-one-out "
             "likelihood-CV bandwidth, the score rule and Scott's rule, scikit-learn GaussianMixture (full "
             f"covariance) with K by BIC over 1 … 20, a zuko neural spline flow trained for "
             f"{_flow_budget_text(result.get('flow_seconds', FLOW_SECONDS[False]))} per data set, and the oracle-tuned KDE where the truth is known. "
             "Each entry: figure (fit + evaluation seconds). \"DiScoFormer − best rival\": against the best "
             "row a user can run without the truth (not DiScoFormer, not the oracle-tuned KDE); a difference "
             "in nats for W1, a ratio for W2/W3.", ""]
    cells = result.get("cells", [])
    for protocol, figures, title in (("W1", ("heldout_loglik",), "W1: classic 2-D toy sets"),
                                     ("W2", ("relative_score_mse", "centered_log_density_mse"),
                                      "W2: exact non-mixture targets"),
                                     ("W3", ("relative_score_mse", "centered_log_density_mse"),
                                      "W3: real posteriors (NUTS draws)")):
        chosen = [c for c in cells if c.get("protocol") == protocol]
        if not chosen:
            continue
        for figure in figures:
            lines += [f"### {title} — {_FIGURE_TITLES[figure]}", ""]
            lines += _table(chosen, figure, rows)
    if result.get("sampling"):
        lines += ["### W1 sampling: unbiased energy statistic × 10³ to fresh draws (± s.e.), memorisation", "",
                  "| data | source | annealed Langevin | DDIM (diffusers) | memorisation (Langevin / DDIM) | "
                  "seconds |", "|---|---|---|---|---|---|"]
        for cell in result["sampling"]:
            by_source: dict[str, dict[str, Any]] = {}
            for key, row in cell["rows"].items():
                by_source.setdefault(row["source"], {})[row["method"]] = row
            lines.append(f"| {cell['name']} n={cell['n']} | two fresh sets (floor) | "
                         f"{1e3 * cell['floor']:.2f} ± {1e3 * cell['floor_se']:.2f} | | "
                         f"{cell['memorization_reference']:.2f} (fresh) | |")
            for source, methods in by_source.items():
                texts, mem, secs = [], [], []
                for method in SAMPLING_METHODS:
                    r = methods.get(method, {})
                    if r.get("status") == "ok":
                        texts.append(f"{1e3 * r['energy_statistic']:.2f} ± {1e3 * r['energy_statistic_se']:.2f}")
                        mem.append(f"{r['memorization']:.2f}")
                        secs.append(f"{r['seconds']:.3g}")
                    else:
                        texts.append(f"{r.get('status', '—')}: {_short(r.get('error'), 50)}")
                        mem.append("—")
                        secs.append("—")
                lines.append(f"| | {source} | {texts[0]} | {texts[1]} | {' / '.join(mem)} | {' / '.join(secs)} |")
        lines.append("")
    return lines


def plot_wild(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    """W1 at each n: DiScoFormer's and each rival's held-out log-likelihood relative to LOO-CV KDE."""
    w1 = [c for c in result.get("cells", []) if c.get("protocol") == "W1" and c.get("status") == "ok"]
    if not w1:
        return []
    sizes = sorted({c["n"] for c in w1})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        chosen = [c for c in w1 if c["n"] == n]
        names = [c["name"] for c in chosen]
        for key in ("discoformer", "discoformer-adapt", "gmm-bic", "flow", "kde-scott"):
            ys = []
            for c in chosen:
                r, ref = c["rows"].get(key), c["rows"].get("kde-cv")
                ok = r and ref and r["status"] == "ok" and ref["status"] == "ok"
                ys.append(r["values"]["heldout_loglik"] - ref["values"]["heldout_loglik"] if ok else np.nan)
            ax.plot(range(len(names)), ys, "o-", label=WILD_ROWS[key])
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"W1, n = {n}")
        ax.set_ylabel("held-out log-lik. − LOO-CV KDE (nats)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = image_dir / "bench_wild.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


register_suite("wild", run_wild, render_wild, "The wild suite: data users bring (protocol W1–W3)",
               plotter=plot_wild, rows=WILD_ROWS, defaults=WILD_DEFAULTS)
