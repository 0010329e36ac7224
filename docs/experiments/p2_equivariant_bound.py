"""How low can a rotation-equivariant estimator push P2's score MSE? (docs/experiments.md, session 8)

Labelled oracles on the benchmark's P2 targets: each component's samples are known (true-posterior
argmax), the family is known (two Gaussians), weights = counts. Per component, the precision matrix is
estimated in the eigenbasis U of the sample covariance S = U diag(l) U^T:
  * linear:    (a S + (1 - a) tr(S)/d I)^-1, best a on a grid (the session-2 bound);
  * nonlinear: U diag(u_i^T P u_i) U^T with the TRUE precision P -- the Frobenius-best precision among
    all estimators of the form U f(l) U^T, i.e. among all rotation-equivariant covariance estimators
    (Ledoit & Wolf's "oracle" nonlinear shrinkage). No estimator that cannot prefer coordinate axes
    does better in this sense.
Also with the true means, to separate the mean's share of the error. Prints per-cell means over the
4 targets next to the bar (oracle-tuned KDE / 6.5).
Usage: python docs/experiments/p2_equivariant_bound.py [seed]"""
import sys

import torch

from disco_score import bench
from disco_score.metrics import score_mse as mse
from disco_score.targets import GaussianMixture

torch.set_num_threads(1)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
SHRINK = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def score_mse(weights, means, precisions, problem):
    """Score MSE at the problem's queries of the mixture with these weights, means and precisions."""
    covs = torch.linalg.inv(precisions)
    covs = 0.5 * (covs + covs.transpose(-1, -2))
    return mse(GaussianMixture(weights, means, covs).score(problem.queries.double()), problem.true_score)


for n in (2048, 16384):
    rows: dict[str, list[float]] = {}
    for idx in range(4):
        p = bench.make_problem("p2", 100, n, idx, seed)
        t, x = p.target, p.samples.double()
        labels = t._component_terms(x)[0].argmax(0)  # argmax of the true posterior
        K, d = t.means.shape
        weights = torch.stack([(labels == k).double().mean() for k in range(K)])
        for mean_kind in ("sample", "true"):
            means, covs = [], []
            for k in range(K):
                xk = x[labels == k]
                mu = xk.mean(0) if mean_kind == "sample" else t.means[k].double()
                means.append(mu)
                c = xk - xk.mean(0)
                covs.append(c.T @ c / (len(xk) - 1))
            means_t, S = torch.stack(means), torch.stack(covs)
            eye = torch.eye(d, dtype=torch.float64)
            best = min(score_mse(weights, means_t, torch.linalg.inv(a * S + (1 - a) * (S.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye)), p)
                       for a in [1 - s for s in SHRINK] if a > 0)
            rows.setdefault(f"linear shrinkage, {mean_kind} means", []).append(best)
            true_prec = torch.linalg.inv(t.covariances.double())
            l, U = torch.linalg.eigh(S)
            f = torch.einsum("kdi,kde,kei->ki", U, true_prec, U)
            prec = U @ torch.diag_embed(f) @ U.transpose(-1, -2)
            rows.setdefault(f"nonlinear oracle shrinkage, {mean_kind} means", []).append(score_mse(weights, means_t, prec, p))
        rows.setdefault("true covariances, sample means", []).append(
            score_mse(weights, torch.stack([x[labels == k].mean(0) for k in range(K)]), torch.linalg.inv(t.covariances.double()), p))
    print(f"P2 d=100 n={n} (seed {seed}; mean over 4 targets of score MSE)")
    for name, vals in rows.items():
        print(f"  {name:45s} {sum(vals) / len(vals):.4f}   per target {[round(v, 4) for v in vals]}")
