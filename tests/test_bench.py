"""The benchmark (disco_score.bench): quick runs on KDE rows only, into a temporary directory.

Checks the JSON and markdown structure, that failures are recorded rather than raised, that
--compare works, that the oracle-tuned KDE never loses to Scott's KDE (its grid contains Scott's
bandwidth), and the grid ISE against the closed form for Gaussian mixtures.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from disco_score import KDE
from disco_score.bench import cells as bench_cells
from disco_score.bench import cli, problems, registry, report, suites
from disco_score.bench import rows as bench_rows
from disco_score.targets import GaussianMixture

KDE_ROWS = ["kde-scott", "kde-oracle"]


def _run(tmp_path: Path, *args: str) -> int:
    return cli.main([*args, "--out-dir", str(tmp_path), "--no-progress"])


def _move_to_commit(monkeypatch: pytest.MonkeyPatch, commit: str) -> None:
    """Pretend the checkout is at ``commit``: both look-ups of :func:`git_commit`, the run metadata's
    (:mod:`.problems`) and the cell log's (:mod:`.cells`)."""
    monkeypatch.setattr(problems, "git_commit", lambda: commit)
    monkeypatch.setattr(bench_cells, "git_commit", lambda: commit)


def _load(tmp_path: Path, suite: str) -> dict:
    return json.loads((tmp_path / "benchmarks" / f"{suite}.json").read_text())


def _broken(problem: problems.Problem, ctx: bench_rows.Context):
    raise RuntimeError("injected failure")


