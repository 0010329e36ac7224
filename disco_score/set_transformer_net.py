"""The dimension-specific set transformer (:class:`SetTransformerNet`, the published shape), made
exactly rotation-equivariant by the canonical frame of the whitened samples
(:func:`disco_score.whitening.canonical_frame`), with its config (:class:`SetTransformerConfig`).
One network serves one d; see docs/design.md, "Dimension-specific networks"."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .net_blocks import MLP, EncodedSamples, _outside, _zero, context_features
from .whitening import canonical_frame


@dataclass
class SetTransformerConfig:
    """Hyper-parameters of :class:`SetTransformerNet` (stored beside the weights; see
    :func:`disco_score.model.config_from_dict` for the stored form)."""

    dim: int  # the one dimension the network serves (its input layer depends on it)
    width: int = 64  # channels per token
    heads: int = 8  # attention heads
    sample_layers: int = 2  # self-attention among the samples
    query_layers: int = 2  # cross-attention from queries to samples
    #: the architecture's name in stored configs (not an argument)
    architecture: str = field(default="set_transformer", init=False)

    def to_dict(self) -> dict:
        """The fields and ``architecture`` as a plain dict, as stored in model cards and training configs."""
        return asdict(self)


class SetBlock(nn.Module):
    """Pre-norm transformer block: tokens (B, m, C) attend to keys (B, n, C), then a GELU MLP.

    Without autograd, ``F.scaled_dot_product_attention`` uses the fused (flash) CPU kernel: memory
    O(m + n) per head, whatever n. With autograd (training, adaptation) the attention is written out,
    because the consistency loss differentiates twice and the fused kernel's backward cannot be.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_k, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_q, self.to_kv, self.out = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.mlp = MLP(width, width, 4 * width)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, m, C), keys (B, n, C) (None: self-attention) -> (B, m, C)."""
        B, m, C = x.shape
        H = self.heads
        h = self.norm_q(x)
        hk = h if keys is None else self.norm_k(keys)
        q = self.to_q(h).view(B, m, H, C // H).transpose(1, 2)
        k, v = self.to_kv(hk).view(B, -1, 2, H, C // H).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if torch.is_grad_enabled():
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // H), dim=-1) @ v
        else:
            att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out(att.transpose(1, 2).reshape(B, m, C))
        return x + self.mlp(self.norm_mlp(x))


class SetTransformerNet(nn.Module):
    """Samples (B, n, d) and queries (B, m, d), whitened -> log-density (B, m), score (B, m, d), for one d.

    The shape of the published model (self-attention among the samples, cross-attention from the
    queries, outputs as corrections to a standard normal), on canonical coordinates
    (:func:`canonical_frame`) so rotations are exact, not learned. Tokens see their coordinates, so the
    input layer depends on ``d``: one network per dimension (selected by d in
    :class:`~disco_score.discoformer.DiScoFormer`). Same ``encode`` / ``query`` interface as
    :class:`~disco_score.geometric_net.DiScoFormerNet`.
    """

    n_ctx = 6
    #: modules of the sample encoder (run once per fit); everything else is the query side
    ENCODER_MODULES = ("embed", "sample_blocks")

    def __init__(self, cfg: SetTransformerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, SetTransformerConfig):
            raise TypeError(f"SetTransformerNet takes a SetTransformerConfig, got {type(cfg).__name__}")
        if cfg.dim < 1:
            raise ValueError(f"a set transformer serves one dimension: set SetTransformerConfig.dim >= 1, "
                             f"got {cfg.dim}")
        self.cfg = cfg
        C, d = cfg.width, cfg.dim
        self.embed = nn.Linear(d + 1 + self.n_ctx, C)
        self.query_embed = nn.Linear(d + 1 + self.n_ctx, C)
        self.sample_blocks = nn.ModuleList(SetBlock(C, cfg.heads) for _ in range(cfg.sample_layers))
        self.query_blocks = nn.ModuleList(SetBlock(C, cfg.heads) for _ in range(cfg.query_layers))
        self.final_norm = nn.LayerNorm(C)
        self.head = _zero(nn.Linear(C, 1 + d))  # zero: starts as the standard normal

    def _tokens(self, layer: nn.Linear, u: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        sq = (u * u).sum(-1, keepdim=True) / u.shape[-1]
        return layer(torch.cat([u, sq, ctx.expand(*u.shape[:-1], -1)], dim=-1))

    def _check_dim(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.dim:
            raise ValueError(f"this network serves d = {self.cfg.dim}; got points of dimension {x.shape[-1]}")

    def encode(self, samples: torch.Tensor, key_block: int = 4096, query_block: int = 4096) -> EncodedSamples:
        """Canonicalise and run the sample encoder on whitened samples (B, n, d) (block sizes unused:
        the fused attention kernel bounds memory itself)."""
        self._check_dim(samples)
        B, n, d = samples.shape
        ctx = context_features(n, d, samples.device, samples.dtype)
        frame = canonical_frame(samples)
        u = samples @ frame
        feat = self._tokens(self.embed, u, ctx)
        for block in self.sample_blocks:
            feat = block(feat)
        return EncodedSamples(u, feat, ctx, n, samples, frame)

    def query(self, enc: EncodedSamples, queries: torch.Tensor, key_block: int = 4096
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened queries (B, m, d) -> (log-density (B, m), score (B, m, d)), whitened units."""
        self._check_dim(queries)
        assert enc.frame is not None
        d = queries.shape[-1]
        u = queries @ enc.frame
        h = self._tokens(self.query_embed, u, enc.ctx)
        for block in self.query_blocks:
            h = block(h, enc.feat)
        out = self.head(self.final_norm(h))
        log_density = (-0.5 * (u * u).sum(-1) - 0.5 * d * math.log(2 * math.pi)
                       + math.sqrt(d) * out[..., 0])
        score_u = -u + out[..., 1:]
        return log_density, score_u @ enc.frame.transpose(1, 2)

    def forward(self, samples: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened samples (B, n, d) and queries (B, m, d) -> (log-density (B, m), score (B, m, d))."""
        return self.query(self.encode(samples), queries)

    def query_side_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the sample encoder (see
        :meth:`~disco_score.geometric_net.DiScoFormerNet.query_side_parameters`)."""
        return _outside(self, self.ENCODER_MODULES)

    #: the head's biases are a level (which a normalised likelihood cancels) and a score shift
    adaptation_objective = "score_matching"

    def temperature_parameters(self) -> list[nn.Parameter]:
        """What test-time adaptation moves: the output head's biases (1 + d numbers)."""
        return [self.head.bias]
