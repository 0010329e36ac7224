"""The fused (flash-attention kernel) path of the geometric network computes the same function as
its differentiable blocked loop: every output, leave-one-out included, in every dimension regime."""

from __future__ import annotations

import pytest
import torch

from _attention import self_attention_inputs
from disco_score.geometric_net import (FUSED_CURVATURE_MAX_DIM, DiScoFormerNet, GeometricConfig, fused_attention,
                                       geometric_attention)
from disco_score.weights_io import load_weights

pytestmark = pytest.mark.skipif(
    getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None) is None,
    reason="this torch has no fused CPU attention kernel")


def _perturbed_net(seed: int) -> DiScoFormerNet:
    """A small network with local heads whose zero-initialised layers are perturbed, so every
    learned term (query/key features, per-key bandwidths and weights, curvature) is active."""
    torch.manual_seed(seed)
    net = DiScoFormerNet(GeometricConfig(width=16, heads=3, head_dim=4, sample_layers=2, query_layers=2,
                                         gram_rank=3, local_heads=2))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("d", [1, 2, FUSED_CURVATURE_MAX_DIM, FUSED_CURVATURE_MAX_DIM + 2, 12])
def test_fused_and_blocked_paths_agree(d: int) -> None:
    # both paths round in float32 (the |y - z|^2 expansion, in different orders); against the float64
    # network the fused one must stay within the blocked one's rounding band, and the two must agree
    net = _perturbed_net(d)
    g = torch.Generator().manual_seed(d)
    samples = torch.randn(1, 150, d, generator=g) * torch.linspace(0.3, 1.5, d)
    queries = torch.cat([torch.randn(1, 40, d, generator=g), samples[:, :10] + 1e-3], 1)
    with torch.no_grad():
        enc_fused = net.encode(samples, key_block=64, query_block=64)
        lp_fused, sc_fused = net.query(enc_fused, queries, key_block=64)
        with fused_attention(False):
            enc_blocked = net.encode(samples, key_block=64, query_block=64)
            lp_blocked, sc_blocked = net.query(enc_blocked, queries, key_block=64)
            lp_exact, sc_exact = net.double()(samples.double(), queries.double())
    torch.testing.assert_close(enc_fused.pos, enc_blocked.pos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(enc_fused.feat, enc_blocked.feat, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lp_fused, lp_blocked, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(sc_fused, sc_blocked, rtol=1e-3, atol=1e-3)
    for fused, blocked, exact in ((lp_fused, lp_blocked, lp_exact), (sc_fused, sc_blocked, sc_exact)):
        err_fused = float((fused.double() - exact).abs().max())
        err_blocked = float((blocked.double() - exact).abs().max())
        assert err_fused <= max(5 * err_blocked, 1e-4), (err_fused, err_blocked)


def test_packaged_weights_agree_between_paths() -> None:
    net = load_weights()[0]
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(1, 400, 2, generator=g)
    queries = torch.randn(1, 64, 2, generator=g) * 2
    with torch.no_grad():
        lp, sc = net(samples, queries)
        with fused_attention(False):
            lp_ref, sc_ref = net(samples, queries)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sc, sc_ref, rtol=1e-3, atol=1e-4)


def test_gradients_take_the_blocked_path() -> None:
    # the fused kernel's log-normaliser has no backward: with a graph the blocked loop must serve
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(1, 20, 2, generator=g)
    scale = torch.zeros(1, 20, 2, requires_grad=True)
    q, k, v = (torch.randn(1, 20, 2, 3, generator=g) for _ in range(3))
    out = geometric_attention(pos, pos, scale, scale, torch.zeros(1, 20, 2), q, k, v, exclude_self=True)
    out.lse.sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad).all() and scale.grad.abs().sum() > 0


def test_leave_one_out_mask_spans_query_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fused leave-one-out path splits queries into chunks by the mask size: each chunk must mask its own diagonal
    import disco_score.geometric_net as gn

    n = 37
    pos, scale, weight, q, k, v = self_attention_inputs(4, n, d=2, heads=2, head_dim=3)
    monkeypatch.setattr(gn, "_FUSED_MASK_ENTRIES", 5 * n)  # chunks of 5 queries
    fused = geometric_attention(pos, pos, scale, scale, weight, q, k, v, exclude_self=True)
    with fused_attention(False):
        blocked = geometric_attention(pos, pos, scale, scale, weight, q, k, v, exclude_self=True, key_block=8)
    torch.testing.assert_close(fused.lse, blocked.lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.shift, blocked.shift, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.message, blocked.message, rtol=1e-4, atol=1e-5)


def test_large_local_moment_sets_take_the_blocked_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # above the value budget the local heads fall back to the blocked loop (memory of one key
    # block), with the same outputs
    import disco_score.geometric_net as gn

    net = _perturbed_net(7)
    g = torch.Generator().manual_seed(7)
    samples, queries = torch.randn(1, 120, 7, generator=g), torch.randn(1, 30, 7, generator=g)
    calls = []
    original = gn.LocalGaussianHead._blocked_moments
    monkeypatch.setattr(gn.LocalGaussianHead, "_blocked_moments",
                        staticmethod(lambda *a: calls.append(1) or original(*a)))
    with torch.no_grad():
        enc = net.encode(samples)
        lp, sc = net.query(enc, queries)
        assert not calls
        monkeypatch.setattr(gn, "_FUSED_LOCAL_VALUE_ENTRIES", 0)
        lp_blocked, sc_blocked = net.query(enc, queries)
    assert calls
    torch.testing.assert_close(lp, lp_blocked, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(sc, sc_blocked, rtol=1e-3, atol=1e-3)
