"""Where the component stage's error comes from (docs/experiments.md, session 10): for one target,
the true labels of each fitted part's samples and the relative score MSE split by the queries' true
component, for several ``max_components`` (components looked for from d = 2).
Usage: python docs/experiments/component_parts.py d n target seed [family] [max_components,...]
  e.g. 10 16384 0 1 gmm 8,32"""
import logging
import sys

import torch

from disco_score import DiScoFormer, bench
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, format="%(message)s")
d, n, t, seed = (int(v) for v in sys.argv[1:5]); family = sys.argv[5] if len(sys.argv) > 5 else "gmm"
maxk = [int(v) for v in sys.argv[6].split(",")] if len(sys.argv) > 6 else [8, 32]
p = bench.make_problem(family, d, n, t, seed)
tg = p.target
comp_q, _ = tg._component_terms(p.queries.double()); lab_q = comp_q.argmax(0)
comp_s, _ = tg._component_terms(p.samples.double()); lab_s = comp_s.argmax(0)
K = comp_q.shape[0]
print("weights", [round(float(v), 3) for v in tg.weights], "sample counts", torch.bincount(lab_s, minlength=K).tolist())
tot = float((p.true_score ** 2).sum())
for k in maxk:
    print(f"--- max_components {k}")
    o = DiScoFormer.pretrained(split_min_dim=2, max_components=k).fit(p.samples)
    parts = getattr(o, "components", [o])
    for j, c in enumerate(parts):
        # labels of the part's samples
        idx = torch.cdist(c.samples.double(), p.samples.double()).argmin(1)
        print(f"part {j}: n={c.samples.shape[0]}, true labels {torch.bincount(lab_s[idx], minlength=K).tolist()}")
    err = ((o.score(p.queries) - p.true_score) ** 2).sum(1)
    print("rel err by true component:", [round(100 * float(err[lab_q == i].sum()) / tot, 2) for i in range(K)], "total", round(100 * float(err.sum()) / tot, 2))
