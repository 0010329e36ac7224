"""One fit of the d = 10 specialist at n against the size-weighted mixture of fits on n // s
interleaved subsets of size s (docs/experiments.md, session 9); GMM-prior targets, seed 1 (not the
benchmark's). Prints relative score MSE at 1024 queries and the wall time of each.
Usage: python docs/experiments/bagging_d10.py [ns] [targets] [sizes]   e.g. 8192,16384,32768 2 2048,4096,8192"""
import sys
import time

import torch

from disco_score import DiScoFormer, bench
from disco_score.discoformer import Specialist
from disco_score.metrics import relative_score_mse

torch.set_num_threads(1)
ns = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "8192,16384,32768").split(",")]
n_targets = int(sys.argv[2]) if len(sys.argv) > 2 else 2
sizes = [int(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "2048,4096,8192").split(",")]
packaged = DiScoFormer.pretrained()
(d10,) = [sp for sp in packaged.specialists if sp.dim == 10]


def with_bag_size(size: int | None) -> DiScoFormer:
    return DiScoFormer(packaged.net, specialists=[Specialist(d10.net, d10.max_n, size)])


for n in ns:
    for idx in range(n_targets):
        p = bench.make_problem("gmm", 10, n, idx, 1)
        cols = []
        for size in [None, *sizes]:
            if size is not None and n // size < 2:
                continue
            start = time.perf_counter()
            err = relative_score_mse(with_bag_size(size).fit(p.samples).score(p.queries), p.true_score)
            cols.append(f"{'one fit' if size is None else f's={size}'} {100 * err:.2f} % ({time.perf_counter() - start:.0f} s)")
        print(f"n={n} target {idx}: " + " | ".join(cols), flush=True)
