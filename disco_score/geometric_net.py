"""The geometric network (:class:`DiScoFormerNet`), one set of weights for every d, and its config
(:class:`GeometricConfig`). One file, plain torch (in the spirit of nanoGPT).

The network works on *whitened* samples ``z`` (n, d) and queries ``y`` (m, d) (the caller whitens;
see :mod:`disco_score.whitening`) and returns the log-density and the score at the queries.

Design (why it looks like this):

* **Geometric attention.** Every attention logit is built from invariants only:
  ``-|y_i - z_j|^2 / (2 b_ij^2) - d log b_ij + w_j + q_i.k_j`` with per-head bandwidths
  ``b_ij = exp(beta_h + a_i + c_j)`` (a global scale from ``n`` and ``d``, times query- and
  key-dependent factors). With ``q = 0``, ``a = c = 0`` and uniform ``w`` one head *is* a Gaussian
  KDE, and its log-normaliser is the KDE log-density; the initial network is a multi-bandwidth
  KDE and training learns corrections on top (strong inductive bias, cheap on a CPU).
* **Exact symmetries.** Scalar token features see only distances, norms and Gram matrices of
  vectors; vectors (score, centre shifts) are sums of offsets ``z_j - y_i`` with invariant weights.
  So the network is exactly O(d)-equivariant, and with whitening exactly affine-equivariant; there
  are no positional encodings, so it is exactly permutation-invariant. Nothing depends on ``d``
  except through these invariants and ``d`` itself as a context feature: one checkpoint serves
  every dimension.
* **Heads.** The log-density head is a learned mixture over heads of the last layer's
  (kernel-normalised) log-normalisers plus a correction; the score head is the matching mixture
  of the heads' kernel scores (the exact gradient of the base when the mixing weights are
  constant) plus a learned combination of the query's equivariant vector channels, faded out far
  from the samples (:func:`far_field_gate`), where those channels grow like radius^3.
* **Linear memory.** Attention runs over key blocks with an online logsumexp (flash-attention
  style), so memory is O(block), whatever ``n``. Where no gradient is needed on the CPU (every
  oracle query and fit), the same logits and values go through torch's fused flash-attention
  kernel instead, which never writes the (queries x keys) weights to memory
  (docs/experiments.md, "Profile of a sampler step and the fused attention path").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .kde import LOGIT_FLOOR
from .net_blocks import MLP, EncodedSamples, _outside, _zero, context_features
from .whitening import log_scott_factor

# Bandwidth log-scales are clamped to this range (whitened units) against overflow of 1/b^2.
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 3.0
# The score head's learned correction fades out (smoothstep) between these multiples of the
# samples' largest whitened radius (at least FAR_FIELD_MIN_RADIUS). Its curvature channels grow
# like radius^3 away from the data (22x a Gaussian tail's rate at 1000 sds), while the kernel
# score left beyond is the gradient of the log-density head's Gaussian tail there.
FAR_FIELD_START, FAR_FIELD_END, FAR_FIELD_MIN_RADIUS = 1.5, 3.0, 3.0


@dataclass
class GeometricConfig:
    """Hyper-parameters of :class:`DiScoFormerNet` (stored beside the weights; see
    :func:`disco_score.model.config_from_dict` for the stored form)."""

    width: int = 64  # scalar channels per token
    heads: int = 8  # attention heads = kernel bandwidths per layer
    head_dim: int = 8  # query/key/value channels per head
    sample_layers: int = 2  # self-attention among the samples
    query_layers: int = 2  # cross-attention from queries to samples
    gram_rank: int = 8  # vectors projected to this many before taking Gram invariants
    min_factor: float = 0.2  # initial head bandwidths: geometric from min to max x Scott's rule
    max_factor: float = 2.0
    local_heads: int = 0  # local-Gaussian heads (kernel-weighted mean and covariance per query)
    local_min_factor: float = 0.7
    local_max_factor: float = 4.0
    #: the architecture's name in stored configs (not an argument)
    architecture: str = field(default="geometric", init=False)

    @property
    def dim(self) -> int:
        """The one dimension served: 0, this network serves every d."""
        return 0

    def to_dict(self) -> dict:
        """The fields and ``architecture`` as a plain dict, as stored in model cards and training configs."""
        return asdict(self)


def far_field_gate(queries: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """(B, m) weight of the score correction at whitened queries (B, m, d) given the whitened
    samples (B, n, d): 1 out to ``FAR_FIELD_START`` times the samples' largest radius, 0 from
    ``FAR_FIELD_END`` times it on (rotation- and permutation-invariant)."""
    # squared radii (no norm): smooth at every query, so the second derivatives adapt takes stay finite
    radius2 = (samples * samples).sum(-1).amax(-1).clamp_min(FAR_FIELD_MIN_RADIUS ** 2)  # (B,)
    s2 = (queries * queries).sum(-1) / radius2[:, None]
    t = ((s2 - FAR_FIELD_START ** 2) / (FAR_FIELD_END ** 2 - FAR_FIELD_START ** 2)).clamp(0, 1)
    return 1 - t * t * (3 - 2 * t)


def _signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())




def _shifted_exp(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """exp(max(logits - shift, -80)); in place on ``logits`` (a fresh temporary) when no gradient
    is recorded, which also avoids allocating another (block x block) tensor."""
    if torch.is_grad_enabled() and (logits.requires_grad or shift.requires_grad):
        return torch.exp((logits - shift).clamp_min(LOGIT_FLOOR))
    return logits.sub_(shift).clamp_min_(LOGIT_FLOOR).exp_()


#: torch's fused CPU flash-attention kernel (returns the log-normaliser too); None where absent
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
#: the curvature channel's second moments go through the fused kernel as d^2 extra values up to
#: this d; above it the blocked loop's O(d) per pair is cheaper than O(d^2) (d = 5: fused 1.3 s
#: against 2.2 s, d = 8: 3.2 against 2.7; docs/experiments.md, "Profile of a sampler step and the
#: fused attention path")
FUSED_CURVATURE_MAX_DIM = 6
# the (queries x keys) leave-one-out mask of one fused call holds at most this many entries
_FUSED_MASK_ENTRIES = 1 << 26
# the local heads' fused path holds every key's d + d(d+1)/2 moment values at once: above this many
# entries (256 MB of float32, as much again for the padded keys) it takes the blocked loop, whose
# memory is one key block's
_FUSED_LOCAL_VALUE_ENTRIES = 1 << 26
_fused_enabled = True


@contextlib.contextmanager
def fused_attention(enabled: bool) -> Iterator[None]:
    """Switch the fused attention path on or off inside the block (tests compare the two paths)."""
    global _fused_enabled
    old, _fused_enabled = _fused_enabled, enabled
    try:
        yield
    finally:
        _fused_enabled = old


def _can_fuse(*tensors: torch.Tensor) -> bool:
    """The fused kernel serves CPU tensors when no gradient is recorded (its log-normaliser has no
    backward); training and ``adapt`` take the blocked loop, which computes the same function."""
    if not _fused_enabled or _FLASH_CPU is None or tensors[0].device.type != "cpu":
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _fused_softmax_moments(feat_q: torch.Tensor, feat_k: torch.Tensor, values: torch.Tensor,
                           exclude_self: bool = False, scale: float = 1.0
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """log sum_j exp(scale f_i.g_j) (B, H, m) and the softmax-weighted mean of ``values`` (B, H, m, V),
    from query features (B, H, m, F), key features (B, H, n, F) and values (B, H, n, V), by the
    fused kernel (which wants one width: the narrower side is zero-padded). ``exclude_self``: query
    i is key i (leave-one-out)."""
    F, V = feat_q.shape[-1], values.shape[-1]
    width = max(F, V)
    if F < width:
        feat_q = torch.nn.functional.pad(feat_q, (0, width - F))
        feat_k = torch.nn.functional.pad(feat_k, (0, width - F))
    padded_values = torch.nn.functional.pad(values, (0, width - V)) if V < width else values
    feat_k, padded_values = feat_k.contiguous(), padded_values.contiguous()
    m, n = feat_q.shape[2], feat_k.shape[2]
    if not exclude_self:
        out, lse = _FLASH_CPU(feat_q.contiguous(), feat_k, padded_values, 0.0, False, scale=scale)
        return lse, out[..., :V]
    lses, outs = [], []
    step = max(1, _FUSED_MASK_ENTRIES // n)
    for i0 in range(0, m, step):
        i1 = min(m, i0 + step)
        mask = feat_q.new_zeros(i1 - i0, n)
        mask.diagonal(offset=i0).fill_(-math.inf)
        out, lse = _FLASH_CPU(feat_q[:, :, i0:i1].contiguous(), feat_k, padded_values, 0.0, False,
                              attn_mask=mask, scale=scale)
        lses.append(lse)
        outs.append(out[..., :V])
    return torch.cat(lses, 2), torch.cat(outs, 2)


@dataclass
class AttentionOut:
    """Per query, per head: log-normaliser, value message and equivariant vector messages."""

    lse: torch.Tensor  # (B, m, H) log sum_j exp(logit_ij); a log-density in whitened units
    message: torch.Tensor  # (B, m, H, e) attention-weighted values
    shift: torch.Tensor  # (B, m, H, d) sum_j a_ij (z_j - y_i) / b_ij^2: the kernel score
    spread: torch.Tensor  # (B, m, H) sum_j a_ij |z_j - y_i|^2 / (d b_ij^2)
    curvature: torch.Tensor | None  # (B, m, H, d) sum_j a_ij (z_j - y_i) ((z_j - y_i).u_i) / b_ij^4


def geometric_attention(pos_q: torch.Tensor, pos_k: torch.Tensor, scale_q: torch.Tensor,
                        scale_k: torch.Tensor, weight_k: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                        v: torch.Tensor, u: torch.Tensor | None = None, exclude_self: bool = False,
                        key_block: int = 4096) -> AttentionOut:
    """Attention of queries to keys with Gaussian-kernel logits, in key blocks (online logsumexp).

    Shapes: pos_q (B, m, d), pos_k (B, n, d), scale_q (B, m, H) and scale_k (B, n, H) log-bandwidth
    parts, weight_k (B, n, H) log-weights, q (B, m, H, e), k and v (B, n, H, e), u (B, m, H, d).
    ``exclude_self`` masks j == i (queries are the keys: leave-one-out).

    The Gaussian logit ``-|y - z|^2 / (2 b_i^2 b_j^2)`` expands into an inner product of augmented
    query and key features, so each block is one batched matmul (the paper's |x|^2-token trick).
    """
    B, m, d = pos_q.shape
    n = pos_k.shape[1]
    H, e = q.shape[2], q.shape[3]
    alpha = torch.exp(-2 * scale_q).permute(0, 2, 1)[..., None]  # (B, H, m, 1): 1 / b_i^2
    gamma = torch.exp(-2 * scale_k).permute(0, 2, 1)[..., None]  # (B, H, n, 1): 1 / b_j^2
    yq = pos_q[:, None]  # (B, 1, m, d)
    zk = pos_k[:, None]
    y_sq = (pos_q * pos_q).sum(-1)[:, None, :, None]
    z_sq = (pos_k * pos_k).sum(-1)[:, None, :, None]
    ones_q = torch.ones_like(alpha)
    feat_q = torch.cat([alpha * y_sq, alpha, alpha * yq, q.permute(0, 2, 1, 3) / math.sqrt(e), ones_q], -1)
    bias_k = (weight_k - d * scale_k).permute(0, 2, 1)[..., None]
    feat_k = torch.cat([-0.5 * gamma, -0.5 * gamma * z_sq, gamma * zk, k.permute(0, 2, 1, 3), bias_k], -1)
    parts = [v.permute(0, 2, 1, 3), gamma * zk.expand(B, H, n, d), gamma, gamma * z_sq]
    if u is not None:  # second moments only where the curvature term is used
        parts += [gamma ** 2 * zk.expand(B, H, n, d), gamma ** 2]
    values = torch.cat(parts, -1)
    uh = u.permute(0, 2, 1, 3) if u is not None else None  # (B, H, m, d)
    if _can_fuse(feat_q, feat_k, values) and (uh is None or d <= FUSED_CURVATURE_MAX_DIM):
        if uh is not None:  # second moments gamma^2 z z^T: the curvature term is u_i . (their mean)
            values = torch.cat([values, (gamma[..., None] ** 2 * zk[..., :, None] * zk[..., None, :]).flatten(-2)], -1)
        log_norm, mean = _fused_softmax_moments(feat_q, feat_k, values, exclude_self)
        uz = None
        if uh is not None:
            second = mean[..., -d * d:].unflatten(-1, (d, d))
            mean = mean[..., :-d * d]
            g2z = mean[..., e + d + 2:e + 2 * d + 2]
            uz = torch.cat([(uh[..., :, None] * second).sum(-2), (uh * g2z).sum(-1, keepdim=True)], -1)
    else:
        log_norm, mean, uz = _blocked_softmax_moments(feat_q, feat_k, values, pos_k, gamma, uh, exclude_self,
                                                      key_block)
    # the query's kernel normaliser -d log b_i is constant over keys, so it is added here
    lse = log_norm.permute(0, 2, 1) - d * scale_q
    msg = mean[..., :e]
    gz = mean[..., e:e + d]
    g1 = mean[..., e + d:e + d + 1]
    gz2 = mean[..., e + d + 1:e + d + 2]
    shift = alpha * (gz - g1 * yq)  # sum_j a (z_j - y) / b^2
    spread = alpha[..., 0] * (gz2[..., 0] - 2 * (gz * yq).sum(-1) + y_sq[..., 0] * g1[..., 0]).clamp_min(0) / d
    curvature = None
    if uh is not None and uz is not None:
        g2z, g2 = mean[..., e + d + 2:e + 2 * d + 2], mean[..., e + 2 * d + 2:e + 2 * d + 3]
        y_u = (yq * uh).sum(-1, keepdim=True)
        curvature = (alpha ** 2 * (uz[..., :d] - y_u * g2z - yq * uz[..., d:] + yq * y_u * g2)).permute(0, 2, 1, 3)
    return AttentionOut(lse, msg.permute(0, 2, 1, 3), shift.permute(0, 2, 1, 3), spread.permute(0, 2, 1),
                        curvature)


def _blocked_softmax_moments(feat_q: torch.Tensor, feat_k: torch.Tensor, values: torch.Tensor,
                             pos_k: torch.Tensor, gamma: torch.Tensor, uh: torch.Tensor | None,
                             exclude_self: bool, key_block: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The fused path's outputs by an online logsumexp over key blocks (differentiable): log-normaliser
    (B, H, m), mean values (B, H, m, V) and, with ``uh`` (B, H, m, d), the mean of
    (z_j . u_i) gamma_j^2 [z_j, 1] (B, H, m, d + 1) for the curvature term."""
    B, H, m = feat_q.shape[:3]
    n, d = pos_k.shape[1], pos_k.shape[2]
    zk = pos_k[:, None]
    run_max = feat_q.new_full((B, H, m), -math.inf)
    acc = feat_q.new_zeros(B, H, m, values.shape[-1] + 1)
    acc_uz = feat_q.new_zeros(B, H, m, d + 1) if uh is not None else None
    for j0 in range(0, n, key_block):
        j1 = min(n, j0 + key_block)
        logits = feat_q @ feat_k[:, :, j0:j1].transpose(-1, -2)  # (B, H, m, nb)
        if exclude_self and j0 < m:
            # query i is key i: mask the entries (i, i - j0) of this block (in place; autograd
            # gives them zero gradient, the matmul's backward does not need its output)
            logits.diagonal(offset=-j0, dim1=-2, dim2=-1).fill_(-math.inf)
        new_max = torch.maximum(run_max, logits.amax(-1))
        safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(run_max - safe)[..., None]
        p = _shifted_exp(logits, safe[..., None])
        blk = torch.cat([p @ values[:, :, j0:j1], p.sum(-1, keepdim=True)], -1)
        acc = acc * rescale + blk
        if uh is not None and acc_uz is not None:
            # (z_j . u_i) weighted by a / b_j^4, for the curvature term
            pu = p * (uh @ zk[:, :, j0:j1].transpose(-1, -2)) * gamma[:, :, j0:j1, 0][:, :, None, :] ** 2
            acc_uz = acc_uz * rescale + torch.cat([pu @ pos_k[:, None, j0:j1], pu.sum(-1, keepdim=True)], -1)
        run_max = new_max
    norm = acc[..., -1:].clamp_min(1e-30)
    return run_max + torch.log(norm[..., 0]), acc[..., :-1] / norm, None if acc_uz is None else acc_uz / norm


class GeoBlock(nn.Module):
    """One pre-norm geometric attention block: tokens at ``pos_q`` attend to keys at ``pos_k``."""

    def __init__(self, cfg: GeometricConfig, n_ctx: int, vector_in: int, with_curvature: bool) -> None:
        super().__init__()
        C, H, e = cfg.width, cfg.heads, cfg.head_dim
        self.cfg = cfg
        self.norm_q, self.norm_k = nn.LayerNorm(C), nn.LayerNorm(C)
        self.to_q = _zero(nn.Linear(C, H * e))  # zero: starts as a pure kernel
        self.to_k, self.to_v = nn.Linear(C, H * e), nn.Linear(C, H * e)
        self.scale_q = _zero(nn.Linear(C, H))
        self.scale_k = _zero(nn.Linear(C, H))
        self.weight_k = _zero(nn.Linear(C, H))
        # Per-head bandwidth: Scott's rule in whitened units times a learned factor (from n, d).
        factors = torch.linspace(math.log(cfg.min_factor), math.log(cfg.max_factor), H)
        self.log_factor = nn.Parameter(factors)
        self.ctx_scale = _zero(nn.Linear(n_ctx, H))
        self.with_curvature = with_curvature and vector_in > 0
        if self.with_curvature:
            self.to_u = nn.Linear(vector_in, H, bias=False)
            nn.init.normal_(self.to_u.weight, std=0.3 / math.sqrt(vector_in))
        n_vec = vector_in + H * (2 if self.with_curvature else 1)
        self.vector_out = n_vec
        r = cfg.gram_rank
        self.gram_proj = nn.Linear(n_vec, r, bias=False)
        self.out = nn.Linear(H * e, C)
        self.mlp = MLP(C + 2 * H + r * r, C, 2 * C)
        self.mlp_norm = nn.LayerNorm(C + 2 * H + r * r)

    def base_log_scale(self, ctx: torch.Tensor, n: int, d: int) -> torch.Tensor:
        """(H,) log bandwidth per head: -log(n)/(d+4) (Scott) + learned factor."""
        return log_scott_factor(n, d) + self.log_factor + self.ctx_scale(ctx)

    def forward(self, feat_q: torch.Tensor, pos_q: torch.Tensor, vec_q: torch.Tensor | None,
                feat_k: torch.Tensor, pos_k: torch.Tensor, log_weight_k: torch.Tensor | None,
                ctx: torch.Tensor, n_keys: int, exclude_self: bool, key_block: int
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionOut]:
        """Returns updated query features (B, m, C), the vector bank (B, m, d, V) and the attention."""
        B, m, d = pos_q.shape
        H, e = self.cfg.heads, self.cfg.head_dim
        hq, hk = self.norm_q(feat_q), self.norm_k(feat_k)
        beta = self.base_log_scale(ctx, n_keys, d)
        scale_q = beta + 2 * torch.tanh(0.5 * self.scale_q(hq))
        scale_k = 2 * torch.tanh(0.5 * self.scale_k(hk))
        w = self.weight_k(hk)
        if log_weight_k is not None:
            w = w + log_weight_k[..., None]
        w = w - torch.logsumexp(w, dim=1, keepdim=True) if not exclude_self else \
            w - torch.logsumexp(w, dim=1, keepdim=True) + math.log(n_keys / max(n_keys - 1, 1))
        u = None
        if self.with_curvature and vec_q is not None:
            u = self.to_u(vec_q).permute(0, 1, 3, 2)  # (B, m, H, d)
        att = geometric_attention(pos_q, pos_k, scale_q, scale_k, w,
                                  self.to_q(hq).view(B, m, H, e), self.to_k(hk).view(B, -1, H, e),
                                  self.to_v(hk).view(B, -1, H, e), u, exclude_self, key_block)
        # Kernel normalisation: the Gaussian's (2 pi)^(-d/2); -d log b is inside the logits.
        att.lse = att.lse - 0.5 * d * math.log(2 * math.pi)
        feat_q = feat_q + self.out(att.message.reshape(B, m, H * e))
        new_vecs = [att.shift * torch.exp(2 * beta)[:, None]]  # mean offsets in length units
        if att.curvature is not None:
            new_vecs.append(att.curvature * torch.exp(4 * beta)[:, None])
        bank = torch.cat(new_vecs, dim=2).transpose(2, 3)  # (B, m, d, k)
        vec_q = bank if vec_q is None else torch.cat([vec_q, bank], dim=3)
        proj = self.gram_proj(vec_q)  # (B, m, d, r)
        gram = torch.einsum("bmdr,bmds->bmrs", proj, proj).flatten(2)
        # log-normaliser centred on a standard normal's typical value, O(1) for every d
        lse_feat = (att.lse + 0.5 * d * (1 + math.log(2 * math.pi))) / math.sqrt(d)
        inv = torch.cat([lse_feat, torch.log(att.spread.clamp_min(1e-12)), _signed_log1p(gram)], dim=-1)
        feat_q = feat_q + self.mlp(self.mlp_norm(torch.cat([feat_q, inv], dim=-1)))
        return feat_q, vec_q, att


class LocalGaussianHead(nn.Module):
    """Kernel-weighted local Gaussian fits: per query, the kernel-weighted mean ``mu`` and
    covariance ``C`` of the samples give

        score      s(y) = C^{-1} (mu - y)
        log f(y) = lse(y) - s^T C s / 2 - log det C / 2 + d log b

    where ``lse`` is the kernel-normalised log-normaliser at bandwidth ``b``. Both are exact for a
    Gaussian density at any bandwidth (the kernel multiplies a Gaussian into a Gaussian), so in
    high dimension, where KDE fails, these heads recover each mixture component's full covariance
    from its samples. ``C`` is shrunk toward ``b^2 I``, where the formulas reduce to KDE's.
    """

    def __init__(self, cfg: GeometricConfig, n_ctx: int) -> None:
        super().__init__()
        G, C = cfg.local_heads, cfg.width
        factors = torch.linspace(math.log(cfg.local_min_factor), math.log(cfg.local_max_factor), G)
        self.log_factor = nn.Parameter(factors)
        self.ctx_scale = _zero(nn.Linear(n_ctx, G))
        self.scale_q = _zero(nn.Linear(C, G))
        self.weight_k = _zero(nn.Linear(C, G))
        self.shrink = _zero(nn.Linear(C, G))
        self.norm_k = nn.LayerNorm(C)

    def forward(self, h_q: torch.Tensor, queries: torch.Tensor, enc: EncodedSamples, key_block: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, m, C) features, (B, m, d) queries -> log f (B, m, G), score (B, m, G, d)."""
        B, m, d = queries.shape
        z = enc.raw
        log_b = (log_scott_factor(enc.n, d) + self.log_factor + self.ctx_scale(enc.ctx)
                 + 2 * torch.tanh(0.5 * self.scale_q(h_q))).clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        alpha = torch.exp(-2 * log_b).permute(0, 2, 1)[..., None]  # (B, G, m, 1)
        w = self.weight_k(self.norm_k(enc.feat))
        w = (w - torch.logsumexp(w, dim=1, keepdim=True)).permute(0, 2, 1)  # (B, G, n)
        y = queries[:, None]
        n_values = z.shape[0] * z.shape[1] * alpha.shape[1] * (d + d * (d + 1) // 2)
        if _can_fuse(queries, z, alpha, w) and n_values <= _FUSED_LOCAL_VALUE_ENTRIES:
            log_acc0, mean, second, n_eff = self._fused_moments(queries, z, alpha, w)
        else:
            log_acc0, mean, second, n_eff = self._blocked_moments(queries, z, alpha, w, key_block)
        cov = second - mean[..., :, None] * mean[..., None, :]
        # Shrink toward the kernel's own covariance b^2 I (where the local fit reduces to KDE),
        # more so when few samples carry the weight: rho = d / (d + n_eff) at initialisation.
        rho = torch.sigmoid(self.shrink(h_q).permute(0, 2, 1) + math.log(d) - torch.log(n_eff))[..., None, None]
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        b2 = torch.exp(2 * log_b).permute(0, 2, 1)[..., None, None]
        cov = (1 - rho) * cov + rho * b2 * eye + 1e-6 * eye
        chol, _ = torch.linalg.cholesky_ex(cov)
        offset = (mean - y)[..., None]  # (B, G, m, d, 1)
        score = torch.cholesky_solve(offset, chol)[..., 0]
        quad = (score * (mean - y)).sum(-1)  # s^T C s = (mu - y)^T C^{-1} (mu - y)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        lb = log_b.permute(0, 2, 1)
        lse = log_acc0 - d * lb - 0.5 * d * math.log(2 * math.pi)
        log_f = lse - 0.5 * quad - 0.5 * log_det + d * lb
        return log_f.permute(0, 2, 1), score.permute(0, 2, 1, 3)

    @staticmethod
    def _fused_moments(queries: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kernel log-normaliser log sum_j exp(l_ij) (B, G, m), weighted mean (B, G, m, d), second
        moment (B, G, m, d, d) and effective sample size by the fused kernel, for the logits
        l_ij = -alpha_i |y_i - z_j|^2 / 2 + w_j (one upper triangle of z z^T as values)."""
        B, m, d = queries.shape
        G = alpha.shape[1]
        y_sq = (queries * queries).sum(-1)[:, None, :, None]
        yq = queries[:, None].expand(B, G, m, d)
        feat_q = torch.cat([alpha * yq, -0.5 * alpha, -0.5 * alpha * y_sq, torch.ones_like(alpha)], -1)
        zk = z[:, None].expand(B, G, -1, d)
        feat_k = torch.cat([zk, (zk * zk).sum(-1, keepdim=True), torch.ones_like(zk[..., :1]), w[..., None]], -1)
        rows, cols = torch.triu_indices(d, d, device=z.device)
        values = torch.cat([zk, zk[..., rows] * zk[..., cols]], -1)
        log_acc0, out = _fused_softmax_moments(feat_q, feat_k, values)
        log_acc_sq, _ = _fused_softmax_moments(feat_q, feat_k, feat_k, scale=2.0)  # log sum exp(2 l)
        second = out.new_empty(B, G, m, d, d)
        second[..., rows, cols] = out[..., d:]
        second[..., cols, rows] = out[..., d:]
        return log_acc0, out[..., :d], second, torch.exp(2 * log_acc0 - log_acc_sq)

    @staticmethod
    def _blocked_moments(queries: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor,
                         key_block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_fused_moments` by an online logsumexp over key blocks (differentiable)."""
        B, m, d = queries.shape
        y = queries[:, None]
        y_sq = (queries * queries).sum(-1)[:, None, :, None]
        G = alpha.shape[1]
        run_max = queries.new_full((B, G, m), -math.inf)
        acc0 = queries.new_zeros(B, G, m)
        acc_sq = queries.new_zeros(B, G, m)
        acc1 = queries.new_zeros(B, G, m, d)
        acc2 = queries.new_zeros(B, G, m, d, d)
        n = z.shape[1]
        key_block = max(64, min(key_block, (1 << 24) // (d * d)))  # bounds the (block, d, d) outer products
        for j0 in range(0, n, key_block):
            zb = z[:, None, j0:j0 + key_block]  # (B, 1, nb, d)
            z_sq = (zb * zb).sum(-1)[:, :, None, :]
            dist = (y_sq + z_sq - 2 * y @ zb.transpose(-1, -2)).clamp_min(0)
            logits = -0.5 * alpha * dist + w[:, :, None, j0:j0 + key_block]
            new_max = torch.maximum(run_max, logits.amax(-1))
            rescale = torch.exp(run_max - new_max)
            p = _shifted_exp(logits, new_max[..., None])  # (B, G, m, nb)
            acc0 = acc0 * rescale + p.sum(-1)
            acc_sq = acc_sq * rescale ** 2 + (p * p).sum(-1)
            acc1 = acc1 * rescale[..., None] + p @ zb
            outer = (zb[..., :, None] * zb[..., None, :]).flatten(-2)  # (B, 1, nb, d*d)
            acc2 = acc2 * rescale[..., None, None] + (p @ outer).view(B, G, m, d, d)
            run_max = new_max
        n_eff = acc0 ** 2 / acc_sq.clamp_min(1e-30)
        return run_max + torch.log(acc0), acc1 / acc0[..., None], acc2 / acc0[..., None, None], n_eff


class DiScoFormerNet(nn.Module):
    """Samples (B, n, d) and queries (B, m, d), whitened -> log-density (B, m), score (B, m, d)."""

    n_ctx = 6

    def __init__(self, cfg: GeometricConfig | None = None) -> None:
        super().__init__()
        cfg = GeometricConfig() if cfg is None else cfg
        if not isinstance(cfg, GeometricConfig):
            raise TypeError(f"DiScoFormerNet takes a GeometricConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        C, H = cfg.width, cfg.heads
        self.embed = MLP(2 + self.n_ctx, C, C)
        self.sample_blocks = nn.ModuleList(
            GeoBlock(cfg, self.n_ctx, vector_in=0, with_curvature=False)
            for i in range(cfg.sample_layers))
        # Learned centre shifts (a generalised score-debiasing step), zero at initialisation.
        self.sample_shift = nn.ModuleList(_zero(nn.Linear(C, H)) for _ in range(cfg.sample_layers))
        vector_in = 0
        blocks = []
        for i in range(cfg.query_layers):
            blocks.append(GeoBlock(cfg, self.n_ctx, vector_in, with_curvature=i > 0))
            vector_in = blocks[-1].vector_out
        self.query_blocks = nn.ModuleList(blocks)
        self.mix = _zero(nn.Linear(C, H))
        self.log_density_correction = _zero(nn.Linear(C, 1))
        self.score_correction = _zero(nn.Linear(C, vector_in))
        self.final_norm = nn.LayerNorm(C)
        if cfg.local_heads:
            self.local = LocalGaussianHead(cfg, self.n_ctx)
            self.mix_local = _zero(nn.Linear(C, cfg.local_heads))
            nn.init.constant_(self.mix_local.bias, -4.0)  # enters gently when fine-tuning a KDE-only net

    def _embed(self, pos: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        d = pos.shape[-1]
        sq = (pos * pos).sum(-1, keepdim=True) / d
        feats = torch.cat([sq, torch.log(sq + 1e-6), ctx.expand(*pos.shape[:-1], -1)], dim=-1)
        return self.embed(feats)

    def encode(self, samples: torch.Tensor, key_block: int = 4096, query_block: int = 4096) -> EncodedSamples:
        """Run the sample encoder (self-attention, leave-one-out) on whitened samples (B, n, d)."""
        B, n, d = samples.shape
        ctx = context_features(n, d, samples.device, samples.dtype)
        pos, feat = samples, self._embed(samples, ctx)
        for block, shift in zip(self.sample_blocks, self.sample_shift):
            new_feat, new_shift = [], []
            for i0 in range(0, n, query_block):  # query blocks bound memory at large n
                sl = slice(i0, min(n, i0 + query_block))
                f, vec, att = self._self_attend(block, feat, pos, sl, ctx, n, key_block)
                gate = 0.5 * torch.tanh(shift(f))  # (B, nb, H)
                new_shift.append((vec[..., : self.cfg.heads] * gate[:, :, None, :]).sum(-1))
                new_feat.append(f)
            feat = torch.cat(new_feat, 1)
            pos = pos + torch.cat(new_shift, 1)
        return EncodedSamples(pos, feat, ctx, n, samples)

    @staticmethod
    def _self_attend(block: GeoBlock, feat: torch.Tensor, pos: torch.Tensor, sl: slice,
                     ctx: torch.Tensor, n: int, key_block: int
                     ) -> tuple[torch.Tensor, torch.Tensor, AttentionOut]:
        if sl.start == 0 and sl.stop == n:
            return block(feat, pos, None, feat, pos, None, ctx, n, True, key_block)
        # Leave-one-out across blocks: mask by global index through a shifted self-exclusion.
        idx = torch.arange(n, device=pos.device)
        order = torch.cat([idx[sl], idx[: sl.start], idx[sl.stop:]])  # queries first, then the rest
        return block(feat[:, sl], pos[:, sl], None, feat[:, order], pos[:, order], None, ctx, n, True,
                     key_block)

    def query(self, enc: EncodedSamples, queries: torch.Tensor, key_block: int = 4096
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened queries (B, m, d) -> (log-density (B, m), score (B, m, d)), whitened units."""
        feat = self._embed(queries, enc.ctx)
        vec = None
        att = None
        for block in self.query_blocks:
            feat, vec, att = block(feat, queries, vec, enc.feat, enc.pos, None, enc.ctx, enc.n, False,
                                   key_block)
        assert att is not None and vec is not None
        h = self.final_norm(feat)
        # Mixture over components: the heads' kernel estimates (and local-Gaussian fits).
        mix_logits, comp_log_f, comp_score = self.mix(h), att.lse, att.shift
        if self.cfg.local_heads:
            local_log_f, local_score = self.local(h, queries, enc, key_block)
            mix_logits = torch.cat([mix_logits, self.mix_local(h)], -1)
            comp_log_f = torch.cat([comp_log_f, local_log_f], -1)
            comp_score = torch.cat([comp_score, local_score], 2)
        joint = torch.log_softmax(mix_logits, dim=-1) + comp_log_f
        d = queries.shape[-1]
        gate = far_field_gate(queries, enc.raw)
        # both learned corrections fade out together, so far away log-density and score are the
        # kernel mixture's and its gradient: a consistent pair (docs/design.md, "Far from the samples")
        log_density = torch.logsumexp(joint, -1) + gate * math.sqrt(d) * self.log_density_correction(h)[..., 0]
        resp = torch.softmax(joint, dim=-1)
        score = (resp[..., None] * comp_score).sum(2)
        correction = (vec * self.score_correction(h)[:, :, None, :]).sum(-1)
        gate = gate[..., None]
        # where the gate is 0 the correction (~ radius^3 there, possibly inf) must not leak in as 0 * inf
        score = score + torch.where(gate > 0, gate * correction, torch.zeros_like(correction))
        return log_density, score

    def forward(self, samples: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened samples (B, n, d) and queries (B, m, d) -> (log-density (B, m), score (B, m, d)), whitened units.

        Encodes the samples on every call (default block sizes); to query one sample set repeatedly, call
        :meth:`encode` once and :meth:`query` per batch of queries.
        """
        return self.query(self.encode(samples), queries)

    #: modules of the sample encoder (run once per fit); everything else is the query side
    ENCODER_MODULES = ("embed", "sample_blocks", "sample_shift")

    def query_side_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the sample encoder (and its embedding, which the encoder shares):
        what a fine-tune with the encoder frozen trains. At large n the encoder's O(n^2) backward
        dominates a step; with it frozen the encoder runs once, without a graph."""
        return _outside(self, self.ENCODER_MODULES)

    #: what ``adapt`` optimises by default: the knobs are bandwidths and gates, which set the level
    adaptation_objective = "likelihood"

    def temperature_parameters(self) -> list[nn.Parameter]:
        """The query side's few scalar knobs: per-head bandwidth factors and the mixture gate's
        biases. Test-time adaptation moves only these (a few hundred held-out points cannot pin
        down more without damaging mixtures; see docs/experiments.md)."""
        names = {f"query_blocks.{i}.log_factor" for i in range(len(self.query_blocks))}
        names |= {"mix.bias", "local.log_factor", "mix_local.bias"}
        return [p for name, p in self.named_parameters() if name in names]
