"""The distilled-summary suite (``bench summary``): what the sampler's fast path costs in accuracy,
and what it saves in time (:mod:`disco_score.summary`, ``DiScoFormer.pretrained(summary=True)``).

* ``summary <wild cell>``: W1 (held-out log-likelihood, n = 2000), W2 (relative score MSE,
  n = 2048, two members per family and d) and W3 (n = 2048) problems of the wild suite, with the
  network and its distilled summary on the same samples; the summary's fit seconds include the
  network fit it distils.
* ``summary P1 gmm d=<d> n=<n>`` and the other P1–P3 cells: the accuracy suite's targets (its
  first two per cell, relative score MSE) with the same two rows.
* ``summary step d=<d> n=<n>``: the step suite's measurement (fit, then the score at 1000 fresh
  queries, one child process per row) for the summary and the package's KDE, over the step grid.
* ``summary sampler <method> ...``: the step suite's whole generation runs with the summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .cells import Options, _log_cell, _logged_cells
from .problems import _error_text, make_problem
from .registry import register_suite
from .rows import Context
from .step_speed import STEP_QUERIES, describe_step_rows, sampler_rows, sampler_runs, step_configs, step_rows
from .wild import WILD_ROWS, WildCell, WildProblem, _aggregate, _families, evaluate_row

logger = logging.getLogger(__name__)

SUMMARY_ROWS = {"discoformer": "DiScoFormer", "discoformer-summary": "DiScoFormer summary"}
SPEED_ROWS = ("discoformer-summary", "kde")


@dataclass(frozen=True)
class ProtocolCell(WildCell):
    """A cell of the accuracy suite's P1–P3 grid (``family`` of :func:`~.problems.make_problem`), as
    wild problems: the same targets, samples and queries as ``bench accuracy``'s first members."""

    family: str = "gmm"

    def problems(self, seed: int) -> list[WildProblem]:
        out = []
        for index in range(self.targets):
            p = make_problem(self.family, self.d, self.n, index, seed)
            out.append(WildProblem(self.protocol, self.name, p.samples, p.queries, p.true_log_density,
                                   p.true_score, seed=p.target_seed))
        return out


#: (protocol, family, d, n) of the P cells; two targets each (the accuracy suite has 4-8)
PROTOCOL_CELLS = ([("P1", "gmm", d, n) for d in (2, 10) for n in (256, 16384)] + [("P2", "p2", 100, 2048)]
                  + [("P3 more modes", "gmm-many", d, 2048) for d in (2, 10)]
                  + [("P3 Laplace", "laplace", 2, n) for n in (512, 4096)]
                  + [("P3 Student-t", "student-t", 2, n) for n in (128, 512)])


def accuracy_cells(quick: bool) -> list[WildCell]:
    """The problems the summary is compared on (``quick``: one W1 set, one W2 and one P1 cell)."""
    from .posteriors import POSTERIORS, get_posterior
    from .toys import TOY_SETS

    if quick:
        return [WildCell("W1", list(TOY_SETS)[0], 500), WildCell("W2", "banana d=2", 512, 1, 2),
                ProtocolCell("P1", "d=2", 256, 1, 2, "gmm")]
    cells = [WildCell("W1", t, 2000) for t in TOY_SETS]
    for family, (dims, _) in _families().items():
        cells += [WildCell("W2", f"{family} d={d}", 2048, 2, d) for d in dims]
    cells += [WildCell("W3", p, 2048, d=get_posterior(p).dim) for p in POSTERIORS]
    return cells + [ProtocolCell(protocol, f"d={d}", n, 2, d, family) for protocol, family, d, n in PROTOCOL_CELLS]


