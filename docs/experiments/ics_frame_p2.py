"""Does an invariant-coordinate (FOBI) frame find P2's between-mean direction? (docs/experiments.md,
session 6). After whitening, eigenvectors of mean(|z|^2 z z^T); prints the best-aligned axis and |cos|
with the whitened mean difference, 4 P2 targets at n = 2048 and 16384.
Usage: python docs/experiments/ics_frame_p2.py"""
import torch, numpy as np
from disco_score import bench
from disco_score.whitening import Whitening
torch.set_num_threads(1)
for n in (2048, 16384):
    for idx in range(4):
        p = bench.make_problem("p2", 100, n, idx, 0, m=8)
        x = p.samples.double()
        w = Whitening.from_samples(x)
        z = w.forward(x)
        t = p.target
        mu = t.means.double() if hasattr(t, "means") else None
        dmu = w.forward(mu[1:2]) - w.forward(mu[0:1])
        dmu = (dmu / dmu.norm()).flatten()
        M = (z * (z * z).sum(1, keepdim=True)).T @ z / n
        evals, evecs = torch.linalg.eigh(M)
        cos = (evecs.T @ dmu).abs()
        k = int(cos.argmax())
        print(f"n={n} target {idx}: best-aligned FOBI axis #{k} of 100 (eigenvalue rank), |cos| = {float(cos.max()):.3f}; "
              f"eigenvalue {float(evals[k]):.1f} vs median {float(evals.median()):.1f}")
