"""The wild suite (protocol W1–W3) and the baselines a user would pick instead."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from disco_score.bench import cli, wild
from disco_score.bench.baselines import BICGaussianMixture, SplineFlow
from disco_score.bench.rows import ORACLE_KDE
from disco_score.targets import GaussianMixture


def test_quick_wild_suite_fills_every_row_or_says_why(tmp_path: Path) -> None:
    assert cli.main(["wild", "--quick", "--no-progress", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmarks" / "wild.json").read_text())
    assert result["status"] == "ok"
    protocols = {c["protocol"] for c in result["cells"]}
    assert protocols == {"W1", "W2", "W3"}
    for cell in result["cells"]:
        assert cell["status"] == "ok", cell
        for key, row in cell["rows"].items():
            if cell["protocol"] == "W1" and key == ORACLE_KDE:
                assert row["status"] == "n/a"  # no truth for toy sets
                continue
            assert row["status"] == "ok", (cell["cell"], key, row.get("error"))
            assert row["values"]["fit_seconds"] >= 0 and row["values"]["eval_seconds"] >= 0
            figure = "heldout_loglik" if cell["protocol"] == "W1" else "relative_score_mse"
            assert math.isfinite(row["values"][figure])
    sampling = result["sampling"][0]["rows"]
    assert sampling["flow|DDIM (diffusers)"]["status"] == "skipped"
    assert all(r["status"] == "ok" for k, r in sampling.items() if not k.startswith("flow"))
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "### W1: classic 2-D toy sets" in report and "### W3: real posteriors" in report
    assert "Command: `python -m disco_score.bench wild --quick" in report


def test_wild_rows_are_resumed_not_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["wild", "--quick", "--no-progress", "--out-dir", str(tmp_path), "--estimators", "kde-cv", "kde-scott",
            "--only", "^W1 "]
    assert cli.main(args) == 0
    calls = []
    monkeypatch.setattr(wild, "evaluate_row", lambda *a, **k: calls.append(a) or {"status": "n/a"})
    assert cli.main([*args, "--resume"]) == 0
    assert calls == []


def test_reuse_takes_accuracy_and_sampling_cells_from_a_wild_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # --reuse benchmarks/wild.json: both cell lists (accuracy and W1 sampling) are reused, nothing re-run
    first = tmp_path / "first"
    args = ["wild", "--quick", "--no-progress", "--estimators", "kde-cv", "kde-scott", "--only", "^W1 "]
    assert cli.main([*args, "--out-dir", str(first)]) == 0
    old = json.loads((first / "benchmarks" / "wild.json").read_text())
    assert old["cells"] and old["sampling"]
    monkeypatch.setattr(wild, "evaluate_row", lambda *a, **k: pytest.fail("accuracy cell re-run"))
    monkeypatch.setattr(wild, "_generate", lambda *a, **k: pytest.fail("sampling cell re-run"))
    again = tmp_path / "again"
    assert cli.main([*args, "--out-dir", str(again), "--reuse", str(first / "benchmarks" / "wild.json")]) == 0
    new = json.loads((again / "benchmarks" / "wild.json").read_text())
    assert [c["cell"] for c in new["cells"]] == [c["cell"] for c in old["cells"]]
    assert [c["cell"] for c in new["sampling"]] == [c["cell"] for c in old["sampling"]]
    assert all("measured_at" in c for c in new["sampling"])


def test_bic_mixture_finds_three_separated_clusters() -> None:
    truth = GaussianMixture(torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64),
                            torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]], dtype=torch.float64),
                            0.5 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2))
    x = truth.sample(3000, torch.Generator().manual_seed(0))
    fit = BICGaussianMixture(max_components=8).fit(x)
    assert fit.weights.shape[-1] == 3
    q = truth.sample(500, torch.Generator().manual_seed(1))
    assert float((fit.log_density(q) - truth.log_density(q)).abs().mean()) < 0.05


def test_spline_flow_is_normalised_and_its_score_is_its_gradient() -> None:
    x = np.random.default_rng(0).normal(size=(1000, 2)) @ np.array([[1.0, 0.5], [0.0, 0.7]])
    oracle = SplineFlow(seconds=3.0).fit(x)
    assert oracle.steps > 0
    grid = np.linspace(-7, 7, 201)
    xx, yy = np.meshgrid(grid, grid)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    mass = float(np.exp(oracle.log_density(pts)).sum() * (grid[1] - grid[0]) ** 2)
    assert abs(mass - 1.0) < 0.02
    q = x[:5]
    eps = 1e-4
    fd = np.stack([(oracle.log_density(q + eps * e) - oracle.log_density(q - eps * e)) / (2 * eps)
                   for e in np.eye(2)], 1)
    np.testing.assert_allclose(oracle.score(q), fd, rtol=2e-2, atol=2e-2)
    with pytest.raises(NotImplementedError, match="noise level"):
        oracle.smoothed(0.1)
