"""The ``disco-score`` command line: file round trips against the Python API, bad input, demo, sample.

Commands run in-process through ``cli.main([...])``; two subprocess checks cover the installed
``disco-score`` script and ``python -m disco_score``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from disco_score import KDE, DiScoFormer, SDKDE, cli, datasets, metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def gaussian_files(tmp_path: Path, rng: np.random.Generator) -> dict[str, Path]:
    """Samples (300, 2) and queries (40, 2) of a correlated Gaussian, as .npy and as .csv (with header)."""
    samples = rng.normal(size=(300, 2)) @ np.array([[1.0, 0.4], [0.0, 0.7]]) + np.array([1.0, -2.0])
    queries = rng.normal(size=(40, 2))
    paths = {"samples_npy": tmp_path / "s.npy", "queries_npy": tmp_path / "q.npy",
             "samples_csv": tmp_path / "s.csv", "queries_csv": tmp_path / "q.csv"}
    np.save(paths["samples_npy"], samples)
    np.save(paths["queries_npy"], queries)
    for key, array in (("samples_csv", samples), ("queries_csv", queries)):
        np.savetxt(paths[key], array, delimiter=",", header="a,b", comments="", fmt="%.17g")
    return paths


# -- eval / fit round trips -----------------------------------------------------------------------

def test_eval_npy_round_trip_matches_python_api(capsys, gaussian_files, tmp_path):
    out = tmp_path / "out.npy"
    code, _, err = run(capsys, "--quiet", "eval", str(gaussian_files["samples_npy"]), "--queries",
                       str(gaussian_files["queries_npy"]), "--estimator", "kde", "--bandwidth", "silverman",
                       "--out", str(out))
    assert code == 0, err
    table = np.load(out)
    oracle = KDE("silverman").fit(np.load(gaussian_files["samples_npy"]))
    log_p, score = oracle.log_density_and_score(np.load(gaussian_files["queries_npy"]))
    assert table.shape == (40, 3) and table.dtype == np.float64
    np.testing.assert_allclose(table[:, 0], log_p, rtol=1e-12)
    np.testing.assert_allclose(table[:, 1:], score, rtol=1e-12, atol=1e-12)


def test_eval_csv_round_trip_is_exact_and_has_header(capsys, gaussian_files, tmp_path):
    out = tmp_path / "out.csv"
    code, _, err = run(capsys, "eval", str(gaussian_files["samples_csv"]), "--queries",
                       str(gaussian_files["queries_csv"]), "--estimator", "sdkde", "--out", str(out), "--quiet")
    assert code == 0, err
    assert out.read_text().splitlines()[0] == "log_density,score_1,score_2"
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    samples = np.loadtxt(gaussian_files["samples_csv"], delimiter=",", skiprows=1)
    queries = np.loadtxt(gaussian_files["queries_csv"], delimiter=",", skiprows=1)
    log_p, score = SDKDE().fit(samples).log_density_and_score(queries)
    np.testing.assert_array_equal(table[:, 0], log_p)  # 17 significant digits: exact float64
    np.testing.assert_array_equal(table[:, 1:], score)


def test_eval_discoformer_at_the_samples_to_stdout(capsys, gaussian_files):
    code, out, err = run(capsys, "--quiet", "eval", str(gaussian_files["samples_npy"]))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "log_density,score_1,score_2" and len(lines) == 301
    table = np.loadtxt(lines[1:], delimiter=",")
    samples = np.load(gaussian_files["samples_npy"])
    log_p, score = DiScoFormer.pretrained().fit(samples).log_density_and_score(samples)
    np.testing.assert_allclose(table[:, 0], log_p, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table[:, 1:], score, rtol=1e-6, atol=1e-6)


def test_fit_summary_reports_scott_bandwidth_and_held_out_likelihood(capsys, gaussian_files, tmp_path):
    code, out, err = run(capsys, "--quiet", "fit", str(gaussian_files["samples_npy"]), "--estimator", "kde",
                         "--out", str(tmp_path / "o.npy"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["n"], summary["d"], summary["queries"]) == (300, 2, 300)
    assert summary["bandwidth_factor"] == pytest.approx(300 ** (-1 / 6))
    samples = np.load(gaussian_files["samples_npy"])
    np.testing.assert_allclose(summary["mean"], samples.mean(0))
    eig = np.linalg.eigvalsh(np.cov(samples.T))
    np.testing.assert_allclose(summary["whitening"]["covariance_eigenvalues"], [eig[0], eig[-1]], rtol=1e-10)
    # held-out mean log-density of a 2-D Gaussian is about minus its entropy
    entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * np.cov(samples.T)))
    assert abs(summary["held_out_mean_log_density"] + entropy) < 0.15


# -- bad input: one line on stderr, exit code 2 ---------------------------------------------------

def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


BAD_INPUT_CASES = {
    # name: (make(tmp_path, good_npy) -> argv, expected fragment of the message)
    "missing file": (lambda t, g: ["eval", str(t / "nope.npy")], "does not exist"),
    "unknown format": (lambda t, g: ["eval", str(_write(t / "x.txt", "1,2\n3,4\n"))], "unsupported format '.txt'"),
    "corrupt npy": (lambda t, g: ["eval", str(_write(t / "x.npy", b"not an npy file"))], "not a readable .npy"),
    "string npy": (lambda t, g: ["eval", str(_npy(t / "x.npy", np.array([["a", "b"]] * 5)))], "expected real numbers"),
    "3-D npy": (lambda t, g: ["eval", str(_npy(t / "x.npy", np.zeros((4, 3, 2))))], "expected (n, d) points"),
    "not a number": (lambda t, g: ["eval", str(_write(t / "x.csv", "x,y\n1,2\n3,abc\n5,6\n"))], "line 3: 'abc' is not a number"),
    "ragged csv": (lambda t, g: ["eval", str(_write(t / "x.csv", "1,2\n3,4,5\n"))], "line 2: 3 values, expected 2"),
    "nan in csv": (lambda t, g: ["eval", str(_write(t / "x.csv", "1,2\n3,nan\n4,1\n"))], "line 2: non-finite"),
    "inf in npy": (lambda t, g: ["eval", str(_npy(t / "x.npy", np.array([[1.0, 2.0], [np.inf, 0.0], [1, 1]])))], "row 1"),
    "empty csv": (lambda t, g: ["eval", str(_write(t / "x.csv", "a,b\n"))], "no data rows"),
    "binary csv": (lambda t, g: ["eval", str(_write(t / "x.csv", b"\xff\xfe\x00\x81"))], "not UTF-8"),
    "dimension mismatch": (lambda t, g: ["eval", str(g), "--queries", str(_npy(t / "q.npy", np.zeros((3, 3))))],
                           "queries " + "{tmp}/q.npy has 3 columns but samples"),
    "rank deficient": (lambda t, g: ["eval", str(_npy(t / "x.npy", np.c_[np.arange(10.0), np.ones(10)])),
                                     "--estimator", "kde"], "rank-deficient"),
    "one point": (lambda t, g: ["eval", str(_npy(t / "x.npy", np.ones((1, 2)))), "--estimator", "kde"],
                  "at least 2 points"),
    "bad out format": (lambda t, g: ["eval", str(g), "--out", str(t / "o.json")], "unsupported format '.json'"),
    "missing out directory": (lambda t, g: ["eval", str(g), "--out", str(t / "no" / "o.npy")], "does not exist"),
    "bandwidth for discoformer": (lambda t, g: ["eval", str(g), "--bandwidth", "scott"], "--bandwidth applies to"),
    "adapt for kde": (lambda t, g: ["eval", str(g), "--estimator", "kde", "--adapt", "2"], "--adapt applies to"),
    "sample step size for annealed": (lambda t, g: ["sample", str(g), "--step-size", "0.1", "--estimator", "kde"],
                                      "--step-size applies to"),
    "demo out not png": (lambda t, g: ["demo", "--out", str(t / "demo.jpg")], "use a .png name"),
    "bad weights dir": (lambda t, g: ["eval", str(g), "--weights-dir", str(t)], "no DiScoFormer weights"),
    # a first line with numbers and text is a data row with a typo, not a header to skip
    "numeric first line with text": (lambda t, g: ["eval", str(_write(t / "x.csv", "1,abc\n2,3\n4,5\n6,7\n"))],
                                     "line 1: 'abc' is not a number (a header line may hold no numbers)"),
    "huge magnitudes": (lambda t, g: ["eval", str(_npy(t / "x.npy", 1e200 * np.random.default_rng(0).normal(size=(50, 2)))),
                                      "--estimator", "kde"], "values reach magnitude"),
    "tiny magnitudes": (lambda t, g: ["eval", str(_npy(t / "x.npy", 1e-200 * np.random.default_rng(0).normal(size=(50, 2)))),
                                      "--estimator", "kde"], "whose squares leave float64"),
    "overflowing bandwidth": (lambda t, g: ["eval", str(g), "--estimator", "kde", "--bandwidth", "1e300"],
                              "left float64's range"),
    "missing train config": (lambda t, g: ["train", "--config", str(t / "missing.json")], "missing.json"),
    "diverging langevin": (lambda t, g: ["--quiet", "sample", str(g), "--estimator", "kde", "--method", "langevin", "--step-size",
                                         "100", "--steps", "200", "-n", "20", "--no-plot", "--out", str(t / "o.npy")],
                           "diverged"),
}


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUT_CASES))
def test_bad_input_gives_one_line_and_exit_code_2(capsys, tmp_path, gaussian_files, case):
    make, fragment = BAD_INPUT_CASES[case]
    code, out, err = run(capsys, *make(tmp_path, gaussian_files["samples_npy"]))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("disco-score ")
    assert fragment.format(tmp=tmp_path) in lines[0]
    assert out == ""


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "s.npy", "--bandwidth", "wide"], "--bandwidth: expected one of scott"),
    (["eval", "s.npy", "--bandwidth", "-1"], "finite positive number"),
    (["sample", "s.npy", "-n", "0"], "positive integer (1 to 2147483647), got '0'"),
    (["sample", "s.npy", "-n", "99999999999999999999"], "positive integer (1 to 2147483647)"),
    (["sample", "s.npy", "--seed", "99999999999999999999"], "--seed: expected a seed from 0 to"),
    (["sample", "s.npy", "--seed", "-1"], "--seed: expected a seed from 0 to"),
    (["demo", "--seed", "1.5"], "--seed: expected a non-negative integer seed"),
    (["eval", "s.npy", "--adapt", "-1"], "non-negative integer"),
    (["demo", "--steps", "two"], "expected a positive integer, got 'two'"),
    (["sample", "s.npy", "--method", "euler-maruyama"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_usage_errors_exit_2_with_usage(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert fragment in err and err.startswith("usage: disco-score") and "Traceback" not in err


def test_help_on_every_command_and_delegation(capsys):
    for command in ("info", "eval", "fit", "sample", "demo"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and out.startswith(f"usage: disco-score {command}")
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "usage: disco-score train" in out and "--config" in out
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0 and "--quick" in out and "accuracy" in out


# -- read_points details --------------------------------------------------------------------------

def test_read_points_formats(tmp_path):
    structured = np.zeros(4, dtype=[("x", "f8"), ("y", "i4")])
    structured["x"], structured["y"] = [0.5, 1.5, 2.5, 3.5], [1, 2, 3, 4]
    np.testing.assert_array_equal(cli.read_points(_npy(tmp_path / "s.npy", structured)),
                                  [[0.5, 1], [1.5, 2], [2.5, 3], [3.5, 4]])
    assert cli.read_points(_npy(tmp_path / "v.npy", np.arange(5))).shape == (5, 1)
    text = "# comment\n\n x , y \n1, 2\n# another\n3,4.5e-1\n"
    np.testing.assert_array_equal(cli.read_points(_write(tmp_path / "c.csv", text)), [[1, 2], [3, 0.45]])
    big_endian = np.arange(6, dtype=">f8").reshape(3, 2)
    np.testing.assert_array_equal(cli.read_points(_npy(tmp_path / "b.npy", big_endian)), big_endian)


# -- info, demo, sample ---------------------------------------------------------------------------

def test_info_json_matches_the_model_card(capsys):
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    card = DiScoFormer.model_card()
    model = info["DiScoFormer"]
    assert model["sha256"] == card["sha256"] and model["checksum"].startswith("ok")
    assert model["architecture"] == card["model_config"]
    assert model["parameters"] == sum(p.numel() for p in DiScoFormer.pretrained().net.parameters())
    assert set(info["extras"]) == {"diffusers", "jax", "pyro", "plot", "bench"}


def test_info_reports_a_corrupt_checkpoint(capsys, tmp_path):
    from disco_score.weights_io import WEIGHTS_DIR

    for name in ("discoformer.json", "discoformer.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    with open(tmp_path / "discoformer.safetensors", "r+b") as fh:  # flip one byte at the end
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    code, out, _ = run(capsys, "info", "--weights-dir", str(tmp_path))
    assert code == 0 and "FAILED: checksum mismatch" in out
    code, _, err = run(capsys, "eval", str(_npy(tmp_path / "x.npy", np.eye(3))), "--weights-dir", str(tmp_path))
    assert code == 2 and "checksum mismatch" in err and len(err.strip().splitlines()) == 1


def test_demo_prints_errors_consistent_with_the_api_and_writes_a_png(capsys, tmp_path):
    png = tmp_path / "demo.png"
    code, out, err = run(capsys, "--quiet", "demo", "--n", "400", "--n-samples", "100", "--steps", "2",
                         "--out", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    # The printed KDE figures are the package's own metrics on the same data and queries.
    data, target = datasets.load("gmm", 400, seed=0)
    queries = target.sample(1024, torch.Generator().manual_seed(1)).numpy()
    log_p, score = KDE("scott").fit(data).log_density_and_score(queries)
    true_log_p, true_score = target.log_density_and_score(queries)
    kde_line = next(line for line in out.splitlines() if line.strip().startswith("KDE (Scott)"))
    rel, ld = map(float, kde_line.split()[-2:])
    assert rel == pytest.approx(metrics.relative_score_mse(score, true_score), abs=1e-4)
    assert ld == pytest.approx(metrics.log_density_mse(log_p, true_log_p), abs=1e-4)
    assert re.search(r"DiScoFormer\s+\d+\.\d{4}\s+\d+\.\d{4}", out)
    assert "energy distance" in out


def test_sample_langevin_writes_the_requested_number_of_samples(capsys, tmp_path, rng):
    data = rng.normal(size=(400, 2))
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "gen.csv"
    code, _, err = run(capsys, "--quiet", "sample", str(tmp_path / "d.npy"), "--method", "langevin",
                       "--estimator", "kde", "-n", "257", "--steps", "200", "--step-size", "0.05",
                       "--out", str(out))
    assert code == 0, err
    generated = np.loadtxt(out, delimiter=",", skiprows=1)
    assert generated.shape == (257, 2)
    assert (tmp_path / "gen.png").read_bytes()[:8] == PNG_SIGNATURE
    # Langevin on the KDE of N(0, I) targets N(0, (1 + h^2) I): a loose moment check.
    h2 = 400 ** (-2 / 6)
    assert np.abs(generated.mean(0)).max() < 0.25
    np.testing.assert_allclose(generated.var(0), 1 + h2, rtol=0.3)


def test_sample_annealed_npy_without_plot(capsys, tmp_path):
    data = datasets.two_moons(300, seed=1)
    np.save(tmp_path / "moons.npy", data)
    out = tmp_path / "gen.npy"
    code, _, err = run(capsys, "sample", str(tmp_path / "moons.npy"), "--estimator", "kde", "-n", "64",
                       "--steps", "3", "--out", str(out), "--no-plot", "-q")
    assert code == 0, err
    generated = np.load(out)
    assert generated.shape == (64, 2) and np.isfinite(generated).all()
    assert not (tmp_path / "gen.png").exists()


def test_sample_with_a_diffusers_scheduler(capsys, tmp_path):
    pytest.importorskip("diffusers")
    data = datasets.ring_mixture().sample(300, torch.Generator().manual_seed(0)).numpy()
    np.save(tmp_path / "ring.npy", data)
    code, _, err = run(capsys, "--quiet", "sample", str(tmp_path / "ring.npy"), "--method", "ddim",
                       "--estimator", "kde", "-n", "50", "--steps", "20", "--out", str(tmp_path / "g.npy"),
                       "--no-plot")
    assert code == 0, err
    generated = np.load(tmp_path / "g.npy")
    assert generated.shape == (50, 2)
    radius = np.linalg.norm(generated, axis=1)  # the ring has radius 2 and std 0.3
    assert np.median(np.abs(radius - 2.0)) < 0.5


@pytest.mark.parametrize("method, bench_method", [("annealed", "annealed Langevin"), ("ddim", "DDIM (diffusers)")])
def test_sample_and_the_benchmark_generate_alike(method, bench_method):
    """``disco-score sample`` and the benchmark's sampling suites call one generation function."""
    if method == "ddim":
        pytest.importorskip("diffusers")
    from disco_score.generate import generate

    data = datasets.ring_mixture().sample(200, torch.Generator().manual_seed(0)).numpy()
    ours = cli.draw_samples(KDE("scott"), data, method, 40, 4, None, seed=3, progress=False)
    bench = generate(bench_method, KDE("scott"), data, 40, steps=4, generator=torch.Generator().manual_seed(3))
    assert ours.dtype == bench.dtype == np.float64 and ours.shape == (40, 2)
    np.testing.assert_array_equal(ours, bench)


# -- datasets ---------------------------------------------------------------------------------------

def test_datasets_are_reproducible_and_shaped():
    a, b = datasets.two_moons(101, seed=3), datasets.two_moons(101, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (101, 2)
    ring = datasets.ring_mixture(n_modes=6, radius=3.0)
    np.testing.assert_allclose(np.linalg.norm(ring.means.numpy(), axis=1), 3.0)
    mix = datasets.demo_mixture()
    assert mix.dim == 2 and float(mix.weights.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load("spiral", 10)


# -- the installed entry points ---------------------------------------------------------------------

def test_installed_script_and_module_entry_point():
    script = Path(sys.executable).parent / "disco-score"
    if not script.exists():
        script_path = shutil.which("disco-score")
        if script_path is None:
            pytest.skip("disco-score script not installed")
        script = Path(script_path)
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "usage: disco-score" in done.stdout and "sample" in done.stdout
    done = subprocess.run([sys.executable, "-m", "disco_score", "info"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "checksum        ok" in done.stdout and "disco-score 0.1.0" in done.stdout
    done = subprocess.run([sys.executable, "-m", "disco_score", "eval", "missing.csv"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip() == "disco-score eval: error: samples file missing.csv does not exist"
