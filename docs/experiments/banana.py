"""Curved densities, out of distribution (docs/experiments.md, session 6): relative score MSE of DiScoFormer,
DiScoFormer + adapt(4), Scott KDE and oracle-tuned KDE on banana targets (curvature, scale) at n = 256,
1024, 4096; 3 sample sets each. Usage: python docs/experiments/banana.py"""
import torch, numpy as np
from disco_score import DiScoFormer, KDE
from disco_score.targets import Banana
from disco_score.kde import oracle_tuned_kde
torch.set_num_threads(1)
est = DiScoFormer.pretrained(); kde = KDE()
for curv, scale in ((0.5, 2.0), (0.5, 1.0), (1.0, 1.0)):
  t = Banana(2, curvature=curv, scale=scale)
  for n in (256, 1024, 4096):
    r = {"disco": [], "adapt": [], "kde": [], "oracle": []}
    for rep in range(3):
        g = torch.Generator().manual_seed(100 + rep)
        x = t.sample(n, g).float(); y = t.sample(1024, g).float()
        s = t.score_t(y.double()); lp = t.log_prob_t(y.double())
        o = est.fit(x)
        for lab, oo in (("disco", o), ("adapt", o.adapt(steps=4)), ("kde", kde.fit(x))):
            sh = torch.as_tensor(oo.score(y)).double()
            r[lab].append(float(((sh - s) ** 2).sum() / (s ** 2).sum()))
        r["oracle"].append(oracle_tuned_kde(x.double(), y.double(), lp, s).relative_score_mse)
    print(f"banana b={curv} scale={scale} n={n}: rel score MSE " + "  ".join(f"{k} {np.mean(v):.4f}" for k, v in r.items()), flush=True)
