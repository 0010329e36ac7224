"""Where a whole annealed-Langevin run's time goes: network score calls, refits and KDE-convolution
steps (two moons, n = 2000, 1000 particles, the sampler's defaults, one torch thread).

    python docs/experiments/annealed_langevin_profile.py discoformer   # or: kde
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import torch

import disco_score.discoformer as discoformer
from disco_score import KDE, DiScoFormer
from disco_score.bench.toys import draw_toy
from disco_score.generate import generate


def main(source: str) -> None:
    torch.set_num_threads(1)
    data = torch.as_tensor(draw_toy("two moons", 2000, 7), dtype=torch.float32)
    fits = {"count": 0, "seconds": 0.0}
    init = discoformer.DiScoFormerOracle.__init__

    def timed_init(self, *args, **kwargs):  # every DiScoFormerOracle is one fit (encoding) of a set
        start = time.perf_counter()
        init(self, *args, **kwargs)
        fits["count"] += 1
        fits["seconds"] += time.perf_counter() - start

    discoformer.DiScoFormerOracle.__init__ = timed_init
    estimator = DiScoFormer.pretrained() if source == "discoformer" else KDE()
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    generate("annealed Langevin", estimator, data, 1000, generator=torch.Generator().manual_seed(0))
    profile.disable()
    print(f"whole run {time.perf_counter() - start:.3g} s; fits {fits['count']} ({fits['seconds']:.3g} s)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "discoformer")
