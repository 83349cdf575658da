"""Latent-code regression: a neural decoder conditioned on a task-level latent vector."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .base import HierarchicalModel
from .nn import MLP, softplus_inv

__all__ = ["LatentCodeRegression"]


class LatentCodeRegression(HierarchicalModel):
    """``z_i ~ N(mu, diag sigma^2)``; ``y_ij ~ N(f(x_ij, z_i), s(x_ij, z_i)^2)``.

    ``mu`` and ``sigma`` are learned (empirical Bayes), ``f`` is an MLP decoder, and the noise
    scale ``s`` is either one learned constant per output or, with ``heteroscedastic=True``, a
    second head of the decoder.

    Args:
        x_dim: input dimension.
        y_dim: output dimension.
        latent_dim: size of the task code ``z``.
        hidden: decoder hidden widths.
        heteroscedastic: per-point noise scale from the decoder.
        min_scale: lower bound on the noise scale (numerical safety).

    Example:
        >>> m = LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=4)
        >>> m.task_sites
        {'z': torch.Size([4])}
    """

    def __init__(self, x_dim: int, y_dim: int = 1, latent_dim: int = 8,
                 hidden: Sequence[int] = (128, 128, 128), *, heteroscedastic: bool = True,
                 min_scale: float = 1e-3, init_scale: float = 1.0) -> None:
        super().__init__(x_dim, y_dim)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1; got {latent_dim}")
        self.task_sites = {"z": torch.Size([latent_dim])}
        self.heteroscedastic, self.min_scale = heteroscedastic, float(min_scale)
        out = 2 * y_dim if heteroscedastic else y_dim
        self.decoder = MLP(x_dim + latent_dim, hidden, out)
        raw = softplus_inv(init_scale - min_scale)
        if heteroscedastic:
            with torch.no_grad():
                self.decoder.output_layer.bias[y_dim:] = raw
        self.prior = nn.ParameterDict({
            "loc": nn.Parameter(torch.zeros(latent_dim)),
            "raw_scale": nn.Parameter(torch.full((latent_dim,), softplus_inv(1.0))),
            "raw_noise": nn.Parameter(torch.full((y_dim,), raw)),
        })
        self.config.update(latent_dim=latent_dim, hidden=list(hidden), heteroscedastic=heteroscedastic,
                           min_scale=min_scale, init_scale=init_scale)

    def site_priors(self):
        scale = F.softplus(self.prior["raw_scale"]) + 1e-4
        return {"z": dist.Normal(self.prior["loc"], scale).to_event(1)}

    def likelihood(self, x, theta):
        z = theta["z"]  # [..., T, Z]
        n = x.shape[-2]
        zb = z.unsqueeze(-2).expand(*z.shape[:-1], n, z.shape[-1])  # [..., T, N, Z]
        xb = x.expand(*zb.shape[:-1], x.shape[-1])  # [..., T, N, D]
        out = self.decoder(torch.cat([xb, zb], -1))  # [..., T, N, out]
        loc = out[..., : self.y_dim]
        raw = out[..., self.y_dim :] if self.heteroscedastic else self.prior["raw_noise"]
        scale = (F.softplus(raw) + self.min_scale).expand_as(loc)
        return dist.Normal(loc, scale)
