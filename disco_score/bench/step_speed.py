"""The sampler-step speed suite (``bench step``): what a sampler pays for its score oracle.

* ``step d=<d> n=<n>``: fit once on n samples, then the score at m = 1000 fresh queries (one
  sampler step of 1000 particles; median of :data:`STEP_REPEATS` timed calls after a warm-up), for
  DiScoFormer and the package's KDE on the same samples, in one child process each (so peak RSS and
  a time-out belong to that row alone). After a time-out or OOM the larger n of that (row, d) are
  skipped.
* ``step sampler <method> <set> n=<n>``: a whole generation run (1000 particles, the sampler's
  default steps) from DiScoFormer and from the KDE, with its wall time.

``--device cuda`` runs both on a GPU (samples, queries and the network on the device; times are
taken after ``torch.cuda.synchronize``). The ratio column is DiScoFormer's time over the KDE's.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .cells import Options, _reused_result_cells, timed_rows
from .problems import _error_text, derive_seed, draw, make_target
from .registry import register_suite
from .rows import Context

logger = logging.getLogger(__name__)

STEP_DIMS = (1, 2, 5, 10, 20, 50, 100)
STEP_SIZES = (1024, 8192, 65536)
#: particles per sampler step
STEP_QUERIES = 1000
STEP_REPEATS = 3
STEP_ROWS = {"discoformer": "DiScoFormer", "kde": "KDE (Scott's rule, this package)",
             "discoformer-summary": "DiScoFormer summary (distilled mixture)"}
#: the rows ``bench step`` runs by default (the summary's speed is the ``summary`` suite's)
STEP_DEFAULTS = ["discoformer", "kde"]
#: whole generation runs: (method, toy set, n data, particles)
SAMPLER_RUNS = (("annealed Langevin", "two moons", 2000, 1000), ("DDIM (diffusers)", "two moons", 2000, 1000))


def step_configs(quick: bool) -> list[tuple[int, int]]:
    """(d, n) pairs of the per-step table."""
    if quick:
        return [(2, 1024)]
    return [(d, n) for d in STEP_DIMS for n in STEP_SIZES]


def _estimator(key: str) -> Any:
    if key == "discoformer":
        return Context().discoformer()  # loading the weights is not part of fit
    if key == "discoformer-summary":
        from ..discoformer import DiScoFormer

        return DiScoFormer.pretrained(summary=True)
    if key == "kde":
        from ..kde import KDE

        return KDE()
    raise ValueError(f"unknown step-speed row {key!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _step_worker(config: dict[str, Any]) -> dict[str, Any]:
    """In a child process: one fit and the timed score calls of one row at one (d, n)."""
    key, d, n, device = config["estimator"], int(config["d"]), int(config["n"]), torch.device(config["device"])
    gen = torch.Generator().manual_seed(int(config["seed"]))
    target = make_target("gmm", d, gen)
    samples = draw(target, n, gen).to(torch.float32).to(device)
    queries = draw(target, STEP_QUERIES, gen).to(torch.float32).to(device)
    estimator = _estimator(key)
    _sync(device)
    start = time.perf_counter()
    oracle = estimator.fit(samples)
    _sync(device)
    fit_seconds = time.perf_counter() - start
    oracle.score(queries[:16])  # warm-up (first-call allocations, lazy initialisation)
    times = []
    for _ in range(STEP_REPEATS):
        _sync(device)
        start = time.perf_counter()
        score = oracle.score(queries)
        _sync(device)
        times.append(time.perf_counter() - start)
    if score.device != device:
        raise RuntimeError(f"score came back on {score.device}, not on {device}")
    return {"status": "ok", "fit_seconds": fit_seconds, "step_seconds": statistics.median(times),
            "step_seconds_min": min(times), "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def _sampler_worker(config: dict[str, Any]) -> dict[str, Any]:
    """In a child process: one whole generation run of one row."""
    from ..generate import generate
    from .toys import draw_toy

    device = torch.device(config["device"])
    data = torch.as_tensor(draw_toy(config["set"], int(config["n"]), int(config["seed"])),
                           dtype=torch.float32).to(device)
    gen = torch.Generator(device=device).manual_seed(int(config["seed"]))
    start = time.perf_counter()
    points = generate(config["method"], _estimator(config["estimator"]), data, int(config["particles"]),
                      steps=config.get("steps"), generator=gen)
    _sync(device)
    return {"status": "ok", "seconds": time.perf_counter() - start, "finite": bool(torch.isfinite(
        torch.as_tensor(points)).all()), "threads": torch.get_num_threads()}


def _child_main(config_json: str) -> None:
    """Entry point of a child process: prints one JSON line (a failure is a result, not a crash)."""
    logging.basicConfig(level=logging.WARNING)
    config = json.loads(config_json)
    try:
        result = (_sampler_worker if config.get("kind") == "sampler" else _step_worker)(config)
    except MemoryError as exc:
        result = {"status": "oom", "error": _error_text(exc)}
    except Exception as exc:
        text = str(exc).lower()
        oom = "out of memory" in text or ("memory" in text and "allocate" in text)
        result = {"status": "oom" if oom else "failed", "error": _error_text(exc)}
    sys.stdout.write(json.dumps(result) + "\n")


def _run_child(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    code = "import sys; from disco_score.bench.step_speed import _child_main; _child_main(sys.argv[1])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"exceeded the {timeout:g} s time-out"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == -9:
        return {"status": "oom", "error": "killed by SIGKILL (the kernel's out-of-memory killer)"}
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "error": f"exit code {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


def step_rows(keys: Sequence[str], d: int, n: int, gave_up: dict[tuple[str, int], str], opts: Options,
              timeout: float) -> dict[str, dict[str, Any]]:
    """One (d, n) cell of the step grid: each row's fit and step time, measured in its own child."""
    entries = timed_rows(keys, d, n, gave_up, lambda key: _run_child(
        {"estimator": key, "d": d, "n": n, "device": opts.device,
         "seed": derive_seed(opts.seed, "step", d, n)}, timeout))
    return {key: {"label": STEP_ROWS[key], "status": entry["status"], "error": entry.get("error"),
                  "values": {k: entry[k] for k in ("fit_seconds", "step_seconds", "step_seconds_min", "peak_rss_mb")
                             if k in entry},
                  "threads": entry.get("threads"), "device": entry.get("device")}
            for key, entry in entries.items()}


