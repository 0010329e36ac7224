"""Seeds, run metadata and problems: a target, its samples and queries, with the exact values there.

Definitions (the GMM prior, P1/P2/P3, m = 1024 queries): ``docs/benchmark-protocol.md``. Every
target, sample set and query set is drawn from a :class:`torch.Generator` seeded by
:func:`derive_seed` (float64), so a cell's figures do not depend on which other cells run.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..targets import GaussianMixture, ProductLaplace, ProductStudentT, Target, random_gmm

#: fresh query points per target (protocol: m = 1024)
N_QUERIES = 1024


# ----------------------------------------------------------------------------------------------
# Run metadata, seeds, JSON
# ----------------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str:
    """Short hash of the checkout holding this file, ``-dirty`` if tracked files are modified."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


def run_metadata(command: str, seed: int, quick: bool) -> dict[str, Any]:
    """What stands above each table: command, commit, hardware, versions, date, seed."""
    return {"command": command, "commit": git_commit(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seed": seed, "quick": quick}


def derive_seed(base: int, *keys: object) -> int:
    """A stable 31-bit seed from the base seed and a key path (independent of which cells run)."""
    text = "/".join([str(base), *map(str, keys)])
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def _jsonable(value: Any) -> Any:
    """Plain JSON: numpy/torch scalars to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _error_text(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``: how a failed row, cell or suite is recorded."""
    return f"{type(exc).__name__}: {exc}".strip()


# ----------------------------------------------------------------------------------------------
# Targets and problems
# ----------------------------------------------------------------------------------------------
FAMILIES = ("gmm", "gmm-many", "p2", "laplace", "student-t")


def make_target(family: str, d: int, generator: torch.Generator) -> Target:
    """One target of a protocol family (float64).

    ``gmm``: the GMM prior; ``gmm-many``: the prior with K in 11..20; ``p2``: K = 2, no rotation;
    ``laplace``: product Laplace (loc 0, scale 1); ``student-t``: product Student-t (nu = 3, scale 1).
    """
    if family == "gmm":
        return random_gmm(d, generator=generator)
    if family == "gmm-many":
        return random_gmm(d, n_components=(11, 20), generator=generator)
    if family == "p2":
        return random_gmm(d, n_components=2, rotate=False, generator=generator)
    if family == "laplace":
        return ProductLaplace(d)
    if family == "student-t":
        return ProductStudentT(d, df=3.0)
    raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")


def draw(target: Target, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, d) samples, drawn in chunks: mixture sampling gathers one (d, d) factor per draw."""
    chunk = max(1024, (1 << 22) // (target.dim * target.dim))
    parts = [target.sample(min(chunk, n - start), generator) for start in range(0, n, chunk)]
    return torch.cat(parts).to(torch.float64)


@dataclass
class Problem:
    """One target with ``samples`` (n, d), ``queries`` (m, d) and the exact values at the queries."""

    target: Target
    samples: torch.Tensor
    queries: torch.Tensor
    true_log_density: torch.Tensor  # (m,)
    true_score: torch.Tensor  # (m, d)
    target_seed: int
    samples_seed: int
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def n_components(self) -> int | None:
        """K for mixture targets, None otherwise."""
        return int(self.target.weights.shape[-1]) if isinstance(self.target, GaussianMixture) else None

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``cache[key]``, calling ``build()`` on the first request only (e.g. one DiScoFormer fit or density
        grid shared by all rows of the problem)."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


def make_problem(family: str, d: int, n: int, index: int, seed: int, m: int = N_QUERIES) -> Problem:
    """Target ``index`` of a family: the target and its queries depend on (seed, family, d, index)
    only, so the same targets and queries are reused across n; the samples also depend on n."""
    target_seed = derive_seed(seed, family, d, index)
    samples_seed = derive_seed(seed, family, d, index, n)
    gen = torch.Generator().manual_seed(target_seed)
    target = make_target(family, d, gen)
    queries = draw(target, m, gen)
    samples = draw(target, n, torch.Generator().manual_seed(samples_seed))
    return Problem(target, samples, queries, target.log_prob_t(queries), target.score_t(queries),
                   target_seed, samples_seed)
