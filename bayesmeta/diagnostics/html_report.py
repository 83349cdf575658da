"""One self-contained HTML report (plots embedded, tables of metrics and diagnostics) for a run.

Writes ``plots/*.png`` and ``report.html`` into a directory and records what it wrote in
``.bayesmeta-report.json``: a later report may replace those files, never anything else. A
file of the same name that a report did not write stops the report before anything is written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.results import Evaluation
from ..io import atomic_write_bytes, atomic_write_text
from .calibration_plots import (
    plot_calibration_curve,
    plot_method_comparison,
    plot_pit_histogram,
    plot_reliability_diagram,
    plot_sbc_ranks,
    plot_selective_prediction,
)
from .plots import plot_elbo_trace, plot_shrinkage
from .sbc import SBCResult

__all__ = ["report", "load_run"]

MANIFEST = ".bayesmeta-report.json"
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
figure{margin:1em 0 2em}figcaption{color:#555;font-size:13px}
.warn{background:#fff3cd;border-left:4px solid #d39e00;padding:6px 10px}"""

_CAPTIONS = {
    "training": "Training loss per task (negative bound): it should fall and flatten; a late rise or spikes mean "
                "the learning rate is too high. Dashed (right axis): validation NLL on held-out tasks; it rising "
                "while the training loss falls is meta-overfitting, and the dotted line marks the weights kept.",
    "calibration": "Observed vs nominal coverage of central intervals. On the diagonal: calibrated; below: "
                   "overconfident; above: underconfident.",
    "pit": "PIT histograms with the band a uniform histogram stays in (99 %), randomised for counts and classes. "
           "U shape: overconfident; hump: underconfident; slope: biased.",
    "reliability": "Reliability diagrams of class predictions: accuracy against confidence in 15 equal-width bins "
                   "(grey: share of predictions per bin). On the diagonal: calibrated; below: overconfident.",
    "selective": "Selective prediction: accuracy of the most confident fraction of query points (area under the "
                 "curve in the legend). Useful confidence rises to the left.",
    "comparison": "NLL (or the gap to the Bayes oracle), 90 % coverage and calibration error by number of shots.",
    "shrinkage": "Learned prior (bands) vs each task's posterior (error bars), tasks ordered by support size.",
    "sbc_ranks": "Simulation-based calibration: ranks of the true parameters among posterior draws; uniform when "
                 "the posterior is right. Ends high: too narrow; middle high: too wide.",
}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _table(records: list[dict], columns=None, digits: int = 3) -> str:
    if not records:
        return "<p>(none)</p>"
    columns = columns or list(dict.fromkeys(k for r in records for k, v in r.items() if not isinstance(v, list | dict)))

    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        return html.escape("-" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in records)
    return f"<table><tr>{head}</tr>{body}</table>"


def _has_history(h) -> bool:
    """A learner's history, its dict, or ``{name: history}`` (ensembles) with at least one logged step."""
    if h is None:
        return False
    if hasattr(h, "as_dict"):
        return bool(h.step)
    if "step" in h:
        return bool(h["step"])
    return bool(h) and all(_has_history(v) for v in h.values())


def _figures(evaluation, history, posterior, sbc) -> dict:
    figs = {}
    if _has_history(history):
        figs["training"] = plot_elbo_trace(history)
    if evaluation is not None and any("calibration_curve" in r for r in evaluation.summary):
        figs["calibration"] = plot_calibration_curve(evaluation)
        figs["pit"] = plot_pit_histogram(evaluation)
    if evaluation is not None and any("reliability" in r for r in evaluation.summary):
        figs["reliability"] = plot_reliability_diagram(evaluation)
        figs["selective"] = plot_selective_prediction(evaluation)
    if evaluation is not None and (len(evaluation.shots) > 1 or len(evaluation.methods) > 1):
        figs["comparison"] = plot_method_comparison(evaluation)
    if posterior is not None:
        figs["shrinkage"] = plot_shrinkage(posterior)
    if sbc is not None:
        figs["sbc_ranks"] = plot_sbc_ranks(sbc)
    return figs


