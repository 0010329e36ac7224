"""Full-covariance Gaussian mixtures fitted to samples by EM: the starts of the distilled summary
(:mod:`disco_score.summary`) and the mixture the fit blends with (:mod:`disco_score.blend`), its size
chosen by BIC as a user's scikit-learn ``GaussianMixture`` would be.

Everything here works in whitened coordinates (unit covariance), where one shrinkage rule and one
tolerance suit every data set; :func:`bic_mixture` maps the result back to the data's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._checks import ArrayLike, as_samples, check_int
from .components import interleaved_subsets
from .targets import GaussianMixture
from .whitening import Whitening

#: sizes :func:`bic_mixture` tries (those with no more parameters than samples)
BIC_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: :func:`bic_mixture` stops once this many sizes in a row have not lowered BIC
BIC_PATIENCE = 2
#: EM sees at most this many samples (evenly spaced in their order); BIC counts them
BIC_MAX_N = 4096
#: EM stops when the mean log-likelihood gains less than this (nats per sample) in a step
BIC_TOLERANCE = 1e-3
#: and after at most this many steps
BIC_MAX_STEPS = 100


def kmeans_labels(z: torch.Tensor, k: int, gen: torch.Generator, iters: int = 20, greedy: bool = False
                  ) -> torch.Tensor:
    """Labels (n,) of Lloyd's k-means from a k-means++ start; ``greedy``: each new centre the best
    of 2 + log k candidates drawn as k-means++ draws one (scikit-learn's seeding: a plain draw can
    put two centres in one of two well-separated clusters)."""
    n = z.shape[0]
    picks = [int(torch.randint(n, (1,), generator=gen))]
    d2 = ((z - z[picks[0]]) ** 2).sum(1)
    trials = 2 + int(math.log(k)) if greedy else 1
    for _ in range(k - 1):
        total = d2.sum()
        if not total > 0:  # fewer distinct points than components
            break
        candidates = torch.multinomial(d2 / total, trials, replacement=trials > 1, generator=gen)
        new_d2 = torch.minimum(d2[None], ((z[None] - z[candidates][:, None]) ** 2).sum(-1))  # (trials, n)
        best = int(new_d2.sum(1).argmin())
        picks.append(int(candidates[best]))
        d2 = new_d2[best]
    centres = z[picks].clone()
    for _ in range(iters):
        labels = torch.cdist(z, centres).argmin(1)
        counts = torch.bincount(labels, minlength=len(picks)).clamp_min(1).to(z.dtype)
        centres = torch.zeros_like(centres).index_add_(0, labels, z) / counts[:, None]
    return torch.cdist(z, centres).argmin(1)


def em(z: torch.Tensor, k: int, steps: int, gen: torch.Generator, tol: float | None = None, greedy: bool = False
       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Full-covariance EM from k-means labels on whitened samples ``z`` (n, d): (counts (K,), means
    (K, d), covariances (K, d, d), mean log-likelihood of the last E step), after ``steps`` steps or
    once a step gains less than ``tol`` (``greedy``: the k-means start's seeding, see
    :func:`kmeans_labels`). Covariances of components with fewer than d^2 samples are
    shrunk toward their mean variance (they stay well-conditioned); components left with fewer
    than 2 samples are dropped."""
    n, d = z.shape
    resp = torch.nn.functional.one_hot(kmeans_labels(z, k, gen, greedy=greedy), k).to(z.dtype)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    previous = -math.inf
    for step in range(steps + 1):  # M step from the responsibilities, then an E step
        counts = resp.sum(0)
        keep = counts >= 2
        resp, counts = resp[:, keep], counts[keep]
        means = resp.T @ z / counts[:, None]
        diff = z[:, None] - means[None]  # (n, K, d)
        weighted = (resp.T[:, :, None] * diff.transpose(0, 1))  # (K, n, d)
        cov = weighted.transpose(1, 2) @ diff.transpose(0, 1) / counts[:, None, None]
        # a small component shrunk toward its mean variance (2 d pseudo-samples against at least
        # d^2 of its own: a well-populated thin component keeps its thin directions)
        tau = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        pseudo = 2.0 * d * (counts < d * d).to(z.dtype) + 1e-6
        cov = (counts[:, None, None] * cov + pseudo[:, None, None] * tau[:, None, None] * eye) \
            / (counts + pseudo)[:, None, None]
        chol = torch.linalg.cholesky(cov)
        sol = torch.linalg.solve_triangular(chol, diff.permute(1, 2, 0), upper=False)  # (K, d, n)
        logits = (torch.log(counts / n) - 0.5 * (sol * sol).sum(1).T
                  - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1))
        loglik = float(torch.logsumexp(logits, 1).mean()) - 0.5 * d * math.log(2 * math.pi)
        if step == steps or (tol is not None and loglik - previous < tol):
            return counts, means, cov, loglik
        previous = loglik
        resp = torch.softmax(logits, 1)
    raise AssertionError("unreachable")


def bic_sizes(n: int, d: int) -> list[int]:
    """The sizes :func:`bic_mixture` compares on n samples in d dimensions: those of
    :data:`BIC_SIZES` with at most n free parameters (one Gaussian always)."""
    per_component = 1 + d + d * (d + 1) // 2
    return [k for k in BIC_SIZES if k == 1 or k * per_component <= n]


def bic_mixture(samples: ArrayLike, seed: int = 0, sizes: Sequence[int] | None = None) -> GaussianMixture:
    """The Gaussian mixture (full covariances) with the lowest BIC among ``sizes`` (default
    :func:`bic_sizes`, tried in increasing order until BIC has not improved for
    :data:`BIC_PATIENCE` sizes), fitted by EM (:func:`em`, in whitened coordinates, on at most
    :data:`BIC_MAX_N` of the samples, an interleaved subset; permutation-invariant and, up to
    rounding, affine-equivariant) and returned in the samples' coordinates as an exact
    :class:`~disco_score.targets.GaussianMixture` (float64, on the samples' device). Raises
    ValueError for invalid samples (as ``fit`` does) or sizes that are not positive integers."""
    seed = check_int(seed, "seed", minimum=0)
    x = as_samples(samples).to(torch.float64)
    whitening = Whitening.from_samples(x)
    z = whitening.forward(x)
    # in their rank order along the canonical axis (an interleaved subset above BIC_MAX_N): the
    # seeded k-means++ picks then do not depend on the input order and rotate with the data
    z = z[interleaved_subsets(z, -(-z.shape[0] // BIC_MAX_N))[0]]
    n, d = z.shape
    ladder = bic_sizes(n, d) if sizes is None else sorted({check_int(k, "sizes") for k in sizes})
    best: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    since_best = 0
    for k in ladder:
        counts, means, cov, loglik = em(z, k, BIC_MAX_STEPS, torch.Generator().manual_seed(seed + k), BIC_TOLERANCE,
                                        greedy=True)
        k_kept = counts.shape[0]
        params = (k_kept - 1) + k_kept * (d + d * (d + 1) / 2)
        bic = -2.0 * n * loglik + params * math.log(n)
        if best is None or bic < best[0]:
            best, since_best = (bic, counts, means, cov), 0
        else:
            since_best += 1
            if since_best >= BIC_PATIENCE:
                break
    assert best is not None
    _, counts, means, cov = best
    inverse = whitening.inverse
    return GaussianMixture(counts / counts.sum(), whitening.backward(means), inverse @ cov @ inverse)
