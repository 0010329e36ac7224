"""The packaged networks on disk: safetensors weights beside a JSON model card, hash-verified.

``<name>.safetensors`` holds a network's state dict; ``<name>.json`` its config (``"model_config"``,
read by :func:`disco_score.model.config_from_dict`), the file's SHA-256 and training metadata.
``discoformer`` is the general network, ``discoformer-d<d>`` the dimension-specific ones
(:class:`Specialist`). Loading verifies the hash first: no network access, no unverified weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import ArchitectureConfig, DensityNet, build_net, config_from_dict
from .set_transformer_net import SetTransformerNet

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_NAME = "discoformer"
#: dimension-specific checkpoints are ``<SPECIALIST_PREFIX><d>.safetensors`` beside the general one
SPECIALIST_PREFIX = "discoformer-d"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(state: dict[str, torch.Tensor], cfg: ArchitectureConfig, weights_dir: Path,
                 meta: dict | None = None, name: str = WEIGHTS_NAME) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (config, SHA-256, metadata), atomically."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / f"{name}.safetensors"
    tmp = path.with_suffix(".safetensors.tmp")
    save_file({k: v.detach().contiguous().float() for k, v in state.items()}, str(tmp))
    tmp.chmod(0o644)
    card = {"model_config": cfg.to_dict(), "sha256": _sha256(tmp), "meta": meta or {}}
    tmp_json = weights_dir / f"{name}.json.tmp"
    tmp_json.write_text(json.dumps(card, indent=2, default=str))
    tmp.replace(path)
    tmp_json.replace(weights_dir / f"{name}.json")
    return path


def load_weights(weights_dir: Path = WEIGHTS_DIR, name: str = WEIGHTS_NAME, verify: bool = True
                 ) -> tuple[DensityNet, dict]:
    """Load a saved network; raises if the file's hash differs from the recorded one."""
    path, card_path = weights_dir / f"{name}.safetensors", weights_dir / f"{name}.json"
    if not path.exists() or not card_path.exists():
        raise FileNotFoundError(f"no DiScoFormer weights at {path} (and {card_path.name})")
    card = json.loads(card_path.read_text())
    if verify:
        digest = _sha256(path)
        if digest != card["sha256"]:
            raise RuntimeError(f"checksum mismatch for {path}: file has {digest}, "
                               f"{card_path.name} records {card['sha256']}; the weights are corrupt or stale")
    # float32 explicitly: a network built under another default dtype (torch.set_default_dtype)
    # would otherwise keep float64 parameters and meet float32 queries
    net = build_net(config_from_dict(card["model_config"])).to(torch.float32)
    net.load_state_dict(load_file(str(path)))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, card


@dataclass(frozen=True)
class Specialist:
    """A dimension-specific network (:class:`~disco_score.set_transformer_net.SetTransformerNet`) and
    the sample sizes it serves: ``fit`` uses it for ``d == net.cfg.dim`` and ``n <= max_n``, the general
    network otherwise (``max_n`` None: every n).

    ``bag_size`` (None: off): the largest n the network was trained at. ``fit`` cuts a larger set
    into ``ceil(n / bag_size)`` interleaved subsets, none above the trained n
    (:func:`~disco_score.components.interleaved_subsets`), fits each, and averages the fits'
    log-densities with weights by size (:class:`~disco_score.discoformer.DiScoFormerAverage`):
    beyond its trained n the network gets worse with more samples, while the average of fits at the
    trained n keeps improving, at a fraction of the O(n^2) cost (docs/experiments.md, "Design:
    specialists fit sets above their trained n as a mixture of interleaved subsets").
    """

    net: SetTransformerNet
    max_n: int | None = None
    bag_size: int | None = None

    @property
    def dim(self) -> int:
        """The dimension served."""
        return self.net.cfg.dim


def load_specialists(weights_dir: Path = WEIGHTS_DIR, verify: bool = True) -> list[Specialist]:
    """Every ``discoformer-d<d>`` checkpoint in ``weights_dir`` (hash-verified), with the ``max_n``
    and ``bag_size`` recorded in its model card (``meta.serves_max_n``, ``meta.bag_size``), sorted by d."""
    out = []
    for card_path in sorted(weights_dir.glob(f"{SPECIALIST_PREFIX}*.json")):
        net, card = load_weights(weights_dir, card_path.stem, verify)
        if not isinstance(net, SetTransformerNet):
            raise ValueError(f"{card_path} does not describe a dimension-specific network")
        meta = card.get("meta", {})
        out.append(Specialist(net, meta.get("serves_max_n"), meta.get("bag_size")))
    return sorted(out, key=lambda sp: sp.dim)
