"""Latent-code regression: a neural decoder conditioned on a task-level latent vector."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from .base import HierarchicalModel
from .nn import MLP, softplus_inv
from .scaling import DataScaling

__all__ = ["LatentCodeModel", "LatentCodeRegression"]


class LatentCodeRegression(HierarchicalModel):
    """``z_i ~ N(mu, diag sigma^2)``; ``y_ij ~ N(f(x_ij, z_i), s(x_ij, z_i)^2)``.

    ``mu`` and ``sigma`` are learned (empirical Bayes), ``f`` is an MLP decoder, and the noise
    scale ``s`` is either one learned constant per output or, with ``heteroscedastic=True``, a
    second head of the decoder.

    The model is written to be indifferent to units: the decoder reads inputs and writes outputs
    through its own :class:`~bayesmeta.models.DataScaling` (``self.scaling``, fitted by
    ``BayesLearner.fit`` on a pool's points; the identity on a task family), so ``y`` is
    modelled in the data's units, ``N(y_shift + y_scale f, (y_scale s)^2)``.

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
                 hidden: Sequence[int] = (64, 64, 64), *, heteroscedastic: bool = True,
                 min_scale: float = 1e-3, init_scale: float = 1.0) -> None:
        super().__init__(x_dim, y_dim)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1; got {latent_dim}")
        self.task_sites = {"z": torch.Size([latent_dim])}
        self.heteroscedastic, self.min_scale = heteroscedastic, float(min_scale)
        out = 2 * y_dim if heteroscedastic else y_dim
        self.decoder = MLP(x_dim + latent_dim, hidden, out)
        self.scaling = DataScaling(x_dim, y_dim)
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
        xb = self.scaling.x(x).expand(*zb.shape[:-1], x.shape[-1])  # [..., T, N, D], scaled
        out = self.decoder(torch.cat([xb, zb], -1))  # [..., T, N, out]
        loc = out[..., : self.y_dim]
        raw = out[..., self.y_dim :] if self.heteroscedastic else self.prior["raw_noise"]
        scale = (F.softplus(raw) + self.min_scale).expand_as(loc)
        return dist.Normal(self.scaling.y_loc(loc), self.scaling.y_spread(scale))  # the data's units


class LatentCodeModel(PyroModule):
    """A neural decoder driven by a task code, for outcomes that are not Gaussian.

    ``z_i ~ N(mu, diag sigma^2)`` (learned); ``f = MLP([x_ij, z_i])``; ``y_ij`` is Bernoulli
    (``logits = f``), Categorical over ``num_classes`` (``logits = f``, labels ``0..C-1``) or
    Poisson (``rate = exp(f)``). Written as a plain Pyro program: the library traces ``forward``.
    The decoder reads its inputs through its own :class:`~bayesmeta.models.DataScaling`
    (``self.scaling``, inputs only: the outcomes are counts or labels, modelled as they are).

    Args:
        x_dim: input dimension.
        latent_dim: size of the task code ``z``.
        hidden: decoder hidden widths.
        likelihood: ``"bernoulli"``, ``"categorical"`` or ``"poisson"``.
        num_classes: classes of a categorical outcome.

    Example:
        >>> m = LatentCodeModel(x_dim=2, latent_dim=4, likelihood="categorical", num_classes=3)
        >>> m.x_dim, m.y_dim
        (2, 1)
    """

    LIKELIHOODS = ("bernoulli", "categorical", "poisson")

    def __init__(self, x_dim: int, latent_dim: int = 8, hidden: Sequence[int] = (128, 128, 128), *,
                 likelihood: str = "bernoulli", num_classes: int = 2) -> None:
        super().__init__()
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be a positive int; got {x_dim!r}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1; got {latent_dim}")
        if likelihood not in self.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {self.LIKELIHOODS}; got {likelihood!r}")
        if likelihood == "categorical" and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}")
        self.x_dim, self.y_dim, self.likelihood = x_dim, 1, likelihood
        self.decoder = MLP(x_dim + latent_dim, hidden, num_classes if likelihood == "categorical" else 1)
        self.scaling = DataScaling(x_dim, 1, outputs=False)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), softplus_inv(1.0)))
        self.config = {"x_dim": x_dim, "latent_dim": latent_dim, "hidden": list(hidden), "likelihood": likelihood,
                       "num_classes": num_classes}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """``x [T, N, D]``, ``y [T, N]`` (labels or counts; ``None`` samples), ``mask [T, N]``."""
        t, n = x.shape[:2]
        with pyro.plate("tasks", t, dim=-2):
            z = pyro.sample("z", dist.Normal(self.loc, F.softplus(self.raw_scale) + 1e-4).to_event(1))  # [..., T, 1, Z]
            zb = z.expand(*z.shape[:-2], n, z.shape[-1])  # [..., T, N, Z]
            xs = self.scaling.x(x).expand(*zb.shape[:-1], x.shape[-1])  # [..., T, N, D], scaled
            out = self.decoder(torch.cat([xs, zb], -1))  # [..., T, N, C or 1]
            with pyro.plate("points", n, dim=-1):
                if self.likelihood == "categorical":
                    d = dist.Categorical(logits=out)
                elif self.likelihood == "bernoulli":
                    d = dist.Bernoulli(logits=out[..., 0])
                else:
                    d = dist.Poisson(out[..., 0].clamp(-30.0, 30.0).exp())
                return pyro.sample("y", d.mask(mask) if mask is not None else d, obs=y)
