"""A study's results: the trials table, the best config, Optuna's plots and ``report.html``."""

from __future__ import annotations

import csv
import html
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_text
from ..runs.config import FitConfig, load_config, to_toml
from .storage import BASE_FILE, BEST_FILE, SPACE_FILE, open_study

__all__ = ["TuneResult", "write_report"]


@dataclass
class TuneResult:
    """What a study found: ``study`` (Optuna), ``best_config``, ``rows`` (one dict per trial)."""

    out: Path
    study: Any
    base: FitConfig
    rows: list[dict]

    @classmethod
    def load(cls, out, *, storage: str | None = None) -> TuneResult:
        """Read the study in directory ``out`` (its storage: the journal there, or ``storage``)."""
        study, base, _ = open_study(out, storage=storage)
        return cls(Path(out), study, base, _rows(study, Path(out)))

    @property
    def complete(self) -> list[dict]:
        return [r for r in self.rows if r["state"] == "COMPLETE"]

    @property
    def best(self) -> dict | None:
        """The finished trial with the lowest validation NLL (``None`` before one finishes)."""
        return min(self.complete, key=lambda r: r["value"], default=None)

    @property
    def defaults(self) -> dict | None:
        """The trial that ran the fit config's own settings (the baseline), if it finished."""
        return next((r for r in self.complete if r["defaults"]), None)

    @property
    def best_config(self) -> FitConfig | None:
        best = self.best
        return None if best is None else load_config(self.out / best["run"] / "config.toml")

    def table(self) -> str:
        """Markdown: every trial, best first, with its parameters, state and validation NLL."""
        keys = sorted({k for r in self.rows for k in r["params"]})
        head = "| trial | state | validation NLL | steps | seconds | " + " | ".join(keys) + " |"
        lines = [head, "|" + "---:|" * 5 + "---:|" * len(keys)]
        order = sorted(self.rows, key=lambda r: (r["state"] != "COMPLETE", r["value"] is None, r["value"] or 0.0,
                                                 r["number"]))
        for r in order:
            name = f"{r['number']}" + (" (defaults)" if r["defaults"] else "") + \
                (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else "")
            value = "-" if r["value"] is None else f"{r['value']:.4f}"
            if r["state"] == "STOPPED":
                value = f"({value} at step {r['stopped_at']})"
            cells = [_fmt(r["params"].get(k)) for k in keys]
            lines.append(f"| {name} | {r['state'].lower()} | {value} | {r['train_steps'] or '-'} | "
                         f"{r['train_seconds'] or '-'} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _rows(study, out: Path) -> list[dict]:
    """One dict per trial; ``run`` (relative to the study directory) only where the run directory exists."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        run = t.user_attrs.get("run")
        stopped = t.user_attrs.get("stopped_at")
        label = "STOPPED" if stopped is not None else "DIVERGED" if t.user_attrs.get("diverged") else t.state.name
        rows.append({"number": t.number, "state": label, "value": t.value, "params": dict(t.params),
                     "defaults": bool(t.user_attrs.get("defaults")), "retry_of": t.user_attrs.get("retry_of"),
                     "run": run if run is not None and (out / run).is_dir() else None, "best_step": t.user_attrs.get("best_step"),
                     "train_steps": t.user_attrs.get("train_steps"), "train_seconds": t.user_attrs.get("train_seconds"),
                     "per_shot": {k: v for k, v in t.user_attrs.items() if k.startswith("val_nll_K")},
                     "stopped_at": stopped})
    return rows


def _figures(result: TuneResult) -> dict[str, object]:
    """Optuna's matplotlib plots (history, importances, validation curves) as Figures, where they apply."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    figures: dict[str, object] = {}
    plots = {"optimization_history": ovm.plot_optimization_history,
             "intermediate_values": ovm.plot_intermediate_values}
    if len(result.complete) >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    import matplotlib

    # Optuna's plots switch pyplot to its "ggplot" style for good: keep the user's style as it was
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, plot in plots.items():
            try:
                ax = plot(result.study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances of a constant
                optuna.logging.get_logger("bayesmeta").warning(f"tune report: no {name} plot ({err})")
                continue
            ax0 = ax.flat[0] if hasattr(ax, "flat") else ax
            figures[name] = ax0.figure
    if result.best is not None:
        figures["best_trial"] = _best_trial_figure(result)
    return figures


def _best_trial_figure(result: TuneResult):
    """Validation NLL against training step of the best trial and of the defaults' trial."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    shown = [("best", result.best), ("defaults", result.defaults)]
    for label, row in shown:
        if row is None or (label == "defaults" and row is result.best):
            continue
        values = result.study.trials[row["number"]].intermediate_values
        steps = sorted(values)
        ax.plot(steps, [values[s] for s in steps], marker="o", label=f"{label} (trial {row['number']})")
    ax.set(xlabel="training step", ylabel="validation NLL", title="best trial's validation curve")
    ax.legend()
    fig.tight_layout()
    return fig


def write_report(result: TuneResult) -> Path:
    """Write ``trials.csv``, ``summary.md``, ``best.toml``, ``plots/*.png`` and ``report.html``; returns the html path."""
    out = result.out
    rows = result.rows
    buf = io.StringIO()
    keys = sorted({k for r in rows for k in r["params"]})
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", "value", "defaults", "retry_of", "best_step", "train_steps", "train_seconds",
                     *keys, "run"])
    for r in rows:
        writer.writerow([r["number"], r["state"], r["value"], r["defaults"], r["retry_of"], r["best_step"],
                         r["train_steps"], r["train_seconds"], *[r["params"].get(k) for k in keys], r["run"]])
    atomic_write_text(buf.getvalue(), out / "trials.csv")
    best, base = result.best, result.defaults
    lines = [f"# Tuning study {out}", "", _headline(result), "", result.table(), ""]
    if best is not None:
        best_cfg = result.best_config
        assert best_cfg is not None
        atomic_write_text(to_toml(best_cfg), out / BEST_FILE)
        lines += [f"Best config: `{out / BEST_FILE}` (use it as `bayesmeta fit --config {out / BEST_FILE} --out RUN`).",
                  ""]
    atomic_write_text("\n".join(lines), out / "summary.md")
    atomic_write_text(json.dumps({"best": best, "defaults": base, "trials": rows}, indent=1, default=str),
                      out / "results.json")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    images = []
    from matplotlib import pyplot as plt

    for name, fig in _figures(result).items():
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
        plt.close(fig)  # type: ignore[arg-type]  # Optuna draws with pyplot: release its figures
        atomic_write_bytes(png.getvalue(), plots / f"{name}.png")
        images.append(name)
    page = (f"<html><head><meta charset='utf-8'><title>bayesmeta tuning study</title></head><body>"
            f"<h1>Tuning study {html.escape(str(out))}</h1><p>{html.escape(_headline(result))}</p>"
            f"<p>Search space: <code>{html.escape(str(out / SPACE_FILE))}</code>; base config: "
            f"<code>{html.escape(str(out / BASE_FILE))}</code></p>"
            + "".join(f"<h2>{n.replace('_', ' ')}</h2><img src='plots/{n}.png'>" for n in images)
            + f"<h2>Trials</h2><pre>{html.escape(result.table())}</pre></body></html>")
    atomic_write_text(page, out / "report.html")
    return out / "report.html"


def _headline(result: TuneResult) -> str:
    states = [r["state"] for r in result.rows]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "STOPPED", "DIVERGED", "PRUNED", "FAIL",
                                                                   "RUNNING", "WAITING") if states.count(s))
    best, base = result.best, result.defaults
    text = f"{len(states)} trials ({counts or 'none'})."
    if best is not None:
        text += f" Best: trial {best['number']}, validation NLL {best['value']:.4f}."
    if base is not None:
        text += f" The fit config's own settings (trial {base['number']}): {base['value']:.4f}."
        if best is not None:
            text += f" Difference {best['value'] - base['value']:+.4f} nats."
    return text