def describe_step_rows(rows: dict[str, dict[str, Any]]) -> str:
    """One log line for a cell of :func:`step_rows`."""
    return "; ".join(f"{r['label']} fit {r['values']['fit_seconds']:.3g} s step {r['values']['step_seconds']:.3g} s"
                     if r["status"] == "ok" else f"{r['label']} {r['status']}" for r in rows.values())


def sampler_runs(quick: bool) -> list[tuple[str, str, int, int]]:
    """(method, data set, n, particles) of the whole runs; quick: a smoke test, not a measurement."""
    return [(*SAMPLER_RUNS[0][:2], 300, 100)] if quick else list(SAMPLER_RUNS)


def sampler_rows(keys: Sequence[str], method: str, name: str, n: int, particles: int, opts: Options,
                 timeout: float) -> dict[str, dict[str, Any]]:
    """One whole generation run per row (its fit included), each in its own child."""
    rows = {}
    for key in keys:
        entry = _run_child({"kind": "sampler", "estimator": key, "method": method, "set": name, "n": n,
                            "particles": particles, "steps": 2 if opts.quick else None, "device": opts.device,
                            "seed": derive_seed(opts.seed, "step-sampler", name)}, timeout)
        rows[key] = {"label": STEP_ROWS[key], "status": entry["status"], "error": entry.get("error"),
                     "values": {k: entry[k] for k in ("seconds",) if k in entry}}
    return rows


def _ratio(rows: dict[str, dict[str, Any]], field: str) -> float | None:
    ours, base = rows.get("discoformer"), rows.get("kde")
    if ours is None or base is None or ours["status"] != "ok" or base["status"] != "ok":
        return None
    return ours["values"][field] / base["values"][field]


def run_step(opts: Options, ctx: Context) -> dict[str, Any]:
    """The per-step table, then the whole sampler runs (see the module docstring)."""
    timeout = opts.timeout if opts.timeout is not None else (120.0 if opts.quick else 600.0)
    keys = opts.rows("step")
    done = _reused_result_cells(opts, "step")
    gave_up: dict[tuple[str, int], str] = {}
    cells = []
    configs = [(d, n) for d, n in step_configs(opts.quick) if opts.selected(f"step d={d} n={n}")]
    for d, n in tqdm(configs, desc="step", disable=not opts.progress, leave=False):
        label = f"step d={d} n={n}"
        if label in done:
            cells.append(done[label])
            continue
        rows = step_rows(keys, d, n, gave_up, opts, timeout)
        cells.append({"cell": label, "d": d, "n": n, "m": STEP_QUERIES, "rows": rows,
                      "step_ratio": _ratio(rows, "step_seconds"), "fit_ratio": _ratio(rows, "fit_seconds")})
        logger.info("%s: %s; step ratio %s", label, describe_step_rows(rows), cells[-1]["step_ratio"])
    sampler_cells = []
    for method, name, n, particles in sampler_runs(opts.quick):
        label = f"step sampler {method} {name} n={n}"
        if not opts.selected(label):
            continue
        if label in done:
            sampler_cells.append(done[label])
            continue
        rows = sampler_rows(keys, method, name, n, particles, opts, timeout * 3)
        sampler_cells.append({"cell": label, "method": method, "name": name, "n": n, "particles": particles,
                              "rows": rows, "ratio": _ratio(rows, "seconds")})
        logger.info("%s: %s", label, "; ".join(
            f"{r['label']} {r['values']['seconds']:.3g} s" if r["status"] == "ok" else f"{r['label']} {r['status']}"
            for r in rows.values()))
    return {"cells": cells + sampler_cells, "device": opts.device, "queries": STEP_QUERIES,
            "repeats": STEP_REPEATS, "timeout_seconds": timeout}


