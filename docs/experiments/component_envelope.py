"""Probe for the leakage between components (docs/experiments.md, session 10): the shipped mixture
against the same fit with each component's log-density capped by a smooth minimum with an inflated
Gaussian envelope of its samples, ``a - softplus(a - b)``, b = log N(x; mean, c^2 cov) + margin
(score by the chain rule). Relative score MSE on a GMM-prior target.
Usage: python docs/experiments/component_envelope.py d n target seed [c,...] [margin nats]   e.g. 10 65536 0 0 1.5,2,3 3"""
import sys

import torch
import torch.nn.functional as F

from disco_score import DiScoFormer, bench

torch.set_num_threads(1)
d, n, t, seed = (int(v) for v in sys.argv[1:5])
inflations = [float(v) for v in (sys.argv[5] if len(sys.argv) > 5 else "1.5,2,3").split(",")]
margin = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
p = bench.make_problem("gmm", d, n, t, seed)
o = DiScoFormer.pretrained().fit(p.samples)
y, truth = p.queries.double(), p.true_score.double()
rel = lambda s: 100 * float(((s - truth) ** 2).sum() / (truth ** 2).sum())
print(f"shipped: {rel(o.score(y)):.2f} % ({len(getattr(o, 'components', [o]))} components)")
parts = [c._log_density_and_score(y) for c in o.components]
for c_infl in inflations:
    lps, scs = [], []
    for comp, (a, sa) in zip(o.components, parts):
        x = comp.samples.double()
        mean, cov = x.mean(0), torch.cov(x.T) * c_infl ** 2
        g = torch.distributions.MultivariateNormal(mean, cov)
        b = g.log_prob(y) + 0.5 * d * torch.log(torch.tensor(c_infl ** 2)) + margin  # peak of the uninflated fit + margin
        sb = -torch.linalg.solve(cov, (y - mean).T).T
        s = torch.sigmoid(a.double() - b)
        lps.append(a.double() - F.softplus(a.double() - b))
        scs.append((1 - s)[:, None] * sa.double() + s[:, None] * sb)
    joint = torch.stack(lps, 1) + o.log_weights
    post = torch.softmax(joint, 1)
    score = sum(post[:, k, None] * scs[k] for k in range(len(scs)))
    print(f"envelope c = {c_infl}, margin {margin}: {rel(score):.2f} %", flush=True)
