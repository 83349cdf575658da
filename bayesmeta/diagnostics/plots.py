"""Plots. Every function returns a matplotlib ``Figure`` (built without pyplot, never shown)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_elbo_trace", "plot_forgetting", "plot_prediction_bands", "plot_shrinkage"]


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
    fig = _figure(figsize=(4 * ncols, 3 * nrows))  # no pyplot: no global state, any backend
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


def _moving_average(v: torch.Tensor, width: int) -> torch.Tensor:
    if width <= 1 or v.numel() < width:
        return v
    c = torch.cat([v.new_zeros(1), v.cumsum(0)])
    out = (c[width:] - c[:-width]) / width
    return torch.cat([v[: width - 1].cumsum(0) / torch.arange(1, width, dtype=v.dtype), out])


def plot_elbo_trace(history, *, smooth: int = 20, title: str | None = None) -> Figure:
    """Training loss (negative ELBO or bound per task) against step, raw and moving-averaged, and
    the validation NLL (right axis) with the best validation step, when the fit validated.

    Args:
        history: a learner's ``history`` (``step``, ``loss``, ``time``), its ``as_dict()``, or
            ``{name: history}`` for several runs on one axes.
        smooth: moving-average width in logged points.

    The y-range follows the smoothed curve after the first 5 % of training, so the large
    early losses do not flatten the part worth reading.
    """
    runs = history if isinstance(history, dict) and "step" not in history else {"": history}
    fig = _figure(figsize=(6, 3.6))
    ax = fig.subplots()
    lows, highs = [], []
    for i, (name, h) in enumerate(runs.items()):
        h = h if isinstance(h, dict) else h.as_dict()
        if not h["step"]:
            raise ValueError(f"history {name!r} is empty: nothing was trained")
        step = torch.tensor(h["step"], dtype=torch.float64)
        loss = torch.tensor(h["loss"], dtype=torch.float64)
        avg = _moving_average(loss, smooth)
        ax.plot(step, loss, color=f"C{i}", alpha=0.25, lw=0.8)
        ax.plot(step, avg, color=f"C{i}", lw=1.5, label=f"{name} (moving average)".strip())
        tail = avg[int(0.05 * len(avg)) :]
        lows.append(float(tail.min()))
        highs.append(float(tail.max()))
    pad = 0.05 * (max(highs) - min(lows) + 1e-9)
    ax.set_ylim(min(lows) - pad, max(highs) + pad)
    ax.set(xlabel="step", ylabel="loss per task (negative bound)", title=title or "training")
    handles, labels = ax.get_legend_handles_labels()
    vals = {name: (h if isinstance(h, dict) else h.as_dict()) for name, h in runs.items()}
    if any(v.get("validation") for v in vals.values()):
        twin = ax.twinx()
        for i, (name, h) in enumerate(vals.items()):
            _plot_validation(twin, h, f"C{i}", name)
        twin.set_ylabel("validation NLL per point")
        more_h, more_l = twin.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    ax.legend(handles, labels, fontsize=7)
    fig.tight_layout()
    return fig


def _plot_validation(ax, h: dict, color: str, name: str) -> None:
    """Validation NLL against step (dashed, markers) and the step whose weights were kept (dotted line)."""
    val = h.get("validation") or []
    if not val:
        return
    ax.plot([v["step"] for v in val], [v["nll"] for v in val], color=color, ls="--", marker="o", ms=3, lw=1,
            label=f"{name} validation NLL".strip())
    if h.get("best_step") is not None:
        ax.axvline(h["best_step"], color=color, ls=":", lw=1, label=f"{name} best validation step".strip())


def plot_shrinkage(posterior, *, num_samples: int = 500, method: str | None = None, max_coordinates: int = 8,
                   seed: int = 0) -> Figure:
    """Prior vs posterior of every task-parameter coordinate: how far each task moved, how sure it got.

    One axes per coordinate (up to ``max_coordinates``): the learned prior's mean ± 1 and 2 sd
    as bands, each task's posterior mean ± 1 sd as an error bar, tasks ordered by their number of
    support points. Few points: posteriors near the prior band; many: narrow and spread out.
    """
    model = posterior.program  # the model's program: flat unconstrained coordinates
    draws = model.flatten(posterior.sample(num_samples, method=method, seed=seed)).detach().cpu().double()  # [n, T, P]
    prior = model.gaussian_prior()
    if prior is not None:
        pm, psd = prior.mean.detach().cpu().double(), prior.variance.detach().cpu().double().sqrt()
    else:  # not Gaussian in these coordinates: moments of prior draws
        with torch.no_grad():
            u = model.sample_prior(posterior.x_support[:1], 4000)[:, 0].detach().cpu().double()  # [n, P]
        pm, psd = u.mean(0), u.std(0)
    counts = posterior.mask_support.sum(-1).cpu()
    order = torch.argsort(counts, stable=True)
    mean, sd = draws.mean(0)[order], draws.std(0)[order]  # [T, P]
    names = model.coordinate_names()
    show = list(range(min(model.param_dim, max_coordinates)))
    ncols = min(4, len(show))
    nrows = math.ceil(len(show) / ncols)
    fig = _figure(figsize=(3.4 * ncols, 2.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    xs = torch.arange(len(order))
    for ax, c in zip(axes.flat, show, strict=False):
        ax.axhspan(pm[c] - 2 * psd[c], pm[c] + 2 * psd[c], color="0.92", lw=0)
        ax.axhspan(pm[c] - psd[c], pm[c] + psd[c], color="0.82", lw=0, label="prior ± 1, 2 sd")
        ax.errorbar(xs, mean[:, c], yerr=sd[:, c], fmt="o", ms=3, capsize=2, color="C0", label="posterior ± 1 sd")
        ratio = float((sd[:, c] / psd[c]).mean())
        ax.set_title(f"{names[c]}  (sd post/prior {ratio:.2f})", fontsize=9)
        ax.set_xticks(xs[:: max(1, len(xs) // 6)], [str(int(counts[order][i])) for i in xs[:: max(1, len(xs) // 6)]])
        ax.set_xlabel("tasks by support size", fontsize=8)
    for ax in list(axes.flat)[len(show):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_forgetting(results, *, title: str | None = None) -> Figure:
    """Each phase's test NLL after every phase of training, one line per arm (forgetting shows as a rise).

    Args:
        results: :class:`~bayesmeta.evaluation.continual.ContinualResult` s (the same phases).

    Returns:
        The ``Figure`` (one axes per phase scored).
    """
    n = results[0].nll.shape[1]
    fig = _figure(figsize=(3.6 * n, 3.2))
    axes = fig.subplots(1, n, squeeze=False)[0]
    trained = range(1, results[0].nll.shape[0] + 1)
    for j, ax in enumerate(axes):
        for r in results:
            ax.errorbar(list(trained), r.nll[:, j], yerr=r.nll_se[:, j], marker="o", capsize=3, label=r.name)
        ax.axvline(j + 1, color="0.8", lw=1, zorder=0)
        ax.set_yscale("symlog", linthresh=1.0)  # a phase not yet seen can score orders of magnitude worse
        ax.set(title=f"tasks of phase {j + 1}", xlabel="after training phase", xticks=list(trained))
    axes[0].set_ylabel("test NLL (nats per point)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title or "forgetting: NLL on each phase's tasks as training moves on")
    fig.tight_layout()
    return fig


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure  # lazy: `import bayesmeta` stays light

    return Figure(**kwargs)
