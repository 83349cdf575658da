"""The regression network every gradient-based baseline adapts: an MLP with a Gaussian output head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GaussianMLP", "NOISE_MODES"]

NOISE_MODES = ("heteroscedastic", "global", "mse")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class GaussianMLP(nn.Module):
    """``x -> (mean, scale)``: a ReLU MLP whose output is a Gaussian over ``y``.

    Args:
        noise: ``"heteroscedastic"`` (the net outputs a log-scale per point), ``"global"`` (one
            learned scale per output, adapted in the inner loop like every other parameter) or
            ``"mse"`` (the classic MAML net: mean only, trained with the squared error; its
            predictive scale is the running RMS of query residuals seen in training).
    """

    residual_scale: torch.Tensor  # buffer [E]

    def __init__(self, x_dim: int, y_dim: int, hidden: Sequence[int] = (40, 40), *, noise: str = "global",
                 min_scale: float = 1e-3) -> None:
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}; got {noise!r}")
        self.x_dim, self.y_dim, self.noise, self.min_scale = x_dim, y_dim, noise, min_scale
        layers, d = [], x_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, 2 * y_dim if noise == "heteroscedastic" else y_dim))
        self.body = nn.Sequential(*layers)
        if noise == "global":
            self.raw_scale = nn.Parameter(torch.zeros(y_dim))
        self.register_buffer("residual_scale", torch.ones(y_dim))  # the "mse" head's predictive scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [..., N, D]`` -> mean and scale, each ``[..., N, E]``."""
        out = self.body(x)
        if self.noise == "heteroscedastic":
            mean, raw = out.split(self.y_dim, -1)
            return mean, F.softplus(raw) + self.min_scale
        if self.noise == "global":
            return out, (F.softplus(self.raw_scale) + self.min_scale).expand_as(out)
        return out, self.residual_scale.expand_as(out)

    def point_loss(self, mean: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-point training loss ``[..., N]``: Gaussian NLL, or squared error for ``"mse"``."""
        if self.noise == "mse":
            return ((mean - y) ** 2).sum(-1)
        return (0.5 * ((y - mean) / scale) ** 2 + torch.log(scale) + _LOG_SQRT_2PI).sum(-1)
