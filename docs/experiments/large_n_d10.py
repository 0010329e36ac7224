"""Time and memory of the packaged d = 10 specialist at large n (docs/experiments.md, session 8).

For n = 2^14 … 2^17 (GMM-prior target, seed 1): fit (whitening, canonical frame, sample encoder) and
1024 queries, wall time, the process's peak RSS so far, and the relative score MSE at the queries.
Usage: python docs/experiments/large_n_d10.py [max_log2_n]"""
import resource
import sys
import time

import torch

from disco_score import bench
from disco_score.discoformer import DiScoFormer
from disco_score.metrics import relative_score_mse

max_log2 = int(sys.argv[1]) if len(sys.argv) > 1 else 17
model = DiScoFormer.pretrained()
for k in range(14, max_log2 + 1):
    problem = bench.make_problem("gmm", 10, 2 ** k, 0, 1)
    t0 = time.perf_counter()
    oracle = model.fit(problem.samples)
    t1 = time.perf_counter()
    score = oracle.score(problem.queries)
    t2 = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    err = relative_score_mse(score, problem.true_score)
    print(f"n = 2^{k}: fit {t1 - t0:.1f} s, 1024 queries {t2 - t1:.1f} s, peak RSS {peak_mb:.0f} MB, "
          f"relative score MSE {100 * err:.2f} % ({torch.get_num_threads()} threads)", flush=True)