def _accuracy(opts: Options, ctx: Context, done: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    cells = [c for c in accuracy_cells(opts.quick) if opts.selected(f"summary {c.label}")]
    for cell in tqdm(cells, desc="summary", disable=not opts.progress, leave=False):
        label = f"summary {cell.label}"
        if label in done:
            results.append(done[label])
            continue
        try:
            problems = cell.problems(opts.seed)
        except Exception as exc:
            results.append({"cell": label, "status": "failed", "error": _error_text(exc), "rows": {}})
            continue
        per_row: dict[str, list[dict[str, Any]]] = {key: [] for key in SUMMARY_ROWS}
        for problem in problems:
            for key in SUMMARY_ROWS:  # the network first: the summary distils its cached fit
                per_row[key].append(evaluate_row(key, problem, ctx, opts.quick))
        results.append({"cell": label, "protocol": cell.protocol, "name": cell.name, "n": cell.n,
                        "d": problems[0].dim, "targets": len(problems), "status": "ok",
                        "rows": {key: {"label": WILD_ROWS[key], **_aggregate(per_row[key])} for key in SUMMARY_ROWS}})
        logger.info("%s: %s", label, "; ".join(
            f"{r['label']} " + (", ".join(f"{v:.4g}" for k, v in r["values"].items() if "seconds" not in k)
                                if r["status"] == "ok" else r["status"]) for r in results[-1]["rows"].values()))
        _log_cell(opts, "summary", list(SUMMARY_ROWS), results[-1])
    return results


def _speed(opts: Options, done: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    gave_up: dict[tuple[str, int], str] = {}
    cells = []
    for d, n in step_configs(opts.quick):
        label = f"summary step d={d} n={n}"
        if not opts.selected(label):
            continue
        if label in done:
            cells.append(done[label])
            continue
        rows = step_rows(SPEED_ROWS, d, n, gave_up, opts, timeout)
        cells.append({"cell": label, "d": d, "n": n, "rows": rows})
        _log_cell(opts, "summary", list(SUMMARY_ROWS), cells[-1])
        logger.info("%s: %s", label, describe_step_rows(rows))
    for method, name, n, particles in sampler_runs(opts.quick):
        label = f"summary sampler {method} {name} n={n}"
        if not opts.selected(label):
            continue
        if label in done:
            cells.append(done[label])
            continue
        rows = sampler_rows(SPEED_ROWS, method, name, n, particles, opts, timeout * 3)
        cells.append({"cell": label, "method": method, "name": name, "n": n, "particles": particles, "rows": rows})
        _log_cell(opts, "summary", list(SUMMARY_ROWS), cells[-1])
    return cells


def run_summary(opts: Options, ctx: Context) -> dict[str, Any]:
    """The accuracy cells, then the step grid and the whole runs (see the module docstring)."""
    timeout = opts.timeout if opts.timeout is not None else (120.0 if opts.quick else 300.0)
    done = _logged_cells(opts, "summary", list(SUMMARY_ROWS))
    return {"cells": _accuracy(opts, ctx, done) + _speed(opts, done, timeout), "queries": STEP_QUERIES,
            "timeout_seconds": timeout, "device": opts.device}


def _ok(row: dict[str, Any] | None, field: str) -> float | None:
    return row["values"].get(field) if row is not None and row.get("status") == "ok" else None


def _fmt(value: float | None, figure: str) -> str:
    if value is None:
        return "—"
    if figure == "relative_score_mse":
        return f"{100 * value:.3g} %"
    if figure == "heldout_loglik":
        return f"{value:.3f}"
    return f"{value:.3g} s"


def _row_text(row: dict[str, Any] | None, field: str) -> str:
    if row is None:
        return "—"
    return _fmt(_ok(row, field), field) if row.get("status") == "ok" else f"**{row.get('status')}**"


def _against_kde(cell: dict[str, Any], field: str) -> str:
    """Table cells: the summary's figure, the KDE's and their ratio."""
    fast, base = cell["rows"].get("discoformer-summary"), cell["rows"].get("kde")
    a, b = _ok(fast, field), _ok(base, field)
    ratio = "—" if a is None or not b else f"{a / b:.2f}×"
    return f"{_row_text(fast, field)} | {_row_text(base, field)} | {ratio}"


def render_summary(result: dict[str, Any]) -> list[str]:
    """Markdown: the accuracy table (network against summary), the step grid, the whole runs."""
    cells = result.get("cells", [])
    acc = [c for c in cells if "protocol" in c]
    steps = [c for c in cells if "d" in c and "protocol" not in c]
    runs = [c for c in cells if "method" in c]
    lines = ["The network against its distilled summary on the same samples (W1: held-out log-likelihood, "
             "nats per point, higher is better; W2, W3 and P1–P3: relative score MSE, lower is better; P cells: the "
             "accuracy suite's first two targets). Fit seconds of the summary "
             "include the network fit it distils.", "",
             "| data | DiScoFormer | summary | summary − network | network fit | summary fit |",
             "|---|---|---|---|---|---|"]
    for c in acc:
        ours, fast = c["rows"].get("discoformer"), c["rows"].get("discoformer-summary")
        figure = "heldout_loglik" if c.get("protocol") == "W1" else "relative_score_mse"
        a, b = _ok(ours, figure), _ok(fast, figure)
        change = "—" if a is None or b is None else (f"{b - a:+.3f} nats" if figure == "heldout_loglik"
                                                      else f"{b / a:.2f}×")
        name = c["name"] if "d=" in c["name"] else f"{c['name']} d={c.get('d', '')}"
        lines.append(f"| {c.get('protocol')} {name} n={c['n']} | {_row_text(ours, figure)} | {_row_text(fast, figure)} "
                     f"| {change} | {_row_text(ours, 'fit_seconds')} | {_row_text(fast, 'fit_seconds')} |")
    if steps:
        lines += ["", f"Fit on n samples, then the score at m = {result.get('queries')} fresh queries (as in the "
                  f"step suite: median of 3 calls, one child process per row, time-out "
                  f"{result.get('timeout_seconds'):g} s); ×: the summary's time over the package's KDE's.", "",
                  "| d | n | summary fit | KDE fit | summary step | KDE step | step × |", "|---|---|---|---|---|---|---|"]
        for c in steps:
            fast, base = c["rows"].get("discoformer-summary"), c["rows"].get("kde")
            lines.append(f"| {c['d']} | {c['n']} | {_row_text(fast, 'fit_seconds')} | {_row_text(base, 'fit_seconds')} "
                         f"| {_against_kde(c, 'step_seconds')} |")
    if runs:
        lines += ["", "Whole generation runs (the sampler's default steps; the summary's time includes its fit):", "",
                  "| run | particles | summary | KDE | × |", "|---|---|---|---|---|"]
        for c in runs:
            lines.append(f"| {c['method']}, {c['name']} n = {c['n']} | {c['particles']} | {_against_kde(c, 'seconds')} |")
    errors = [f"{c['cell']} {r['label']}: {r['status']} ({r.get('error')})" for c in cells
              for r in c.get("rows", {}).values() if r.get("status") not in ("ok", "n/a")]
    if errors:
        lines += ["", "Rows not measured: " + "; ".join(errors[:20]) + ("; …" if len(errors) > 20 else "")]
    return lines + [""]


def plot_summary(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    """Step time against n per d: the summary (solid) and the package's KDE (dashed)."""
    steps = [c for c in result.get("cells", []) if "d" in c and "protocol" not in c]
    if not steps:
        return []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, d in enumerate(sorted({c["d"] for c in steps})):
        for key, style in (("discoformer-summary", "-"), ("kde", "--")):
            ok = [c for c in steps if c["d"] == d and _ok(c["rows"].get(key), "step_seconds") is not None]
            if ok:
                ax.loglog([c["n"] for c in ok], [c["rows"][key]["values"]["step_seconds"] for c in ok], style,
                          marker="o", color=f"C{i % 10}", label=f"d = {d}" if key == "kde" else None)
    ax.set(xlabel="n (fitted samples)", ylabel=f"score at m = {result.get('queries')} [s]",
           title="one sampler step (solid: summary, dashed: KDE)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = image_dir / "bench_summary.png"
    fig.savefig(path, dpi=110)
    return [path]


register_suite("summary", run_summary, render_summary, "The distilled summary: the sampler's fast path",
               plot_summary, rows=SUMMARY_ROWS, defaults=list(SUMMARY_ROWS))
