"""The command line of the benchmark: ``python -m disco_score.bench [suite] [options]`` (also
``disco-score bench``). :func:`main` parses the options, runs the chosen suites (see :mod:`.registry`;
the six GMM-prior suites in :mod:`.suites`, the wild suite in :mod:`.wild`), writes
``<out-dir>/benchmarks/<suite>.json`` and regenerates ``<out-dir>/BENCHMARKS.md`` and
``<out-dir>/docs/images/bench_*.png`` (:mod:`.report`) from all suite JSON files present. A failing
row or suite is recorded (exception text in the JSON and the markdown) and the run goes on.

Definitions of the suites, cells and figures: ``docs/benchmark-protocol.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import suites as _suites  # noqa: F401  (registers the six GMM-prior suites)
from . import step_speed as _step_speed  # noqa: F401  (registers the sampler-step speed suite)
from . import wild as _wild  # noqa: F401  (registers the wild suite)
from . import summary_suite as _summary_suite  # noqa: F401  (registers the distilled-summary suite)
from .cells import Options
from .problems import _jsonable, run_metadata
from .registry import RUNNERS, SUITE_ROWS, SUITES
from .report import compare, render_comparison, write_report
from .rows import ESTIMATORS, Context

logger = logging.getLogger(__name__)


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
    parser.add_argument("--device", default="cpu",
                        help="step suite: the torch device to fit and query on (e.g. cuda); default cpu")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the cells an interrupted run of the same suite, seed and rows logged "
                        "in <out-dir>/benchmarks/cells.jsonl")
    parser.add_argument("--reuse", type=Path, default=None, metavar="JSON",
                        help="reuse the cells of this earlier benchmarks/<suite>.json (one suite; same seed and "
                        "rows), keeping the commit each was measured at, except those matching --rerun")
    parser.add_argument("--rerun", default=None, metavar="REGEX",
                        help="with --reuse: cells to measure again (e.g. 'd=10' after a new d = 10 checkpoint)")
    parser.add_argument("--rerun-rows", nargs="+", default=None, metavar="KEY",
                        help="with --rerun: measure only these rows again in those cells, keeping the others "
                        "from --reuse with the commit they were measured at (e.g. discoformer discoformer-adapt)")
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
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch sees no CUDA device")
    reuse = _read_result(parser, "--reuse", args.reuse)
    if reuse is not None and args.suite != reuse.get("suite"):
        parser.error(f"--reuse: {args.reuse} holds the {reuse.get('suite')!r} suite; run that suite alone")
    if args.rerun is not None and args.reuse is None:
        parser.error("--rerun needs --reuse")
    _check_regex(parser, "--rerun", args.rerun)
    if args.rerun_rows is not None:
        if args.rerun is None:
            parser.error("--rerun-rows needs --rerun (and --reuse)")
        unknown_rows = sorted(set(args.rerun_rows) - set(known))
        if unknown_rows:
            parser.error(f"--rerun-rows: unknown estimator key(s) {unknown_rows}; choose from {sorted(known)}")
    old = _read_result(parser, "--compare", args.compare)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    opts = Options(quick=args.quick, seed=args.seed, estimators=args.estimators, only=args.only,
                   timeout=args.timeout, progress=not args.no_progress,
                   cell_log=args.out_dir / "benchmarks" / "cells.jsonl", resume=args.resume,
                   targets=args.targets, reuse=reuse, rerun=args.rerun, rerun_rows=args.rerun_rows,
                   device=args.device)
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