@pytest.fixture
def broken_row(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(bench_rows.ESTIMATORS, "broken",
                        bench_rows.RowSpec("broken", "Broken estimator", fit=_broken))
    return "broken"


def test_quick_accuracy_structure_failures_and_compare(tmp_path: Path, broken_row: str) -> None:
    only = "^P1 d=2 |P3 Student-t"
    rc = _run(tmp_path, "accuracy", "--quick", "--estimators", *KDE_ROWS, broken_row, "--only", only)
    assert rc == 0  # a failing row is recorded, not raised
    result = _load(tmp_path, "accuracy")
    assert result["suite"] == "accuracy" and result["status"] == "ok"
    meta = result["meta"]
    assert meta["seed"] == 0 and meta["quick"] is True and meta["cpu_count"] >= 1
    assert meta["command"].startswith("python -m disco_score.bench accuracy --quick")
    assert meta["commit"] and meta["torch"] == torch.__version__
    assert [c["cell"] for c in result["cells"]] == ["P1 d=2 n=256", "P3 Student-t d=2 n=128"]

    for cell in result["cells"]:
        rows = cell["rows"]
        assert set(rows) == {"kde-scott", "kde-oracle", "broken"}
        assert len(cell["seeds"]) == cell["targets"] and cell["m"] == 1024
        scott, tuned = rows["kde-scott"], rows["kde-oracle"]
        assert scott["status"] == tuned["status"] == "ok"
        for metric in bench_rows.METRICS:
            # Scott's bandwidth with the full kernel is on the oracle's grid: never worse, per target.
            assert tuned["values"][metric] <= scott["values"][metric] * (1 + 1e-12)
            for s_t, o_t in zip(scott["per_target"], tuned["per_target"]):
                assert o_t[metric] <= s_t[metric] * (1 + 1e-12)
            assert tuned["ratio_to_oracle_kde"][metric] == pytest.approx(1.0)
            assert scott["ratio_to_oracle_kde"][metric] == pytest.approx(
                scott["values"][metric] / tuned["values"][metric])
            # the cell is the mean over targets of the per-target figure
            assert scott["values"][metric] == pytest.approx(np.mean([t[metric] for t in scott["per_target"]]))
        assert rows["broken"]["status"] == "failed"
        assert "RuntimeError: injected failure" in rows["broken"]["error"]
        assert rows["broken"]["values"] is None
    assert result["cells"][0]["published"] and result["cells"][0]["reference"]["kde-oracle"]

    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Accuracy" in md and "Command: `python -m disco_score.bench accuracy --quick" in md
    assert "failed: 2/2 targets failed; first: RuntimeError: injected failure" in md
    assert "published, not re-measured" in md and "protocol reference" in md
    assert (tmp_path / "docs" / "images" / "bench_accuracy.png").stat().st_size > 1000
    assert "![accuracy](docs/images/bench_accuracy.png)" in md

    # Same seed again: every figure reproduces exactly; --compare records the per-cell ratios.
    old = tmp_path / "old.json"
    shutil.copy(tmp_path / "benchmarks" / "accuracy.json", old)
    assert _run(tmp_path, "accuracy", "--quick", "--estimators", *KDE_ROWS, "--only", only,
                "--compare", str(old)) == 0
    comparison = _load(tmp_path, "accuracy")["comparison"]
    assert comparison["against"] == str(old) and len(comparison["rows"]) == 2 * 2 * 3
    assert all(r["ratio"] == pytest.approx(1.0, rel=1e-12) for r in comparison["rows"])
    assert "Compared with" in (tmp_path / "BENCHMARKS.md").read_text()

    # Another seed draws other targets.
    assert _run(tmp_path, "accuracy", "--quick", "--estimators", "kde-scott", "--only", "^P1 d=2 ",
                "--seed", "1", "--compare", str(old)) == 0
    other = _load(tmp_path, "accuracy")
    assert all(abs(r["ratio"] - 1.0) > 1e-6 for r in other["comparison"]["rows"])


def test_failed_suite_is_recorded_and_the_run_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(opts: bench_cells.Options, ctx: bench_rows.Context) -> dict:
        raise ValueError("suite exploded")

    monkeypatch.setitem(registry.RUNNERS, "accuracy", explode)
    monkeypatch.setitem(registry.RUNNERS, "speed", lambda opts, ctx: {"cells": [], "timeout_seconds": 1.0})
    monkeypatch.setitem(registry.RUNNERS, "scaling", lambda opts, ctx: {"cells": []})
    monkeypatch.setitem(registry.RUNNERS, "downstream", lambda opts, ctx: {"cells": [], "information": {}})
    for suite in ("sampling", "ppl", "wild", "step", "summary"):  # measured by their own tests; here only the run's flow
        monkeypatch.setitem(registry.RUNNERS, suite, lambda opts, ctx: {"cells": [], "sampling": []})
    assert _run(tmp_path, "all", "--quick") == 1
    failed = _load(tmp_path, "accuracy")
    assert failed["status"] == "failed" and "ValueError: suite exploded" in failed["error"]
    for suite in ("scaling", "speed", "downstream"):
        assert _load(tmp_path, suite)["status"] == "ok"
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "**Suite failed:**" in md and "suite exploded" in md and "## Speed and memory" in md


def test_scaling_quick_slopes(tmp_path: Path) -> None:
    assert _run(tmp_path, "scaling", "--quick", "--estimators", *KDE_ROWS, "--only", "^vs n d=2 ") == 0
    result = _load(tmp_path, "scaling")
    cells = result["cells"]
    assert [c["n"] for c in cells] == [256, 1024, 2048] and {c["d"] for c in cells} == {2}
    errors = [c["rows"]["kde-oracle"]["values"]["relative_score_mse"] for c in cells]
    expected = np.polyfit(np.log([256, 1024, 2048]), np.log(errors), 1)[0]
    assert result["slopes"]["2"]["kde-oracle"] == pytest.approx(expected)
    assert result["slopes"]["2"]["kde-oracle"] < 0  # more samples, smaller error
    assert result["kde_theory_slopes"]["2"] == pytest.approx(-0.5)
    assert (tmp_path / "docs" / "images" / "bench_scaling_n.png").exists()
    assert "n^(-4/(d+6))" in (tmp_path / "BENCHMARKS.md").read_text()


def test_speed_subprocess_records_time_memory_and_timeouts(tmp_path: Path) -> None:
    # A generous time-out: the machine may be shared; only the marking of time-outs is tested below.
    assert _run(tmp_path, "speed", "--quick", "--estimators", "kde-scott", "scipy-kde",
                "--only", "^speed d=2 ", "--timeout", "900") == 0
    (cell,) = _load(tmp_path, "speed")["cells"]
    assert (cell["d"], cell["n"], cell["m"]) == (2, 1024, 1024)
    for key in ("kde-scott", "scipy-kde"):
        row = cell["rows"][key]
        assert row["status"] == "ok", row["error"]
        values = row["values"]
        assert values["seconds"] == pytest.approx(values["fit_seconds"] + values["eval_seconds"])
        assert values["peak_rss_mb"] >= values["rss_before_mb"] > 10
    assert cell["rows"]["kde-scott"]["ratio_to_kde"] == pytest.approx(1.0)
    timed_out = suites.run_speed_config({"estimator": "kde-scott", "d": 2, "n": 256, "seed": 0}, timeout=0.01)
    assert timed_out["status"] == "timeout" and "time-out" in timed_out["error"]
    assert "d = 2" in (tmp_path / "BENCHMARKS.md").read_text()
    # --reuse: the committed cell is taken verbatim, nothing is timed again
    again = tmp_path / "again"
    assert _run(again, "speed", "--quick", "--estimators", "kde-scott", "scipy-kde", "--only", "^speed d=2 ",
                "--reuse", str(tmp_path / "benchmarks" / "speed.json")) == 0
    (reused,) = _load(again, "speed")["cells"]
    assert reused["rows"] == cell["rows"] and "measured_at" in reused


def test_step_suite_times_a_fit_and_sampler_steps_in_child_processes(tmp_path: Path) -> None:
    from disco_score.bench import step_speed

    assert _run(tmp_path, "step", "--quick", "--estimators", "discoformer", "kde", "--only", "^step d=",
                "--timeout", "900") == 0
    (cell,) = _load(tmp_path, "step")["cells"]
    assert (cell["d"], cell["n"], cell["m"]) == (2, 1024, step_speed.STEP_QUERIES)
    for key in ("discoformer", "kde"):
        row = cell["rows"][key]
        assert row["status"] == "ok", row["error"]
        assert row["values"]["fit_seconds"] > 0 and row["values"]["step_seconds"] >= row["values"]["step_seconds_min"] > 0
        assert row["device"] == "cpu"
    ratio = cell["rows"]["discoformer"]["values"]["step_seconds"] / cell["rows"]["kde"]["values"]["step_seconds"]
    assert cell["step_ratio"] == pytest.approx(ratio)
    assert "| 2 | 1024 |" in (tmp_path / "BENCHMARKS.md").read_text()
    timed_out = step_speed._run_child({"estimator": "kde", "d": 2, "n": 256, "device": "cpu", "seed": 0}, 0.01)
    assert timed_out["status"] == "timeout"
    failed = step_speed._run_child({"estimator": "nonesuch", "d": 2, "n": 256, "device": "cpu", "seed": 0}, 120)
    assert failed["status"] == "failed" and "nonesuch" in failed["error"]


def test_step_suite_whole_sampler_run_and_bad_device(tmp_path: Path) -> None:
    assert _run(tmp_path, "step", "--quick", "--estimators", "kde", "--only", "^step sampler", "--timeout", "900") == 0
    (run,) = _load(tmp_path, "step")["cells"]
    assert run["method"] == "annealed Langevin" and run["rows"]["kde"]["status"] == "ok"
    assert run["rows"]["kde"]["values"]["seconds"] > 0 and run["ratio"] is None  # no DiScoFormer row
    with pytest.raises(SystemExit):
        _run(tmp_path, "step", "--quick", "--device", "tpu-nonesuch")


def test_summary_suite_compares_the_summary_with_the_network_and_times_its_step(tmp_path: Path) -> None:
    assert _run(tmp_path, "summary", "--quick", "--only", "^summary (W2|P1|step)", "--timeout", "900") == 0
    cells = {c["cell"]: c for c in _load(tmp_path, "summary")["cells"]}
    assert set(cells) == {"summary W2 banana d=2 n=512", "summary P1 d=2 n=256", "summary step d=2 n=1024"}
    assert all(r["status"] == "ok" for r in cells["summary P1 d=2 n=256"]["rows"].values())
    accuracy = cells["summary W2 banana d=2 n=512"]["rows"]
    for key in ("discoformer", "discoformer-summary"):
        assert accuracy[key]["status"] == "ok" and 0 < accuracy[key]["values"]["relative_score_mse"] < 1
    # the summary's fit includes the network fit it distils
    assert accuracy["discoformer-summary"]["values"]["fit_seconds"] > accuracy["discoformer"]["values"]["fit_seconds"]
    step = cells["summary step d=2 n=1024"]["rows"]
    assert {k: r["status"] for k, r in step.items()} == {"discoformer-summary": "ok", "kde": "ok"}
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## The distilled summary" in text and "| W2 banana d=2 n=512 |" in text and "| 2 | 1024 |" in text
    assert "| P1 d=2 n=256 |" in text


def test_integrated_squared_error_matches_closed_form() -> None:
    # For two Gaussian mixtures the ISE is exact: sum_ij a_i b_j N(mu_i - nu_j; 0, S_i + T_j) terms.
    problem = problems.make_problem("gmm", 1, 64, 0, seed=3, m=8)
    oracle = KDE().fit(problem.samples)
    got = suites.integrated_squared_error(oracle, problem)["ise"]

    def cross(w1, m1, v1, w2, m2, v2) -> float:
        var = v1[:, None] + v2[None, :]
        gauss = np.exp(-0.5 * (m1[:, None] - m2[None, :]) ** 2 / var) / np.sqrt(2 * math.pi * var)
        return float(w1 @ gauss @ w2)

    target = problem.target
    w_t, m_t, v_t = (target.weights.numpy(), target.means[:, 0].numpy(), target.covariances[:, 0, 0].numpy())
    n = problem.samples.shape[0]
    w_k = np.full(n, 1.0 / n)
    m_k, v_k = problem.samples[:, 0].numpy(), np.full(n, float(oracle.kernel_covariance[0, 0]))
    exact = cross(w_k, m_k, v_k, w_k, m_k, v_k) - 2 * cross(w_k, m_k, v_k, w_t, m_t, v_t) \
        + cross(w_t, m_t, v_t, w_t, m_t, v_t)
    assert got == pytest.approx(exact, rel=1e-4)


def test_downstream_quick_records_ise_and_information(tmp_path: Path) -> None:
    assert _run(tmp_path, "downstream", "--quick", "--estimators", "kde-scott", "sdkde-empirical",
                "sdkde-exact", "--only", "^ISE d=1 ") == 0
    result = _load(tmp_path, "downstream")
    (cell,) = result["cells"]
    assert cell["d"] == 1 and set(cell["rows"]) == {"kde-scott", "sdkde-empirical", "sdkde-exact"}
    assert all(row["status"] == "ok" and row["values"]["ise"] > 0 for row in cell["rows"].values())
    assert cell["rows"]["sdkde-empirical"]["ratio_to_sdkde_empirical"] == pytest.approx(1.0)
    assert result["information"] == {"rows": [], "error": None, "estimators": []}  # not selected by --only


def test_em_row_recovers_a_separated_mixture() -> None:
    weights = torch.tensor([0.4, 0.6], dtype=torch.float64)
    means = torch.tensor([[-3.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    covs = torch.tensor([[[0.5, 0.1], [0.1, 0.4]], [[0.8, 0.0], [0.0, 0.3]]], dtype=torch.float64)
    target = GaussianMixture(weights, means, covs)
    gen = torch.Generator().manual_seed(0)
    queries = problems.draw(target, 512, gen)
    problem = problems.Problem(target, problems.draw(target, 4096, gen), queries, target.log_prob_t(queries),
                            target.score_t(queries), 0, 0)
    em = bench_rows.ESTIMATORS["em"].fit(problem, bench_rows.Context())  # type: ignore[misc]
    figures = bench_rows.query_metrics(em, problem)
    assert figures["relative_score_mse"] < 0.02 and figures["log_density_mse"] < 0.01
    laplace = problems.make_problem("laplace", 2, 64, 0, seed=0, m=8)
    assert not bench_rows.ESTIMATORS["em"].applies(laplace)


def test_problems_are_seeded_and_share_targets_across_n() -> None:
    small, large = problems.make_problem("gmm", 3, 100, 2, seed=5), problems.make_problem("gmm", 3, 300, 2, seed=5)
    again = problems.make_problem("gmm", 3, 100, 2, seed=5)
    assert torch.equal(small.samples, again.samples) and small.samples.dtype == torch.float64
    assert torch.equal(small.queries, large.queries) and small.queries.shape == (1024, 3)
    assert not torch.equal(small.samples, large.samples[:100])
    assert torch.allclose(small.true_score, small.target.score_t(small.queries))
    assert problems.draw(problems.make_target("p2", 100, torch.Generator().manual_seed(0)), 3000,
                      torch.Generator().manual_seed(1)).shape == (3000, 100)


@pytest.mark.parametrize("args, message", [
    (["accuracy", "--estimators", "nope"], "unknown estimator"),
    (["accuracy", "--only", "("], "regular expression"),
    (["speed", "--timeout", "0"], "--timeout"),
    (["accuracy", "--compare", "/nonexistent/old.json"], "--compare"),
    (["fastest"], "invalid choice"),
])
def test_bad_arguments_are_refused(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_reuses_logged_cells_and_only_those(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["accuracy", "--quick", "--estimators", "kde-scott", "--out-dir", str(tmp_path), "--no-progress"]
    assert cli.main([*args, "--only", "P1 d=2"]) == 0
    first = json.loads((tmp_path / "benchmarks" / "accuracy.json").read_text())["cells"][0]
    calls = []
    real = bench_cells.make_problem
    first_commit = problems.git_commit()
    monkeypatch.setattr(bench_cells, "make_problem", lambda *a, **k: calls.append(a) or real(*a, **k))
    _move_to_commit(monkeypatch, "later0")  # the resumed run is at another commit
    assert cli.main([*args, "--only", "P1", "--resume"]) == 0
    cells = json.loads((tmp_path / "benchmarks" / "accuracy.json").read_text())["cells"]
    assert {k: v for k, v in cells[0].items() if k != "measured_at"} == first  # reused verbatim
    assert cells[0]["measured_at"]["commit"] == first_commit and "measured_at" not in cells[1]
    assert {c[1] for c in calls} == {10}  # only the d = 10 cell was computed
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert f"P1 d=2 n=256 (commit `{first_commit}`" in report and "P1 d=10 n=256 (commit" not in report
    assert cli.main([*args, "--only", "P1 d=2", "--seed", "1", "--resume"]) == 0  # other seed: recomputed
    assert any(c[1] == 2 for c in calls)


def test_reuse_takes_a_committed_result_except_the_rerun_cells(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["accuracy", "--quick", "--estimators", "kde-scott", "--no-progress", "--only", "P1"]
    assert cli.main([*args, "--out-dir", str(tmp_path / "old")]) == 0
    old_path = tmp_path / "old" / "benchmarks" / "accuracy.json"
    old = json.loads(old_path.read_text())
    calls = []
    real = bench_cells.make_problem
    monkeypatch.setattr(bench_cells, "make_problem", lambda *a, **k: calls.append(a) or real(*a, **k))
    _move_to_commit(monkeypatch, "later0")
    new_dir = tmp_path / "new"
    assert cli.main([*args, "--out-dir", str(new_dir), "--reuse", str(old_path), "--rerun", "d=10"]) == 0
    cells = json.loads((new_dir / "benchmarks" / "accuracy.json").read_text())["cells"]
    assert {c[1] for c in calls} == {10}  # only the d = 10 cell was measured again
    assert {k: v for k, v in cells[0].items() if k != "measured_at"} == old["cells"][0]
    assert cells[0]["measured_at"]["commit"] == old["meta"]["commit"] and "measured_at" not in cells[1]
    with pytest.raises(SystemExit):  # other rows than the reused file's: refused, not mixed
        cli.main(["accuracy", "--quick", "--estimators", "kde-oracle", "--no-progress", "--only", "P1",
                    "--out-dir", str(new_dir), "--reuse", str(old_path)])
    with pytest.raises(SystemExit):
        cli.main([*args, "--rerun", "d=10"])  # --rerun without --reuse


def test_rerun_rows_measures_only_those_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["accuracy", "--quick", "--estimators", "kde-scott", "kde-oracle", "--no-progress", "--only", "P1 d=2"]
    assert cli.main([*args, "--out-dir", str(tmp_path / "old")]) == 0
    old_path = tmp_path / "old" / "benchmarks" / "accuracy.json"
    old_cell = json.loads(old_path.read_text())["cells"][0]
    measured = []
    real = bench_cells._evaluate_row
    monkeypatch.setattr(bench_cells, "_evaluate_row", lambda spec, *a, **k: measured.append(spec.key) or real(spec, *a, **k))
    _move_to_commit(monkeypatch, "later0")
    new_dir = tmp_path / "new"
    assert cli.main([*args, "--out-dir", str(new_dir), "--reuse", str(old_path), "--rerun", "P1",
                     "--rerun-rows", "kde-scott"]) == 0
    cell = json.loads((new_dir / "benchmarks" / "accuracy.json").read_text())["cells"][0]
    assert set(measured) == {"kde-scott"} and "measured_at" not in cell
    kept = cell["rows"]["kde-oracle"]
    assert kept["measured_at"]["commit"] != "later0"
    assert {k: v for k, v in kept.items() if k != "measured_at"} == old_cell["rows"]["kde-oracle"]
    assert "measured_at" not in cell["rows"]["kde-scott"]
    assert "Rows kept by `--rerun-rows`" in (new_dir / "BENCHMARKS.md").read_text()
    with pytest.raises(SystemExit):
        cli.main([*args, "--rerun-rows", "kde-scott"])  # --rerun-rows without --rerun


def test_row_above_its_size_limit_is_recorded_as_skipped(tmp_path: Path) -> None:
    spec = bench_rows.ESTIMATORS["sdkde-discoformer"]
    assert spec.max_n is not None
    problem = problems.make_problem("gmm", 2, spec.max_n + 1, 0, 0, m=8)
    entry = bench_rows._evaluate_row(spec, problem, bench_rows.Context(), bench_rows.query_metrics)
    assert entry["status"] == "skipped" and f"n = {spec.max_n}" in entry["error"]
    row = bench_rows._aggregate(spec, [entry, entry])
    assert row["status"] == "skipped" and report._cell_text(row, "score_mse")[0] == f"not run (n > {spec.max_n})"


def test_sampling_quick_ranks_sources_and_flags_copying(tmp_path: Path) -> None:
    """Exact and KDE scores generate near the target; the raw empirical score copies the data."""
    assert _run(tmp_path, "sampling", "--quick", "--estimators", "exact", "kde-scott", "empirical") == 0
    (cell,) = _load(tmp_path, "sampling")["cells"]
    rows = cell["rows"]
    assert set(rows) == {f"{s}|{m}" for s in ("exact", "kde-scott", "empirical") for m in suites.SAMPLING_METHODS}
    assert all(row["status"] == "ok" for row in rows.values())
    # fresh draws sit at the floor; overdispersed or collapsed sets would not (see test_samplers)
    assert cell["floor"] < rows["exact|DDIM (diffusers)"]["values"]["energy_distance"] < 3 * cell["floor"]
    assert rows["exact|annealed Langevin"]["ratio_to_exact"] == pytest.approx(1.0)
    # the unbiased statistic drops the V-statistic's positive bias (the within-set self-pairs)
    assert cell["floor_statistic"] < cell["floor"] ** 2
    for row in rows.values():
        assert row["values"]["energy_statistic"] < row["values"]["energy_distance"] ** 2
    assert rows["empirical|DDIM (diffusers)"]["values"]["memorization"] > 0.9
    assert rows["kde-scott|DDIM (diffusers)"]["values"]["memorization"] < cell["memorization_reference"] + 0.2
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "raw empirical score" in text and (tmp_path / "docs" / "images" / "bench_sampling.png").exists()


def test_ppl_quick_kde_prior_matches_the_analytic_posterior(tmp_path: Path) -> None:
    """NUTS in all three hosts with a Scott-KDE prior: within Monte-Carlo error plus the KDE's own
    (exactly known) error of the analytic posterior."""
    assert _run(tmp_path, "ppl", "--quick") == 0
    (cell,) = _load(tmp_path, "ppl")["cells"]
    assert {row["host"] for row in cell["rows"].values()} == {"blackjax", "numpyro", "pyro"}
    for row in cell["rows"].values():
        assert row["status"] == "ok", row["error"]
        v = row["values"]
        assert v["mean_err"] < 5 * v["mean_se"] + v["estimator_mean_gap"]
        assert v["cov_rel"] < 5 * v["cov_se"] + v["estimator_cov_gap"]
    assert "analytic posterior" in (tmp_path / "BENCHMARKS.md").read_text()


def test_scaling_records_discoformer_above_its_size_as_not_run() -> None:
    cells = {c.label: c for c in bench_cells.scaling_cells(quick=False)}
    assert cells["vs n d=2 n=32768"].skip_rows == ()
    assert cells["vs n d=10 n=131072"].skip_rows == ()  # the d = 10 specialist fits it as subsets
    big = cells["vs n d=2 n=131072"]
    assert big.skip_rows == ("discoformer",) and "O(n^2)" in big.skip_reason
    row = {"status": "skipped", "error": big.skip_reason, "label": "DiScoFormer"}
    assert report._cell_text(row, "relative_score_mse")[0] == f"not run (n > {bench_cells.SCALING_DISCOFORMER_MAX_N})"
    table = report._sweep_table([{"n": big.n, "rows": {"discoformer": row}}], "n", "relative_score_mse")
    assert any("O(n^2) sample encoder" in line for line in table)


def test_published_figures_and_protocol_reference_values_are_package_data() -> None:
    published, reference = suites.load_published()
    labels = {c.label for c in bench_cells.accuracy_cells(quick=False)}
    assert set(published) <= labels and set(reference) <= labels  # keyed by cells that exist
    assert set(published) >= {"P1 d=2 n=256", "P2 d=100 n=16384"}
    disco, best_kde = published["P2 d=100 n=2048"]
    assert disco["ratios"] == {k: v / best_kde["values"][k] for k, v in disco["values"].items()}
    assert disco["ratios"]["score_mse"] == pytest.approx(0.167 / 1.090)
    assert all("published, not re-measured" in entry["label"] for entries in published.values() for entry in entries)
    assert reference["P1 d=2 n=256"]["kde-oracle"] == {"relative_score_mse": 0.186}
    assert {key for cell in reference.values() for key in cell} <= set(bench_rows.ESTIMATORS)
