"""Bayesian updating with a sample-based prior, in NumPyro and in Pyro.

Logistic regression on scikit-learn's breast-cancer data (malignant vs benign from three
standardised features plus an intercept, d = 4), split into two halves:

1. NUTS on half A with a weak Gaussian prior gives posterior *samples* -- all we keep of half A.
   (Steps 1 and 3 share one NUTS run: two independent fits under an observation mask.)
2. Those samples become the prior for half B through ``EmpiricalDistribution(samples_A)``
   (log-density and score from a disco-score oracle), sampled with NUTS in NumPyro and in Pyro.
3. The reference: NUTS on all the data at once with the original Gaussian prior.

If the oracle is a good density, step 2 reproduces step 3 (up to Monte-Carlo error). The script
prints, per coefficient, the sequential posterior's mean error in reference-posterior sds and its
sd ratio, and saves ``docs/images/bayesian_updating.png`` (marginals of all four posteriors).

Run: ``python examples/bayesian_updating.py [--estimator kde|default]``. ``kde`` (Scott's rule) is
the default because it is fast; ``default`` is the package's default estimator (the pretrained
DiScoFormer once shipped), about 15 ms of CPU per oracle call, so a few minutes here.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
from numpyro.diagnostics import effective_sample_size  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as pdist  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

from disco_score import KDE  # noqa: E402
from disco_score.base import Estimator  # noqa: E402
from disco_score.defaults import default_estimator  # noqa: E402
from disco_score.integrations import numpyro as disco_numpyro  # noqa: E402
from disco_score.integrations import pyro as disco_pyro  # noqa: E402

logger = logging.getLogger("bayesian_updating")

FEATURES = ("mean radius", "mean texture", "mean smoothness")
NAMES = ("intercept",) + FEATURES
PRIOR_SD = 2.5  # weakly informative prior on standardised-logit coefficients
OUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "bayesian_updating.png"


def load_halves(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Design matrices (intercept + standardised features, float32) and labels for two halves."""
    data = load_breast_cancer()
    columns = [list(data.feature_names).index(name) for name in FEATURES]
    x = data.data[:, columns]
    x = (x - x.mean(0)) / x.std(0)
    design = np.column_stack([np.ones(len(x)), x]).astype(np.float32)
    labels = data.target.astype(np.float32)  # 1 = benign
    order = np.random.default_rng(seed).permutation(len(labels))
    a, b = order[: len(order) // 2], order[len(order) // 2:]
    return (design[a], labels[a]), (design[b], labels[b])


# -- NumPyro ---------------------------------------------------------------------------------------
def numpyro_model(x, y, prior):
    w = numpyro.sample("w", prior)
    numpyro.sample("y", ndist.Bernoulli(logits=x @ w), obs=y)


def numpyro_masked_fits_model(x, y, prior, masks):
    """K independent fits in one NUTS run: fit k sees the rows where ``masks[k]`` (K, N) is True.
    On this small model JAX's compilation costs more than the sampling, so one run beats K."""
    with numpyro.plate("fits", masks.shape[0]):
        w = numpyro.sample("w", prior)  # (K, d)
    with numpyro.handlers.mask(mask=masks):
        numpyro.sample("y", ndist.Bernoulli(logits=w @ x.T), obs=y)  # (K, N)


def numpyro_nuts(model, *args, seed: int, chains: int = 4, warmup: int = 150, draws: int = 300
                 ) -> np.ndarray:
    """Posterior draws of the logistic weights: (chains * draws, d), or (chains * draws, K, d)."""
    kernel = numpyro.infer.NUTS(model, init_strategy=numpyro.infer.init_to_median)
    mcmc = numpyro.infer.MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains,
                              chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), *args)
    return np.asarray(mcmc.get_samples()["w"], dtype=np.float64)


# -- Pyro ---------------------------------------------------------------------------------------
def pyro_model(x, y, prior):
    w = pyro.sample("w", prior)
    pyro.sample("y", pdist.Bernoulli(logits=x @ w), obs=y)


def pyro_nuts(x, y, prior, seed: int, warmup: int = 100, draws: int = 300) -> np.ndarray:
    pyro.set_rng_seed(seed)
    kernel = pyro.infer.NUTS(pyro_model, init_strategy=pyro.infer.autoguide.init_to_median)
    mcmc = pyro.infer.MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=False)
    mcmc.run(torch.as_tensor(x), torch.as_tensor(y), prior)
    return mcmc.get_samples()["w"].double().numpy()


