"""Draw the W3 reference posteriors once with NUTS and cache them in disco_score/bench/data/<name>.npz.

    OMP_NUM_THREADS=1 python benchmarks/make_posteriors.py            # all posteriors
    OMP_NUM_THREADS=1 python benchmarks/make_posteriors.py --only eight_schools_noncentred

Per posterior: NumPyro NUTS (float64, seeded) on the model's unconstrained space, ``--chains`` chains run
sequentially, ``--warmup`` adaptation steps, then ``N_DRAWS / chains * thin`` transitions per chain kept
every ``thin``-th, so that the ``N_DRAWS`` (12000) kept draws are near-independent (the script prints and
stores split R-hat and bulk ESS of the kept draws per coordinate). The kept draws of all chains are put in
one seeded random order (so the first 8192, the benchmark's context, mix all chains) and saved as float32
with the metadata. The log-density of every saved draw is checked finite in torch.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import torch  # noqa: E402
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from disco_score.bench.posteriors import N_DRAWS, get_posterior, posterior_names  # noqa: E402

DATA_DIR = ROOT / "disco_score" / "bench" / "data"

#: per-posterior settings: thinning (chosen from pilot runs so the kept draws' bulk ESS is near their
#: number) and NUTS's target acceptance (higher for eight schools, whose log-tau tail has high curvature)
SETTINGS: dict[str, dict[str, float]] = {
    "logistic_breast_cancer": {"thin": 4, "target_accept": 0.8},
    "poisson_linnerud": {"thin": 4, "target_accept": 0.8},
    "eight_schools_noncentred": {"thin": 8, "target_accept": 0.95},
}


def run_one(name: str, seed: int, chains: int, warmup: int, out_dir: Path) -> dict[str, object]:
    """Run NUTS for ``name``, save ``out_dir/<name>.npz`` and return its metadata."""
    post = get_posterior(name)
    cfg = SETTINGS[name]
    thin = int(cfg["thin"])
    per_chain = -(-N_DRAWS // chains)  # ceil: trimmed to N_DRAWS after pooling
    kernel = NUTS(post.numpyro_model, target_accept_prob=float(cfg["target_accept"]))
    # Thinning is done here, not by MCMC(thinning=...), so divergences are counted over every transition.
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=per_chain * thin, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging", "num_steps"))
    elapsed = time.perf_counter() - start
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    theta = post.flatten_samples(samples)[:, ::thin]  # (chains, per_chain, d), unconstrained
    extra = mcmc.get_extra_fields(group_by_chain=True)
    divergences = int(np.asarray(extra["diverging"]).sum())
    mean_steps = float(np.asarray(extra["num_steps"]).mean())

    rhat = np.asarray(split_gelman_rubin(theta))
    ess = np.asarray(effective_sample_size(theta))
    # ESS of the log-density too: the benchmark scores densities, and it mixes slowest in heavy tails.
    logp_chain = post.log_density_unnormalised(torch.from_numpy(theta.reshape(-1, post.dim)))
    ess_logp = float(effective_sample_size(logp_chain.numpy().reshape(chains, per_chain)))
    pooled = theta.reshape(-1, post.dim)
    order = np.random.default_rng(seed).permutation(len(pooled))[:N_DRAWS]
    draws = pooled[order].astype(np.float32)
    logp = post.log_density_unnormalised(torch.from_numpy(draws.astype(np.float64)))
    if not bool(torch.isfinite(logp).all()):
        raise RuntimeError(f"{name}: non-finite log-density at a saved draw")

    meta: dict[str, object] = {
        "name": name, "dim": post.dim, "n_draws": len(draws), "seed": seed, "chains": chains,
        "warmup": warmup, "thinning": thin, "transitions_per_chain": per_chain * thin,
        "target_accept": float(cfg["target_accept"]), "numpyro_version": numpyro.__version__,
        "jax_version": jax.__version__, "rhat_max": float(rhat.max()), "ess_min": float(ess.min()),
        "ess_min_per_draw": float(ess.min() / (chains * per_chain)), "ess_logp": ess_logp, "divergences": divergences,
        "mean_leapfrog_steps": mean_steps, "seconds": round(elapsed, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.npz"
    np.savez_compressed(path, draws=draws, param_names=np.array(post.param_names),
                        rhat=rhat.astype(np.float32), ess=ess.astype(np.float32),
                        **{k: np.array(v) for k, v in meta.items()})
    print(f"{name}: d={post.dim}, {len(draws)} draws ({chains} chains x {per_chain} kept of "
          f"{per_chain * thin}, thin {thin}, warmup {warmup}) in {elapsed:.1f} s; "
          f"R-hat max {rhat.max():.4f}, bulk ESS min {ess.min():.0f} ({meta['ess_min_per_draw']:.2f} per draw), "
          f"ESS of log p {ess_logp:.0f}, divergences {divergences}, mean leapfrog steps {mean_steps:.1f}; "
          f"{path} {path.stat().st_size / 1024:.0f} KiB")
    for label, r, e in zip(post.param_names, rhat, ess):
        print(f"    {label:28s} R-hat {r:.4f}  ESS {e:8.0f}")
    return meta


def main(argv: list[str] | None = None) -> None:
    """Command line: draw and cache every posterior (or those named with ``--only``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, choices=posterior_names())
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    numpyro.enable_x64()  # the torch density is float64; sample the same numbers
    for i, name in enumerate(args.only or posterior_names()):
        run_one(name, args.seed + i, args.chains, args.warmup, args.out)


if __name__ == "__main__":
    main()
