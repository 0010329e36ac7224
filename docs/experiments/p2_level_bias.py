"""P2's log-density error split into its bias (mean error over the queries) and centred variance,
per target, with the component weights and the number of parts fitted; and the level offset the
found components get at this n (docs/experiments.md, session 10).
Usage: python docs/experiments/p2_level_bias.py n seeds   e.g. 2048 0,1"""
import sys

import torch

from disco_score import DiScoFormer, bench
torch.set_num_threads(1)
n = int(sys.argv[1]); seeds = [int(v) for v in sys.argv[2].split(",")]
est = DiScoFormer.pretrained()
print("unimodal offset", est.unimodal_level_offset(n, 100))
for seed in seeds:
    for t in range(4):
        p = bench.make_problem("p2", 100, n, t, seed)
        o = est.fit(p.samples)
        e = (o.log_density(p.queries) - p.true_log_density).double()
        w = [round(float(v), 3) for v in p.target.weights]
        print(f"seed {seed} t{t} weights {w} parts {len(getattr(o, 'components', [o]))}: mse {float((e**2).mean()):.2f} bias {float(e.mean()):+.2f} centred var {float(e.var()):.2f}", flush=True)
