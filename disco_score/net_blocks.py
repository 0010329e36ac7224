"""Building blocks shared by the two network architectures (:mod:`disco_score.geometric_net`,
:mod:`disco_score.set_transformer_net`): the problem-size context, a two-layer MLP, what an encoder
hands its query side, and small parameter helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def context_features(n: int, d: int, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(6,) invariant description of the problem size fed to every layer."""
    ln, ld = math.log(n), math.log(d)
    return torch.tensor([ln / 10, ld / 5, 1.0 / d, ln / (d + 4), math.sqrt(d) / 10, (ln / (d + 4)) ** 2],
                        dtype=dtype, device=device)


class MLP(nn.Module):
    """Two-layer perceptron ``fc2(gelu(fc1(x)))`` with ``hidden`` units: (..., dim_in) -> (..., dim_out)."""

    def __init__(self, dim_in: int, dim_out: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim_in, hidden), nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim_in) -> (..., dim_out)."""
        return self.fc2(F.gelu(self.fc1(x)))


def _outside(net: nn.Module, modules: tuple[str, ...]) -> list[nn.Parameter]:
    """The parameters of ``net`` not in its top-level submodules ``modules``."""
    return [p for name, p in net.named_parameters() if name.split(".")[0] not in modules]


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@dataclass
class EncodedSamples:
    """The sample set after the encoder: what the query layers attend to (cache it per fit)."""

    pos: torch.Tensor  # (B, n, d) whitened, learned-shifted centres (set transformer: canonical coordinates)
    feat: torch.Tensor  # (B, n, C)
    ctx: torch.Tensor  # (n_ctx,)
    n: int
    raw: torch.Tensor  # (B, n, d) the whitened samples themselves
    frame: torch.Tensor | None = None  # (B, d, d) set transformer: canonical coordinates are z @ frame
