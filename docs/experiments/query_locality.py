"""How local is the query side? Fraction of each head's attention mass on the K nearest keys.

    python docs/experiments/query_locality.py

Packaged general network, n = 8192 two-cluster two-scale sets, 200 queries; the fused calls of one
score evaluation (first query layer, local heads; the d > 6 curvature layer runs blocked and is not
seen)."""

import numpy as np
import torch

import disco_score.geometric_net as gn
from disco_score import DiScoFormer
torch.set_num_threads(1)
stats = []
orig = gn._fused_softmax_moments
def spy(feat_q, feat_k, values, exclude_self=False, scale=1.0):
    if not exclude_self and feat_q.shape[2] >= 200:
        stats.append((feat_q[:, :, :200].clone(), feat_k.clone()))
    return orig(feat_q, feat_k, values, exclude_self, scale)
gn._fused_softmax_moments = spy
est = DiScoFormer.pretrained(split_components=False, specialists=())
for d in (2, 10, 50):
    n = 8192
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * np.where(rng.random((n, 1)) < .5, 1, .3) + (rng.random((n,1)) < .5) * 3
    o = est.fit(x)
    q = rng.normal(size=(200, d)) + (rng.random((200,1)) < .5) * 3
    stats.clear()
    o.score(q)
    z = o._encoded.raw[0]; y = o._whitened(torch.as_tensor(q))
    dist = torch.cdist(y.float(), z.float())
    order = dist.argsort(1)
    for li, (fq, fk) in enumerate(stats):
        F = min(fq.shape[-1], fk.shape[-1])
        logits = fq[0, :, :, :F] @ fk[0, :, :, :F].transpose(-1, -2)  # (H, m, n)
        p = torch.softmax(logits, -1)
        ps = torch.gather(p, 2, order[None].expand(p.shape[0], -1, -1))
        cum = ps.cumsum(-1)
        out = []
        for K in (64, 256, 1024):
            out.append(f"K={K}: min {float(cum[..., K-1].min()):.4f} median {float(cum[..., K-1].median()):.4f}")
        print(f"d={d} call {li} heads {p.shape[0]}: " + "; ".join(out), flush=True)
