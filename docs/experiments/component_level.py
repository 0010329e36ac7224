"""The log-density level of found components (docs/experiments.md, session 9).

(a) The general network's mean log-density error on one Gaussian, N(0, I) in d = 100, fitted on n
samples and evaluated at 1024 fresh draws, for n = 512 ... 8192 (what `_unimodal_level_offset` removes).
(b) P2-style targets of the given seed: log-density MSE (and mean error) unsplit, split without the
level recalibration, and split with it (the shipped fit).
Usage: python docs/experiments/component_level.py SEED [ns] [targets]   e.g. 1 2048,16384 1"""
import math
import sys

import torch

from disco_score import DiScoFormer, DiScoFormerMixture, bench

torch.set_num_threads(2)
seed = int(sys.argv[1])
ns = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "2048,16384").split(",")]
targets = [int(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2,3").split(",")]
split, whole = DiScoFormer.pretrained(), DiScoFormer.pretrained(split_components=False)
gen = torch.Generator().manual_seed(0)
for n in (512, 1024, 2048, 4096, 8192):
    x = torch.randn(n, 100, generator=gen, dtype=torch.float64)
    y = torch.randn(1024, 100, generator=gen, dtype=torch.float64)
    err = whole.fit(x).log_density(y) + 0.5 * (y ** 2).sum(1) + 50 * math.log(2 * math.pi)
    print(f"(a) N(0, I), d = 100, n = {n}: mean error {float(err.mean()):+.2f} nats, centred MSE {float(err.var()):.2f}", flush=True)


def report(name: str, log_p: torch.Tensor, truth: torch.Tensor) -> str:
    e = log_p - truth
    return f"{name} {float((e ** 2).mean()):.2f} (mean {float(e.mean()):+.2f})"


for n in ns:
    for idx in targets:
        p = bench.make_problem("p2", 100, n, idx, seed)
        fitted = split.fit(p.samples)
        cols = [report("unsplit", whole.fit(p.samples).log_density(p.queries), p.true_log_density)]
        if isinstance(fitted, DiScoFormerMixture):
            sizes = torch.tensor([float(c.samples.shape[0]) for c in fitted.components], dtype=torch.float64)
            plain = DiScoFormerMixture(split, p.samples, fitted.components, torch.log(sizes / sizes.sum()))
            cols += [report("split, level as fitted", plain.log_density(p.queries), p.true_log_density),
                     report("split, recalibrated (shipped)", fitted.log_density(p.queries), p.true_log_density)]
        print(f"(b) seed {seed} n = {n} target {idx}: {fitted!r}; log-density MSE " + " | ".join(cols), flush=True)