def _seconds(row: dict[str, Any], field: str) -> str:
    if row["status"] != "ok":
        return f"**{row['status']}**"
    return f"{row['values'][field]:.3g} s"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def render_step(result: dict[str, Any]) -> list[str]:
    """Markdown lines: the per-step table (one row per (d, n)), then the whole sampler runs."""
    cells = [c for c in result["cells"] if "d" in c]
    runs = [c for c in result["cells"] if "method" in c]
    if not result.get("cells"):
        return ["No cells measured.", ""]
    devices = sorted({r.get("device") or "?" for c in cells for r in c["rows"].values() if r["status"] == "ok"})
    lines = [f"Fit on n samples, then the score at m = {result.get('queries')} fresh queries (median of "
             f"{result.get('repeats')} calls after a warm-up); device {result.get('device')} "
             f"({', '.join(devices) or 'none measured'}); one child process per row, time-out "
             f"{result.get('timeout_seconds'):g} s. ×: DiScoFormer's time over the KDE's.", "",
             "| d | n | DiScoFormer fit | KDE fit | fit × | DiScoFormer step | KDE step | step × | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        ours, base = c["rows"].get("discoformer"), c["rows"].get("kde")
        if ours is None or base is None:
            continue
        rss = ours["values"].get("peak_rss_mb")
        lines.append(f"| {c['d']} | {c['n']} | {_seconds(ours, 'fit_seconds')} | {_seconds(base, 'fit_seconds')} | "
                     f"{_times(c.get('fit_ratio'))} | {_seconds(ours, 'step_seconds')} | "
                     f"{_seconds(base, 'step_seconds')} | {_times(c.get('step_ratio'))} | "
                     f"{'—' if rss is None else f'{rss:.0f}'} |")
    errors = [f"{c['cell']} {r['label']}: {r['status']} ({r.get('error')})" for c in result["cells"]
              for r in c["rows"].values() if r["status"] not in ("ok",)]
    if runs:
        lines += ["", "Whole generation runs (the sampler's default steps):", "",
                  "| run | particles | DiScoFormer | KDE | × |", "|---|---|---|---|---|"]
        for c in runs:
            ours, base = c["rows"].get("discoformer"), c["rows"].get("kde")
            if ours is None or base is None:
                continue
            lines.append(f"| {c['method']}, {c['name']} n = {c['n']} | {c['particles']} | "
                         f"{_seconds(ours, 'seconds')} | {_seconds(base, 'seconds')} | {_times(c.get('ratio'))} |")
    if errors:
        lines += ["", "Rows not measured: " + "; ".join(errors[:20]) + ("; …" if len(errors) > 20 else "")]
    return lines + [""]


def plot_step(result: dict[str, Any], image_dir: Path, plt: Any) -> list[Path]:
    """Step time against n per d (DiScoFormer solid, KDE dashed), and DiScoFormer's ratio to the KDE."""
    cells = [c for c in result["cells"] if "d" in c]
    if not cells:
        return []
    fig, (ax_time, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, d in enumerate(sorted({c["d"] for c in cells})):
        sweep = [c for c in cells if c["d"] == d]
        color = f"C{i % 10}"
        for key, style in (("discoformer", "-"), ("kde", "--")):
            ok = [c for c in sweep if c["rows"].get(key, {}).get("status") == "ok"]
            if ok:
                ax_time.loglog([c["n"] for c in ok], [c["rows"][key]["values"]["step_seconds"] for c in ok],
                               style, marker="o", color=color, label=f"d = {d}" if key == "discoformer" else None)
        ratios = [c for c in sweep if c.get("step_ratio") is not None]
        if ratios:
            ax_ratio.loglog([c["n"] for c in ratios], [c["step_ratio"] for c in ratios], marker="o", color=color,
                            label=f"d = {d}")
    ax_ratio.axhline(3.0, color="k", lw=0.8, ls=":")
    ax_time.set(xlabel="n (fitted samples)", ylabel=f"score at m = {result.get('queries')} [s]",
                title="one sampler step (solid: DiScoFormer, dashed: KDE)")
    ax_ratio.set(xlabel="n (fitted samples)", ylabel="DiScoFormer / KDE", title="step-time ratio (dotted: 3×)")
    ax_time.legend(fontsize=7)
    ax_ratio.legend(fontsize=7)
    fig.tight_layout()
    path = image_dir / "bench_step.png"
    fig.savefig(path, dpi=110)
    return [path]


register_suite("step", run_step, render_step, "Sampler-step speed: the score oracle in the sampler's inner loop",
               plot_step, rows=STEP_ROWS, defaults=STEP_DEFAULTS)
