"""Out-of-distribution sanity check (docs/experiments.md, session 5): banana and Neal's funnel
(d = 2, 10) at scales 1, 1e-6, 1e6; relative score MSE of DiScoFormer and Scott KDE against the
exact score, and whether every output is finite. Usage: python docs/experiments/out_of_distribution.py"""
import math, torch, numpy as np
from disco_score import DiScoFormer, KDE
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
def funnel(n, d):
    v = 3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = torch.exp(v / 2) * torch.randn(n, d - 1, generator=g, dtype=torch.float64)
    return torch.cat([v, x], 1)
def funnel_score(y):
    v, x = y[:, :1], y[:, 1:]
    d1 = x.shape[1]
    sv = -v / 9 - d1 / 2 + 0.5 * (x ** 2).sum(1, keepdim=True) * torch.exp(-v)
    sx = -x * torch.exp(-v)
    return torch.cat([sv, sx], 1)
def banana(n, b=0.5):
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return torch.stack([z[:, 0], z[:, 1] + b * (z[:, 0] ** 2 - 1)], 1)
def banana_score(y, b=0.5):
    x1, x2 = y[:, 0], y[:, 1]
    r = x2 - b * (x1 ** 2 - 1)
    return torch.stack([-x1 + 2 * b * x1 * r, -r], 1)
est = DiScoFormer.pretrained(); kde = KDE()
for name, sampler, score, d in (("banana", lambda n: banana(n), banana_score, 2),
                                ("funnel d=2", lambda n: funnel(n, 2), funnel_score, 2),
                                ("funnel d=10", lambda n: funnel(n, 10), funnel_score, 10)):
    for scale in (1.0, 1e-6, 1e6):
        x = sampler(2048) * scale; y = sampler(512) * scale
        s = score(y / scale) / scale
        out = {}
        for lab, e in (("disco", est), ("kde", kde)):
            try:
                o = e.fit(x)
                sh = torch.as_tensor(o.score(y)).double()
                lp = torch.as_tensor(o.log_density(y)).double()
                rel = float(((sh - s) ** 2).sum() / (s ** 2).sum())
                out[lab] = f"rel {rel:.3g} finite {bool(torch.isfinite(sh).all() and torch.isfinite(lp).all())}"
            except Exception as exc:
                out[lab] = f"{type(exc).__name__}: {exc}"[:120]
        print(name, scale, out, flush=True)
