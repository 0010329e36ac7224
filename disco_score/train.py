"""Training loop for DiScoFormer. One file, plain torch (in the spirit of nanoGPT).

Every step draws fresh random Gaussian mixtures from the protocol prior (a random dimension and
sample size per step), samples a context and queries from them, and supervises both heads with
the exact log-density and score, plus the consistency loss (score head vs the gradient of the
log-density head). Run::

    python -m disco_score.train --config configs/base.json          # or: disco-score train ...
    torchrun --nproc_per_node=2 -m disco_score.train --config ...   # data-parallel (gloo)

Checkpoints are written atomically (temp file, then rename) and resume exactly: the data of step
``t`` on rank ``r`` is a pure function of ``(seed, t, r)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .geometric_net import GeometricConfig
from .model import ArchitectureConfig, DensityNet, build_net, config_from_dict
from .targets import random_gmm
from .whitening import Whitening

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run needs; saved in every checkpoint."""

    out_dir: str = "runs/discoformer"
    steps: int = 20000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # dimension d drawn per step with these weights; sample size n log-uniform in [n_min, n_max]
    dims: tuple[int, ...] = (1, 2, 3, 5, 10, 16, 32, 64, 100, 128)
    dim_weights: tuple[float, ...] = (1, 3, 1, 1, 3, 1, 1, 1, 2, 1)
    n_min: int = 64
    n_max: int = 1024
    pairs_per_step: int = 2 ** 21  # batch size B = clamp(pairs / n^2): constant cost per step
    max_batch: int = 16
    n_queries: int = 128
    log_density_weight: float = 0.1  # on log-density MSE / d
    consistency_weight: float = 0.1
    consistency_queries: int = 32
    eval_every: int = 500
    ckpt_every: int = 100
    seed: int = 0
    threads: int = 0  # 0: torch default
    init_from: str = ""  # start from this checkpoint's weights (fine-tuning); ignored when resuming
    # "all", or "query": the sample encoder frozen (encoded without a graph), only the query side
    # trained -- what makes fine-tuning at n ~ 2^14 affordable on a CPU (one process only)
    trainable: str = "all"
    eval_large_n: int = 0  # > 0: the validation set also has d = 2 and 10 mixtures at this n (2 each)
    # "gmm": the protocol's GMM prior only; "wide": the wider prior of disco_score.families
    # (GMM prior, multi-scale/anisotropic/Student-t mixtures, warped mixtures, shells) with these
    # family probabilities, in PRIOR_FAMILIES order
    prior: str = "gmm"
    prior_probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    device: str = "cpu"  # "cuda" for a lent GPU; data is drawn on the CPU (exact, seeded) and moved
    max_minutes: float = 0.0  # > 0: stop (with a checkpoint) after this much wall time
    model: ArchitectureConfig = field(default_factory=GeometricConfig)

    @staticmethod
    def from_dict(raw: dict) -> "TrainConfig":
        """A config from a JSON-style dict (a config file, or a checkpoint's ``config``).

        The nested ``"model"`` dict becomes its architecture's config
        (:func:`~disco_score.model.config_from_dict`, which also reads the flat dicts of older configs and
        checkpoints) and lists for ``dims``/``dim_weights``
        become tuples; unknown keys raise ValueError. ``raw`` is not modified.
        """
        raw = dict(raw)
        model = config_from_dict(raw.pop("model", {}))
        known = {f.name for f in fields(TrainConfig)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        for key in ("dims", "dim_weights", "prior_probs"):
            if key in raw:
                raw[key] = tuple(raw[key])
        if raw.get("prior", "gmm") not in ("gmm", "wide"):
            raise ValueError(f"prior must be 'gmm' or 'wide', got {raw['prior']!r}")
        if raw.get("trainable", "all") not in ("all", "query"):
            raise ValueError(f"trainable must be 'all' or 'query', got {raw['trainable']!r}")
        cfg = TrainConfig(model=model, **raw)
        if model.dim and set(cfg.dims) != {model.dim}:
            raise ValueError(f"a network for d = {model.dim} trains on that d only: set dims to [{model.dim}], "
                             f"got {list(cfg.dims)}")
        return cfg


def draw_problem(cfg: TrainConfig, step: int, rank: int) -> tuple[int, int, int, torch.Generator]:
    """(d, n, batch, generator) for a step: a pure function of (seed, step, rank)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
    w = torch.tensor(cfg.dim_weights, dtype=torch.float64)
    d = cfg.dims[int(torch.multinomial(w, 1, generator=gen))]
    lo = max(cfg.n_min, 2 * d + 2)  # enough points for a full-rank covariance
    hi = max(lo, cfg.n_max)
    n = int(round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand(1, generator=gen)))))
    batch = max(1, min(cfg.max_batch, cfg.pairs_per_step // (n * n)))
    return d, n, batch, gen


@dataclass
class Batch:
    """Whitened context and queries plus exact targets, all float32 except the whitening maps."""

    samples: torch.Tensor  # (B, n, d) whitened
    queries: torch.Tensor  # (B, m, d) whitened
    log_density: torch.Tensor  # (B, m) exact, in whitened units
    score: torch.Tensor  # (B, m, d) exact, in whitened units
    score_x_weight: torch.Tensor  # (B, d, d) W^T W... maps whitened score errors to x-space norms


def _draw_wide(d: int, n: int, batch: int, m: int, gen: torch.Generator, probs: tuple[float, ...]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` targets of the wider prior, one at a time (its families are unbatched)."""
    from .families import random_prior_target

    xs, ys, lps, scs = [], [], [], []
    for _ in range(batch):
        target = random_prior_target(d, generator=gen, probs=probs)
        x, y = target.sample(n, gen).to(torch.float64), target.sample(m, gen).to(torch.float64)
        xs.append(x)
        ys.append(y)
        lps.append(target.log_prob_t(y))
        scs.append(target.score_t(y))
    return torch.stack(xs), torch.stack(ys), torch.stack(lps), torch.stack(scs)


def make_batch(d: int, n: int, batch: int, m: int, gen: torch.Generator, prior: str = "gmm",
               prior_probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)) -> Batch:
    """Draw ``batch`` targets from the prior, n context samples and m queries each."""
    if prior == "wide":
        x, y, lp, sc = _draw_wide(d, n, batch, m, gen, prior_probs)
    else:
        target = random_gmm(d, batch=batch, generator=gen)
        x = target.sample(n, gen)
        y = target.sample(m, gen)
        lp, sc = target.log_prob_t(y), target.score_t(y)
    zs, zq, lpz, scz, metric = [], [], [], [], []
    for b in range(batch):
        wt = Whitening.from_samples(x[b])
        zs.append(wt.forward(x[b]))
        zq.append(wt.forward(y[b]))
        lpz.append(lp[b] - wt.log_det)
        # s_x = W s_z  =>  s_z = W^{-1} s_x (W symmetric)
        scz.append(sc[b] @ wt.inverse)
        metric.append(wt.matrix @ wt.matrix)  # |W e|^2 = e^T W^2 e
    f = torch.float32
    return Batch(torch.stack(zs).to(f), torch.stack(zq).to(f), torch.stack(lpz).to(f),
                 torch.stack(scz).to(f), torch.stack(metric).to(f))


