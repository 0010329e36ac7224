"""Calibrating the component search's null (docs/experiments.md, session 9): the within-split variance
fraction `components.most_separated_split` reaches on sets with no components -- Gaussian, product
Student-t (nu = 3), product Laplace, Neal's funnel and a banana (curvature 0.5) -- at each (d, n), against the fitted curve
`components.null_within_fraction(n, d)` that `find_split` gates on (NULL_RATIO x null).
Usage: python docs/experiments/component_null.py [dims] [ns]   e.g. 100,50,16 404,932,2048,4686,8192,16384"""
import sys
import time

import torch

from disco_score import components
from disco_score.targets import Banana, Funnel, ProductLaplace, ProductStudentT
from disco_score.whitening import Whitening

torch.set_num_threads(1)
dims = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "100,50,16").split(",")]
ns = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "404,932,2048,4686,8192,16384").split(",")]
gen = torch.Generator().manual_seed(5)
for d in dims:
    min_size = max(2 * (d + 1), 32)  # as DiScoFormer.components
    families = {"gauss": lambda n: torch.randn(n, d, generator=gen, dtype=torch.float64),
                "t3": lambda n: ProductStudentT(d, df=3.0).sample(n, gen).double(),
                "laplace": lambda n: ProductLaplace(d).sample(n, gen).double(),
                "funnel": lambda n: Funnel(d).sample(n, gen).double(),
                "banana": lambda n: Banana(d).sample(n, gen).double()}
    for n in ns:
        if n < 2 * min_size:
            continue
        for name, draw in families.items():
            x = draw(n)
            start = time.perf_counter()
            split = components.most_separated_split(Whitening.from_samples(x).forward(x), min_size)
            assert split is not None
            smaller = min(int(split.lower.sum()), n - int(split.lower.sum()))
            print(f"d={d} n={n} {name:7s} within={split.within_fraction:.3f} (null curve "
                  f"{components.null_within_fraction(n, d):.3f}) smaller side {smaller} "
                  f"time {time.perf_counter() - start:.1f}s", flush=True)
