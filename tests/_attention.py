"""Random inputs of one geometric self-attention (shared by the leave-one-out tests)."""

from __future__ import annotations

import torch


def self_attention_inputs(seed: int, n: int, d: int, heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """``(pos, scale, weight, q, k, v)`` of a batch of one set of ``n`` samples attending to itself."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(1, n, d, generator=g)
    scale = 0.3 * torch.randn(1, n, heads, generator=g)
    weight = torch.randn(1, n, heads, generator=g)
    q, k, v = (torch.randn(1, n, heads, head_dim, generator=g) for _ in range(3))
    return pos, scale, weight, q, k, v
