"""A fixed-size Gaussian mixture distilled from a fitted oracle: the sampler's fast path.

A sampler asks for the score thousands of times. The network's answer costs an attention over
every sample per query; a mixture of K components costs ``m K d r`` per step whatever ``n``, and
its convolution with ``N(0, sigma^2 I)`` is again such a mixture, so one summary serves every noise
level of an annealed sampler exactly. Fitted to the samples alone (k-means, EM), such a mixture
is far worse than the network: over-split components put spurious curvature into the score
(docs/experiments.md, "A K-component mixture summary with no network"). So :func:`distil` starts
from EM and then fits the mixture to the *teacher's* scores and log-densities at the samples and
at jittered copies of them (score matching against the teacher; no labels), which removes the
spurious curvature (docs/experiments.md, "Distilling the network into a fixed-size mixture").

Components are ``N(mu_k, s_k^2 I + U_k U_k^T)`` in whitened coordinates, ``U_k`` of rank
``r = min(d, rank)``. A convolution adds ``sigma^2 W W^T`` there (``W`` the whitening matrix), so
the oracle evaluates components of the form ``diag(D_k) + V_k V_k^T`` in the eigenbasis of
``W W^T`` (Woodbury: O(d r) per query and component).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch

from ._checks import ArrayLike, as_samples, check_int, check_positive
from .base import Oracle, with_autograd
from .gaussian_mixture import em
from .whitening import Whitening, scott_factor

logger = logging.getLogger(__name__)

#: the (queries x components x d) work tensors of one evaluation hold at most this many entries
_CHUNK_ENTRIES = 1 << 22
#: a summary further than this from its teacher (held-out relative score MSE) is reported as a warning
GAP_WARNING = 0.2
#: distillation steps between checks of the held-out gap
EVAL_EVERY = 20


@dataclass(frozen=True)
class SummaryConfig:
    """How :func:`distil` builds the summary; validated on construction.

    Attributes:
        components: at most this many mixture components; fewer where the set is small, so that each
            has at least ``max(16, 2 d)`` samples to start from; every halving of that down to 1
            is tried too, and the size with the lowest held-out gap to the teacher kept.
        rank: rank of each component's covariance beyond its isotropic part (capped at ``d``).
        em_steps: EM steps from the k-means start (on at most ``em_points`` samples).
        em_points: samples used for k-means and EM.
        points: samples at which the teacher is queried, each also at two jittered copies (on the
            scale of its own EM component) — ``3 points`` teacher queries in all.
        steps: Adam steps of the distillation (0: the widened EM fit alone), ``batch`` points each, learning rate ``lr``
            (cosine-decayed; parameters are in units of each component's own scale).
        trial_steps: every size is distilled this many steps; only the one with the lowest held-out
            gap then goes on to ``steps`` (successive halving; ``trial_steps >= steps`` fits every
            size in full).
        log_density_weight: weight of the log-density term (variance of the gap to the teacher's
            log-density, which pins the components' relative weights) beside the relative score error.
        jitter: the jittered copies' noise, in multiples of each point's component's isotropic scale.
        held_out: samples kept out of the fit (at most a quarter of them): the teacher's scores there
            pick the distillation step to keep and give :attr:`MixtureSummary.teacher_gap`.
        teacher_samples: where :meth:`DiScoFormer.fit <disco_score.discoformer.DiScoFormer.fit>`
            builds the summary, the network it distils is fitted on at most this many of the samples
            (evenly spaced in their order; its encoder's cost is quadratic in n); EM sees them all.
        seed: seeds the k-means start, the subsets and the jitter (the summary is a deterministic
            function of the samples, the teacher and the seed).
    """

    components: int = 64
    rank: int = 16
    em_steps: int = 8
    em_points: int = 4096
    points: int = 1024
    steps: int = 150
    trial_steps: int = 50
    batch: int = 512
    lr: float = 0.05
    log_density_weight: float = 0.05
    jitter: tuple[float, ...] = (0.5, 1.5)
    held_out: int = 256
    teacher_samples: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("components", "rank", "em_points", "points", "batch", "held_out", "teacher_samples"):
            check_int(getattr(self, name), name)
        check_int(self.em_steps, "em_steps", minimum=0)
        check_int(self.steps, "steps", minimum=0)
        check_int(self.trial_steps, "trial_steps", minimum=0)
        check_positive(self.lr, "lr")
        check_positive(self.log_density_weight, "log_density_weight", allow_zero=True)
        check_int(self.seed, "seed", minimum=0)


def _mixture_terms(y: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor, factors: torch.Tensor,
                   diag: torch.Tensor, want_score: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-density (m,), score (m, d) or None, and the per-component log-terms (m, K) of the mixture
    of ``N(means_k, diag(diag_k) + factors_k factors_k^T)`` at ``y`` (m, d); diag (K, d) or (K, 1).
    Component-major throughout (batched matrix products over K, no permuted copies)."""
    d, r = y.shape[1], factors.shape[-1]
    delta = y[None] - means[:, None]  # (K, m, d)
    delta_d = delta / diag[:, None, :]
    scaled = factors / diag[:, :, None]  # D^-1 V
    inner = torch.eye(r, dtype=y.dtype, device=y.device) + factors.transpose(1, 2) @ scaled  # I + V^T D^-1 V
    chol = torch.linalg.cholesky(inner)
    proj = delta @ scaled  # (K, m, r): V^T D^-1 delta
    solved = torch.cholesky_solve(proj.transpose(1, 2), chol).transpose(1, 2)
    quad = (delta * delta_d).sum(-1) - (proj * solved).sum(-1)  # (K, m)
    log_det = torch.log(diag).expand(-1, d).sum(-1) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    terms = (log_weights - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi))[:, None] - 0.5 * quad
    log_p = torch.logsumexp(terms, 0)
    if not want_score:
        return log_p, None, terms.T
    prec_delta = delta_d - solved @ scaled.transpose(1, 2)  # C^-1 delta (Woodbury)
    score = -(torch.softmax(terms, 0)[..., None] * prec_delta).sum(0)
    return log_p, score, terms.T


class _Distilled(torch.nn.Module):
    """The mixture being distilled from its EM start. Only relative changes are learned, each in the
    component's own metric: a log-scale for its isotropic part and one per principal direction, a
    mean shift in units of its own covariance's square root, and its weight — so that one Adam step
    size moves a thin component as little, relative to its thin directions, as a broad one (absolute
    parameters make Adam throw thin components apart: docs/experiments.md, "Distilling the network
    into a fixed-size mixture")."""

    #: every scale may shrink to this fraction of its start, and grow to this multiple
    SCALE_RANGE = (0.2, 20.0)

    def __init__(self, counts: torch.Tensor, means: torch.Tensor, cov: torch.Tensor, n: int, rank: int) -> None:
        super().__init__()
        d = means.shape[1]
        r = min(rank, d)
        # widened by a quarter of Scott's factor squared for each component's size, in proportion
        # (the EM fit alone is too narrow; an isotropic widening would blur thin components)
        widen = 1 + torch.tensor([0.25 * scott_factor(max(2, int(c)), d) ** 2 for c in counts.tolist()],
                                 dtype=means.dtype, device=means.device)
        evals, evecs = torch.linalg.eigh(cov * widen[:, None, None])  # ascending
        # the isotropic part: beyond the top r directions, the harmonic mean of the remaining
        # variances (it keeps the mean squared score, which the thin directions dominate)
        rest = 1 / (1 / evals[:, :-r]).mean(-1) if r < d else 0.5 * evals[:, 0]
        top = evals[:, -r:].clamp_min(rest[:, None])
        self.register_buffer("mu0", means)
        self.register_buffer("basis", evecs[:, :, -r:])  # (K, d, r) principal directions
        self.register_buffer("top_sd", top.sqrt())  # (K, r)
        self.register_buffer("log_s0", 0.5 * torch.log(rest))
        self.register_buffer("log_extra0", 0.5 * torch.log((top - rest[:, None]).clamp_min(1e-30)))
        self.logit = torch.nn.Parameter(torch.log(counts / n))
        self.shift = torch.nn.Parameter(torch.zeros_like(means))
        self.log_s_rel = torch.nn.Parameter(torch.zeros_like(rest))
        self.log_extra_rel = torch.nn.Parameter(torch.zeros_like(top))

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-weights (K,), means (K, d), factors (K, d, r), isotropic variances (K, 1))."""
        lo, hi = math.log(self.SCALE_RANGE[0]), math.log(self.SCALE_RANGE[1])
        log_s = self.log_s0 + self.log_s_rel.clamp(lo, hi)
        extra = torch.exp(self.log_extra0 + self.log_extra_rel.clamp(lo, hi))
        # shift by C0^(1/2) a: sqrt of each principal variance along its direction, s0 across
        s0 = torch.exp(self.log_s0)[:, None]
        along = torch.einsum("kdr,kd->kr", self.basis, self.shift)
        shift = s0 * self.shift + torch.einsum("kdr,kr->kd", self.basis, (self.top_sd - s0) * along)
        return (torch.log_softmax(self.logit, 0), self.mu0 + shift, self.basis * extra[:, None, :],
                torch.exp(2 * log_s)[:, None])

    def forward(self, z: torch.Tensor, want_score: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        return _mixture_terms(z, *self.parts(), want_score=want_score)


@dataclass
class _Targets:
    """The teacher's answers the mixture is fitted to, in float32: scores in the data's coordinates
    (the benchmark's metric, and the one a sampler moves in — whitened ones would weight an
    anisotropic set's errors quite differently) at whitened points, log-densities on the first
    ``n_samples`` of them (off the samples the gaps run to hundreds of nats), and held-out samples."""

    points: torch.Tensor
    score: torch.Tensor
    log_p: torch.Tensor
    n_samples: int
    held: torch.Tensor
    held_score: torch.Tensor
    to_data: torch.Tensor


def _teacher_targets(teacher: Oracle, z: torch.Tensor, whitening: Whitening, start: "_Distilled",
                     config: SummaryConfig, gen: torch.Generator) -> _Targets:
    n = z.shape[0]
    order = torch.randperm(n, generator=gen).to(z.device)
    n_held = max(1, min(config.held_out, n // 4))
    base, held = z[order[n_held:n_held + min(n - n_held, config.points)]], z[order[:n_held]]
    with torch.no_grad():  # jitter on each point's own component's scale
        _, _, terms = _chunked(start, base.float(), want_score=False)
        scale = torch.exp(start.log_s0)[terms.argmax(1)][:, None]
    noise = torch.randn((len(config.jitter),) + tuple(base.shape), generator=gen, dtype=z.dtype).to(z.device)
    pts = torch.cat([base] + [base + c * scale * e for c, e in zip(config.jitter, noise)] + [held])
    log_p, score = teacher.log_density_and_score(whitening.backward(pts).to(teacher.compute_dtype), normalized=False)
    if not (torch.isfinite(score).all() and torch.isfinite(log_p).all()):
        raise ValueError("the teacher returned non-finite scores or log-densities at the samples; "
                         "it cannot be distilled")
    f32 = torch.float32
    log_p = (log_p.to(torch.float64) - whitening.log_det).to(f32)
    return _Targets(pts[:-n_held].to(f32), score[:-n_held].to(f32), log_p[:base.shape[0]], base.shape[0],
                    held.to(f32), score[-n_held:].to(f32), whitening.matrix.to(f32))


def _held_gap(model: "_Distilled", targets: _Targets) -> float:
    """Relative score MSE between the mixture and the teacher at the held-out samples."""
    with torch.no_grad():
        _, score, _ = _chunked(model, targets.held, want_score=True)
        truth = targets.held_score
        return float(((score @ targets.to_data - truth) ** 2).sum() / (truth ** 2).sum().clamp_min(1e-30))


class _Distillation:
    """Adam on the relative score error and the log-density gap, keeping the state with the lowest
    held-out gap (the EM start included): fitted too long, the mixture bends to the fitted points
    (docs/experiments.md, "Distilling the network into a fixed-size mixture"). Resumable, so that
    :func:`distil` can stop the sizes that trail after ``trial_steps``."""

    def __init__(self, model: "_Distilled", targets: _Targets, config: SummaryConfig) -> None:
        self.model, self.targets, self.config, self.step = model, targets, config, 0
        self.norm = (targets.score ** 2).sum(-1).mean().clamp_min(1e-30)
        self.opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(1, config.steps))
        self.best_gap, self.best_state = _held_gap(model, targets), copy.deepcopy(model.state_dict())

    def advance(self, until: int, gen: torch.Generator) -> None:
        """Adam steps up to step ``until`` (at most ``config.steps``)."""
        model, targets, config = self.model, self.targets, self.config
        pts = targets.points
        batch = min(config.batch, pts.shape[0])
        until = min(until, config.steps)
        while self.step < until:
            self.step += 1
            idx = torch.randint(pts.shape[0], (batch,), generator=gen).to(pts.device)
            log_p, score, _ = model(pts[idx])
            loss = ((score @ targets.to_data - targets.score[idx]) ** 2).sum(-1).mean() / self.norm
            on_samples = idx < targets.n_samples
            if config.log_density_weight > 0 and int(on_samples.sum()) > 1:
                loss = loss + config.log_density_weight * (log_p[on_samples] - targets.log_p[idx[on_samples]]).var()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.schedule.step()
            if self.step % EVAL_EVERY == 0 or self.step == until:
                gap = _held_gap(model, targets)
                if gap < self.best_gap:
                    self.best_gap, self.best_state = gap, copy.deepcopy(model.state_dict())

    def best(self) -> "_Distilled":
        self.model.load_state_dict(self.best_state)
        return self.model


def component_counts(n: int, d: int, config: SummaryConfig) -> list[int]:
    """The mixture sizes :func:`distil` tries: at most ``config.components``, and at most one per
    ``max(16, 2 d)`` samples; then every halving of that down to 1 (cheap under successive
    halving; docs/experiments.md, "A ladder of sizes")."""
    top = max(1, min(config.components, n // max(16, 2 * d)))
    return sorted({max(1, top >> i) for i in range(top.bit_length())}, reverse=True)


def teacher_subset(x: torch.Tensor, config: SummaryConfig) -> torch.Tensor:
    """The samples the distilled network is fitted on: all of ``x`` (n, d), or ``config.teacher_samples``
    of them evenly spaced in their order (the network's encoder is quadratic in n; EM sees them all)."""
    if x.shape[0] <= config.teacher_samples:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, config.teacher_samples, device=x.device).round().long()]


@with_autograd
def distil(teacher: Oracle, samples: ArrayLike, config: SummaryConfig | None = None) -> "MixtureSummary":
    """A :class:`MixtureSummary` of ``teacher`` (any fitted oracle, usually a DiScoFormer fit on
    ``samples``), built from ``samples`` (n, d) and the teacher's answers near them.

    Steps: whiten the samples; for each size of :func:`component_counts`, EM from k-means; query
    the teacher at ``config.points`` samples, at jittered copies of each (on the scale of its own
    component) and at ``config.held_out`` held-out samples; fit each mixture to the teacher's
    scores and log-densities by Adam, every size for ``config.trial_steps``, then the one closest
    to the teacher on to ``config.steps``; keep the step with the lowest held-out gap to the
    teacher (relative score MSE, :attr:`MixtureSummary.teacher_gap`). No labels: over-split
    components show as curvature the teacher does not have, too few as missing structure.

    Raises:
        TypeError: if ``teacher`` is not an Oracle, or ``config`` not a SummaryConfig.
        ValueError: for invalid samples (as in ``fit``), samples of another dimension than the
            teacher's, or a teacher answering NaN or infinity at them.
    """
    if not isinstance(teacher, Oracle):
        raise TypeError(f"teacher must be a fitted Oracle, got {type(teacher).__name__}")
    config = SummaryConfig() if config is None else config
    if not isinstance(config, SummaryConfig):
        raise TypeError(f"config must be a SummaryConfig, got {type(config).__name__}")
    x = as_samples(samples)
    if x.shape[1] != teacher.dim:
        raise ValueError(f"samples have dimension {x.shape[1]}, the teacher {teacher.dim}")
    out_dtype, device = torch.promote_types(x.dtype, torch.float32), x.device
    whitening = Whitening.from_samples(x)
    z = whitening.forward(x.to(torch.float64))
    n, d = z.shape
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    em_order = torch.randperm(n, generator=gen).to(device)

    def em_start(k: int) -> _Distilled:
        em_n = min(n, config.em_points, max(k, _CHUNK_ENTRIES * 4 // (k * d)))
        counts, means, cov, _ = em(z[em_order[:em_n]], k, config.em_steps, gen)
        return _Distilled(counts * (n / em_n), means, cov, n, config.rank).float()

    sizes = component_counts(n, d, config)
    starts = [em_start(k) for k in sizes]
    targets = _teacher_targets(teacher, z, whitening, starts[0], config, gen)
    runs = [_Distillation(start, targets, config) for start in starts]
    for run in runs:
        run.advance(config.trial_steps, gen)
    leader = min(runs, key=lambda run: run.best_gap)
    leader.advance(config.steps, gen)
    model, gap = leader.best(), leader.best_gap
    with torch.no_grad():
        log_weights, means_z, factors, iso = (t.to(torch.float64) for t in model.parts())
    if gap > GAP_WARNING:
        logger.warning("the distilled summary's score differs from its teacher's by %.0f %% (relative MSE at "
                       "held-out samples, d = %d): sample with the teacher itself where that matters", 100 * gap, d)
    logger.debug("distilled %d components (rank %d; sizes tried %s, held-out gaps %s) from %d samples "
                 "in d = %d", means_z.shape[0], factors.shape[-1], sizes, [f"{run.best_gap:.3g}" for run in runs], n, d)
    return MixtureSummary(whitening, log_weights, means_z, factors, iso.squeeze(1), gap, out_dtype)


def _chunked(model: "_Distilled", z: torch.Tensor, want_score: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    parts = model.parts()
    step = max(1, _CHUNK_ENTRIES // (parts[1].numel()))
    outs = [_mixture_terms(z[i:i + step], *parts, want_score=want_score) for i in range(0, z.shape[0], step)]
    return (torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]) if want_score else None,
            torch.cat([o[2] for o in outs]))


class MixtureSummary(Oracle):
    """A fitted Gaussian mixture in the form :func:`distil` builds: K components
    ``N(mu_k, s_k^2 I + U_k U_k^T)`` in the whitened coordinates of the samples, convolved with
    ``N(0, smoothing^2 I)`` in the data's. Immutable; ``smoothed(sigma)`` is exact.

    Attributes:
        n_components: K.
        rank: rank of each ``U_k``.
        smoothing: the standard deviation of the noise it is convolved with (0 for a fresh summary).
        teacher_gap: the relative score MSE between the summary and its teacher on held-out
            distillation points (the price of the summary; NaN when built directly).
    """

    def __init__(self, whitening: Whitening, log_weights: torch.Tensor, means: torch.Tensor,
                 factors: torch.Tensor, variances: torch.Tensor, teacher_gap: float = math.nan,
                 compute_dtype: torch.dtype = torch.float32, smoothing: float = 0.0) -> None:
        k, d = means.shape
        if log_weights.shape != (k,) or factors.shape[:2] != (k, d) or variances.shape != (k,):
            raise ValueError(f"inconsistent shapes: log_weights {tuple(log_weights.shape)}, means {(k, d)}, "
                             f"factors {tuple(factors.shape)}, variances {tuple(variances.shape)}")
        self.dim, self.n_components, self.rank = d, k, int(factors.shape[-1])
        self.compute_dtype, self.device = compute_dtype, means.device
        self.teacher_gap, self.smoothing = float(teacher_gap), float(smoothing)
        self._whitening = whitening
        self._parts = (log_weights.detach().clone(), means.detach().clone(), factors.detach().clone(),
                       variances.detach().clone())
        # the noise N(0, smoothing^2 I) in whitened coordinates is N(0, smoothing^2 W W^T): evaluate
        # in the eigenbasis of W W^T, where it adds smoothing^2 * eigenvalue to each axis
        evals, basis = torch.linalg.eigh(whitening.matrix @ whitening.matrix)
        self._basis = basis
        diag = variances[:, None] + smoothing ** 2 * evals[None]
        self._rotated = tuple(t.to(compute_dtype) for t in (log_weights, means @ basis,
                                                             basis.T @ factors, diag))
        self._to_rotated = (whitening.matrix @ basis).to(compute_dtype)
        self._mean = whitening.mean.to(compute_dtype)
        self._log_det = float(whitening.log_det)
        self._freeze()

    def _log_density_and_score(self, y: torch.Tensor, want_score: bool = True
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = y.to(self.compute_dtype)
        u = (y - self._mean) @ self._to_rotated
        step = max(1, _CHUNK_ENTRIES // self._rotated[1].numel())
        outs = [_mixture_terms(u[i:i + step], *self._rotated, want_score=want_score)
                for i in range(0, u.shape[0], step)]
        log_p = torch.cat([o[0] for o in outs]) + self._log_det
        if not want_score:
            return log_p, None
        score = torch.cat([o[1] for o in outs]) @ self._to_rotated.T  # chain rule back to x
        return log_p, score

    def _smoothed(self, sigma: float) -> "MixtureSummary":
        log_weights, means, factors, variances = self._parts
        return MixtureSummary(self._whitening, log_weights, means, factors, variances, self.teacher_gap,
                              self.compute_dtype, math.hypot(self.smoothing, sigma))

    def __repr__(self) -> str:
        return (f"MixtureSummary(dim={self.dim}, n_components={self.n_components}, rank={self.rank}, "
                f"smoothing={self.smoothing:.3g}, teacher_gap={self.teacher_gap:.3g})")
