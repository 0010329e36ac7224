"""DiScoFormer: network symmetries, heads, packaged weights, adaptation, training loop."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _attention import self_attention_inputs
from disco_score import DiScoFormer
from disco_score.weights_io import WEIGHTS_DIR, load_weights
from disco_score.kde import KDEOracle
from disco_score.geometric_net import DiScoFormerNet, geometric_attention
from disco_score.model import ModelConfig
from disco_score.targets import random_gmm
from disco_score.train import TrainConfig, train

TINY = {"width": 16, "heads": 2, "head_dim": 4, "sample_layers": 1, "query_layers": 2, "gram_rank": 2}


@pytest.fixture(scope="module")
def model() -> DiScoFormer:
    return DiScoFormer.pretrained(blend=False)  # the network's own fit; the blend (step 6): test_blend.py


@pytest.fixture(scope="module")
def mixture_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    target = random_gmm(3, generator=gen)
    return target.sample(300, gen), target.sample(50, gen)


def _orth(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_shapes_dtypes_and_kinds(model: DiScoFormer, mixture_data) -> None:
    x, y = mixture_data
    oracle = model.fit(x)
    lp, sc = oracle.log_density_and_score(y)
    assert isinstance(lp, torch.Tensor) and lp.shape == (50,) and lp.dtype == torch.float64
    assert sc.shape == (50, 3) and sc.dtype == torch.float64
    lp32 = oracle.log_density(y.float().numpy())
    assert isinstance(lp32, np.ndarray) and lp32.dtype == np.float32 and lp32.shape == (50,)
    assert np.ndim(oracle.log_density(y[0].numpy())) == 0
    assert oracle.score(y[0]).shape == (3,)
    np.testing.assert_allclose(oracle.density(y.numpy()), np.exp(lp.numpy()), rtol=1e-6)


def test_permutation_invariance_exact(model: DiScoFormer, mixture_data) -> None:
    x, y = mixture_data
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    a, b = model.fit(x), model.fit(x[perm])
    # up to float32 rounding: the fused kernel sums keys in blocks, so the order moves with the permutation
    torch.testing.assert_close(a.log_density(y), b.log_density(y), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.score(y), b.score(y), rtol=1e-4, atol=3e-5)


@pytest.mark.parametrize("kind", ["translation", "scaling", "rotation", "affine"])
def test_affine_equivariance(model: DiScoFormer, mixture_data, kind: str) -> None:
    x, y = mixture_data
    d = x.shape[1]
    if kind == "translation":
        a, shift = torch.eye(d, dtype=torch.float64), torch.tensor([5.0, -3.0, 100.0], dtype=torch.float64)
    elif kind == "scaling":
        a, shift = 1e3 * torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    elif kind == "rotation":
        a, shift = _orth(d, 1), torch.zeros(d, dtype=torch.float64)
    else:
        a = _orth(d, 2) @ torch.diag(torch.tensor([0.01, 2.0, 50.0], dtype=torch.float64)) @ _orth(d, 3)
        shift = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    base = model.fit(x)
    moved = model.fit(x @ a + shift)
    lp0, s0 = base.log_density_and_score(y)
    lp1, s1 = moved.log_density_and_score(y @ a + shift)
    log_det = torch.linalg.slogdet(a)[1]
    # T(XA + b) = T(X) - log|det A|;  S(XA + b) = S(X) A^{-T}
    torch.testing.assert_close(lp1, lp0 - log_det, rtol=0, atol=2e-4 * (1 + lp0.abs().max()))
    expected = s0 @ torch.linalg.inv(a).T
    rel = (s1 - expected).norm() / expected.norm()
    assert rel < 1e-3, f"{kind}: relative score error {rel:.2e}"


def test_rotation_equivariance_high_dim(model: DiScoFormer) -> None:
    gen = torch.Generator().manual_seed(4)
    target = random_gmm(20, n_components=2, generator=gen)
    x, y = target.sample(200, gen), target.sample(20, gen)
    q = _orth(20, 5)
    s0 = model.fit(x).score(y)
    s1 = model.fit(x @ q).score(y @ q)
    assert (s1 - s0 @ q).norm() / s0.norm() < 1e-3


def test_score_head_matches_autograd_of_log_density_head(model: DiScoFormer, mixture_data) -> None:
    x, y = mixture_data
    oracle = model.fit(x)
    z = oracle.whitening.forward(y).float().requires_grad_(True)
    lp, sc = oracle._query(z, grad=True)
    (g,) = torch.autograd.grad(lp.sum(), z)
    rel = float((sc - g).norm() / g.norm())
    assert rel < 0.25, f"score head differs from grad of log-density head by {rel:.3f} (relative)"


def test_score_is_accurate_on_a_mixture(model: DiScoFormer) -> None:
    # Far better than a zero predictor and than chance: a wrong sign/scale/transform fails this.
    gen = torch.Generator().manual_seed(6)
    target = random_gmm(2, generator=gen)
    x, y = target.sample(1024, gen), target.sample(256, gen)
    s_hat = model.fit(x).score(y)
    s = target.score_t(y)
    assert float(((s_hat - s) ** 2).sum() / (s ** 2).sum()) < 0.3


@pytest.mark.parametrize("relative_sigma", [0.02, 0.3, 2.0])
def test_smoothed_score_matches_the_exact_convolved_mixture(model: DiScoFormer, relative_sigma: float) -> None:
    # p * N(0, s^2 I) of a mixture is a mixture with every covariance widened by s^2: exact. Small
    # sigma checks the refit on noised samples (noised replicas failed this: 0.40 and 0.024),
    # large sigma the exact convolution of the empirical measure (the default switch, 1.5 Scott
    # bandwidths, is 0.92 sd here).
    gen = torch.Generator().manual_seed(11)
    target = random_gmm(10, generator=gen)
    x = target.sample(1024, gen)
    sigma = relative_sigma * math.sqrt(float(x.var(0).sum()) / 10)
    smooth = target.smoothed(sigma)
    y = smooth.sample(256, gen)
    s = smooth.score_t(y)
    s_hat = model.fit(x).smoothed(sigma).score(y)
    rel = float(((s_hat - s) ** 2).sum() / (s ** 2).sum())
    assert rel < {0.02: 0.2, 0.3: 0.2, 2.0: 0.01}[relative_sigma], rel  # measured 0.089, 0.082, 0.0011


@pytest.mark.parametrize("threshold", [None, 0.4])
def test_smoothed_switches_to_the_exact_convolution_at_the_threshold(model: DiScoFormer,
                                                                     threshold: float | None) -> None:
    gen = torch.Generator().manual_seed(12)
    x = random_gmm(3, generator=gen).sample(500, gen)
    y = x[:50] + 0.1
    scott = math.sqrt(float(x.var(0).sum()) / 3) * 500 ** (-1 / 7)
    oracle = DiScoFormer(model.net, normalize=False, convolution_threshold=threshold, blend=False).fit(x)
    switch = 1.5 if threshold is None else threshold
    for o, at in ((oracle, switch), (oracle.with_convolution_threshold(0.7), 0.7)):
        above, below = 1.01 * at * scott, 0.99 * at * scott
        exact = KDEOracle(x, above ** 2 * torch.eye(3, dtype=torch.float64), 1.0).score(y)
        torch.testing.assert_close(o.smoothed(above).score(y), exact)
        convolution = KDEOracle(x, below ** 2 * torch.eye(3, dtype=torch.float64), 1.0).score(y)
        assert not torch.allclose(o.smoothed(below).score(y), convolution, rtol=1e-3)
    with pytest.raises(ValueError, match="convolution_threshold"):
        DiScoFormer(model.net, convolution_threshold=0.0)


def test_annealed_langevin_uses_the_langevin_switch_unless_told(model: DiScoFormer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from disco_score import discoformer, samplers

    seen = []
    original = discoformer.DiScoFormerOracle._smoothed

    def spy(self, sigma):  # records the switch point each smoothed oracle was built with
        seen.append(self._convolution_threshold)
        return original(self, sigma)

    monkeypatch.setattr(discoformer.DiScoFormerOracle, "_smoothed", spy)
    x = random_gmm(2, generator=torch.Generator().manual_seed(13)).sample(200, torch.Generator().manual_seed(14))
    for estimator, expected in ((DiScoFormer(model.net, normalize=False), 0.4),
                                (DiScoFormer(model.net, normalize=False, convolution_threshold=1.5), 1.5)):
        seen.clear()
        samplers.annealed_langevin(estimator, x, n_samples=8, n_levels=3, steps_per_level=1,
                                   generator=torch.Generator().manual_seed(0), progress=False)
        assert seen and set(seen) == {expected}


def test_density_normalised_in_1d_and_2d(model: DiScoFormer) -> None:
    gen = torch.Generator().manual_seed(7)
    for d in (1, 2):
        target = random_gmm(d, generator=gen)
        x = target.sample(512, gen)
        oracle = model.fit(x)
        lo, hi = x.min(0).values - 4, x.max(0).values + 4
        k = 4000 if d == 1 else 200
        axes = [torch.linspace(float(lo[i]), float(hi[i]), k, dtype=torch.float64) for i in range(d)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
        cell = math.prod(float(a[1] - a[0]) for a in axes)
        mass = float(oracle.density(grid).sum()) * cell
        assert abs(mass - 1) < 0.05, f"d={d}: integral {mass:.3f}"


def test_unnormalized_log_density_skips_only_the_constant(model: DiScoFormer) -> None:
    x = random_gmm(2, generator=torch.Generator().manual_seed(3)).sample(300, torch.Generator().manual_seed(4))
    oracle = model.fit(x)
    q = x[:40] + 0.1
    free, free_score = oracle.log_density_and_score(q, normalized=False)
    assert oracle._log_normalizer is None  # the grid integral was not computed
    log_p, score = oracle.log_density_and_score(q)
    np.testing.assert_allclose(free - log_p, np.full(40, oracle.log_normalizer), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(free_score, score)
    with pytest.raises(TypeError, match="normalized"):
        oracle.log_density_and_score(q, normalized="no")


def test_packaged_weights_hash_verified(tmp_path: Path) -> None:
    card = DiScoFormer.model_card()
    assert len(card["sha256"]) == 64
    for name in ("discoformer.safetensors", "discoformer.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    load_weights(tmp_path)  # a faithful copy loads
    data = bytearray((tmp_path / "discoformer.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "discoformer.safetensors").write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        load_weights(tmp_path)


def test_adapt_returns_new_oracle_and_leaves_weights(model: DiScoFormer, mixture_data) -> None:
    x, y = mixture_data
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    oracle = model.fit(x)
    s0 = oracle.score(y)
    adapted = oracle.adapt(steps=2, lr=1e-2)
    assert adapted is not oracle
    assert not torch.equal(adapted.score(y), s0)
    torch.testing.assert_close(oracle.score(y), s0, rtol=0, atol=0)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    moved = {name for (name, a), b in zip(adapted._net.named_parameters(), model.net.parameters())
             if not torch.equal(a, b)}
    allowed = {name for name, p in adapted._net.named_parameters()
               if any(p is q for q in adapted._net.temperature_parameters())}
    assert moved and moved <= allowed  # only the bandwidth factors and gate biases adapt
    with pytest.raises(ValueError, match="at least 8 samples"):
        model.fit(x[:5]).adapt(steps=1)
    with pytest.raises(ValueError, match="steps"):
        oracle.adapt(steps=-1)
    with pytest.raises(ValueError, match="lr"):
        oracle.adapt(lr=0.0)


def test_bad_input(model: DiScoFormer) -> None:
    x = np.random.default_rng(0).normal(size=(100, 3))
    with pytest.raises(ValueError, match="non-finite"):
        model.fit(np.where(np.arange(300).reshape(100, 3) == 5, np.nan, x))
    with pytest.raises(ValueError, match="rank-deficient"):
        model.fit(np.outer(np.arange(100.0), [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="at least 2"):
        model.fit(x[:1])
    oracle = model.fit(x)
    with pytest.raises(ValueError, match="dimension 2"):
        oracle.score(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="float16"):
        oracle.score(np.zeros((4, 3), dtype=np.float16))
    with pytest.raises(AttributeError, match="immutable"):
        oracle.samples = None  # type: ignore[misc]


def test_large_n_runs_in_blocks() -> None:
    # Key/query blocks smaller than n: identical to one block (the online logsumexp is exact).
    torch.manual_seed(0)
    net = DiScoFormerNet(ModelConfig(**TINY))
    x = torch.randn(1, 300, 2)
    y = torch.randn(1, 40, 2)
    lp1, s1 = net.query(net.encode(x), y)
    lp2, s2 = net.query(net.encode(x, key_block=64, query_block=50), y, key_block=64)
    torch.testing.assert_close(lp1, lp2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-5)


def _tiny_cfg(out_dir: Path, steps: int) -> TrainConfig:
    return TrainConfig.from_dict({
        "out_dir": str(out_dir), "steps": steps, "dims": [2, 3], "dim_weights": [1, 1], "n_min": 32,
        "n_max": 64, "pairs_per_step": 4096 * 4, "max_batch": 4, "n_queries": 16, "eval_every": 1000,
        "ckpt_every": 1, "warmup": 2, "lr": 3e-3, "model": TINY})


def test_tiny_training_lowers_loss_and_resumes_exactly(tmp_path: Path) -> None:
    from disco_score.train import draw_problem, losses, make_batch

    cfg = _tiny_cfg(tmp_path / "a", 16)
    train(cfg, resume=False, progress=False)
    # Loss on fixed batches: trained weights beat the initial ones.
    state = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    torch.manual_seed(cfg.seed)
    init = DiScoFormerNet(cfg.model)
    trained = DiScoFormerNet(cfg.model)
    trained.load_state_dict(state["model"])
    cfg_eval = _tiny_cfg(tmp_path / "unused", 1)
    tot0 = tot1 = 0.0
    for step in range(1000, 1006):
        d, n, b, gen = draw_problem(cfg_eval, step, 0)
        batch = make_batch(d, n, b, 64, gen)
        tot0 += float(losses(init, batch, cfg_eval)["rel_score"])
        tot1 += float(losses(trained, batch, cfg_eval)["rel_score"])
    assert tot1 < tot0, (tot0, tot1)
    # Resume: 8 steps, stop, resume to 16 == 16 straight steps, bit for bit.
    cfg_b = _tiny_cfg(tmp_path / "b", 16)
    train(cfg_b, resume=False, progress=False, until=8)
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["step"] == 8
    train(cfg_b, resume=True, progress=False)
    resumed = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    for k, v in state["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert not list((tmp_path / "b").glob("*.tmp"))  # atomic writes leave no temp files


def test_query_side_fine_tune_leaves_the_encoder_and_resumes_exactly(tmp_path: Path) -> None:
    from disco_score.train import save_atomic

    torch.manual_seed(0)
    start = DiScoFormerNet(ModelConfig(**TINY))
    save_atomic({"model": start.state_dict()}, tmp_path / "start.pt")
    raw = {**_tiny_cfg(tmp_path / "q", 6).__dict__, "model": TINY, "trainable": "query",
           "init_from": str(tmp_path / "start.pt")}
    cfg = TrainConfig.from_dict(raw)
    train(cfg, resume=False, progress=False, until=3)
    train(cfg, resume=True, progress=False)
    state = torch.load(tmp_path / "q" / "ckpt.pt", weights_only=False)["model"]
    query_side = {name for name, p in start.named_parameters()} - {
        name for name, _ in start.named_parameters() if name.split(".")[0] in DiScoFormerNet.ENCODER_MODULES}
    changed = {k for k, v in start.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and changed <= query_side  # only the query side moved
    assert any(k.startswith("query_blocks") for k in changed)
    straight = TrainConfig.from_dict({**raw, "out_dir": str(tmp_path / "q2")})
    train(straight, resume=False, progress=False)
    again = torch.load(tmp_path / "q2" / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(state[k], again[k]) for k in state)  # stop + resume == straight through
    with pytest.raises(ValueError, match="trainable"):
        TrainConfig.from_dict({**raw, "trainable": "encoder"})


def test_torchrun_two_processes(tmp_path: Path) -> None:
    cfg = _tiny_cfg(tmp_path / "ddp", 3)
    cfg_path = tmp_path / "cfg.json"
    raw = json.loads(json.dumps(cfg.__dict__, default=lambda o: o.__dict__))
    cfg_path.write_text(json.dumps(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         "-m", "disco_score.train", "--config", str(cfg_path), "--quiet", "--no-resume"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=False)
    assert state["step"] == 3


@pytest.mark.parametrize("key_block", [3, 4, 100])
def test_leave_one_out_attention_equals_attention_without_the_sample(key_block: int) -> None:
    # exclude_self must drop exactly key i for query i, in every key block
    n = 9
    pos, scale, weight, q, k, v = self_attention_inputs(1, n, d=3, heads=2, head_dim=2)
    loo = geometric_attention(pos, pos, scale, scale, weight, q, k, v, exclude_self=True, key_block=key_block)
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        ref = geometric_attention(pos[:, i:i + 1], pos[:, keep], scale[:, i:i + 1], scale[:, keep],
                                  weight[:, keep], q[:, i:i + 1], k[:, keep], v[:, keep])
        torch.testing.assert_close(loo.lse[:, i], ref.lse[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loo.shift[:, i], ref.shift[:, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loo.message[:, i], ref.message[:, 0], rtol=1e-4, atol=1e-5)
