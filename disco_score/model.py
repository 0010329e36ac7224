"""Which network a config describes: the two architectures, their stored configs, and :func:`build_net`.

* ``"geometric"``: :class:`~disco_score.geometric_net.DiScoFormerNet` with
  :class:`~disco_score.geometric_net.GeometricConfig`, one set of weights for every d.
* ``"set_transformer"``: :class:`~disco_score.set_transformer_net.SetTransformerNet` with
  :class:`~disco_score.set_transformer_net.SetTransformerConfig`, one network per d.

Model cards (``disco_score/weights/*.json``, ``"model_config"``) and training configs (``configs/*.json``,
``"model"``) store a config as one flat dict with an ``"architecture"`` key (default ``"geometric"``).
Those written before the architectures had configs of their own hold every field of both;
:func:`config_from_dict` reads either form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .geometric_net import DiScoFormerNet, GeometricConfig
from .set_transformer_net import SetTransformerConfig, SetTransformerNet

ArchitectureConfig = GeometricConfig | SetTransformerConfig
DensityNet = DiScoFormerNet | SetTransformerNet

#: architecture name -> (its config, its network)
ARCHITECTURES: dict[str, tuple[type, type]] = {
    "geometric": (GeometricConfig, DiScoFormerNet),
    "set_transformer": (SetTransformerConfig, SetTransformerNet),
}


def _own_fields(config_class: type) -> set[str]:
    return {f.name for f in fields(config_class) if f.init}


def config_from_dict(raw: Mapping[str, Any]) -> ArchitectureConfig:
    """The config a stored dict describes: ``raw["architecture"]`` (default ``"geometric"``) picks the
    config class, which takes the fields that apply to it.

    Fields of the other architecture are dropped: the single config the two architectures once shared
    stored all of them (e.g. ``gram_rank`` beside a set transformer), and they never had an effect there.
    A set transformer's missing ``dim`` is 0, which its network refuses. Raises ValueError for an
    unknown architecture and TypeError for a field neither architecture has.
    """
    values = dict(raw)
    architecture = values.pop("architecture", "geometric")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"ModelConfig.architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    config_class = ARCHITECTURES[architecture][0]
    known = set().union(*(_own_fields(cls) for cls, _ in ARCHITECTURES.values()))
    unknown = set(values) - known
    if unknown:
        raise TypeError(f"unknown model config fields: {sorted(unknown)}")
    own = _own_fields(config_class)
    kept = {key: value for key, value in values.items() if key in own}
    if config_class is SetTransformerConfig:
        kept.setdefault("dim", 0)
    return config_class(**kept)


def ModelConfig(architecture: str = "geometric", **values: Any) -> ArchitectureConfig:  # noqa: N802
    """The config of ``architecture`` from flat keyword fields, the form configs are stored in
    (:func:`config_from_dict`): ``ModelConfig(width=32)`` is a
    :class:`~disco_score.geometric_net.GeometricConfig`, ``ModelConfig(architecture="set_transformer",
    dim=10)`` a :class:`~disco_score.set_transformer_net.SetTransformerConfig`. Named after the single
    config class the two architectures once shared, so code and configs written for it keep working."""
    return config_from_dict({"architecture": architecture, **values})


def build_net(cfg: ArchitectureConfig) -> DensityNet:
    """The network a config describes (``cfg.architecture``)."""
    if cfg.architecture not in ARCHITECTURES:
        raise ValueError(f"ModelConfig.architecture must be one of {sorted(ARCHITECTURES)}, "
                         f"got {cfg.architecture!r}")
    return ARCHITECTURES[cfg.architecture][1](cfg)