def losses(net: torch.nn.Module, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Relative score MSE (in data coordinates), log-density MSE / d, consistency."""
    d = batch.samples.shape[-1]
    queries = batch.queries.clone().requires_grad_(cfg.consistency_weight > 0)
    if cfg.trainable == "query":  # frozen encoder: no graph through the O(n^2) sample attention
        with torch.no_grad():  # (never under DDP: train() refuses that combination)
            encoded = net.encode(batch.samples)
        log_density, score = net.query(encoded, queries)
    else:
        log_density, score = net(batch.samples, queries)
    err = score - batch.score
    # |s_x - s_x_hat|^2 = err^T W^2 err: the protocol's metric, measured in the data's coordinates
    err_x = torch.einsum("bmi,bij,bmj->bm", err, batch.score_x_weight, err).sum(1)
    ref_x = torch.einsum("bmi,bij,bmj->bm", batch.score, batch.score_x_weight, batch.score).sum(1)
    rel_score = (err_x / ref_x.clamp_min(1e-12)).mean()
    ld = ((log_density - batch.log_density) ** 2).mean() / d
    out = {"rel_score": rel_score, "log_density": ld}
    total = rel_score + cfg.log_density_weight * ld
    if cfg.consistency_weight > 0:
        k = cfg.consistency_queries
        (grad,) = torch.autograd.grad(log_density[:, :k].sum(), queries, create_graph=True)
        cons = ((score[:, :k] - grad[:, :k]) ** 2).sum() / (batch.score[:, :k] ** 2).sum().clamp_min(1e-12)
        out["consistency"] = cons
        total = total + cfg.consistency_weight * cons
    out["total"] = total
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then rename (never a torn file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _batch_to(batch: Batch, device: torch.device) -> Batch:
    return Batch(*(getattr(batch, f.name).to(device) for f in fields(Batch)))


def _eval_set(seed: int = 12345, large_n: int = 0, wide: bool = False) -> list[tuple[str, Batch]]:
    """A fixed small validation set: P1-like d = 2, 10 (n = 256) and P2-like d = 100 (n = 2048);
    with ``large_n``, also d = 2 and 10 at that n (two mixtures each); with ``wide``, also draws of
    the wider prior at d = 2 (n = 1024) and d = 10 (n = 512), four each."""
    out = []
    if wide:
        for name, d, n in (("wide_d2_n1024", 2, 1024), ("wide_d10_n512", 10, 512)):
            gen = torch.Generator().manual_seed(seed + 7 * d)
            x, y, lp, sc = _draw_wide(d, n, 4, 256, gen, (0.0, 0.45, 0.35, 0.2))
            rows = []
            for b in range(4):
                wt = Whitening.from_samples(x[b])
                rows.append((wt.forward(x[b]), wt.forward(y[b]), lp[b] - wt.log_det, sc[b] @ wt.inverse,
                             wt.matrix @ wt.matrix))
            out.append((name, Batch(*(torch.stack([r[i] for r in rows]).to(torch.float32) for i in range(5)))))
    specs = [("d2_n256", 2, 256, None, True, 4), ("d10_n256", 10, 256, None, True, 4),
             ("d100_n2048_K2", 100, 2048, 2, False, 2)]
    if large_n:
        specs += [(f"d{d}_n{large_n}", d, large_n, None, True, 2) for d in (2, 10)]
    for name, d, n, k, rotate, count in specs:
        gen = torch.Generator().manual_seed(seed + d + (n if n > 2048 else 0))
        target = random_gmm(d, batch=count, n_components=k or (1, 10), rotate=rotate, generator=gen)
        x, y = target.sample(n, gen), target.sample(256, gen)
        batches = []
        for b in range(x.shape[0]):
            wt = Whitening.from_samples(x[b])
            batches.append((wt.forward(x[b]), wt.forward(y[b]), target.log_prob_t(y)[b] - wt.log_det,
                            target.score_t(y)[b] @ wt.inverse, wt.matrix @ wt.matrix))
        f = torch.float32
        out.append((name, Batch(*(torch.stack([bb[i] for bb in batches]).to(f) for i in range(5)))))
    return out


@torch.no_grad()
def evaluate(net: DensityNet, eval_set: list[tuple[str, Batch]]) -> dict[str, float]:
    """Relative score MSE and log-density MSE (data coordinates) on the fixed validation set (a
    dimension-specific net: the entries of its d only)."""
    net.eval()
    res = {}
    for name, b in eval_set:
        if net.cfg.dim and b.samples.shape[-1] != net.cfg.dim:
            continue
        lp, sc = net(b.samples, b.queries)
        err = sc - b.score
        num = torch.einsum("bmi,bij,bmj->b", err, b.score_x_weight, err)
        den = torch.einsum("bmi,bij,bmj->b", b.score, b.score_x_weight, b.score)
        res[f"{name}/rel_score"] = float((num / den).mean())
        res[f"{name}/log_density_mse"] = float(((lp - b.log_density) ** 2).mean())
    net.train()
    return res


def _initial_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict to fine-tune from: a training checkpoint (``.pt``) or shipped weights
    (``.safetensors``, e.g. ``disco_score/weights/discoformer.safetensors``)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True, until: int | None = None) -> Path:
    """Run (or resume) training to ``cfg.steps`` (or stop early at step ``until``, e.g. to fit a
    time slot; resuming later continues the same schedule); returns the checkpoint path."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    out = Path(cfg.out_dir)
    ckpt_path = out / "ckpt.pt"
    torch.manual_seed(cfg.seed)  # parameter initialisation
    net = build_net(cfg.model).to(torch.float32)  # the batches are float32, whatever the default dtype
    if cfg.trainable == "query" and distributed:
        # DDP synchronises gradients through its own forward, which a frozen-encoder step bypasses
        raise ValueError("trainable='query' runs in one process; drop torchrun or train 'all'")
    if cfg.trainable == "query":
        keep = {id(p) for p in net.query_side_parameters()}
        for p in net.parameters():
            p.requires_grad_(id(p) in keep)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    step, best = 0, math.inf
    history: list[dict] = []
    if cfg.init_from and not (resume and ckpt_path.exists()):
        # strict=False: a fine-tune may add modules (e.g. local-Gaussian heads) to a trained net
        missing, unexpected = net.load_state_dict(_initial_weights(cfg.init_from), strict=False)
        if unexpected:
            raise ValueError(f"{cfg.init_from} has weights this model does not: {unexpected}")
        if rank == 0:
            logger.info("initialised from %s (new parameters: %s)", cfg.init_from, missing)
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best, history = state["step"], state.get("best", math.inf), state.get("history", [])
        if rank == 0:
            logger.info("resumed from %s at step %d", ckpt_path, step)
    net.to(device)
    for value in opt.state.values():  # a resumed optimiser's moments follow the parameters
        for key, tensor in value.items():
            if isinstance(tensor, torch.Tensor) and key != "step":
                value[key] = tensor.to(device)
    model: torch.nn.Module = net
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(net)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    eval_set = _eval_set(large_n=cfg.eval_large_n, wide=cfg.prior == "wide") if rank == 0 else []
    eval_set = [(name, _batch_to(b, device)) for name, b in eval_set]
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, desc="train", dynamic_ncols=True)
    t0, window = time.time(), []
    stop = cfg.steps if until is None else min(until, cfg.steps)
    while step < stop:
        if cfg.max_minutes and time.time() - t0 > 60 * cfg.max_minutes:
            logger.info("stopping at step %d: max_minutes %.3g reached", step, cfg.max_minutes)
            break
        d, n, bsz, gen = draw_problem(cfg, step, rank)
        batch = _batch_to(make_batch(d, n, bsz, cfg.n_queries, gen, cfg.prior, cfg.prior_probs), device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        parts = losses(model, batch, cfg)
        if not bool(torch.isfinite(parts["total"])):  # a degenerate draw must not poison the weights
            logger.warning("step %d (d=%d, n=%d): non-finite loss, batch skipped", step, d, n)
            step += 1
            continue
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        step += 1
        window.append({k: float(v.detach()) for k, v in parts.items()} | {"d": d, "n": n})
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1]['total']:.3f}", score=f"{window[-1]['rel_score']:.3f}", d=d, n=n)
        if rank == 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            metrics = evaluate(net, eval_set)
            mean_train = {k: sum(w[k] for w in window) / len(window) for k in window[0] if k not in ("d", "n")}
            record = {"step": step, "wall_s": time.time() - t0, "train": mean_train, "eval": metrics}
            history.append(record)
            window = []
            logger.info("step %d eval %s", step, json.dumps(metrics))
            with open(out / "history.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            score_key = sum(v for k, v in metrics.items() if k.endswith("rel_score"))
            if score_key < best:
                best = score_key
                save_atomic({"model": net.state_dict(), "config": asdict(cfg), "step": step, "eval": metrics},
                            out / "best.pt")
        if rank == 0 and (step % cfg.ckpt_every == 0 or step == stop or (
                cfg.max_minutes and time.time() - t0 > 60 * cfg.max_minutes)):
            save_atomic({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "best": best,
                         "history": history, "config": asdict(cfg)}, ckpt_path)
    bar.close()
    if distributed:
        dist.barrier()
    del world
    return ckpt_path


def export(checkpoint: str | Path, weights_dir: str | Path, notes: dict | None = None) -> Path:
    """Write a checkpoint's weights as safetensors plus a JSON with the config and SHA-256: as
    ``discoformer`` (the general net) or, for a dimension-specific net, ``discoformer-d<d>``
    (``notes`` may carry ``serves_max_n``, the largest n it is selected for, and ``bag_size``, the
    largest n it was trained at; see :class:`~disco_score.weights_io.Specialist`)."""
    from .weights_io import SPECIALIST_PREFIX, WEIGHTS_NAME, save_weights

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig.from_dict(state["config"])
    meta = {"step": state["step"], "train_config": state["config"], "eval": state.get("eval")}
    if notes:
        meta.update(notes)
    name = f"{SPECIALIST_PREFIX}{cfg.model.dim}" if cfg.model.dim else WEIGHTS_NAME
    return save_weights(state["model"], cfg.model, Path(weights_dir), meta, name=name)


def main(argv: list[str] | None = None) -> int:
    """``disco-score train``: train (or resume) from ``--config``, or export a checkpoint with ``--export``.

    Training resumes from ``<out_dir>/ckpt.pt`` when it exists, unless ``--no-resume``; ``--export CKPT``
    writes that checkpoint's weights to ``--weights-dir`` and exits. Returns 0.
    """
    parser = argparse.ArgumentParser(prog="disco-score train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="JSON file with TrainConfig fields (nested 'model' for the network's config)")
    parser.add_argument("--out-dir", help="override out_dir")
    parser.add_argument("--steps", type=int, help="override steps")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even if a checkpoint exists")
    parser.add_argument("--device", help="override device (e.g. cuda)")
    parser.add_argument("--max-minutes", type=float, help="override max_minutes: stop, with a checkpoint, after this")
    parser.add_argument("--init-from", help="override init_from (a checkpoint .pt or shipped .safetensors)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--export", metavar="CKPT", help="export a checkpoint to --weights-dir and exit")
    parser.add_argument("--weights-dir", default=str(Path(__file__).parent / "weights"))
    parser.add_argument("--serves-max-n", type=int, default=None,
                        help="with --export of a dimension-specific net: the largest n it is selected for")
    parser.add_argument("--bag-size", type=int, default=None,
                        help="with --export of a dimension-specific net: the largest n it was trained at "
                             "(larger sets are fitted as a mixture of interleaved subsets of about this size)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.export:
        notes = {key: value for key, value in (("serves_max_n", args.serves_max_n), ("bag_size", args.bag_size))
                 if value} or None
        path = export(args.export, args.weights_dir, notes)
        logger.info("exported %s", path)
        return 0
    raw = json.loads(Path(args.config).read_text()) if args.config else {}
    cfg = TrainConfig.from_dict(raw)
    if args.out_dir:
        cfg.out_dir = args.out_dir
    if args.steps is not None:
        cfg.steps = args.steps
    if args.device:
        cfg.device = args.device
    if args.max_minutes is not None:
        cfg.max_minutes = args.max_minutes
    if args.init_from:
        cfg.init_from = args.init_from
    train(cfg, resume=not args.no_resume, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
