"""Annealed Langevin driven by the exact score: unbiased energy statistic against fresh draws as the steps per
level and sigma_min vary (docs/experiments.md, session 6). Usage: python docs/experiments/annealed_langevin_steps.py D"""
import torch, numpy as np, sys
from disco_score import bench, samplers
torch.set_num_threads(1)
d = int(sys.argv[1])
for T, rel in ((20, 1e-2), (60, 1e-2), (20, 3e-3), (100, 1e-2)):
    us = []
    for idx in range(4):
        p = bench.make_problem("gmm", d, 1024, idx, 0, m=3000)
        g = torch.Generator().manual_seed(idx)
        smin = samplers.noise_range(p.samples, relative_sigma_min=rel)[1]
        pts, info = samplers.annealed_langevin(p.target, p.samples, n_samples=3000, steps_per_level=T,
                                               sigma_min=smin, generator=g, progress=False)
        us.append(samplers.energy_statistic(pts, p.queries))
    print(f"d={d} T={T} rel_sigma_min={rel}: U x1e3 {1e3*np.mean(us):.2f}  per target {[round(1e3*u,2) for u in us]}", flush=True)
