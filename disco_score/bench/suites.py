"""The six GMM-prior suites: accuracy, scaling, speed, downstream, sampling and ppl (each registered
with :func:`.registry.register_suite`; their tables and plots are in :mod:`.report`).

Definitions: ``docs/benchmark-protocol.md``.

* ``accuracy``: the protocol's P1, P2 and P3 cells. Every estimator row runs on the same targets,
  samples and queries (drawn once per target from a seeded :class:`torch.Generator`, float64).
  Each cell is the mean over targets of the per-target figure; the "x oracle KDE" columns divide
  that mean by the oracle-tuned KDE's mean in the same cell. The published figures and the
  protocol's reference values attached to the cells are data, ``data/published.json``
  (:func:`load_published`).
* ``scaling``: error against n (2^8 ... 2^17) at d = 2, 10, 100 and against d at fixed n, with
  fitted log-log slopes and KDE's theoretical n^(-4/(d+6)) score rate for reference.
* ``speed``: wall time and peak memory of fit + evaluate (n = m), one subprocess per configuration
  (peak RSS from ``/proc/self/status`` in the child; a time-out per configuration). Time-outs and
  out-of-memory are recorded as such.
* ``downstream``: integrated squared error of SD-KDE densities with the learned against the
  empirical score (d = 1, 2, exact GMM density on a grid), and entropy / Fisher-information
  estimates from :mod:`disco_score.information` when that module is present.
* ``sampling``: annealed Langevin (package defaults) and DDIM (diffusers, 50 steps) driven by the
  exact score, DiScoFormer, Scott KDE and the raw empirical score (KDE with a vanishing bandwidth)
  on GMM-prior targets in d = 2 and 10 (:func:`disco_score.generate.generate`): energy distance to
  fresh target draws (with the noise floor of two fresh sets) and the memorization fraction.
* ``ppl``: NUTS in BlackJAX, NumPyro and Pyro on a conjugate Gaussian problem whose prior is known
  only through samples (DiScoFormer and Scott KDE priors), against the analytic posterior
  (:mod:`disco_score.integrations._conjugate`); needs the jax/numpyro/pyro extras.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import logging
import math
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics
from ..base import Estimator, Oracle
from ..generate import METHODS as SAMPLING_METHODS
from ..generate import generate
from ..kde import KDE, SDKDE
from ..targets import GaussianMixture, Target
from . import report
from .cells import (SCALING_N_DIMS, Options, _log_cell, _logged_cells, _reused_result_cells, accuracy_cells,
                    downstream_cells, run_cells, sampling_cells, scaling_cells, timed_rows)
from .problems import Problem, _error_text, _jsonable, derive_seed, draw, make_problem, make_target
from .registry import register_suite
from .rows import ESTIMATORS, ORACLE_KDE, PPL_ESTIMATORS, SAMPLING_SOURCES, SPEED_ESTIMATORS, Context

logger = logging.getLogger(__name__)


# -- accuracy ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_published() -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, dict[str, float]]]]:
    """``(published, protocol_reference)`` from ``data/published.json``, keyed by accuracy cell.

    ``published``: per cell, figures quoted from the paper (its own prior), each ``{"label", "values"}``
    and, where the file gives ``ratios_to`` (another entry's label in the same cell), ``"ratios"``: its
    values over that entry's. ``protocol_reference``: per cell and row key, the protocol's reference
    values (mean over targets, float64). Cached: callers get the same objects and must not modify them.
    """
    text = importlib.resources.files(__package__).joinpath("data", "published.json").read_text(encoding="utf-8")
    data = json.loads(text)
    published: dict[str, list[dict[str, Any]]] = {}
    for cell, entries in data["published"].items():
        by_label = {entry["label"]: entry["values"] for entry in entries}
        published[cell] = []
        for entry in entries:
            entry = dict(entry)
            against = entry.pop("ratios_to", None)
            if against is not None:
                entry["ratios"] = {k: v / by_label[against][k] for k, v in entry["values"].items()}
            published[cell].append(entry)
    return published, data["protocol_reference"]


def run_accuracy(opts: Options, ctx: Context) -> dict[str, Any]:
    """P1/P2/P3 against the baselines, with the published and protocol-reference figures attached."""
    published, reference = load_published()
    cells = run_cells(accuracy_cells(opts.quick), opts.rows("accuracy"), ctx, opts, desc="accuracy")
    for cell in cells:
        cell["published"] = published.get(cell["cell"], [])
        cell["reference"] = reference.get(cell["cell"], {})
    return {"cells": cells}


# -- scaling -------------------------------------------------------------------------------------
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
    code = "import sys; from disco_score.bench.suites import _speed_child_main; _speed_child_main(sys.argv[1])"
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
        entries = timed_rows(keys, d, n, gave_up, lambda key: run_speed_config(
            {"estimator": key, "d": d, "n": n, "seed": derive_seed(opts.seed, "speed", d, n)}, timeout))
        for key, entry in entries.items():
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
#: points of target 0 kept in the JSON for the scatter plot (d = 2)
_KEPT_POINTS = 400


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
    """``n_gen`` points from ``source`` with the sampling suite's settings (:data:`SAMPLING_SETTINGS`)."""
    settings = SAMPLING_SETTINGS[quick]
    if method == SAMPLING_METHODS[0]:
        return generate(method, source, data, n_gen, settings=settings["annealed"], generator=generator)
    return generate(method, source, data, n_gen, steps=settings["ddim_steps"], generator=generator)


def run_sampling(opts: Options, ctx: Context) -> dict[str, Any]:
    """Generate with each (score source, sampler); energy distance to fresh draws, memorization."""

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
            floors.append(metrics.energy_distance(second, fresh))
            floor_statistics.append(metrics.energy_statistic(second, fresh))
            references.append(metrics.memorization_fraction(second, data))
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
                                 "energy_distance": metrics.energy_distance(points, fresh),
                                 "energy_statistic": metrics.energy_statistic(points, fresh),
                                 "memorization": metrics.memorization_fraction(points, data)}
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



register_suite("accuracy", run_accuracy, report.render_accuracy, report.SUITE_TITLES["accuracy"], report.plot_accuracy,
               defaults=["discoformer", "discoformer-adapt", "kde-scott", ORACLE_KDE, "sdkde-empirical",
                         "sdkde-discoformer", "em"])
register_suite("scaling", run_scaling, report.render_scaling, report.SUITE_TITLES["scaling"], report.plot_scaling,
               defaults=["discoformer", "kde-scott", ORACLE_KDE, "sdkde-empirical", "em"])
register_suite("speed", run_speed, report.render_speed, report.SUITE_TITLES["speed"], report.plot_speed,
               rows=SPEED_ESTIMATORS, defaults=list(SPEED_ESTIMATORS))
register_suite("downstream", run_downstream, report.render_downstream, report.SUITE_TITLES["downstream"],
               report.plot_downstream,
               defaults=["discoformer", "kde-scott", "sdkde-empirical", "sdkde-discoformer", "sdkde-exact"])
register_suite("sampling", run_sampling, report.render_sampling, report.SUITE_TITLES["sampling"], report.plot_sampling,
               rows=SAMPLING_SOURCES, defaults=list(SAMPLING_SOURCES))
register_suite("ppl", run_ppl, report.render_ppl, report.SUITE_TITLES["ppl"], report.plot_ppl,
               rows=PPL_ESTIMATORS, defaults=list(PPL_ESTIMATORS))
