"""Standalone local-Gaussian fits with isotropic and Mahalanobis windows on P1 targets (docs/experiments.md,
session 6). Usage: python docs/experiments/local_gaussian_windows.py D N [TARGETS]"""
import math, sys, torch, numpy as np
from disco_score import bench
from disco_score.whitening import Whitening
torch.set_num_threads(1)

def local_fit(z, y, window_inv, shrink_to=None, rho=0.0):
    """window_inv: (m, d, d) inverse window matrices centred at y. Returns windowed mean, cov."""
    m, d = y.shape
    out_mu, out_c = [], []
    for i0 in range(0, m, 64):
        yy, Wi = y[i0:i0+64], window_inv[i0:i0+64]
        diff = z[None] - yy[:, None]                      # (b, n, d)
        q = torch.einsum("bnd,bde,bne->bn", diff, Wi, diff)
        lw = -0.5 * q
        w = torch.softmax(lw, 1)                          # (b, n)
        mu = torch.einsum("bn,bnd->bd", w, z[None].expand_as(diff))
        dc = z[None] - mu[:, None]
        C = torch.einsum("bn,bnd,bne->bde", w, dc, dc)
        neff = 1 / (w ** 2).sum(1)
        r = (d / (d + neff))[:, None, None]
        W = torch.linalg.inv(Wi)
        C = (1 - r) * C + r * W
        out_mu.append(mu); out_c.append(C)
    return torch.cat(out_mu), torch.cat(out_c)

def scores(z, y, factor, lam, passes):
    n, d = z.shape
    b = factor * n ** (-1 / (d + 4))
    eye = torch.eye(d, dtype=z.dtype)
    Wi = (eye / b ** 2).expand(y.shape[0], d, d)
    for p in range(passes):
        mu, C = local_fit(z, y, Wi)
        if p < passes - 1:
            Wi = torch.linalg.inv(lam * C)
    return torch.linalg.solve(C, (mu - y)[..., None])[..., 0]

d, n = int(sys.argv[1]), int(sys.argv[2])
T = int(sys.argv[3]) if len(sys.argv) > 3 else 8
configs = [(f, 1, 1) for f in (1.0, 2.0, 4.0)] + [(f, lam, 2) for f in (2.0, 4.0) for lam in (1.0, 2.0, 4.0)] + [(4.0, 2.0, 3)]
res = {c: [] for c in configs}
for idx in range(T):
    p = bench.make_problem("gmm", d, n, idx, 0)
    x, yq, s_true = p.samples.double(), p.queries.double(), p.true_score.double()
    w = Whitening.from_samples(x)
    z, y = w.forward(x), w.forward(yq)
    for c in configs:
        sz = scores(z, y, *c)
        s = w.score_out(sz)
        res[c].append(float(((s - s_true) ** 2).sum() / (s_true ** 2).sum()))
for c, v in res.items():
    print(f"d={d} n={n} factor {c[0]} lambda {c[1]} passes {c[2]}: rel score MSE {100*np.mean(v):.1f} %", flush=True)
