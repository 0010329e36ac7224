"""Compare the packaged general network with a candidate checkpoint on what it serves (d != 10).

    python docs/experiments/compare_general_nets.py runs/finetune_wide/ckpt.pt [n_targets]

Rows: W1 held-out log-likelihood (n = 2000, four toy sets); W2 relative score MSE (d = 2, n = 2048;
banana, funnel, Student-t product, tight and mixed-scale mixtures); P1-like GMM-prior relative score
MSE at d = 2 (n = 256 and 2048) and d = 3, 16 (n = 1024). Same seeds for both networks.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from disco_score import DiScoFormer, metrics
from disco_score.bench import make_problem, wild
from disco_score.bench.toys import draw_toy
from disco_score.train import export

torch.set_num_threads(1)
ckpt = sys.argv[1]
n_targets = int(sys.argv[2]) if len(sys.argv) > 2 else 3
tmp = Path(tempfile.mkdtemp())
shutil.copy(Path("disco_score/weights/discoformer-d10.safetensors"), tmp)
shutil.copy(Path("disco_score/weights/discoformer-d10.json"), tmp)
export(ckpt, tmp)
models = {"packaged": DiScoFormer.pretrained(), "candidate": DiScoFormer.pretrained(tmp)}


def row(label, fn):
    values = {k: fn(m) for k, m in models.items()}
    print(f"{label:34s} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)


for name in ("8 gaussians", "2 spirals", "two moons", "checkerboard"):
    x, y = draw_toy(name, 2000, 1), draw_toy(name, 2000, 2)
    row(f"W1 {name}", lambda m: float(np.mean(m.fit(x).log_density(y))))
for family in ("banana", "funnel", "student-t product", "tight mixture", "mixed-scale mixture"):
    problems = [wild.w2_problem(family, 2, 2048, i, 0) for i in range(n_targets)]
    row(f"W2 {family} d=2", lambda m: float(np.mean(
        [metrics.relative_score_mse(m.fit(p.samples).score(p.queries), p.true_score) for p in problems])))
for d, n in ((2, 256), (2, 2048), (3, 1024), (16, 1024)):
    problems = [make_problem("gmm", d, n, i, 0) for i in range(n_targets)]
    row(f"GMM prior d={d} n={n}", lambda m: float(np.mean(
        [metrics.relative_score_mse(m.fit(p.samples).score(p.queries), p.true_score) for p in problems])))
