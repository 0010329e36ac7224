"""Heavy tails and funnels, out of distribution (docs/experiments.md, session 6): score MSE of DiScoFormer,
Scott KDE and oracle-tuned KDE on product Student-t (nu = 1 ... 5; d = 2, 5), banana and funnel targets,
n = 1024, 1024 queries, 3 sample sets each. Usage: python docs/experiments/heavy_tails.py"""
import torch, numpy as np, time, sys
from disco_score import DiScoFormer, KDE
from disco_score.targets import ProductStudentT, Banana, Funnel
from disco_score.kde import oracle_tuned_kde
torch.set_num_threads(1)
est = DiScoFormer.pretrained(); kde = KDE()
def run(name, target, n, reps=3):
    res = {"disco": [], "kde": [], "oracle": []}
    for r in range(reps):
        g = torch.Generator().manual_seed(100 + r)
        x = target.sample(n, g).float(); y = target.sample(1024, g).float()
        s = target.score_t(y.double()); lp = target.log_prob_t(y.double())
        for lab, e in (("disco", est), ("kde", kde)):
            o = e.fit(x)
            sh = torch.as_tensor(o.score(y)).double()
            res[lab].append(float(((sh - s) ** 2).mean()))
        best = oracle_tuned_kde(x.double(), y.double(), lp, s)
        res["oracle"].append(best.score_mse)
    print(f"{name:28s} n={n:5d} score MSE disco {np.mean(res['disco']):.4g}  scott {np.mean(res['kde']):.4g}  oracleKDE {np.mean(res['oracle']):.4g}", flush=True)
for df in (1.0, 1.5, 2.0, 3.0, 5.0):
    run(f"student-t df={df} d=2", ProductStudentT(2, df=df), 1024)
for df in (1.5, 3.0):
    run(f"student-t df={df} d=5", ProductStudentT(5, df=df), 1024)
run("banana d=2", Banana(2), 1024)
run("funnel d=2", Funnel(2), 1024)
run("funnel d=5", Funnel(5), 1024)
