"""Score error against dimension: DiScoFormer and KDE on random Gaussian mixtures.

Reads the benchmark's results when they exist, in this order:

1. ``benchmarks/scaling.json``, the "vs d" sweep (fixed n, d = 1 ... 100), written by
   ``python -m disco_score.bench scaling``;
2. ``benchmarks/accuracy.json``, the protocol's P1 cells (d = 2, 10) and P2 (d = 100);

and otherwise computes a small sweep itself with the benchmark's own problem generator and metrics
(:func:`disco_score.bench.make_problem`, :func:`disco_score.bench.query_metrics`): two random
mixtures from the protocol prior per dimension, n = 512 samples, 512 queries, errors averaged over
the two (about 20 s of CPU time). The figure says which source it shows.

Run from the repository root::

    python examples/high_dimension.py               # writes docs/images/high_dimension.png
    python examples/high_dimension.py --compute     # ignore the JSON, run the small sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROW_STYLES = {"discoformer": ("C0", "o"), "discoformer-adapt": ("C9", "o"), "kde-scott": ("C1", "s"),
              "kde-oracle": ("C2", "^"), "sdkde-empirical": ("C4", "v"), "em": ("C7", "x")}
METRICS = {"relative_score_mse": "relative score MSE", "log_density_mse": "log-density MSE"}
#: (d, value) points per row key and metric: {row_key: {"label": str, metric: [(d, value), ...]}}
Curves = dict[str, dict[str, Any]]


def curves_from_cells(cells: list[dict[str, Any]]) -> Curves:
    """Collect (d, value) points per estimator row from benchmark cells (one n per d expected)."""
    curves: Curves = {}
    for cell in sorted(cells, key=lambda c: c["d"]):
        for key, row in cell["rows"].items():
            if row.get("status") != "ok" or not row.get("values"):
                continue
            entry = curves.setdefault(key, {"label": row.get("label", key)})
            for metric in METRICS:
                if metric in row["values"]:
                    entry.setdefault(metric, []).append((cell["d"], row["values"][metric]))
    return curves


def from_benchmarks(bench_dir: Path) -> tuple[Curves, str] | None:
    """Curves and a caption from the benchmark JSON, or None when there is none usable."""
    scaling = bench_dir / "scaling.json"
    if scaling.exists():
        result = json.loads(scaling.read_text())
        cells = [c for c in result.get("cells", []) if c.get("group") == "vs d"]
        if cells:
            meta = result.get("meta", {})
            caption = (f"{scaling.relative_to(ROOT) if scaling.is_relative_to(ROOT) else scaling}: vs d at "
                       f"n = {cells[0]['n']}, {cells[0]['targets']} targets per d, "
                       f"commit {meta.get('commit', '?')}")
            return curves_from_cells(cells), caption
    accuracy = bench_dir / "accuracy.json"
    if accuracy.exists():
        result = json.loads(accuracy.read_text())
        # One cell per d: the protocol's largest-n mixture cells (P1 d = 2, 10; P2 d = 100).
        chosen: dict[int, dict[str, Any]] = {}
        for cell in result.get("cells", []):
            if cell.get("group") in ("P1", "P2") and cell["n"] >= chosen.get(cell["d"], {"n": 0})["n"]:
                chosen[cell["d"]] = cell
        if chosen:
            caption = (f"{accuracy.name}: " + ", ".join(f"{c['group']} d={d} n={c['n']}" for d, c in sorted(chosen.items()))
                       + " (P1: the GMM prior; P2: K = 2 unrotated), "
                       + f"{min(c['targets'] for c in chosen.values())}+ targets per cell, "
                       + f"commit {result.get('meta', {}).get('commit', '?')}")
            return curves_from_cells(list(chosen.values())), caption
    return None


def compute_sweep(dims: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100), n: int = 512, m: int = 512,
                  targets: int = 2, seed: int = 0) -> tuple[Curves, str]:
    """A small "vs d" sweep with the benchmark's generator and metrics (mean over ``targets`` per d)."""
    from tqdm import tqdm

    from disco_score import KDE, DiScoFormer
    from disco_score.bench import make_problem, query_metrics

    estimators = {"discoformer": ("DiScoFormer", DiScoFormer.pretrained()), "kde-scott": ("KDE (Scott)", KDE("scott"))}
    cells = []
    for d in tqdm(dims, desc="dimensions"):
        per_target = {key: [] for key in estimators}
        for index in range(targets):
            problem = make_problem("gmm", d, n, index, seed, m=m)
            for key, (_, est) in estimators.items():
                per_target[key].append(query_metrics(est.fit(problem.samples), problem))
        rows = {key: {"label": label, "status": "ok",
                      "values": {metric: float(np.mean([v[metric] for v in per_target[key]])) for metric in METRICS}}
                for key, (label, _) in estimators.items()}
        cells.append({"d": d, "n": n, "rows": rows})
    caption = f"computed by examples/high_dimension.py: n = {n}, mean over {targets} targets per d, m = {m} queries"
    return curves_from_cells(cells), caption


def plot(curves: Curves, caption: str, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, (metric, title) in zip(axes, METRICS.items()):
        for key, entry in curves.items():
            points = entry.get(metric)
            if not points:
                continue
            color, marker = ROW_STYLES.get(key, (None, "."))
            ds, values = zip(*points)
            ax.plot(ds, values, marker=marker, color=color, label=entry["label"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("dimension d")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axhline(1.0, color="0.5", lw=0.8, ls="--")  # the zero predictor's relative score MSE
    axes[0].legend(fontsize=8)
    fig.suptitle("Error against dimension on random Gaussian mixtures (protocol prior)", fontsize=11)
    fig.text(0.5, -0.02, caption, ha="center", fontsize=8, color="0.3")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--compute", action="store_true", help="run the small sweep even if JSON exists")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "high_dimension.png")
    args = parser.parse_args()
    found = None if args.compute else from_benchmarks(args.bench_dir)
    curves, caption = found if found is not None else compute_sweep()
    for key, entry in curves.items():
        print(f"{entry['label']:30s} " + "  ".join(f"d={d}: {v:.3g}" for d, v in entry.get("relative_score_mse", [])))
    plot(curves, caption, args.out)
    print(f"{caption}\nwrote {args.out}")


if __name__ == "__main__":
    main()
