"""The Gaussian envelope on each found component (docs/experiments.md, sessions 10 and 11): relative
score MSE of the fit without envelopes (``DiScoFormer(envelopes=False)``) and with the shipped ones,
and of variants of the envelope applied post hoc to the unenveloped fit, on GMM-prior targets
(``gmm0``, ``gmm1``, … = bench target index) and on mixtures of three rotated, scaled, shifted copies of a
shape the network never trained on (``t3``, ``t5``: product Student-t; ``lap``: Laplace; ``ban``:
banana; ``fun``: funnel; 12 units apart).
Variants: ``gauss`` = level at the Gaussian fit's peak; ``q90`` / ``max`` = level set on the
component's own samples (0.9 quantile / maximum of a + r^2 / (2 c^2)); c = inflation, m = margin (nats).
Usage: python docs/experiments/component_envelope.py d n seed kinds   e.g. 10 16384 0 gmm0,gmm1,t3"""
import math
import sys

import torch
import torch.nn.functional as F

from disco_score import DiScoFormer, bench, targets

torch.set_num_threads(1)


class ShiftedCopies:
    """Equal-weight mixture of K copies of ``base``, each rotated, scaled (0.7-1.3) and shifted by ``sep``."""

    def __init__(self, base: targets.Target, k: int, d: int, sep: float, gen: torch.Generator) -> None:
        self.base, self.k, self.d = base, k, d
        self.rot = [targets.haar_orthogonal(d, generator=gen).double() for _ in range(k)]
        self.scale = [float(0.7 + 0.6 * torch.rand(1, generator=gen)) for _ in range(k)]
        dirs = torch.randn(k, d, generator=gen, dtype=torch.float64)
        self.mu = sep * dirs / dirs.norm(dim=1, keepdim=True)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        which = torch.randint(0, self.k, (n,), generator=gen)
        z = self.base.sample(n, generator=gen).double()
        out = torch.empty(n, self.d, dtype=torch.float64)
        for j in range(self.k):
            m = which == j
            out[m] = self.mu[j] + self.scale[j] * z[m] @ self.rot[j].T
        return out

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.base.log_prob_t((x - self.mu[j]) @ self.rot[j] / self.scale[j]) - self.d * math.log(self.scale[j])
                 for j in range(self.k)]
        return torch.logsumexp(torch.stack(parts, 1), 1) - math.log(self.k)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.log_prob(x).sum(), x)
        return g


def problem(kind: str, d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if kind.startswith("gmm"):
        p = bench.make_problem("gmm", d, n, int(kind[3:]), seed)
        return p.samples.double(), p.queries.double(), p.true_score.double()
    gen = torch.Generator().manual_seed(seed)
    base = {"t3": lambda: targets.ProductStudentT(d, df=3.0), "t5": lambda: targets.ProductStudentT(d, df=5.0),
            "lap": lambda: targets.ProductLaplace(d), "ban": lambda: targets.Banana(d),
            "fun": lambda: targets.Funnel(d)}[kind]()
    mix = ShiftedCopies(base, 3, d, 12.0, gen)
    x, y = mix.sample(n, gen), mix.sample(2048, gen)
    return x, y, mix.score(y)


def capped_score(fit, y: torch.Tensor, level_rule: str, c: float, margin: float) -> torch.Tensor:
    """The mixture's score with each component capped post hoc by a Gaussian envelope."""
    d = y.shape[1]
    log_ps, scores = [], []
    for comp in fit.components:
        a, sa = (v.double() for v in comp._log_density_and_score(y))
        x = comp.samples.double()
        mean, chol = x.mean(0), torch.linalg.cholesky(torch.cov(x.T))
        r2 = lambda p: (torch.linalg.solve_triangular(chol, (p - mean).T, upper=False) ** 2).sum(0)
        level = float(-torch.log(torch.diagonal(chol)).sum() - 0.5 * d * math.log(2 * math.pi))
        if level_rule != "gauss":
            own = comp._log_density_and_score(x, want_score=False)[0].double() + 0.5 * r2(x) / c ** 2
            level = max(level, float(own.max() if level_rule == "max" else torch.quantile(own, 0.9)))
        b = level + margin - 0.5 * r2(y) / c ** 2
        grad_b = -torch.cholesky_solve((y - mean).T, chol).T / c ** 2
        w = torch.sigmoid(a - b)
        log_ps.append(a - F.softplus(a - b))
        scores.append((1 - w)[:, None] * sa + w[:, None] * grad_b)
    post = torch.softmax(torch.stack(log_ps, 1) + fit.log_weights, 1)
    return sum(post[:, k, None] * scores[k] for k in range(len(scores)))


d, n, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
variants = [("gauss", 1.5, 3.0), ("max", 1.5, 3.0), ("q90", 1.5, 3.0), ("gauss", 1.5, 1.0), ("gauss", 2.0, 3.0)]
plain, shipped = DiScoFormer.pretrained(envelopes=False), DiScoFormer.pretrained()
for kind in sys.argv[4].split(","):
    x, y, truth = problem(kind, d, n, seed)
    rel = lambda s: 100 * float(((s.double() - truth) ** 2).sum() / (truth ** 2).sum())
    fit = plain.fit(x)
    line = f"{kind} d={d} n={n} seed={seed}: no envelope {rel(fit.score(y)):.2f} %"
    if hasattr(fit, "log_weights") and type(fit).__name__ == "DiScoFormerMixture":
        line += f", shipped {rel(shipped.fit(x).score(y)):.2f} % (K = {len(fit.components)})"
        for rule, c, margin in variants:
            line += f" | {rule} c={c} m={margin}: {rel(capped_score(fit, y, rule, c, margin)):.2f}"
    else:
        line += f" (not split: {type(fit).__name__})"
    print(line, flush=True)