def _check_targets(out: Path, targets: list[str]) -> None:
    mine = set()
    if (out / MANIFEST).exists():
        try:
            mine = set(json.loads((out / MANIFEST).read_text())["files"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"report: {out / MANIFEST} is unreadable; remove it or choose another directory") from err
    for rel in targets:
        if (out / rel).exists() and rel not in mine:
            raise ValueError(f"report: {out / rel} exists and was not written by a bayesmeta report; "
                             "refusing to overwrite it (choose another directory)")


def report(out_dir, *, evaluation: Evaluation | None = None, learner=None, history=None, posterior=None,
           sbc: SBCResult | None = None, reference: dict | None = None, figures: dict | None = None,
           info: dict | None = None, title: str = "bayesmeta report") -> Path:
    """Write ``plots/*.png`` and a self-contained ``report.html`` into ``out_dir``.

    Args:
        evaluation: results of :func:`bayesmeta.evaluate` (tables, calibration curve, PIT
            histograms, comparison by shots).
        learner: a fitted learner (its ``history`` gives the training trace).
        history: a training history, if no learner is given.
        posterior: a :class:`~bayesmeta.Posterior` for the prior-vs-posterior shrinkage plot.
        sbc: a :class:`SBCResult` (rank histograms and the uniformity table).
        reference: ``{"diagnostics": reference_diagnostics(...), "comparison": compare_posteriors(...)}``, and
            for a model with global sites ``"globals": compare_global_posteriors(...)`` (a side-by-side
            table of the amortized and the NUTS hyperposterior).
        figures: more figures to include, ``{name: Figure or path to a PNG}``; a PNG path is
            embedded (and copied into ``plots/``) unless a figure of that name is drawn from data.
        info: key-value pairs shown at the top (data, model, training budget...).

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: a file the report would write exists and no earlier report wrote it.
    """
    out = Path(out_dir)
    history = history if history is not None else getattr(learner, "history", None)
    figs = _figures(evaluation, history, posterior, sbc)
    for name, f in (figures or {}).items():
        if not isinstance(f, str | Path):
            figs[name] = f
    pngs = {name: _png(fig) for name, fig in figs.items()}
    copies = {}  # PNG files given by path: embedded, and copied into plots/ unless they already live there
    for name, f in (figures or {}).items():
        if isinstance(f, str | Path) and name not in pngs:
            pngs[name] = Path(f).read_bytes()
            if Path(f).resolve() != (out / "plots" / f"{name}.png").resolve():
                copies[name] = pngs[name]
    written = {name: data for name, data in pngs.items() if name in figs or name in copies}
    targets = [f"plots/{name}.png" for name in written] + ["report.html"]
    _check_targets(out, targets)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in written.items():
        atomic_write_bytes(data, out / "plots" / f"{name}.png")
    page = _html(title, info, evaluation, sbc, reference, pngs, history, hyper=_hyper_section(learner, reference))
    path = atomic_write_text(page, out / "report.html")
    previous = set()
    if (out / MANIFEST).exists():
        previous = set(json.loads((out / MANIFEST).read_text())["files"])
    atomic_write_text(json.dumps({"files": sorted(previous | set(targets))}, indent=1), out / MANIFEST)
    return path


def _training_section(history) -> str:
    """Validation during training: the best step, the scores, and every warning training raised."""
    runs = history if isinstance(history, dict) and "step" not in history else {"": history}
    parts = []
    for name, h in runs.items():
        h = h if isinstance(h, dict) else h.as_dict()
        val, notes = h.get("validation") or [], h.get("notes") or []
        if not val and not notes:
            continue
        label = f" ({html.escape(name)})" if name else ""
        parts += [f"<p class='warn'><b>Warning:</b> {html.escape(n)}</p>" for n in notes if "overfitting" in n]
        parts += [f"<p>{html.escape(n)}</p>" for n in notes if "overfitting" not in n]
        if val:
            rows = [{"step": v["step"], "train_loss": v.get("train_loss"), "val_nll": v["nll"],
                     "val_coverage_90": v["coverage_90"],
                     **{f"nll_K{s['shots']}": s["nll"] for s in v["per_shot"]}} for v in val]
            best = h.get("best_step")
            parts.append(f"<p>Validation{label}: {len(val)} validations on held-out tasks (adapt on K support points, "
                         f"predict the rest); best validation NLL at step {best}.</p>" + _table(rows, digits=3))
    return "<h2>Training and validation</h2>" + "".join(parts) if parts else ""


def _hyper_section(learner, reference) -> str:
    """The hyperposterior of a model with global sites: a summary, its correction, and NUTS beside it if given."""
    program = getattr(learner, "program", None)
    if program is None or not getattr(program, "has_globals", False):
        return ""
    from .hyper import hyperposterior_inference_data

    idata: Any = hyperposterior_inference_data(learner, num_samples=4000)
    rows = []
    for name in idata.posterior.data_vars:
        v = idata.posterior[name].values.reshape(-1, max(1, int(idata.posterior[name].values[0, 0].size)))
        for j in range(v.shape[1]):
            q = v[:, j]
            rows.append({"site": name if v.shape[1] == 1 else f"{name}[{j}]", "mean": float(q.mean()),
                         "sd": float(q.std()), "q05": float(np.quantile(q, 0.05)), "q95": float(np.quantile(q, 0.95))})
    hyper = learner.history.hyper or {}
    how = ("importance-corrected draws" if learner.global_draws is not None else "the fitted global guide q(g)")
    text = (f"<h2>Hyperposterior (global sites)</h2><p>From {how}; correction: "
            f"{html.escape(json.dumps(hyper))}.</p>" + _table(rows, digits=3))
    if reference is not None and "globals" in reference:
        text += ("<p>Amortized vs NUTS on the whole model: z = mean difference in NUTS sds, sd ratio.</p>"
                 + _table(reference["globals"], digits=3))
    return text


def _html(title, info, evaluation, sbc, reference, pngs: dict, history=None, hyper: str = "") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if info:
        parts.append(_table([{"": k, "value": v} for k, v in info.items()], columns=["", "value"]))
    if _has_history(history):
        parts.append(_training_section(history))
    parts.append(hyper)
    if evaluation is not None:
        cols = ["method", "shots", "num_tasks", "nll", "nll_se", "oracle_nll", "gap", "gap_se", "mse", "crps",
                *[c for c in evaluation.summary[0] if c.startswith("coverage_") and not c.endswith("task_sd")],
                "calibration_error", "ess_median", "pareto_k_frac_above_0_7", "adapt_us_per_task",
                "predict_us_per_task"]
        cols = [c for c in cols if any(c in r for r in evaluation.summary)]
        parts.append("<h2>Predictive metrics</h2><p>Mean (and standard error) over test tasks; coverage pooled "
                     "over query points.</p>" + _table(evaluation.summary, cols))
    if sbc is not None:
        recs = [{"coordinate": n, "chi2": float(c), "p_value": float(p)}
                for n, c, p in zip(sbc.names, sbc.chi2, sbc.p_values, strict=True)]
        verdict = "passes" if sbc.passed() else "FAILS"
        parts.append(f"<h2>Simulation-based calibration</h2><p>{sbc.ranks.shape[0]} simulations, "
                     f"{sbc.num_posterior_samples} draws each: uniformity {verdict} at 1 % (Bonferroni).</p>"
                     + _table(recs, digits=4))
    if reference is not None:
        parts.append("<h2>Reference posterior (NUTS)</h2>")
        if "diagnostics" in reference:
            d = {k: v for k, v in reference["diagnostics"].items() if k != "sites"}
            parts.append(_table([d]))
        if "comparison" in reference:
            parts.append("<p>Amortized vs reference, per coordinate: mean error in reference sds, sd ratio "
                         "(below 1: overconfident), 1-Wasserstein distance in reference sds.</p>"
                         + _table(reference["comparison"]))
    for name, data in pngs.items():
        img = base64.b64encode(data).decode()
        cap = html.escape(_CAPTIONS.get(name, name))
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{img}'>"
                     f"<figcaption>{cap}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def load_run(run_dir) -> dict:
    """What a run directory holds for a report: learner history, evaluation, SBC, reference, other plots."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    found = {}
    for name in ("learner.pt", "model.pt", "classifier.pt"):
        if (run / name).exists():
            state = torch.load(run / name, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "history" in state:
                found["history"] = state["history"]
            break
    if (run / "eval.json").exists():
        found["evaluation"] = Evaluation.from_json(run / "eval.json")
    if (run / "sbc.json").exists():
        found["sbc"] = SBCResult.from_dict(json.loads((run / "sbc.json").read_text()))
    if (run / "reference.json").exists():
        found["reference"] = json.loads((run / "reference.json").read_text())
    pngs = {p.stem: p for p in sorted((run / "plots").glob("*.png"))}
    if pngs:
        found["figures"] = pngs  # a new report redraws what it can from the data and embeds the rest
    if not found:
        raise FileNotFoundError(f"{run}: nothing to report (no learner.pt, classifier.pt, eval.json, sbc.json, "
                                "reference.json or plots)")
    return found