def compare(name: str, draws: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Mean error in reference sds and sd ratio, per coefficient, logged as a table row with the
    Monte-Carlo standard error of that mean error (both runs are finite MCMC samples)."""
    ref_mean, ref_sd = reference.mean(0), reference.std(0)
    mean_err = (draws.mean(0) - ref_mean) / ref_sd
    sd_ratio = draws.std(0) / ref_sd
    # ESS of the concatenated chains, treated as one chain: a slight overestimate of the error
    ess = [effective_sample_size(np.asarray(x)[None]) for x in (draws, reference)]
    mc_se = np.sqrt(1.0 / ess[0] + 1.0 / ess[1])
    logger.info("%-16s mean error / sd: %s (MC s.e. %s)   sd ratio: %s", name,
                np.array2string(mean_err, precision=3, suppress_small=True),
                np.array2string(mc_se, precision=3), np.array2string(sd_ratio, precision=3))
    return {"mean_err": mean_err, "mc_se": mc_se, "sd_ratio": sd_ratio}


def plot(posteriors: dict[str, np.ndarray], path: Path) -> None:
    d = next(iter(posteriors.values())).shape[1]
    fig, axes = plt.subplots(1, d, figsize=(3.4 * d, 3.2))
    styles = {"prior = posterior(half A)": dict(color="0.6", lw=1.5),
              "all data at once": dict(color="k", lw=2.2),
              "NumPyro: A samples -> B": dict(color="tab:blue", lw=1.5, ls="--"),
              "Pyro: A samples -> B": dict(color="tab:orange", lw=1.5, ls=":")}
    for j, ax in enumerate(axes):
        values = np.concatenate([p[:, j] for p in posteriors.values()])
        bins = np.linspace(*np.percentile(values, [0.2, 99.8]), 40)
        for label, draws in posteriors.items():
            ax.hist(draws[:, j], bins=bins, density=True, histtype="step", label=label, **styles[label])
        ax.set_title(NAMES[j], fontsize=10)
        ax.set_yticks([])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Logistic regression, breast-cancer data: updating with a sample-based prior", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(estimator_name: str = "kde", out: Path = OUT) -> dict[str, dict[str, np.ndarray]]:
    start = time.process_time()
    estimator: Estimator = KDE("scott") if estimator_name == "kde" else default_estimator()
    logger.info("estimator for the sample-based prior: %r", estimator)
    (xa, ya), (xb, yb) = load_halves()
    d = xa.shape[1]
    gaussian = ndist.Normal(jnp.zeros(d), PRIOR_SD).to_event(1)

    x_all, y_all = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    masks = np.stack([np.arange(len(y_all)) < len(ya), np.ones(len(y_all), dtype=bool)])  # half A; all
    both = numpyro_nuts(numpyro_masked_fits_model, jnp.asarray(x_all), jnp.asarray(y_all), gaussian,
                        jnp.asarray(masks), seed=0)
    samples_a, reference = both[:, 0], both[:, 1]
    sequential_numpyro = numpyro_nuts(numpyro_model, jnp.asarray(xb), jnp.asarray(yb),
                                      disco_numpyro.EmpiricalDistribution(samples_a, estimator), seed=2)
    sequential_pyro = pyro_nuts(xb, yb, disco_pyro.EmpiricalDistribution(samples_a, estimator), seed=3)

    results = {"NumPyro": compare("NumPyro A -> B", sequential_numpyro, reference),
               "Pyro": compare("Pyro A -> B", sequential_pyro, reference),
               "half A only": compare("(half A alone)", samples_a, reference)}
    plot({"prior = posterior(half A)": samples_a, "all data at once": reference,
          "NumPyro: A samples -> B": sequential_numpyro, "Pyro: A samples -> B": sequential_pyro}, out)
    logger.info("saved %s (%.0f s of CPU)", out, time.process_time() - start)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", choices=("kde", "default"), default="kde",
                        help="density of the sample-based prior: Scott KDE or the package default")
    parser.add_argument("--out", type=Path, default=OUT, help="where to save the figure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(args.estimator, args.out)
