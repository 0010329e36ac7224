"""Annealed Langevin at d = 10 (package defaults) with DiScoFormer's ``smoothed`` patched (docs/experiments.md, session 5).

Usage: python docs/experiments/annealed_langevin_threshold.py C TARGETS THR [D]   (D: dimension, default 10)
  THR: exact empirical convolution from THR Scott bandwidths h = data_sd * n^(-1/(d+4)) up (shipped: 1.5);
  C:   below it, refit on data + tau * noise with tau = sqrt(max(sigma^2 - (C h)^2, 0)) (C = 0: tau = sigma, shipped).
  TARGETS: comma-separated GMM target indices (bench.make_problem("gmm", 10, 1024, i, 0)).
Prints energy distance to the target's 1024 fresh draws and the memorization fraction per target."""
import sys, math, time, numpy as np, torch
from disco_score import samplers
from disco_score.bench import make_problem, Context
from disco_score import discoformer as dm
from disco_score.kde import KDEOracle
torch.set_num_threads(1)
THR = float(sys.argv[3]); D = int(sys.argv[4]) if len(sys.argv) > 4 else 10; c = float(sys.argv[1]); targets = [int(t) for t in sys.argv[2].split(",")]
def _smoothed(self, sigma):
    n = self.samples.shape[0]
    x = self.samples.to(torch.float64)
    data_sd = math.sqrt(float(x.var(0).sum()) / self.dim)
    h = data_sd * n ** (-1.0 / (self.dim + 4))
    if sigma >= THR * h:
        return KDEOracle(self.samples, sigma ** 2 * torch.eye(self.dim, dtype=torch.float64), sigma / data_sd)
    tau = math.sqrt(max(sigma ** 2 - (c * h) ** 2, 0.0))
    if tau == 0.0:
        return self
    gen = torch.Generator().manual_seed(int(1e6 * sigma) % (2 ** 31))
    noisy = x + tau * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return dm.DiScoFormerOracle(self.estimator, noisy.to(self.samples.dtype), self._net)
if c >= 0:
    dm.DiScoFormerOracle._smoothed = _smoothed
est = dm.DiScoFormer(Context().discoformer().net, normalize=False)
res, mem = [], []
for index in targets:
    p = make_problem("gmm", D, 1024, index, 0)
    g = torch.Generator().manual_seed(index)
    t = time.time()
    out, info = samplers.annealed_langevin(est, p.samples, n_samples=1000, generator=g, progress=False)
    out = np.asarray(out)
    ed = samplers.energy_distance(out, p.queries.numpy())
    m = samplers.memorization_fraction(out, p.samples.numpy()) if hasattr(samplers, "memorization_fraction") else None
    res.append(ed); mem.append(m)
    print("c", c, "target", index, "ED", round(ed, 4), "mem", m, "s", round(time.time() - t, 1), flush=True)
print("c", c, "mean ED", np.mean(res), "mem", mem)
