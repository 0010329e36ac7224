"""The dimension-specific set transformer: exact symmetries through its canonical frame, selection by
d in DiScoFormer, export and hash-verified loading, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from disco_score import DiScoFormer, DiScoFormerAverage, DiScoFormerOracle
from disco_score.geometric_net import DiScoFormerNet
from disco_score.model import ModelConfig, build_net
from disco_score.set_transformer_net import SetTransformerNet
from disco_score.targets import random_gmm
from disco_score.train import TrainConfig, draw_problem, export, losses, make_batch, train
from disco_score.weights_io import Specialist, load_specialists
from disco_score.whitening import canonical_frame

D = 5
SMALL = {"architecture": "set_transformer", "dim": D, "width": 16, "heads": 2, "sample_layers": 1,
         "query_layers": 1}
GENERAL = {"width": 16, "heads": 2, "head_dim": 4, "sample_layers": 1, "query_layers": 2, "gram_rank": 2}


def _orth(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _random_specialist(seed: int = 0, dim: int = D) -> SetTransformerNet:
    """A set transformer with a non-zero output head (at initialisation it is exactly N(0, I))."""
    torch.manual_seed(seed)
    net = SetTransformerNet(ModelConfig(**{**SMALL, "dim": dim}))
    with torch.no_grad():
        net.head.weight.normal_(0.0, 0.3)
        net.head.bias.normal_(0.0, 0.3)
    return net.eval()


@pytest.fixture(scope="module")
def mixture() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    target = random_gmm(D, generator=gen)
    return target.sample(400, gen), target.sample(64, gen)


def test_canonical_frame_rotates_with_the_data() -> None:
    z = torch.randn(2, 300, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) ** 3
    q = _orth(D, 1)
    frame, rotated = canonical_frame(z), canonical_frame(z @ q)
    torch.testing.assert_close(frame.transpose(1, 2) @ frame, torch.eye(D, dtype=torch.float64).expand(2, D, D))
    torch.testing.assert_close(rotated, q.T @ frame)  # frame(z Q) = Q^T frame(z)
    torch.testing.assert_close((z @ q) @ rotated, z @ frame)  # so the canonical coordinates do not move


def test_specialist_oracle_is_exactly_affine_equivariant(mixture) -> None:
    x, y = mixture
    general = DiScoFormerNet(ModelConfig(**GENERAL)).eval()
    estimator = DiScoFormer(general, specialists=[Specialist(_random_specialist())], blend=False)
    a = _orth(D, 2) * torch.tensor([0.5, 2.0, 3.0, 0.1, 7.0], dtype=torch.float64)  # rotation and scales
    b = torch.arange(D, dtype=torch.float64)
    lp, sc = estimator.fit(x).log_density_and_score(y)
    lp_t, sc_t = estimator.fit(x @ a + b).log_density_and_score(y @ a + b)
    log_det = float(torch.linalg.slogdet(a)[1])
    torch.testing.assert_close(lp_t, lp - log_det, rtol=0, atol=1e-3 * float(lp.abs().max()))
    # s(x A + b) = s(x) A^{-T} (row vectors)
    expected = sc @ torch.linalg.inv(a).T
    assert float((sc_t - expected).norm() / expected.norm()) < 1e-3
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(estimator.fit(x[perm]).score(y), sc, rtol=1e-4, atol=1e-4)
    assert float(sc.norm()) > 0 and not torch.allclose(sc, -y)  # the head is not the trivial N(0, I)


def test_sets_above_the_bag_size_are_fitted_as_an_average_of_interleaved_subsets(mixture) -> None:
    x, y = mixture  # n = 400
    general = DiScoFormerNet(ModelConfig(**GENERAL)).eval()
    specialist = _random_specialist()
    bagged = DiScoFormer(general, specialists=[Specialist(specialist, bag_size=120)], blend=False)
    assert isinstance(bagged.fit(x[:120]), DiScoFormerOracle)  # up to bag_size: one fit
    assert len(bagged.fit(x[:121]).components) == 2
    oracle = bagged.fit(x)
    assert isinstance(oracle, DiScoFormerAverage)
    sizes = sorted(int(c.samples.shape[0]) for c in oracle.components)
    assert sizes == [100, 100, 100, 100]  # ceil(400 / 120) = 4 subsets dealt out in turn
    together = torch.cat([c.samples for c in oracle.components])
    assert torch.equal(torch.sort(together, 0).values, torch.sort(x, 0).values)  # disjoint and complete
    for c in oracle.components:  # each subset spans the range of the whole set
        assert float(c.samples.std(0).min() / x.std(0).min()) > 0.8
    # the fit is the size-weighted average of the subsets' log-densities, and its score the gradient
    lp = oracle.log_density(y)
    shares = torch.exp(oracle.log_weights)
    expected = (torch.stack([c.log_density(y) for c in oracle.components]) * shares[:, None]).sum(0)
    torch.testing.assert_close(lp, expected)
    expected_score = (torch.stack([c.score(y) for c in oracle.components]) * shares[:, None, None]).sum(0)
    torch.testing.assert_close(oracle.score(y), expected_score)
    # still exactly permutation-invariant and affine-equivariant
    a = _orth(D, 4) * torch.tensor([0.5, 2.0, 3.0, 0.1, 7.0], dtype=torch.float64)
    b = torch.arange(D, dtype=torch.float64)
    sc = oracle.score(y)
    sc_t = bagged.fit(x @ a + b).score(y @ a + b)
    expected_sc = sc @ torch.linalg.inv(a).T
    assert float((sc_t - expected_sc).norm() / expected_sc.norm()) < 1e-3
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(bagged.fit(x[perm]).score(y), sc, rtol=1e-4, atol=1e-4)


def test_fused_attention_path_matches_the_autograd_path(mixture) -> None:
    # Inference uses the fused kernel (linear memory); training writes attention out (double backward).
    x, y = mixture
    net = _random_specialist()
    z, q = x[None].float(), y[None].float()
    with torch.no_grad():
        lp0, sc0 = net(z, q)
    lp1, sc1 = net(z, q.clone().requires_grad_(True))
    torch.testing.assert_close(lp1.detach(), lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sc1.detach(), sc0, rtol=1e-5, atol=1e-5)


def test_selection_by_dimension_and_sample_size(mixture) -> None:
    x, _ = mixture
    general = DiScoFormerNet(ModelConfig(**GENERAL)).eval()
    specialist = _random_specialist()
    estimator = DiScoFormer(general, specialists=[Specialist(specialist, max_n=300)], blend=False)
    assert estimator.net_for(300, D) is specialist
    assert estimator.net_for(301, D) is general  # above its max_n the general net serves
    assert estimator.net_for(100, 3) is general
    assert estimator.fit(x[:300])._net is specialist and estimator.fit(x)._net is general
    assert "specialists for d=[5]" in repr(estimator)
    with pytest.raises(ValueError, match="at most one per dimension"):
        DiScoFormer(general, specialists=[Specialist(specialist), Specialist(_random_specialist(1))])


def test_bad_configuration_and_dimension_errors() -> None:
    with pytest.raises(ValueError, match="dim >= 1"):
        build_net(ModelConfig(architecture="set_transformer"))
    with pytest.raises(ValueError, match="architecture"):
        build_net(ModelConfig(architecture="mlp"))
    net = _random_specialist()
    with pytest.raises(ValueError, match="serves d = 5"):
        net.encode(torch.randn(1, 50, 3))
    with pytest.raises(ValueError, match="trains on that d only"):
        TrainConfig.from_dict({"dims": [2, 5], "dim_weights": [1, 1], "model": SMALL})


def _tiny_cfg(out_dir: Path, steps: int) -> TrainConfig:
    return TrainConfig.from_dict({
        "out_dir": str(out_dir), "steps": steps, "dims": [D], "dim_weights": [1], "n_min": 32, "n_max": 64,
        "pairs_per_step": 4096 * 4, "max_batch": 4, "n_queries": 16, "eval_every": 1000, "ckpt_every": 4,
        "warmup": 2, "lr": 3e-3, "model": SMALL})


def test_tiny_training_lowers_loss_then_exports_and_loads_verified(tmp_path: Path) -> None:
    cfg = _tiny_cfg(tmp_path / "run", 30)
    ckpt = train(cfg, resume=False, progress=False)
    state = torch.load(ckpt, weights_only=False)
    torch.manual_seed(cfg.seed)
    init = build_net(cfg.model)
    trained = build_net(cfg.model)
    trained.load_state_dict(state["model"])
    before = after = 0.0
    for step in range(1000, 1006):
        d, n, b, gen = draw_problem(cfg, step, 0)
        batch = make_batch(d, n, b, 64, gen)
        before += float(losses(init, batch, cfg)["rel_score"].detach())
        after += float(losses(trained, batch, cfg)["rel_score"].detach())
    assert after < before, (before, after)

    weights = tmp_path / "weights"
    path = export(ckpt, weights, {"serves_max_n": 4096, "bag_size": 1024})
    assert path.name == f"discoformer-d{D}.safetensors"
    (loaded,) = load_specialists(weights)
    assert loaded.dim == D and loaded.max_n == 4096 and loaded.bag_size == 1024
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key
    card = json.loads((weights / f"discoformer-d{D}.json").read_text())
    assert card["model_config"]["architecture"] == "set_transformer"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        load_specialists(weights)


def test_adapt_on_a_specialist_moves_only_its_head_biases(mixture) -> None:
    x, y = mixture
    specialist = _random_specialist()
    before = {k: v.clone() for k, v in specialist.state_dict().items()}
    estimator = DiScoFormer(DiScoFormerNet(ModelConfig(**GENERAL)).eval(), specialists=[Specialist(specialist)], blend=False)
    oracle = estimator.fit(x)
    adapted = oracle.adapt(steps=2, lr=1e-2)
    assert not torch.equal(adapted.score(y), oracle.score(y))
    for key, value in specialist.state_dict().items():
        assert torch.equal(value, before[key]), key  # the shipped weights never change
    moved = {name for (name, a), b in zip(adapted._net.named_parameters(), specialist.parameters())
             if not torch.equal(a, b)}
    assert moved == {"head.bias"}
    assert np.isfinite(adapted.log_density(y.numpy())).all() and math.isfinite(float(adapted.score(y).sum()))
