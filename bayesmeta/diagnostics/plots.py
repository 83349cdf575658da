"""Plots. Every function returns a matplotlib ``Figure`` (built without pyplot, never shown)."""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure

__all__ = ["plot_prediction_bands"]


def plot_prediction_bands(predictive, x_grid, x_support, y_support, mask_support=None, *, truth=None,
                          tasks=None, levels=(0.5, 0.9), ncols: int = 3, title: str | None = None):
    """Predictive mean and central intervals on a 1-D grid for a few tasks.

    Args:
        predictive: predictive on the grid, shape ``[T, N, 1]``.
        x_grid: ``[N]`` or ``[T, N, 1]`` grid inputs.
        x_support, y_support, mask_support: the support sets ``[T, S, 1]`` (points shown).
        truth: optional noise-free function values on the grid ``[T, N, 1]``.
        tasks: indices of the tasks to draw (default: the first six).

    Returns:
        The ``Figure`` (one axes per task).
    """
    t_all = predictive.shape[0]
    tasks = list(range(min(6, t_all))) if tasks is None else list(tasks)
    xg = torch.as_tensor(x_grid).detach().cpu()
    xg = xg.reshape(1, -1).expand(t_all, -1) if xg.dim() == 1 else xg[..., 0]
    mean = predictive.mean[..., 0].detach().cpu()
    bands = {lv: [b[..., 0].detach().cpu() for b in predictive.interval(lv)] for lv in levels}
    if mask_support is None:
        mask_support = torch.ones(x_support.shape[:2], dtype=torch.bool)
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(4 * ncols, 3 * nrows))  # no pyplot: no global state, any backend
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, t in zip(axes.flat, tasks, strict=False):
        order = xg[t].argsort()
        xs = xg[t][order]
        for lv in sorted(levels, reverse=True):
            lo, hi = bands[lv]
            ax.fill_between(xs, lo[t][order], hi[t][order], alpha=0.2 + 0.2 * (lv < 0.75), color="C0",
                            lw=0, label=f"{int(100 * lv)} % interval")
        ax.plot(xs, mean[t][order], color="C0", label="predictive mean")
        if truth is not None:
            ax.plot(xs, truth[t, :, 0].detach().cpu()[order], "k--", lw=1, label="true function")
        m = mask_support[t].cpu()
        ax.scatter(x_support[t, m, 0].cpu(), y_support[t, m, 0].cpu(), color="C3", zorder=3, s=18,
                   label="support")
        ax.set_title(f"task {t}  (K={int(m.sum())})")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
