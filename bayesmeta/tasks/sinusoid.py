"""Sinusoid regression tasks (Finn et al. 2017) with a Bayes oracle by grid integration."""

from __future__ import annotations

import math

import torch

from ..predictive import GaussianMixture, heaviest, pad_components
from .batch import check_query_1d, check_support
from .family import TaskFamily

__all__ = ["Sinusoid"]


class Sinusoid(TaskFamily):
    """``y = A sin(x - phase) + eps`` with ``A ~ U[amplitude]``, ``phase ~ U[phase]``, ``x ~ U[x_range]``.

    Args:
        noise_std: observation noise standard deviation (``> 0`` for an oracle with a density).
        amplitude: ``(low, high)`` of the uniform amplitude prior.
        phase: ``(low, high)`` of the uniform phase prior.
        x_range: ``(low, high)`` of the uniform input distribution.

    Example:
        >>> fam = Sinusoid(noise_std=0.1)
        >>> batch = fam.sample(4, shots=5, num_query=10, generator=torch.Generator().manual_seed(0))
        >>> batch.x_support.shape, batch.y_query.shape
        (torch.Size([4, 5, 1]), torch.Size([4, 10, 1]))
    """

    def __init__(
        self,
        noise_std: float = 0.1,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0; got {noise_std}")
        for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high; got {(lo, hi)}")
        self.noise_std = float(noise_std)
        self.amplitude = tuple(map(float, amplitude))
        self.phase = tuple(map(float, phase))
        self.x_range = tuple(map(float, x_range))

    def __repr__(self) -> str:
        return (
            f"Sinusoid(noise_std={self.noise_std}, amplitude={self.amplitude}, "
            f"phase={self.phase}, x_range={self.x_range})"
        )

    @staticmethod
    def _uniform(shape, bounds, g) -> torch.Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(shape, generator=g)

    def sample_params(self, num_tasks, generator):
        return {
            "amplitude": self._uniform((num_tasks,), self.amplitude, generator),
            "phase": self._uniform((num_tasks,), self.phase, generator),
        }

    def sample_inputs(self, num_tasks, num_points, generator):
        return self._uniform((num_tasks, num_points, 1), self.x_range, generator)

    def mean_function(self, params, x):
        a = params["amplitude"].to(x)[:, None, None]  # [T, 1, 1]
        p = params["phase"].to(x)[:, None, None]
        return a * torch.sin(x - p)  # [T, N, 1]

    def simulate(self, params, x, generator):
        f = self.mean_function(params, x)
        return f + self.noise_std * torch.randn(f.shape, generator=generator)

    # ------------------------------------------------------------------ Bayes oracle
    def _grid(self, grid: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Midpoint grid over (amplitude, phase): equal prior mass per cell. Each ``[G]``."""
        def mid(lo, hi):
            step = (hi - lo) / grid
            return lo + step * (torch.arange(grid, dtype=like.dtype, device=like.device) + 0.5)

        a, p = torch.meshgrid(mid(*self.amplitude), mid(*self.phase), indexing="ij")
        return a.reshape(-1), p.reshape(-1)

    def oracle_log_weights(self, x_support, y_support, mask=None, *, grid: int = 200):
        """Posterior log weights over the parameter grid ``[G, T]`` and the grid itself."""
        if self.noise_std <= 0:
            raise ValueError("the oracle needs noise_std > 0")
        x, y, mask = check_support(x_support, y_support, mask, x_dim=1, y_dim=1, prefix="support ")
        x = x.double()
        amp, ph = self._grid(grid, x)  # [G]
        logw = torch.zeros(amp.shape[0], x.shape[0], dtype=x.dtype, device=x.device)  # [G, T]
        xs, ys, ms = x[..., 0], y[..., 0].double(), mask.double()  # [T, S]
        for j in range(xs.shape[1]):  # loop over support points (few), vectorised over grid x tasks
            f = amp[:, None] * torch.sin(xs[None, :, j] - ph[:, None])  # [G, T]
            logw = logw - 0.5 * ms[None, :, j] * ((ys[None, :, j] - f) / self.noise_std) ** 2
        return logw - torch.logsumexp(logw, 0, keepdim=True), amp, ph

    def oracle_predict(
        self,
        x_support,
        y_support,
        x_query,
        mask=None,
        *,
        grid: int = 200,
        mass: float = 1 - 1e-7,
    ) -> GaussianMixture:
        """Exact Bayes posterior predictive (up to grid resolution) at ``x_query`` ``[T, N, 1]``.

        Integrates amplitude and phase over a ``grid x grid`` midpoint grid of the true prior;
        components holding less than ``1 - mass`` of the posterior in total are dropped. Works
        on groups of tasks and keeps only each component's (amplitude, phase), so memory stays
        bounded for any number of tasks (the mixture computes its means block by block).
        """
        x, y, mask = check_support(x_support, y_support, mask, x_dim=1, y_dim=1, prefix="support ")
        xq, out_dtype = check_query_1d(x_query, x.shape[0])
        per_group = max(1, _GRID_ELEMENTS // grid**2)
        groups: list[torch.Tensor] = []
        logws: list[torch.Tensor] = []
        for start in range(0, x.shape[0], per_group):
            sl = slice(start, start + per_group)
            logw, amp, ph = self.oracle_log_weights(x[sl], y[sl], mask[sl], grid=grid)  # [G, T_g]
            idx = heaviest(logw, mass)  # [m, T_g]
            groups.append(torch.stack([amp[idx], ph[idx]], -1))  # [m, T_g, 2]
            logws.append(torch.gather(logw, 0, idx))
        m = max(p.shape[0] for p in groups)
        padded = [pad_components(p, lw, m) for p, lw in zip(groups, logws, strict=True)]
        params = torch.cat([p for p, _ in padded], 1)  # [m, T, 2]
        logw = torch.cat([lw for _, lw in padded], 1)  # [m, T]
        xq64, noise = xq.to(params), self.noise_std

        def components(p: torch.Tensor, tasks: slice):
            loc = p[..., 0, None, None] * torch.sin(xq64[tasks] - p[..., 1, None, None])  # [m_b, T_b, N, 1]
            return loc, torch.tensor(noise, dtype=loc.dtype, device=loc.device)
        # A component's mean is one sine: cheaper to recompute per use than to hold in memory.
        return GaussianMixture.from_parameters(params, logw.to(out_dtype), components, shape=(*xq.shape[:2], 1),
                                               dtype=out_dtype, cache_elements=0)


_GRID_ELEMENTS = 2**24  # grid points x tasks of one group's posterior weights (128 MB in float64)

