"""Sinusoid regression tasks (Finn et al. 2017) with a Bayes oracle by grid integration."""

from __future__ import annotations

import math

import torch

from ..mixture import GaussianMixture, heaviest
from .batch import check_support
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
        components holding less than ``1 - mass`` of the posterior in total are dropped.
        """
        logw, amp, ph = self.oracle_log_weights(x_support, y_support, mask, grid=grid)
        xq = torch.as_tensor(x_query).double()
        if xq.dim() == 2:
            xq = xq.unsqueeze(-1)
        if xq.dim() != 3 or xq.shape[0] != logw.shape[1] or xq.shape[-1] != 1:
            raise ValueError(f"x_query must have shape [{logw.shape[1]}, N, 1]; got {tuple(xq.shape)}")
        idx = heaviest(logw, mass)  # [m, T]
        a, p = amp[idx], ph[idx]  # [m, T]
        loc = a[:, :, None, None] * torch.sin(xq[None] - p[:, :, None, None])  # [m, T, N, 1]
        out_dtype = torch.as_tensor(x_query).dtype if torch.is_tensor(x_query) else torch.float32
        return GaussianMixture(
            loc.to(out_dtype),
            torch.tensor(self.noise_std, dtype=out_dtype, device=loc.device),
            torch.gather(logw, 0, idx).to(out_dtype),
        )
