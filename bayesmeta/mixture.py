"""Mixtures of Gaussians over query points: the numeric core of every predictive.

A predictive distribution in bayesmeta is a weighted mixture over ``n`` components (posterior
samples, importance samples or grid points), each a diagonal Gaussian over the ``E`` outputs of
every query point. This module holds the math (moments, log density, CDF, quantiles, sampling)
and depends on nothing else in the package, so task families (oracles) and learners share it.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GaussianMixture", "heaviest"]

_LOG_2PI = math.log(2 * math.pi)


def heaviest(log_weights: torch.Tensor, mass: float) -> torch.Tensor:
    """Indices ``[m, T]`` of each task's heaviest components holding ``mass`` of its weight.

    ``log_weights`` is ``[n, T]`` (unnormalised); ``m`` is the most any task needs, so the
    result is rectangular.
    """
    srt, order = torch.sort(log_weights, dim=0, descending=True)
    cum = torch.softmax(srt, 0).cumsum(0)
    keep = min(int((cum < mass).sum(0).max()) + 1, log_weights.shape[0])
    return order[:keep]


class GaussianMixture:
    """Per-point mixture ``sum_s w_st N(y; loc_s, scale_s^2)`` over tasks ``t`` and points.

    Args:
        loc: component means ``[n, T, N, E]``.
        scale: component standard deviations, broadcastable to ``loc``.
        log_weights: ``[n, T]`` unnormalised log weights per task; ``None`` means equal weights.

    Example:
        >>> mix = GaussianMixture(torch.zeros(1, 2, 3, 1), torch.ones(1, 2, 3, 1))
        >>> mix.log_prob(torch.zeros(2, 3, 1)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, loc: torch.Tensor, scale: torch.Tensor | float, log_weights: torch.Tensor | None = None
    ) -> None:
        if loc.dim() != 4:
            raise ValueError(f"loc must have shape [n, T, N, E]; got {tuple(loc.shape)}")
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        try:
            torch.broadcast_shapes(scale.shape, loc.shape)
        except RuntimeError as err:
            raise ValueError(
                f"scale {tuple(scale.shape)} does not broadcast to loc {tuple(loc.shape)}"
            ) from err
        n, t = loc.shape[:2]
        if log_weights is None:
            log_weights = loc.new_zeros(n, t)
        if log_weights.shape != (n, t):
            raise ValueError(f"log_weights must have shape {(n, t)}; got {tuple(log_weights.shape)}")
        self.loc = loc
        self.scale = scale
        self.log_weights = log_weights - torch.logsumexp(log_weights, dim=0, keepdim=True)

    # ------------------------------------------------------------------ shapes and weights
    @property
    def num_components(self) -> int:
        return self.loc.shape[0]

    @property
    def shape(self) -> torch.Size:
        """``[T, N, E]``: tasks, query points, outputs."""
        return self.loc.shape[1:]

    @property
    def weights(self) -> torch.Tensor:
        """Normalised component weights ``[n, T]``."""
        return self.log_weights.exp()

    def _w(self) -> torch.Tensor:
        return self.weights[:, :, None, None]  # [n, T, 1, 1]

    # ------------------------------------------------------------------ moments
    @property
    def mean(self) -> torch.Tensor:
        """Predictive mean ``[T, N, E]``."""
        return (self._w() * self.loc).sum(0)

    @property
    def variance(self) -> torch.Tensor:
        """Predictive variance ``[T, N, E]`` (law of total variance)."""
        w = self._w()
        second = (w * (self.scale**2 + self.loc**2)).sum(0)
        return (second - self.mean**2).clamp_min(0.0)

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    # ------------------------------------------------------------------ densities
    def _check_y(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() == len(self.shape) - 1 and self.shape[-1] == 1:
            y = y.unsqueeze(-1)
        if y.shape != self.shape:
            raise ValueError(
                f"observations must have shape {tuple(self.shape)} (tasks, points, outputs); "
                f"got {tuple(y.shape)}"
            )
        return y.to(self.loc)  # dtype and device of the components

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Log of the mixture density of each point, ``[T, N]`` (outputs summed)."""
        y = self._check_y(y)
        z = (y - self.loc) / self.scale  # [n, T, N, E]
        comp = (-0.5 * z**2 - torch.log(self.scale) - 0.5 * _LOG_2PI).sum(-1)  # [n, T, N]
        return torch.logsumexp(comp + self.log_weights[:, :, None], dim=0)

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """Marginal CDF of each output at ``y`` ``[T, N, E]`` (the PIT value of ``y``)."""
        y = self._check_y(y)
        return self._cdf(y)

    def _cdf(self, y: torch.Tensor) -> torch.Tensor:
        z = (y - self.loc) / self.scale
        return (self._w() * torch.special.ndtr(z)).sum(0)

    def quantile(self, q: float, iters: int = 40) -> torch.Tensor:
        """Marginal ``q``-quantile of every output ``[T, N, E]`` by vectorised bisection.

        The mixture's quantile lies between the smallest and largest component quantile, which
        brackets the search tightly.
        """
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile level must be in (0, 1); got {q}")
        z = torch.special.ndtri(torch.tensor(q, dtype=self.loc.dtype, device=self.loc.device))
        comp_q = self.loc + torch.as_tensor(self.scale).expand_as(self.loc) * z  # [n, T, N, E]
        lo, hi = comp_q.amin(0), comp_q.amax(0)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            below = self._cdf(mid) < q
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def prune(self, mass: float = 1 - 1e-4) -> GaussianMixture:
        """Drop the lightest components holding less than ``1 - mass`` of each task's weight.

        Keeps the same number ``m`` of components for every task (the most any task needs) and
        renormalises; moments and densities change by at most ``1 - mass`` in relative terms.
        """
        keep = heaviest(self.log_weights, mass)  # [m, T]
        idx = keep[:, :, None, None].expand(-1, -1, *self.shape[1:])
        scale = torch.as_tensor(self.scale)
        if scale.dim() == 4 and scale.shape[0] == self.num_components:
            scale = torch.gather(scale.expand_as(self.loc), 0, idx)
        log_w = torch.gather(self.log_weights, 0, keep)
        return self._replace(torch.gather(self.loc, 0, idx), scale, log_w)

    def _replace(self, loc, scale, log_weights) -> GaussianMixture:
        return GaussianMixture(loc, scale, log_weights)

    def affine(self, scale: torch.Tensor | float, shift: torch.Tensor | float) -> GaussianMixture:
        """The distribution of ``scale * y + shift`` (per output; ``scale > 0``), e.g. to undo standardisation."""
        scale = torch.as_tensor(scale, dtype=self.loc.dtype, device=self.loc.device)
        if (scale <= 0).any():
            raise ValueError("affine: scale must be > 0")
        return self._replace(self.loc * scale + shift, torch.as_tensor(self.scale) * scale, self.log_weights)

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Central interval holding ``level`` of the predictive mass, each ``[T, N, E]``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"interval level must be in (0, 1); got {level}")
        tail = 0.5 * (1.0 - level)
        return self.quantile(tail), self.quantile(1.0 - tail)

    def sample(
        self, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``[num_samples, T, N, E]`` from the predictive (jointly over a task's points)."""
        n, t = self.log_weights.shape
        probs = self.weights.T  # [T, n]
        idx = torch.multinomial(probs, num_samples, replacement=True, generator=generator).T
        loc = torch.gather(self.loc, 0, idx[:, :, None, None].expand(-1, -1, *self.shape[1:]))
        scale = torch.as_tensor(self.scale).expand_as(self.loc)
        scale = torch.gather(scale, 0, idx[:, :, None, None].expand(-1, -1, *self.shape[1:]))
        noise = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        return loc + scale * noise
