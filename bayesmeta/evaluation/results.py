"""Tidy evaluation results: per-task rows, a summary per method x shots, JSON / CSV / Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..io import atomic_write_text
from .metrics import CALIBRATION_LEVELS, classwise_ece, mean_se, reliability, selective_prediction

__all__ = ["Evaluation", "PIT_BINS", "markdown_table", "plus_minus", "summarise"]

PIT_BINS = 20
_FORMAT = "bayesmeta.Evaluation/1"


def _pct(level: float) -> str:
    return f"{100 * level:g}"


def markdown_table(header, rows) -> str:
    """A Markdown table: the header row, the separator, one line per row (cells as ``str``).

    Example:
        >>> print(markdown_table(["a", "b"], [[1, "x"]]))
        | a | b |
        |---|---|
        | 1 | x |
    """
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def summarise(name, k, ids, skipped, res: dict, *, levels, curve_levels, timing) -> tuple[list[dict], dict]:
    """Per-task rows and the summary row of one method at one shot count."""
    n = len(ids)
    rows = [{"method": name, "shots": k, "task": int(t)} for t in ids]
    summary = {"method": name, "shots": k, "num_tasks": n, "skipped_tasks": list(skipped)}
    for key in ("nll", "mse", "crps", "oracle_nll", "accuracy", "brier"):
        if key in res:
            for r, v in zip(rows, res[key].tolist(), strict=True):
                r[key] = v
            summary[key], summary[f"{key}_se"] = mean_se(res[key])
    if "oracle_nll" in res:
        gap = res["nll"] - res["oracle_nll"]
        for r, v in zip(rows, gap.tolist(), strict=True):
            r["gap"] = v
        summary["gap"], summary["gap_se"] = mean_se(gap)
    if "inside" in res:
        _coverage_summary(rows, summary, res, levels, curve_levels)
    if "confidence" in res:  # classes: ECE over the pooled query points, and the reliability diagram
        rel = reliability(res["confidence"], res["correct"])
        summary["ece"], summary["reliability"] = rel["ece"], rel
        summary["ece_classwise"] = classwise_ece(res["class_probs"], res["labels"])
        summary["selective"] = selective_prediction(res["confidence"], res["correct"])
    if "ess" in res:
        for r, e, kk in zip(rows, res["ess"].tolist(), res["pareto_k"].tolist(), strict=True):
            r["ess"], r["pareto_k"] = e, kk
        summary["ess_median"] = float(res["ess"].median())
        summary["pareto_k_frac_above_0_7"] = float((res["pareto_k"] > 0.7).double().mean())
    summary["adapt_us_per_task"] = 1e6 * timing[0] / n
    summary["predict_us_per_task"] = 1e6 * timing[1] / n
    return rows, summary


def _coverage_summary(rows, summary, res, levels, curve_levels) -> None:
    inside, pairs = res["inside"], res["pairs"]  # [T, L] counts, [T]
    per_task = inside / pairs[:, None].clamp_min(1)
    pooled = inside.sum(0) / pairs.sum().clamp_min(1)  # [L]
    col = {lv: curve_levels.index(lv) for lv in curve_levels}
    for lv in levels:
        for r, v in zip(rows, per_task[:, col[lv]].tolist(), strict=True):
            r[f"coverage_{_pct(lv)}"] = v
        summary[f"coverage_{_pct(lv)}"] = float(pooled[col[lv]])
        summary[f"coverage_{_pct(lv)}_task_sd"] = float(per_task[:, col[lv]].std()) if len(rows) > 1 else 0.0
    curve = [float(pooled[col[lv]]) for lv in CALIBRATION_LEVELS]
    summary["calibration_error"] = sum(abs(c - lv) for lv, c in zip(CALIBRATION_LEVELS, curve, strict=True)) / len(curve)
    summary["calibration_levels"] = list(CALIBRATION_LEVELS)
    summary["calibration_curve"] = curve
    counts = torch.histc(res["pit"].clamp(0, 1), bins=PIT_BINS, min=0.0, max=1.0)
    summary["pit_counts"] = [int(c) for c in counts.tolist()]


class Evaluation:
    """Results of :func:`~bayesmeta.evaluate`: tidy rows and a summary per method x shots.

    Attributes:
        rows: one dict per task x shot count (``method``, ``shots``, ``task`` and the metrics).
        summary: one dict per method x shot count: mean and standard error over tasks
            (``nll``/``nll_se``, ``gap``/``gap_se``, ...), pooled coverage per level and its
            per-task spread, calibration error and curve (19 levels), PIT histogram counts,
            adaptation and prediction time per task, ESS / Pareto-k where reported.
        pit: raw PIT values per ``(method, shots)`` (kept in memory, not serialised).
    """

    def __init__(self, rows: list[dict], summary: list[dict], *, info: dict | None = None, pit=None) -> None:
        self.rows, self.summary = list(rows), list(summary)
        self.info = dict(info or {})
        self.pit = dict(pit or {})

    def __repr__(self) -> str:
        return f"Evaluation(methods={self.methods}, shots={self.shots}, rows={len(self.rows)})"

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.summary))

    @property
    def shots(self) -> list[int]:
        return list(dict.fromkeys(r["shots"] for r in self.summary))

    def get(self, method: str, shots: int) -> dict:
        """The summary row of one method at one shot count."""
        for r in self.summary:
            if r["method"] == method and r["shots"] == shots:
                return r
        raise KeyError(f"no summary for method={method!r}, shots={shots}; have {[(r['method'], r['shots']) for r in self.summary]}")

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation.concat([self, other])

    @classmethod
    def concat(cls, evaluations) -> Evaluation:
        """Several methods' results in one table (e.g. for a comparison chart)."""
        evaluations = list(evaluations)
        if not evaluations:
            raise ValueError("concat: no evaluations")
        seen = set()
        for ev in evaluations:
            for r in ev.summary:
                key = (r["method"], r["shots"])
                if key in seen:
                    raise ValueError(f"concat: method {key[0]!r} at shots={key[1]} appears twice; give it another name=")
                seen.add(key)
        return cls([r for ev in evaluations for r in ev.rows], [r for ev in evaluations for r in ev.summary],
                   info=evaluations[0].info, pit={k: v for ev in evaluations for k, v in ev.pit.items()})

    # ------------------------------------------------------------------ output
    def table(self) -> str:
        """The summary as a Markdown table (mean ± s.e. over tasks; coverage pooled)."""
        has = lambda key: any(key in r for r in self.summary)  # noqa: E731
        cols: list[tuple[str, Callable[..., str]]] = [("method", lambda r: r["method"]), ("K", lambda r: str(r["shots"])),
                ("tasks", lambda r: str(r["num_tasks"]))]
        for key, label in (("nll", "NLL"), ("oracle_nll", "oracle NLL"), ("gap", "gap"), ("mse", "MSE"),
                           ("crps", "CRPS"), ("accuracy", "accuracy"), ("brier", "Brier")):
            if has(key):
                cols.append((label, lambda r, key=key: plus_minus(r, key)))
        if has("ece"):
            cols.append(("ECE", lambda r: _num(r.get("ece"))))
        if has("ece_classwise"):
            cols.append(("cw-ECE", lambda r: _num(r.get("ece_classwise"))))
        if has("selective"):
            cols.append(("sel. area", lambda r: _num(r["selective"]["area"]) if "selective" in r else "-"))
        for lv in self.info.get("levels", ()):
            if has(f"coverage_{_pct(lv)}"):
                cols.append((f"cov{_pct(lv)}", lambda r, lv=lv: _num(r.get(f"coverage_{_pct(lv)}"))))
        if has("calibration_error"):
            cols.append(("cal.err", lambda r: _num(r.get("calibration_error"))))
        if has("ess_median"):
            cols.append(("ESS med", lambda r: _num(r.get("ess_median"), 0)))
        if has("pareto_k_frac_above_0_7"):
            cols.append(("k>0.7", lambda r: _num(r.get("pareto_k_frac_above_0_7"), 2)))
        cols += [("adapt µs/task", lambda r: f"{r['adapt_us_per_task']:.0f}"),
                 ("predict µs/task", lambda r: f"{r['predict_us_per_task']:.0f}")]
        return markdown_table([c for c, _ in cols], [[f(r) for _, f in cols] for r in self.summary])

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "info": self.info, "summary": self.summary, "rows": self.rows}

    def to_json(self, path) -> Path:
        """Write summary, rows and settings as JSON (atomically)."""
        return atomic_write_text(json.dumps(_finite_json(self.to_dict()), indent=1), path)

    @classmethod
    def from_json(cls, path) -> Evaluation:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a bayesmeta evaluation file (format {_FORMAT})")
        return cls(data["rows"], data["summary"], info=data["info"])

    def to_csv(self, path, *, summary: bool = False) -> Path:
        """Write the per-task rows (or, with ``summary=True``, the scalar summary columns) as CSV."""
        records = self.summary if summary else self.rows
        fields = list(dict.fromkeys(k for r in records for k, v in r.items() if not isinstance(v, list | dict)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return atomic_write_text(buf.getvalue(), path)


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def plus_minus(r: dict, key: str) -> str:
    """``"mean ± se"`` of ``r[key]`` and ``r[key + "_se"]`` (3 decimals; the mean alone without a
    finite s.e.; ``"-"`` when ``key`` is missing)."""
    if key not in r:
        return "-"
    se = r.get(f"{key}_se")
    return f"{r[key]:.3f}" if se is None or math.isnan(se) else f"{r[key]:.3f} ± {se:.3f}"


def _finite_json(obj):
    """JSON has no NaN: write ``null`` instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_json(v) for v in obj]
    return obj
