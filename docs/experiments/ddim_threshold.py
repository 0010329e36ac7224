"""DDIM (diffusers, 50 steps) driven by DiScoFormer at several ``convolution_threshold`` values
(docs/experiments.md, session 5). Usage: python docs/experiments/ddim_threshold.py D THR [THR ...]
Prints per threshold the mean over the sampling suite's 4 targets (n = 1024) of the energy distance
to fresh draws and the memorization fraction."""
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler

from disco_score import DiScoFormer, samplers
from disco_score.bench import Context, derive_seed, make_problem
from disco_score.integrations.diffusers import DiscoScoreModel, EmpiricalDiffusionPipeline

torch.set_num_threads(1)
d = int(sys.argv[1])
net = Context().discoformer().net
for thr in [float(t) for t in sys.argv[2:]]:
    eds, mems = [], []
    for index in range(4):
        p = make_problem("gmm", d, 1024, index, 0)
        est = DiScoFormer(net, normalize=False, convolution_threshold=thr)
        pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(est, p.samples), DDIMScheduler(clip_sample=False))
        g = torch.Generator().manual_seed(derive_seed(0, "ddim-threshold", d, index))
        out = pipe(num_samples=1000, num_inference_steps=50, generator=g).samples.numpy()
        eds.append(samplers.energy_distance(out, p.queries.numpy()))
        mems.append(samplers.memorization_fraction(out, p.samples.numpy()))
    print(f"d={d} threshold {thr}: energy distance {np.mean(eds):.4f} ({' '.join(f'{e:.3f}' for e in eds)}), "
          f"memorization {np.mean(mems):.3f}", flush=True)
