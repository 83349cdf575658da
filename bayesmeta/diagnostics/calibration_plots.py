"""Calibration plots: coverage curve, PIT histogram, SBC ranks, method comparison.

Every function returns a matplotlib ``Figure`` built without pyplot (no global state, never
shown); save it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..evaluation.results import Evaluation
from .plots import _figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_calibration_curve", "plot_method_comparison", "plot_pit_histogram", "plot_reliability_diagram",
           "plot_sbc_ranks", "plot_selective_prediction"]


def _rows(evaluation, methods=None, shots=None) -> list[dict]:
    if not isinstance(evaluation, Evaluation):
        raise TypeError(f"evaluation must be a bayesmeta Evaluation; got {type(evaluation).__name__}")
    rows = [r for r in evaluation.summary
            if (methods is None or r["method"] in methods) and (shots is None or r["shots"] in shots)]
    if not rows:
        raise ValueError(f"no results for methods={methods}, shots={shots}; have methods {evaluation.methods}, "
                         f"shots {evaluation.shots}")
    return rows


def _binomial_band(n: int, p: float, level: float = 0.99) -> tuple[float, float]:
    z = float(torch.special.ndtri(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
    half = z * math.sqrt(n * p * (1 - p))
    return n * p - half, n * p + half


def plot_calibration_curve(evaluation: Evaluation, *, methods=None, shots=None, title: str | None = None) -> Figure:
    """Observed vs nominal coverage of central intervals (19 levels), one line per method x shots.

    A calibrated predictive follows the diagonal; below it the intervals are too narrow
    (overconfident), above it too wide.
    """
    rows = [r for r in _rows(evaluation, methods, shots) if "calibration_curve" in r]
    if not rows:
        raise ValueError("the evaluation has no coverage results (metrics without 'coverage')")
    fig = _figure(figsize=(4.5, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="ideal")
    for i, r in enumerate(rows):
        ax.plot(r["calibration_levels"], r["calibration_curve"], marker="o", ms=3, color=f"C{i % 10}",
                label=f"{r['method']}, K={r['shots']} (err {r['calibration_error']:.3f})")
    ax.set(xlabel="nominal level of the central interval", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1),
           title=title or "calibration")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_reliability_diagram(evaluation: Evaluation, *, methods=None, shots=None) -> Figure:
    """Reliability diagrams of class predictions (binary or categorical outcomes), one axes per
    method x shots: accuracy against confidence in 15 equal-width bins, the bins' shares of the
    predictions as bars, and the ECE in the title. A calibrated classifier follows the diagonal.
    """
    rows = [r for r in _rows(evaluation, methods, shots) if "reliability" in r]
    if not rows:
        raise ValueError("the evaluation has no class predictions (no reliability numbers)")
    fig = _figure(figsize=(3.4 * min(4, len(rows)), 3.4 * math.ceil(len(rows) / 4)))
    axes = fig.subplots(math.ceil(len(rows) / 4), min(4, len(rows)), squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=False):
        rel = r["reliability"]
        b = rel["bins"]
        mids = [(i + 0.5) / b for i in range(b)]
        total = max(1.0, sum(rel["count"]))
        ax.bar(mids, [c / total for c in rel["count"]], width=1 / b, color="0.85", label="share of predictions")
        pts = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"], strict=True) if n > 0]
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, color="C0", label="accuracy")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{r['method']}, K={r['shots']}: ECE {rel['ece']:.3f}")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_selective_prediction(evaluation: Evaluation, *, methods=None, shots=None) -> Figure:
    """Selective prediction, one axes per shot count: accuracy of the most confident fraction of
    query points against the fraction kept, one line per method (area under it in the legend).
    Confidence that ranks well rises to the left; a flat line means confidence says nothing.
    """
    rows = [r for r in _rows(evaluation, methods, shots) if "selective" in r]
    if not rows:
        raise ValueError("the evaluation has no class predictions (no selective-prediction numbers)")
    ks = sorted({r["shots"] for r in rows})
    fig = _figure(figsize=(3.8 * len(ks), 3.4))
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks, strict=True):
        for i, r in enumerate(x for x in rows if x["shots"] == k):
            sel = r["selective"]
            ax.plot(sel["fractions"], sel["accuracy"], "o-", ms=3, color=f"C{i}",
                    label=f"{r['method']} ({sel['area']:.3f})")
        ax.set(xlim=(0, 1.02), xlabel="fraction kept (most confident first)", ylabel="accuracy", title=f"K={k}")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def plot_pit_histogram(evaluation: Evaluation, *, methods=None, shots=None, level: float = 0.99) -> Figure:
    """PIT histograms (one axes per method x shots) with the band a uniform histogram stays in.

    The band is the per-bin binomial ``level`` range for uniform PIT values. A U shape means
    overconfident predictions, a hump underconfident ones, a slope bias.
    """
    rows = [r for r in _rows(evaluation, methods, shots) if "pit_counts" in r]
    if not rows:
        raise ValueError("the evaluation has no PIT values (metrics without 'coverage')")
    ncols = min(3, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig = _figure(figsize=(4 * ncols, 3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=False):
        counts = r["pit_counts"]
        b, n = len(counts), sum(counts)
        lo, hi = _binomial_band(n, 1 / b, level)
        ax.axhspan(lo, hi, color="0.4", alpha=0.25, lw=0, zorder=3, label=f"uniform, {int(100 * level)} % band")
        ax.bar([(i + 0.5) / b for i in range(b)], counts, width=1 / b, color="C0", alpha=0.8, edgecolor="white")
        ax.set(xlim=(0, 1), xlabel="PIT value F(y)", ylabel="count", title=f"{r['method']}, K={r['shots']}")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    return fig


def plot_sbc_ranks(result, *, max_coordinates: int = 12, level: float = 0.99) -> Figure:
    """SBC rank histograms, one axes per parameter coordinate, with the uniform band.

    Ranks piled at both ends: the posterior is too narrow; in the middle: too wide; on one side:
    biased. The title of each axes carries the uniformity test's p-value.
    """
    ranks, names = result.ranks, result.names
    p = ranks.shape[1]
    show = list(range(min(p, max_coordinates)))
    ncols = min(4, len(show))
    nrows = math.ceil(len(show) / ncols)
    fig = _figure(figsize=(3.2 * ncols, 2.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    bins, values = result.bins, result.num_posterior_samples + 1
    bin_of = torch.arange(values) * bins // values
    for ax, c in zip(axes.flat, show, strict=False):
        counts = torch.bincount(bin_of[ranks[:, c].long()], minlength=bins).tolist()
        lo, hi = _binomial_band(ranks.shape[0], 1 / bins, level)
        ax.axhspan(lo, hi, color="0.4", alpha=0.25, lw=0, zorder=3)
        ax.bar(range(bins), counts, width=1.0, color="C1", alpha=0.8, edgecolor="white")
        ax.set_title(f"{names[c]}  (p={float(result.p_values[c]):.2g})", fontsize=9)
        ax.set_xticks([])
    for ax in list(axes.flat)[len(show):]:
        ax.axis("off")
    fig.suptitle(f"SBC ranks: {ranks.shape[0]} simulations, {result.num_posterior_samples} draws each", fontsize=10)
    fig.tight_layout()
    return fig


def plot_method_comparison(evaluation: Evaluation, *, methods=None, level: float = 0.9) -> Figure:
    """NLL (mean ± s.e.), coverage of the ``level`` interval and calibration error by shots.

    One line per method. With an oracle the first axes shows the NLL gap to it instead.
    """
    rows = _rows(evaluation, methods)
    key = "gap" if all("gap" in r for r in rows) else "nll"
    cov_key = f"coverage_{100 * level:g}"
    fig = _figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["shots"])
        k = [r["shots"] for r in mine]
        style = {"marker": "o", "ms": 4, "capsize": 3, "color": f"C{i % 10}", "label": method}
        axes[0].errorbar(k, [r[key] for r in mine], yerr=[_nan0(r.get(f"{key}_se")) for r in mine], **style)
        if all(cov_key in r for r in mine):
            se = [r.get(f"{cov_key}_task_sd", 0.0) / math.sqrt(r["num_tasks"]) for r in mine]
            axes[1].errorbar(k, [r[cov_key] for r in mine], yerr=se, **style)
        elif all("accuracy" in r for r in mine):
            axes[1].errorbar(k, [r["accuracy"] for r in mine], yerr=[_nan0(r.get("accuracy_se")) for r in mine],
                             **style)
        if all("calibration_error" in r for r in mine):
            axes[2].plot(k, [r["calibration_error"] for r in mine], marker="o", ms=4, color=f"C{i % 10}", label=method)
        elif all("ece" in r for r in mine):
            axes[2].plot(k, [r["ece"] for r in mine], marker="o", ms=4, color=f"C{i % 10}", label=method)
    classes = all("ece" in r and "calibration_error" not in r for r in rows)
    axes[0].set(xlabel="shots K", ylabel="NLL gap to the oracle" if key == "gap" else "NLL", title="NLL (± s.e.)")
    if classes:
        axes[1].set(xlabel="shots K", ylabel="accuracy", title="accuracy (± s.e.)")
        axes[2].set(xlabel="shots K", ylabel="ECE (15 bins)", title="expected calibration error")
    else:
        axes[1].axhline(level, color="k", ls=":", lw=1)
        axes[1].set(xlabel="shots K", ylabel=f"coverage of {100 * level:g} % intervals", title="coverage")
        axes[2].set(xlabel="shots K", ylabel="mean |coverage - level|", title="calibration error")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _nan0(v) -> float:
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v

