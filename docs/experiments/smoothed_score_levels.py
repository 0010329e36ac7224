"""Error of each way to get the noise-conditional score p * N(0, s^2 I) from DiScoFormer, per noise level.

Usage: python docs/experiments/smoothed_score_levels.py D [N]   (docs/experiments.md, session 4; the
"rep" row is the pre-eb5382e behaviour: 2048 // n noised replicas)."""
import math
import sys

import numpy as np
import torch

from disco_score import DiScoFormer, bench
from disco_score.discoformer import DiScoFormerOracle
from disco_score.kde import KDEOracle

torch.set_num_threads(1)
d = int(sys.argv[1]); n = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
est = DiScoFormer.pretrained(normalize=False)
rel = [0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0]
res = {k: np.zeros(len(rel)) for k in ("plain", "rep", "one", "kde")}
T = 3
for index in range(T):
    problem = bench.make_problem("gmm", d, n, index, 0, m=512)
    x = problem.samples.to(torch.float32)
    sd = math.sqrt(float(x.double().var(0).sum()) / d)
    o = est.fit(x)
    g = torch.Generator().manual_seed(index)
    for i, r in enumerate(rel):
        s = r * sd
        q = problem.queries + s * torch.randn(problem.queries.shape, generator=g, dtype=problem.queries.dtype)
        truth = problem.target.smoothed(s).score(q).double()
        def err(orc):
            e = orc.score(q.to(torch.float32)).double()
            return float(((e - truth) ** 2).sum(1).mean() / (truth ** 2).sum(1).mean())
        res["plain"][i] += err(o) / T
        reps = max(1, min(8, 2048 // n))
        for key, k in (("rep", reps), ("one", 1)):
            xx = x.double().repeat(k, 1); xx = xx + s * torch.randn(xx.shape, generator=g, dtype=torch.float64)
            res[key][i] += err(DiScoFormerOracle(est, xx.float(), o._net)) / T
        res["kde"][i] += err(KDEOracle(x, s * s * torch.eye(d, dtype=torch.float64), r)) / T
print(f"d={d} n={n} scott factor {n ** (-1 / (d + 4)):.3f}; rel score MSE (%) by sigma / data sd")
print("sigma/sd " + " ".join(f"{r:7.2f}" for r in rel))
for k, v in res.items():
    print(f"{k:8s} " + " ".join(f"{100 * e:7.2f}" for e in v), flush=True)
