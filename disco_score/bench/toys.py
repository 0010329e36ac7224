"""W1 data: the classic 2-D toy sets of the score-based-modelling literature, drawn reproducibly.

Every toy set is a function ``f(n, rng) -> (n, 2) float64`` that draws ``n`` i.i.d. points with the
``numpy.random.Generator`` it is given and nothing else (the common reference implementation, FFJORD's
``toy_data.py``, draws two of them from numpy's global state; these do not). The shapes, scales and
noise levels follow that reference; where it differs the docstring says so. One difference applies to
all the multi-part sets (pinwheel, spirals, moons, circles, the added rings): the reference gives every
part exactly ``n // parts`` points, which is stratified sampling and loses points when ``n`` is not a
multiple; here each point's part is drawn i.i.d. (equal probabilities), so the draws are i.i.d. from
the stated density and a held-out log-likelihood is an unbiased estimate of the cross-entropy.

* :data:`TOY_SETS` maps display names to the functions; :func:`draw_toy` draws one by name and seed.
* :func:`exact_toy_target` gives the exact density where one is known in closed form: the 8 gaussians
  and tight rings (Gaussian mixtures), the checkerboard (uniform on 8 squares) and the heavy-tailed
  blob (bivariate Student-t).

Definitions: ``docs/benchmark-protocol.md`` (W1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_int
from ..targets import GaussianMixture, Target

__all__ = [
    "eight_gaussians", "pinwheel", "two_spirals", "checkerboard", "two_moons", "circles", "swiss_roll",
    "tight_rings", "heavy_tailed_blob", "TOY_SETS", "draw_toy", "exact_toy_target", "toy_names",
    "CheckerboardTarget", "StudentT2D",
]

ToySampler = Callable[[int, np.random.Generator], np.ndarray]

# -- the fixed parameters (module constants so the exact targets cannot drift from the samplers) ----
#: 8 gaussians: FFJORD puts centres at radius 4 and sd 0.5 then divides by 1.414; we divide by sqrt(2).
EIGHT_GAUSSIANS_RADIUS = 4.0 / math.sqrt(2.0)  # 2.828...
EIGHT_GAUSSIANS_SD = 0.5 / math.sqrt(2.0)  # 0.354...
#: tight rings: 6 components on radius 1.5 and 12 on radius 3.5, all with sd 0.12 and weight 1/18.
TIGHT_RINGS_RADII = (1.5, 3.5)
TIGHT_RINGS_COUNTS = (6, 12)
TIGHT_RINGS_SD = 0.12
#: heavy-tailed blob: bivariate Student-t, nu = 2.5 (finite variance, infinite fourth moment).
BLOB_DF = 2.5
BLOB_LOC = (0.0, 0.0)
BLOB_SCALE = ((1.0, 0.6), (0.6, 0.8))
#: checkerboard: uniform on the 8 "black" 2x2 squares of [-4, 4]^2, density 1/32 there.
CHECKERBOARD_HALF_WIDTH = 4.0


def _n(n: int) -> int:
    return check_int(n, "n")


def _check_rng(rng: np.random.Generator) -> np.random.Generator:
    # A RandomState or None would silently fall back on other state; the protocol asks for a Generator.
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


# -- the classic seven --------------------------------------------------------------------------------
def _eight_gaussians_means() -> np.ndarray:
    angles = np.arange(8) * (np.pi / 4)
    return EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """8 gaussians: an equal-weight mixture of 8 isotropic Gaussians with centres evenly spaced on a
    circle of radius ``2 sqrt(2) = 2.828`` (angles 0, 45, ..., 315 degrees) and sd ``sqrt(2)/4 = 0.354``.

    This is FFJORD's set (radius 4, sd 0.5, the whole divided by 1.414) with the divisor exactly
    ``sqrt(2)``. Its exact density is :func:`exact_toy_target` ``("8 gaussians")``.
    """
    n, rng = _n(n), _check_rng(rng)
    comp = rng.integers(0, 8, size=n)
    return _eight_gaussians_means()[comp] + EIGHT_GAUSSIANS_SD * rng.standard_normal((n, 2))


def pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pinwheel: 5 curved arms. Per point an arm ``k`` (uniform), a radial coordinate ``r ~ N(1, 0.3^2)``
    and a tangential one ``t ~ N(0, 0.1^2)``; the point ``(r, t)`` is rotated by ``-(2 pi k / 5 +
    0.25 exp(r))`` and scaled by 2 (FFJORD's rate 0.25, radial sd 0.3, tangential sd 0.1)."""
    n, rng = _n(n), _check_rng(rng)
    arm = rng.integers(0, 5, size=n)
    feat = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    feat[:, 0] += 1.0
    angle = 2 * np.pi * arm / 5 + 0.25 * np.exp(feat[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    # The reference's einsum("ti,tij->tj", f, [[c, -s], [s, c]]): a rotation by -angle.
    out = np.stack([feat[:, 0] * c + feat[:, 1] * s, -feat[:, 0] * s + feat[:, 1] * c], axis=1)
    return 2.0 * out


def two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """2 spirals: arc parameter ``u = sqrt(U) * 3 pi`` (540 degrees), the point ``(-u cos u + 0.5 U1,
    u sin u + 0.5 U2)`` (U, U1, U2 uniform on [0, 1)), negated for the second spiral (chosen with
    probability 1/2), divided by 3, plus ``N(0, 0.1^2)`` noise per coordinate (FFJORD's set)."""
    n, rng = _n(n), _check_rng(rng)
    u = np.sqrt(rng.random(n)) * 3 * np.pi
    x = np.stack([-np.cos(u) * u + 0.5 * rng.random(n), np.sin(u) * u + 0.5 * rng.random(n)], axis=1)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return sign[:, None] * x / 3.0 + 0.1 * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Checkerboard: uniform on the 8 squares of side 2 in ``[-4, 4]^2`` where ``floor(x/2) +
    floor(y/2)`` is even (density 1/32 there, 0 elsewhere; FFJORD's set). Exact density:
    :class:`CheckerboardTarget`."""
    n, rng = _n(n), _check_rng(rng)
    x1 = 4 * rng.random(n) - 2
    x2 = rng.random(n) - 2 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


def two_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two moons: scikit-learn's ``make_moons(noise=0.1)`` scaled by 2 and shifted by (-1, -0.2) (FFJORD's
    set): an arc ``(cos a, sin a)`` or ``(1 - cos a, 0.5 - sin a)`` (each with probability 1/2),
    ``a ~ U[0, pi]`` i.i.d. (make_moons spaces the angles evenly), plus ``N(0, 0.1^2)`` noise, then
    ``2 x + (-1, -0.2)``; the final noise sd is 0.2."""
    n, rng = _n(n), _check_rng(rng)
    a = np.pi * rng.random(n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(a), 1 - np.cos(a))
    y = np.where(upper, np.sin(a), 0.5 - np.sin(a))
    pts = np.stack([x, y], axis=1) + 0.1 * rng.standard_normal((n, 2))
    return 2.0 * pts + np.array([-1.0, -0.2])


def circles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Concentric circles: scikit-learn's ``make_circles(factor=0.5, noise=0.08)`` scaled by 3 (FFJORD's
    set): radius 3 or 1.5 (each with probability 1/2), angle uniform i.i.d. (make_circles spaces them
    evenly), plus ``N(0, 0.24^2)`` noise per coordinate."""
    n, rng = _n(n), _check_rng(rng)
    a = 2 * np.pi * rng.random(n)
    radius = np.where(rng.random(n) < 0.5, 3.0, 1.5)
    return radius[:, None] * np.stack([np.cos(a), np.sin(a)], axis=1) + 0.24 * rng.standard_normal((n, 2))


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    """Swiss roll, 2-D projection: scikit-learn's ``make_swiss_roll(noise=1.0)`` keeping coordinates
    (x, z) and dividing by 5 (FFJORD's set): ``t = 1.5 pi (1 + 2 U)``, the point ``(t cos t, t sin t) / 5``
    plus ``N(0, 0.2^2)`` noise per coordinate."""
    n, rng = _n(n), _check_rng(rng)
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    return (np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))) / 5.0


# -- two more, not in the classic list -----------------------------------------------------------------
def _tight_rings_means() -> np.ndarray:
    rings = []
    for i, (radius, count) in enumerate(zip(TIGHT_RINGS_RADII, TIGHT_RINGS_COUNTS)):
        # Offset alternate rings by half a step so no inner and outer centres line up radially.
        angles = 2 * np.pi * (np.arange(count) + 0.5 * i) / count
        rings.append(radius * np.stack([np.cos(angles), np.sin(angles)], axis=1))
    return np.concatenate(rings)


def tight_rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Tight rings (added): an equal-weight mixture of 18 isotropic Gaussians with sd 0.12 (about 2 % of
    the overall spread), 6 centred evenly on a circle of radius 1.5 and 12 on radius 3.5 (the outer ring
    rotated half a step). Many small modes with empty space between them; exact density:
    :func:`exact_toy_target` ``("tight rings")``."""
    n, rng = _n(n), _check_rng(rng)
    means = _tight_rings_means()
    comp = rng.integers(0, len(means), size=n)
    return means[comp] + TIGHT_RINGS_SD * rng.standard_normal((n, 2))


def heavy_tailed_blob(n: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed blob (added): a bivariate Student-t with ``nu = 2.5`` degrees of freedom, location 0
    and scale matrix ``[[1, 0.6], [0.6, 0.8]]`` (correlated; finite variance, infinite fourth moment, so
    a few draws land far out). Drawn as ``L z / sqrt(g / nu)``, ``z ~ N(0, I)``, ``g ~ chi2(nu)``;
    exact density :class:`StudentT2D`."""
    n, rng = _n(n), _check_rng(rng)
    chol = np.linalg.cholesky(np.array(BLOB_SCALE))
    z = rng.standard_normal((n, 2)) @ chol.T
    g = rng.chisquare(BLOB_DF, size=n)
    return np.array(BLOB_LOC) + z / np.sqrt(g / BLOB_DF)[:, None]


#: display name -> sampler ``f(n, rng) -> (n, 2) float64``; the order is the report's order.
TOY_SETS: dict[str, ToySampler] = {
    "8 gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "2 spirals": two_spirals,
    "checkerboard": checkerboard,
    "two moons": two_moons,
    "circles": circles,
    "swiss roll": swiss_roll,
    "tight rings": tight_rings,
    "heavy-tailed blob": heavy_tailed_blob,
}


def toy_names() -> list[str]:
    """The display names of :data:`TOY_SETS`, in order."""
    return list(TOY_SETS)


def _resolve(name: str) -> str:
    """Display name for a display name or a function name (``"8 gaussians"`` or ``"eight_gaussians"``)."""
    if name in TOY_SETS:
        return name
    for display, fn in TOY_SETS.items():
        if name == fn.__name__:
            return display
    raise KeyError(f"unknown toy set {name!r}; known: {', '.join(TOY_SETS)}")


def draw_toy(name: str, n: int, seed: int) -> np.ndarray:
    """(n, 2) float64 draws of the toy set ``name`` (display or function name) from
    ``np.random.default_rng(seed)``: the same seed gives the same points on any machine."""
    return TOY_SETS[_resolve(name)](n, np.random.default_rng(seed))


# -- exact densities -----------------------------------------------------------------------------------
class CheckerboardTarget(Target):
    """The checkerboard's exact density: ``1/32`` on the 8 squares of :func:`checkerboard`, 0 elsewhere.

    The log-density is ``-log 32`` on the support and ``-inf`` off it; the score is 0 (off the square
    edges), so relative score MSE against it is undefined; use it for the log-likelihood reference.
    """

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dim, self.batch_shape, self.compute_dtype, self.device = 2, (), dtype, torch.device("cpu")
        self._freeze()

    def _inside(self, x: torch.Tensor) -> torch.Tensor:
        half = CHECKERBOARD_HALF_WIDTH
        cell = torch.floor(x / 2)
        in_box = ((x >= -half) & (x < half)).all(-1)
        return in_box & (torch.remainder(cell.sum(-1), 2) == 0)

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 2) -> (...): ``-log 32`` inside the black squares, ``-inf`` outside."""
        x = x.to(self.compute_dtype)
        inside = self._inside(x)
        value = torch.full(inside.shape, -math.log(32.0), dtype=self.compute_dtype, device=x.device)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 2) -> (..., 2): zeros (the density is flat where it is positive)."""
        return torch.zeros_like(x, dtype=self.compute_dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2) i.i.d. draws, the same construction as :func:`checkerboard` on torch's generator."""
        n = check_int(n, "n")
        u = torch.rand(n, 3, generator=generator, dtype=self.compute_dtype)
        x1 = 4 * u[:, 0] - 2
        x2 = u[:, 1] - 2 * (u[:, 2] < 0.5).to(self.compute_dtype) + torch.remainder(torch.floor(x1), 2)
        return 2.0 * torch.stack([x1, x2], dim=1)


class StudentT2D(Target):
    """A bivariate Student-t: ``log p(x) = log G((nu+2)/2) - log G(nu/2) - log(nu pi) - log|S|/2
    - (nu+2)/2 log(1 + delta/nu)``, ``delta = (x - loc)^T S^-1 (x - loc)``."""

    def __init__(self, df: float = BLOB_DF, loc: tuple[float, float] = BLOB_LOC,
                 scale: tuple[tuple[float, float], ...] = BLOB_SCALE, dtype: torch.dtype = torch.float64) -> None:
        self.dim, self.batch_shape, self.compute_dtype, self.device = 2, (), dtype, torch.device("cpu")
        self.df = float(df)
        self.loc = torch.tensor(loc, dtype=dtype)
        self.scale_matrix = torch.tensor(scale, dtype=dtype)
        self._chol = torch.linalg.cholesky(self.scale_matrix)
        p = 2
        self._const = (math.lgamma((self.df + p) / 2) - math.lgamma(self.df / 2)
                       - 0.5 * p * math.log(self.df * math.pi)
                       - float(torch.log(torch.diagonal(self._chol)).sum()))
        self._freeze()

    def _delta(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        diff = x.to(self.compute_dtype) - self.loc
        prec_diff = torch.cholesky_solve(diff.reshape(-1, 2).T, self._chol).T.reshape(diff.shape)
        return (diff * prec_diff).sum(-1), prec_diff

    def log_prob_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 2) -> (...) exact log-density (nats)."""
        delta, _ = self._delta(x)
        return self._const - 0.5 * (self.df + 2) * torch.log1p(delta / self.df)

    def score_t(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 2) -> (..., 2) exact score ``-(nu + 2) S^-1 (x - loc) / (nu + delta)``."""
        delta, prec_diff = self._delta(x)
        return -(self.df + 2) * prec_diff / (self.df + delta)[..., None]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2) i.i.d. draws ``loc + L z / sqrt(g / nu)``; torch's chi-square takes no generator, so it
        runs on a fork of the global RNG seeded from ``generator`` (reproducible from it alone)."""
        n = check_int(n, "n")
        z = torch.randn(n, 2, generator=generator, dtype=self.compute_dtype) @ self._chol.T
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            g = torch.distributions.Chi2(torch.tensor(self.df, dtype=self.compute_dtype)).sample((n,))
        return self.loc + z / torch.sqrt(g / self.df)[:, None]


def _isotropic_gmm(means: np.ndarray, sd: float) -> GaussianMixture:
    k = len(means)
    mu = torch.tensor(means, dtype=torch.float64)
    cov = (sd ** 2) * torch.eye(2, dtype=torch.float64).expand(k, 2, 2).clone()
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), mu, cov)


def exact_toy_target(name: str) -> Target | None:
    """The exact density of toy set ``name`` as a :class:`~disco_score.targets.Target`, or None where
    none is known in closed form (pinwheel, spirals, moons, circles, swiss roll: Gaussian noise around a
    curve, whose density needs quadrature).

    * ``"8 gaussians"``, ``"tight rings"``: :class:`~disco_score.targets.GaussianMixture` (float64);
    * ``"checkerboard"``: :class:`CheckerboardTarget` (score identically 0: log-likelihood use only);
    * ``"heavy-tailed blob"``: :class:`StudentT2D`.
    """
    display = _resolve(name)
    if display == "8 gaussians":
        return _isotropic_gmm(_eight_gaussians_means(), EIGHT_GAUSSIANS_SD)
    if display == "tight rings":
        return _isotropic_gmm(_tight_rings_means(), TIGHT_RINGS_SD)
    if display == "checkerboard":
        return CheckerboardTarget()
    if display == "heavy-tailed blob":
        return StudentT2D()
    return None
