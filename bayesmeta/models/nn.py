"""Small neural-network building blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear`` with hidden widths ``hidden``; ``zero_last`` zero-inits the output."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, *, act=nn.SiLU,
                 zero_last: bool = False) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), act()]
            d = h
        last = nn.Linear(d, out_dim)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    @property
    def output_layer(self) -> nn.Linear:
        """The last ``Linear`` (e.g. to initialise its bias)."""
        last = self[-1]
        assert isinstance(last, nn.Linear)
        return last


def softplus_inv(x: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(float(x)))))
