"""The ``disco-score`` command line (also ``python -m disco_score``).

Commands::

    disco-score info                                   # version, model card, checksum, extras
    disco-score demo [--out demo.png]                  # built-in 2-D mixture: DiScoFormer vs KDE vs truth
    disco-score eval SAMPLES [--queries Q] [--out F]   # log-density and score at Q (default: at SAMPLES)
    disco-score fit  SAMPLES [...]                     # eval + a summary of the fit (n, d, whitening,
                                                       #   bandwidth, held-out log-likelihood)
    disco-score sample DATA --method annealed --n-samples 1000 --out gen.npy   # + gen.png
    disco-score bench [...]                            # = python -m disco_score.bench [...]
    disco-score train [...]                            # = python -m disco_score.train [...]

File formats. Point files (SAMPLES, ``--queries``, DATA) are ``.npy`` (a numeric (n, d) array; a
1-D array is n one-dimensional points; a structured array's numeric fields are its columns) or
``.csv`` (comma-separated numbers, one point per line; an optional first line that is not numeric
is a header and is skipped; blank lines and lines starting with ``#`` are ignored).

Evaluation output (``--out``): ``.npy`` holds a float64 (m, 1 + d) array, column 0 the
log-density (nats) and columns 1..d the score (1 / units of x); ``.csv`` holds the same with the
header ``log_density,score_1,...,score_d`` and 17 significant digits (exact float64 round trip).
Without ``--out`` the CSV goes to standard output. Sample output: ``.npy`` (n, d) float64 or
``.csv`` with the header ``x_1,...,x_d``.

Bad input (a missing or unreadable file, an unknown format, a wrong shape, a dimension mismatch,
a value that is not a finite number or whose square leaves float64, a CSV first line mixing
numbers and text, a seed outside 0 .. 2^63, a diverged sampler) ends with a one-line message on
standard error and exit code 2. ``--quiet`` (before the command) silences progress bars and logging.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .base import Estimator, Oracle
from .generate import generate, scatter_points
from .samplers import ChainDiverged

logger = logging.getLogger(__name__)

ESTIMATORS = ("discoformer", "discoformer-summary", "kde", "sdkde")
BANDWIDTH_RULES = ("scott", "silverman", "score", "cv", "sd")
SAMPLE_METHODS = ("annealed", "langevin", "mala", "ddim", "ddpm", "euler")
POINT_FORMATS = (".npy", ".csv")
#: queries evaluated per block (one progress-bar tick each)
QUERY_BLOCK = 4096
#: extras reported by ``info``: label -> modules that must all be installed
EXTRAS = {"diffusers": ("diffusers",), "jax": ("jax", "blackjax", "numpyro"), "pyro": ("pyro",),
          "plot": ("matplotlib",), "bench": ("scipy", "sklearn", "matplotlib")}
#: distribution names of modules whose import name differs
_DISTRIBUTIONS = {"pyro": "pyro-ppl", "sklearn": "scikit-learn"}
#: exceptions that mean bad input or a bad environment, not a bug: reported in one line, exit 2
#: (RuntimeError is left out on purpose: from torch it means a bug, which deserves its traceback)
USER_ERRORS = (ValueError, TypeError, OSError, ImportError, FloatingPointError, OverflowError)
#: largest magnitude a point file may hold: squares (distances, variances) must stay inside float64
MAX_MAGNITUDE = 1e150
#: largest count option (samples, steps) and seed the command line accepts
MAX_COUNT = 2 ** 31 - 1
MAX_SEED = 2 ** 63 - 1 - 16  # the demo offsets the seed by a few; torch seeds are 64-bit


class UsageError(ValueError):
    """Bad command-line input detected by the CLI itself (reported like library ValueErrors)."""


# -- reading and writing points ---------------------------------------------------------------------

def _check_suffix(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in POINT_FORMATS:
        raise UsageError(f"{what} {path}: unsupported format '{suffix or '(no extension)'}'; "
                         f"use .npy or .csv")
    return suffix


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{what} {path} is not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive saved under a .npy name
        raise UsageError(f"{what} {path} is an .npz archive, not an .npy array")
    if array.dtype.names:  # structured: numeric fields become columns
        from numpy.lib import recfunctions

        try:
            array = recfunctions.structured_to_unstructured(array, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{what} {path}: structured array with non-numeric fields ({exc})") from None
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer)
                                       or np.issubdtype(array.dtype, np.floating)):
        raise UsageError(f"{what} {path} holds dtype {array.dtype}; expected real numbers")
    return array.astype(np.float64)


def _read_csv(path: Path, what: str) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not a text CSV file (not UTF-8)") from None
    rows: list[list[float]] = []
    width = None
    seen_first = False
    for line_no, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not fields or all(not f.strip() for f in fields) or fields[0].lstrip().startswith("#"):
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            # A header names columns: none of its fields is a number. A first line like "1,abc" is a
            # data row with a typo, and skipping it would silently drop a point.
            if not seen_first and not any(_is_float(f) for f in fields):
                seen_first = True
                continue
            bad = next(f for f in fields if not _is_float(f))
            raise UsageError(f"{what} {path}, line {line_no}: {bad.strip()!r} is not a number"
                             + (" (a header line may hold no numbers)" if not seen_first else "")) from None
        seen_first = True
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise UsageError(f"{what} {path}, line {line_no}: {len(values)} values, expected {width} "
                             f"(as on the first data line)")
        if not all(math.isfinite(v) for v in values):
            raise UsageError(f"{what} {path}, line {line_no}: non-finite value (NaN or inf)")
        rows.append(values)
    if not rows:
        raise UsageError(f"{what} {path} contains no data rows")
    return np.asarray(rows, dtype=np.float64)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_points(path: str | Path, what: str = "samples") -> np.ndarray:
    """Read an (n, d) float64 point array from a ``.npy`` or ``.csv`` file (formats: module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown format, unreadable content, wrong rank, no rows, or non-finite values
            (the message names ``what``, the file and, for CSV, the line).
    """
    path = Path(path)
    suffix = _check_suffix(path, what)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory, not a file")
    array = _read_npy(path, what) if suffix == ".npy" else _read_csv(path, what)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise UsageError(f"{what} {path} has shape {array.shape}; expected (n, d) points")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UsageError(f"{what} {path} is empty (shape {array.shape})")
    finite = np.isfinite(array).all(1)
    if not finite.all():
        raise UsageError(f"{what} {path}: row {int(np.argmin(finite))} (0-based) has a non-finite value "
                         f"(NaN or inf)")
    largest = float(np.abs(array).max())
    if largest > MAX_MAGNITUDE or 0.0 < largest < 1.0 / MAX_MAGNITUDE:
        raise UsageError(f"{what} {path}: values reach magnitude {largest:.3g}, whose squares leave float64 "
                         f"(allowed: {1 / MAX_MAGNITUDE:.0e} to {MAX_MAGNITUDE:.0e}); rescale the data")
    return array


def _check_out_path(path: str | Path | None, what: str) -> Path | None:
    """Validate an output path before any work is done (format and existing parent directory)."""
    if path is None:
        return None
    path = Path(path)
    _check_suffix(path, what)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{what} {path}: directory {path.parent} does not exist")
    return path


def write_table(path: Path | None, columns: np.ndarray, header: Sequence[str]) -> None:
    """Write an (m, k) float64 table as ``.npy`` or ``.csv`` (17 significant digits); None: CSV to stdout."""
    if path is not None and path.suffix.lower() == ".npy":
        np.save(path, np.ascontiguousarray(columns, dtype=np.float64))
        return
    buffer = io.StringIO()
    np.savetxt(buffer, columns, fmt="%.17g", delimiter=",", header=",".join(header), comments="")
    if path is None:
        sys.stdout.write(buffer.getvalue())
    else:
        path.write_text(buffer.getvalue())


# -- estimators -------------------------------------------------------------------------------------

def _bandwidth(text: str) -> str | float:
    if text in BANDWIDTH_RULES:
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(BANDWIDTH_RULES)} or a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a numeric bandwidth must be a finite positive number, got {text!r}")
    return value


def _positive(convert: type, minimum: int = 1) -> Any:
    """An argparse ``type`` accepting a finite positive ``convert`` (int or float); integers at least
    ``minimum`` (0 for a count that may be zero) and at most :data:`MAX_COUNT`."""
    noun = "integer" if convert is int else "number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text!r}") from None
        if convert is int:
            if not minimum <= value <= MAX_COUNT:
                kind = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
                raise argparse.ArgumentTypeError(f"expected a {kind} integer ({minimum} to {MAX_COUNT}), got {text!r}")
        elif not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a finite positive {noun}, got {text!r}")
        return value

    return parse


def _seed(text: str) -> int:
    """An argparse ``type`` for ``--seed``: an integer from 0 to :data:`MAX_SEED` (torch seeds are 64-bit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {text!r}")
    return value


def make_estimator(name: str, bandwidth: str | float | None = None, kernel: str = "full",
                   weights_dir: str | None = None) -> Estimator:
    """The estimator a command asked for: ``discoformer`` (pretrained), ``discoformer-summary`` (its fit
    distilled into a fixed-size mixture), ``kde`` or ``sdkde``."""
    if name in ("discoformer", "discoformer-summary"):
        if bandwidth is not None:
            raise UsageError(f"--bandwidth applies to --estimator kde or sdkde, not {name}")
        return load_discoformer(weights_dir, summary=name == "discoformer-summary")
    from .kde import KDE, SDKDE

    if name == "kde":
        return KDE("scott" if bandwidth is None else bandwidth, kernel=kernel)  # type: ignore[arg-type]
    if name == "sdkde":
        return SDKDE("sd" if bandwidth is None else bandwidth, kernel=kernel)  # type: ignore[arg-type]
    raise UsageError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")


def load_discoformer(weights_dir: str | None = None, summary: bool = False) -> Estimator:
    """The pretrained DiScoFormer (distilling each fit into a summary if ``summary``); a checksum
    mismatch becomes a one-line user error."""
    from .discoformer import DiScoFormer

    try:
        return DiScoFormer.pretrained(weights_dir, summary=summary)
    except RuntimeError as exc:  # the weights file does not match its recorded sha256
        raise UsageError(str(exc)) from exc


def _estimator_from_args(args: argparse.Namespace) -> Estimator:
    return make_estimator(args.estimator, args.bandwidth, args.kernel, args.weights_dir)


def evaluate(oracle: Oracle, queries: np.ndarray, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``oracle.log_density_and_score`` over (m, d) queries in blocks, with a progress bar.

    Returns ((m,) float64 log-density in nats, (m, d) float64 score).
    """
    log_p = np.empty(queries.shape[0])
    score = np.empty(queries.shape)
    starts = range(0, queries.shape[0], QUERY_BLOCK)
    for i0 in tqdm(starts, desc="evaluating", unit="block", disable=not progress or len(starts) < 2,
                   leave=False):
        lp, s = oracle.log_density_and_score(queries[i0:i0 + QUERY_BLOCK])
        log_p[i0:i0 + QUERY_BLOCK], score[i0:i0 + QUERY_BLOCK] = lp, s
    return log_p, score


def _check_same_dim(data: np.ndarray, other: np.ndarray, data_file: str, other_what: str, other_file: str) -> None:
    if other.shape[1] != data.shape[1]:
        raise UsageError(f"{other_what} {other_file} has {other.shape[1]} columns but samples {data_file} has "
                         f"{data.shape[1]}: dimensions must match")


# -- commands ---------------------------------------------------------------------------------------

def _distribution_version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return metadata.version(_DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        return "installed"


def cmd_info(args: argparse.Namespace) -> int:
    """Version, model card summary, checksum check and installed extras."""
    from .discoformer import DiScoFormer
    from .weights_io import WEIGHTS_DIR, WEIGHTS_NAME, load_specialists, load_weights

    weights_dir = Path(args.weights_dir) if args.weights_dir else WEIGHTS_DIR
    out: dict[str, Any] = {"disco-score": __version__, "python": sys.version.split()[0],
                           "torch": torch.__version__, "numpy": np.__version__}
    weights_path = weights_dir / f"{WEIGHTS_NAME}.safetensors"
    model: dict[str, Any] = {"checkpoint": str(weights_path)}
    try:
        card = DiScoFormer.model_card(weights_dir)
    except (OSError, ValueError) as exc:
        model["model_card"] = f"unavailable ({exc})"
    else:
        meta = card.get("meta", {})
        model.update({"architecture": card.get("model_config"), "sha256": card.get("sha256"),
                      "training_steps": meta.get("step")})
        if meta.get("eval"):
            model["training_eval"] = meta["eval"]
        try:
            net, _ = load_weights(weights_dir, verify=True)
        except (OSError, RuntimeError, ValueError) as exc:
            model["checksum"] = f"FAILED: {exc}"
        else:
            model["checksum"] = "ok (file matches the recorded sha256)"
            model["parameters"] = sum(p.numel() for p in net.parameters())
    try:
        specialists: Any = [{"d": sp.dim, "serves_max_n": sp.max_n, "bag_size": sp.bag_size, "checksum": "ok",
                             "parameters": sum(p.numel() for p in sp.net.parameters())}
                            for sp in load_specialists(weights_dir, verify=True)]
    except (OSError, RuntimeError, ValueError) as exc:
        specialists = f"FAILED: {exc}"
    model["specialists"] = specialists or "none"
    out["DiScoFormer"] = model
    modules = sorted({m for mods in EXTRAS.values() for m in mods})
    versions = {m: _distribution_version(m) for m in modules}
    out["extras"] = {extra: all(versions[m] for m in mods) for extra, mods in EXTRAS.items()}
    out["optional packages"] = {m: versions[m] or "not installed" for m in modules}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"disco-score {__version__} (python {out['python']}, torch {out['torch']}, numpy {out['numpy']})")
    print("DiScoFormer checkpoint:")
    for key, value in model.items():
        if key == "architecture" and isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif key == "training_eval" and isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" for k, v in value.items())
        print(f"  {key:15s} {value}")
    print("extras (pip install \"disco-score[EXTRA]\"):")
    for extra, mods in EXTRAS.items():
        detail = ", ".join(f"{m} {versions[m] or 'missing'}" for m in mods)
        print(f"  {extra:10s} {'yes' if out['extras'][extra] else 'no ':3s}  ({detail})")
    return 0


def _fit_summary(estimator: Estimator, oracle: Oracle, data: np.ndarray, held_out: bool) -> dict[str, Any]:
    """What ``fit`` reports: the data's scale, the estimator's settings and a held-out likelihood."""
    from .whitening import Whitening

    x = torch.from_numpy(data)
    white = Whitening.from_samples(x)
    cov_eigenvalues = torch.linalg.eigvalsh(white.inverse @ white.inverse)
    summary: dict[str, Any] = {
        "estimator": repr(estimator), "n": int(data.shape[0]), "d": int(data.shape[1]),
        "mean": data.mean(0).tolist(),
        "whitening": {"covariance_eigenvalues": [float(cov_eigenvalues.min()), float(cov_eigenvalues.max())],
                      "condition_number": float(cov_eigenvalues.max() / cov_eigenvalues.min()),
                      "log_det_whitening": float(white.log_det)},
    }
    bandwidth = getattr(oracle, "bandwidth", None)
    if bandwidth is not None:
        summary["bandwidth_factor"] = float(bandwidth)
        kernel_cov = getattr(oracle, "kernel_covariance", None)
        if kernel_cov is not None:
            summary["kernel_std"] = torch.diagonal(kernel_cov).sqrt().tolist()
    if held_out and data.shape[0] >= 4:
        from . import information

        # The held-out entropy estimate is minus the mean held-out log-density (2-fold cross-fitting).
        summary["held_out_mean_log_density"] = -information.entropy(x, estimator, folds=2, seed=0)
    return summary


def _print_summary(summary: dict[str, Any], stream: Any) -> None:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        if isinstance(value, dict):
            return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
        return str(value)

    for key, value in summary.items():
        print(f"{key:27s} {fmt(value)}", file=stream)


def cmd_eval(args: argparse.Namespace) -> int:
    """Fit on SAMPLES and write log-density and score at the queries."""
    out = _check_out_path(args.out, "--out")
    data = read_points(args.samples, "samples")
    queries = data
    if args.queries is not None:
        queries = read_points(args.queries, "queries")
        _check_same_dim(data, queries, args.samples, "queries", args.queries)
    estimator = _estimator_from_args(args)
    start = time.perf_counter()
    oracle = estimator.fit(data)
    if args.adapt:
        adapt = getattr(oracle, "adapt", None)
        if adapt is None:
            raise UsageError("--adapt applies to --estimator discoformer only")
        oracle = adapt(steps=args.adapt)
    log_p, score = evaluate(oracle, queries, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    if args.command == "fit":
        summary = _fit_summary(estimator, oracle, data, held_out=not args.no_held_out)
        summary["queries"] = int(queries.shape[0])
        summary["seconds (fit + evaluate)"] = elapsed
        stream = sys.stdout if out is not None else sys.stderr  # stdout carries the CSV without --out
        if args.json:
            print(json.dumps(summary, indent=2), file=stream)
        else:
            _print_summary(summary, stream)
    d = data.shape[1]
    write_table(out, np.column_stack([log_p, score]), ["log_density", *(f"score_{i + 1}" for i in range(d))])
    if out is not None:
        logger.info("wrote %s: %d rows (log_density, score_1..score_%d)", out, queries.shape[0], d)
    return 0


def draw_samples(estimator: Estimator, data: np.ndarray, method: str, n_samples: int, steps: int | None,
                 step_size: float | None, seed: int, progress: bool = True) -> np.ndarray:
    """(n_samples, d) float64 samples from the estimator fitted to ``data`` with a ``sample`` method.

    ``steps``: Langevin/MALA transitions (default 500), annealed Langevin steps per noise level
    (default 20) or scheduler inference steps (default 50). ``step_size`` (Langevin/MALA, units of
    x squared): default 0.01 times the data's mean per-coordinate variance. Langevin/MALA chains
    start at data points drawn with replacement.
    """
    from . import samplers

    generator = torch.Generator().manual_seed(seed)
    if method in ("langevin", "mala"):
        oracle = estimator.fit(data)
        start_index = torch.randint(0, data.shape[0], (n_samples,), generator=generator).numpy()
        tau = step_size if step_size is not None else 0.01 * float(data.var(0).mean())
        run = samplers.langevin if method == "langevin" else samplers.mala
        samples, info = run(oracle, data[start_index], step_size=tau, n_steps=steps or 500,
                            generator=generator, progress=progress)
        if info.acceptance_rate is not None:
            logger.info("MALA acceptance rate %.2f", info.acceptance_rate)
    else:  # annealed Langevin or a diffusers scheduler: shared with the benchmark's sampling suites
        samples = generate(method, estimator, data, n_samples, steps=steps, generator=generator, progress=progress,
                           logger=logger)
    return np.asarray(samples, dtype=np.float64)


def _pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (with a warning) when it is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        logger.warning("matplotlib is not installed; no PNG written (pip install \"disco-score[plot]\")")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(path: Path, data: np.ndarray, samples: np.ndarray, title: str) -> bool:
    """Scatter of the first two coordinates of the data and the generated samples (a histogram in 1-D)."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if data.shape[1] == 1:
        bins = np.histogram_bin_edges(np.concatenate([data[:, 0], samples[:, 0]]), bins=50)
        ax.hist(data[:, 0], bins=bins, density=True, alpha=0.5, color="0.5", label="data")
        ax.hist(samples[:, 0], bins=bins, density=True, alpha=0.5, color="C0", label="generated")
        ax.set_xlabel("x_1")
    else:
        scatter_points(ax, data, "0.6", 4, label="data", alpha=0.6)
        scatter_points(ax, samples, "C0", 4, label="generated", alpha=0.7)
        ax.set_xlabel("x_1")
        ax.set_ylabel("x_2")
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", markerscale=3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def cmd_sample(args: argparse.Namespace) -> int:
    """Generate samples from DATA with Langevin, annealed Langevin or a diffusers scheduler."""
    out = _check_out_path(args.out, "--out")
    assert out is not None
    plot = None if args.no_plot else Path(args.plot) if args.plot else out.with_suffix(".png")
    if plot is not None and not plot.parent.is_dir():
        raise FileNotFoundError(f"--plot {plot}: directory {plot.parent} does not exist")
    data = read_points(args.data, "data")
    if args.method in ("ddim", "ddpm", "euler") and importlib.util.find_spec("diffusers") is None:
        raise ImportError(f"--method {args.method} needs diffusers; pip install \"disco-score[diffusers]\"")
    if args.step_size is not None and args.method not in ("langevin", "mala"):
        raise UsageError("--step-size applies to --method langevin or mala")
    estimator = _estimator_from_args(args)
    samples = draw_samples(estimator, data, args.method, args.n_samples, args.steps, args.step_size, args.seed,
                           progress=not args.quiet)
    d = data.shape[1]
    write_table(out, samples, [f"x_{i + 1}" for i in range(d)])
    logger.info("wrote %s: %d samples of dimension %d", out, samples.shape[0], d)
    if plot is not None and plot_samples(plot, data, samples, f"{args.method} ({args.estimator}), "
                                                              f"{samples.shape[0]} samples"):
        logger.info("wrote %s", plot)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default: fit a built-in 2-D data set with known truth, compare, sample, plot."""
    from . import datasets, metrics, samplers
    from .kde import KDE

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the demo writes a PNG; use a .png name")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")
    start = time.perf_counter()
    data, target = datasets.load(args.dataset, args.n, seed=args.seed)
    estimators: dict[str, Estimator] = {"DiScoFormer": load_discoformer(args.weights_dir),
                                        "KDE (Scott)": KDE("scott")}
    oracles = {name: est.fit(data) for name, est in estimators.items()}
    if args.sampler == "summary":  # the network distilled into a mixture: one fit for every noise level
        from .summary import distil

        oracles = {"DiScoFormer": oracles["DiScoFormer"], "DiScoFormer summary": distil(oracles["DiScoFormer"], data),
                   "KDE (Scott)": oracles["KDE (Scott)"]}
    print(f"data set '{args.dataset}': n = {args.n} two-dimensional samples (seed {args.seed})")
    results: dict[str, dict[str, float]] = {}
    if target is not None:
        queries = target.sample(1024, torch.Generator().manual_seed(args.seed + 1)).numpy()
        true_log_p, true_score = target.log_density_and_score(queries)
        print("error against the exact density at 1024 fresh draws from the truth:")
        print(f"  {'estimator':20s} {'rel. score MSE':>15s} {'log-density MSE':>16s}")
        for name, oracle in oracles.items():
            log_p, score = oracle.log_density_and_score(queries)
            results[name] = {"relative_score_mse": metrics.relative_score_mse(score, true_score),
                             "log_density_mse": metrics.log_density_mse(log_p, true_log_p)}
            print(f"  {name:20s} {results[name]['relative_score_mse']:15.4f} {results[name]['log_density_mse']:16.4f}")
    else:
        print("(no closed-form truth for this data set: errors not reported)")
    sampler_name = {"summary": "DiScoFormer summary", "discoformer": "DiScoFormer", "kde": "KDE (Scott)"}[args.sampler]
    generated, info = samplers.annealed_langevin(oracles[sampler_name], data, args.n_samples,
                                                 steps_per_level=args.steps,
                                                 generator=torch.Generator().manual_seed(args.seed + 2),
                                                 progress=not args.quiet)
    generated = np.asarray(generated, dtype=np.float64)
    reference = (target.sample(args.n_samples, torch.Generator().manual_seed(args.seed + 3)).numpy()
                 if target is not None else datasets.load(args.dataset, args.n_samples, seed=args.seed + 3)[0])
    floor = datasets.load(args.dataset, args.n_samples, seed=args.seed + 4)[0]
    print(f"annealed Langevin with the {sampler_name} score: {args.n_samples} samples ({info.n_steps} steps over "
          f"{len(info.noise_levels)} noise levels)")
    print(f"  energy distance to fresh data {metrics.energy_distance(generated, reference):.4f} "
          f"(two independent draws of that size: {metrics.energy_distance(floor, reference):.4f})")
    if _plot_demo(out, data, target, oracles, generated, results, args.dataset, sampler_name):
        print(f"wrote {out}")
    logger.info("demo took %.1f s", time.perf_counter() - start)
    return 0


def _plot_demo(path: Path, data: np.ndarray, target: Oracle | None, oracles: dict[str, Oracle],
               generated: np.ndarray, results: dict[str, dict[str, float]], dataset: str, sampler_name: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    lo, hi = data.min(0), data.max(0)
    pad = 0.15 * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 90)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 90)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    coarse = np.stack(np.meshgrid(xs[::6], ys[::6]), axis=-1).reshape(-1, 2)
    panels: list[tuple[str, Oracle | None]] = [("truth" if target is not None else f"data ({dataset})", target)]
    panels += list(oracles.items())
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 4.2), sharex=True, sharey=True)
    levels = None
    for ax, (name, oracle) in zip(axes, panels):
        if oracle is not None:
            log_p = np.asarray(oracle.log_density(grid)).reshape(len(ys), len(xs))
            if levels is None:  # one colour scale for all panels: the first panel's range
                top = float(log_p.max())
                levels = np.linspace(top - 12.0, top, 13)
            ax.contourf(xs, ys, np.clip(log_p, levels[0], None), levels=levels, cmap="viridis")
            score = np.asarray(oracle.score(coarse))
            norm = np.linalg.norm(score, axis=1, keepdims=True)
            unit = score / np.maximum(norm, 1e-12)
            ax.quiver(coarse[:, 0], coarse[:, 1], unit[:, 0], unit[:, 1], color="white", alpha=0.7, width=0.004)
        else:
            scatter_points(ax, data, "0.3", 3)
        title = name
        if name in results:
            title += f"\nrel. score MSE {results[name]['relative_score_mse']:.3f}"
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
    scatter_points(axes[-1], data, "0.6", 3, label="data")
    scatter_points(axes[-1], generated, "C3", 3, label="annealed Langevin")
    axes[-1].legend(loc="lower left", fontsize=8, markerscale=3)
    axes[-1].set_title(f"annealed Langevin ({sampler_name} score)", fontsize=10)
    axes[-1].set_aspect("equal")
    fig.suptitle("log-density (contours) and score direction (arrows)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- argument parsing -------------------------------------------------------------------------------

def _add_estimator_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("estimator")
    group.add_argument("--estimator", choices=ESTIMATORS, default="discoformer",
                       help="discoformer (pretrained transformer, default), discoformer-summary (its fit "
                            "distilled into a fixed-size Gaussian mixture: fast sampler steps), kde (Gaussian KDE) "
                            "or sdkde (score-debiased KDE)")
    group.add_argument("--bandwidth", type=_bandwidth, default=None,
                       help=f"kde/sdkde bandwidth: {', '.join(BANDWIDTH_RULES)} or a factor h (kernel covariance "
                            f"h^2 x sample covariance); default scott (kde), sd (sdkde)")
    group.add_argument("--kernel", choices=("full", "isotropic"), default="full", help="kde/sdkde kernel shape")
    group.add_argument("--weights-dir", default=None, help="directory with discoformer.safetensors/.json "
                       "(default: the weights shipped in the package)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command except ``bench`` and ``train`` (which own theirs)."""
    parser = argparse.ArgumentParser(
        prog="disco-score",
        description="Density and score estimation from samples: a pretrained transformer (DiScoFormer) and "
                    "KDE baselines, with samplers. Point files are .npy or .csv (one point per row).",
        epilog="Run 'disco-score COMMAND --help' for a command's options. Exit codes: 0 ok, 2 bad input.")
    parser.add_argument("--version", action="version", version=f"disco-score {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # --quiet is accepted after the command too; SUPPRESS keeps a global --quiet from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or log messages")

    info = commands.add_parser("info", parents=[common], help="version, model card, checkpoint hash check, installed extras",
                               description=cmd_info.__doc__)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--weights-dir", default=None, help="check this weights directory instead of the packaged one")
    info.set_defaults(handler=cmd_info)

    for name, text in (("eval", "log-density and score at query points (CSV to stdout without --out)"),
                       ("fit", "like eval, plus a summary of the fit (n, d, whitening, bandwidth, "
                               "held-out mean log-density) on stdout with --out, else on stderr")):
        sub = commands.add_parser(name, parents=[common], help=text, description=text + ". Output columns: log_density "
                                  "(nats), score_1..score_d; .npy output is a float64 (m, 1 + d) array.")
        sub.add_argument("samples", help="the samples to fit: .npy or .csv, one point per row")
        sub.add_argument("--queries", default=None, help="points to evaluate at (.npy/.csv, same columns); "
                         "default: the samples themselves")
        sub.add_argument("--out", default=None, help="output .npy or .csv (default: CSV on stdout)")
        sub.add_argument("--adapt", type=_positive(int, minimum=0), default=0, metavar="STEPS",
                         help="discoformer: test-time adaptation steps on the samples (default 0)")
        _add_estimator_options(sub)
        if name == "fit":
            sub.add_argument("--json", action="store_true", help="print the summary as JSON")
            sub.add_argument("--no-held-out", action="store_true",
                             help="skip the 2-fold held-out mean log-density (two extra fits)")
        sub.set_defaults(handler=cmd_eval)

    sample = commands.add_parser("sample", parents=[common], help="generate new points like DATA (and a PNG scatter)",
                                 description="Generate points from the distribution of DATA with score-based "
                                             "sampling driven by the chosen estimator.")
    sample.add_argument("data", help="the data set: .npy or .csv, one point per row")
    sample.add_argument("--method", choices=SAMPLE_METHODS, default="annealed",
                        help="annealed (annealed Langevin, default), langevin, mala (Metropolis-adjusted), or a "
                             "diffusers scheduler: ddim, ddpm, euler (needs the diffusers extra)")
    sample.add_argument("-n", "--n-samples", type=_positive(int), default=1000, help="points to generate (default 1000)")
    sample.add_argument("--steps", type=_positive(int), default=None,
                        help="langevin/mala: transitions per chain (500); annealed: steps per noise level (20); "
                             "ddim/ddpm/euler: inference steps (50)")
    sample.add_argument("--step-size", type=_positive(float), default=None,
                        help="langevin/mala step size tau in units of x^2 (default 0.01 x mean variance of DATA)")
    sample.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    sample.add_argument("--out", default="samples.npy", help="output .npy or .csv (default samples.npy)")
    sample.add_argument("--plot", default=None, help="PNG scatter of the first two coordinates "
                        "(default: --out with .png)")
    sample.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    _add_estimator_options(sample)
    sample.set_defaults(handler=cmd_sample)

    demo = commands.add_parser("demo", parents=[common], help="fit a built-in 2-D data set, compare with KDE and the truth, "
                                            "sample, write a PNG",
                               description=cmd_demo.__doc__ + " Prints the relative score MSE and log-density "
                               "MSE of DiScoFormer and KDE (Scott) against the exact mixture.")
    demo.add_argument("--dataset", choices=("gmm", "ring", "moons"), default="gmm",
                      help="gmm: an uneven 4-component mixture (default); ring: 8 modes on a circle; "
                           "moons: two moons (no exact truth)")
    demo.add_argument("-n", "--n", type=_positive(int), default=1000, help="number of samples to fit (1000)")
    demo.add_argument("--n-samples", type=_positive(int), default=500, help="points to generate (500)")
    demo.add_argument("--steps", type=_positive(int), default=20, help="annealed Langevin steps per level (20)")
    demo.add_argument("--sampler", choices=("summary", "discoformer", "kde"), default="summary",
                      help="whose score drives annealed Langevin: summary (default; the DiScoFormer fit "
                           "distilled into a Gaussian mixture, whose convolutions serve every noise level "
                           "exactly: seconds), discoformer (the network itself, re-encoding the noised data "
                           "at each low noise level: about a minute on 2 cores) or kde (exact Gaussian "
                           "smoothing, for comparison)")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    demo.add_argument("--out", default="demo.png", help="output PNG (default demo.png)")
    demo.add_argument("--weights-dir", default=None, help="DiScoFormer weights directory (default: packaged)")
    demo.set_defaults(handler=cmd_demo)

    commands.add_parser("bench", help="run the benchmarks (disco-score bench --help)", add_help=False)
    commands.add_parser("train", help="train DiScoFormer (disco-score train --help)", add_help=False)
    return parser


def _split_global(argv: list[str]) -> tuple[bool, str | None, list[str]]:
    """(quiet, command, arguments after the command) for delegation to bench/train."""
    quiet = False
    for i, token in enumerate(argv):
        if token in ("-q", "--quiet"):
            quiet = True
        elif not token.startswith("-"):
            return quiet, token, argv[i + 1:]
        else:
            return quiet, None, []
    return quiet, None, []


def _configure_logging(quiet: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger("disco_score").setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input; bench/train: theirs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet, command, rest = _split_global(argv)
    try:
        if command in ("bench", "train"):
            _configure_logging(quiet)
            try:
                if command == "bench":
                    from .bench import main as bench_main

                    return bench_main(rest + (["--no-progress"] if quiet and "--no-progress" not in rest else []))
                from .train import main as train_main

                return train_main(rest + (["--quiet"] if quiet and "--quiet" not in rest else []))
            except FileNotFoundError as exc:  # e.g. train --config /missing.json
                message = str(exc) if exc.filename is None else f"{exc.strerror}: {exc.filename}"
            except USER_ERRORS as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"disco-score {command}: error: {message}", file=sys.stderr)
            return 2
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse usage errors (code 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    _configure_logging(args.quiet)
    try:
        return int(args.handler(args))
    except FileNotFoundError as exc:
        message = str(exc) if exc.filename is None else f"{exc.strerror}: {exc.filename}"
    except OverflowError as exc:
        message = f"a number left float64's range ({exc}); rescale the data or the option"
    except (*USER_ERRORS, ChainDiverged) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    except KeyboardInterrupt:
        print("disco-score: interrupted", file=sys.stderr)
        return 130
    print(f"disco-score {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
