"""The demo (``bayesmeta demo``): meta-train on sinusoids, evaluate, diagnose, write a report.

Layer 6, like the command line that calls it. From Python::

    from bayesmeta.demo import run_demo
    result = run_demo("demo_out", max_time=60, num_tasks=200, reference_tasks=0)
    print(result["evaluation"].table())
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from .benchmarks.sinusoid import amortized_learner, evaluate_on_family
from .diagnostics import (
    compare_posteriors,
    plot_prediction_bands,
    reference_posterior,
    report,
    simulation_based_calibration,
    to_inference_data,
)
from .diagnostics.reference import reference_diagnostics
from .io import atomic_write_text
from .tasks import Sinusoid

__all__ = ["demo_diagnostics", "run_demo"]

_MODEL = "LatentCodeRegression(latent_dim=8), reweighted wake-sleep, diagonal guide"


def _say(msg: str, verbose: bool) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def demo_diagnostics(learner, family, *, sbc_simulations: int = 200, reference_tasks: int = 3, seed: int = 0,
                     progress: bool = True, verbose: bool = False) -> dict:
    """SBC of the amortized guide and a NUTS reference on a few 5-shot tasks (each skipped at 0).

    Returns:
        ``{"sbc": SBCResult}`` and ``{"reference": {"diagnostics": ..., "comparison": ...}}``
        for the parts that ran.
    """
    out: dict[str, Any] = {}
    if sbc_simulations:
        _say(f"simulation-based calibration ({sbc_simulations} simulations, K=5) ...", verbose)
        x = family.sample_inputs(sbc_simulations, 5, torch.Generator().manual_seed(seed + 11))
        out["sbc"] = simulation_based_calibration(learner.model, learner, x.to(learner.device),
                                                  num_simulations=sbc_simulations, seed=seed)
    if reference_tasks:
        _say(f"NUTS reference posterior on {reference_tasks} tasks (K=5) ...", verbose)
        test = family.sample(reference_tasks, shots=5, generator=torch.Generator().manual_seed(seed + 12))
        test = test.to(learner.device)
        ref = reference_posterior(learner.model, *test.support, num_samples=500, num_warmup=500, num_chains=2,
                                  seed=seed, progress=progress)
        amortized = to_inference_data(learner.adapt(test), num_samples=2000, seed=seed)
        out["reference"] = {"diagnostics": reference_diagnostics(ref),
                            "comparison": compare_posteriors(amortized, ref)}
    return out


def _prediction_bands(learner, family):
    """The learner's K=5 predictive bands on six fixed tasks: ``(figure, posterior)``."""
    test = family.sample(6, shots=5, num_query=0, generator=torch.Generator().manual_seed(7)).to(learner.device)
    lo, hi = family.x_range
    grid = torch.linspace(lo, hi, 200, device=learner.device)
    xg = grid.reshape(1, -1, 1).expand(6, -1, -1)  # [6, 200, 1]
    post = learner.adapt(test)
    fig = plot_prediction_bands(post.predict(xg, seed=0), grid, test.x_support, test.y_support,
                                truth=family.mean_function(test.params, xg), title="bayesmeta demo: K=5")
    return fig, post


def _write(out: Path, learner, ev, diag: dict, info: dict) -> None:
    learner.save(out / "learner.pt")
    ev.to_json(out / "eval.json")
    ev.to_csv(out / "eval.csv")
    if "sbc" in diag:
        atomic_write_text(json.dumps(diag["sbc"].to_dict()), out / "sbc.json")
    if "reference" in diag:
        atomic_write_text(json.dumps(diag["reference"], indent=1), out / "reference.json")
    atomic_write_text(json.dumps(info, indent=1), out / "run.json")


def run_demo(out="demo_out", *, max_time: float = 120.0, steps: int = 1_000_000, num_tasks: int = 500,
             seed: int = 0, device="cpu", progress: bool = True, sbc_simulations: int = 200,
             reference_tasks: int = 3, verbose: bool = True) -> dict:
    """Meta-train the default learner on sinusoids, evaluate shots 1/5/10, diagnose, write a report.

    Args:
        out: output directory: ``learner.pt``, ``eval.json``, ``eval.csv``, ``run.json``,
            ``sbc.json``, ``reference.json``, ``plots/`` and ``report.html``.
        max_time, steps: training budget (seconds, steps); whichever ends first.
        num_tasks: test tasks per shot count.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        progress: progress bars; ``verbose``: one status line per stage on stderr.
        sbc_simulations: simulation-based calibration runs (0: skip).
        reference_tasks: tasks with a NUTS reference posterior (0: skip).

    Returns:
        ``{"info": ..., "evaluation": Evaluation, "report": path of report.html}`` and the
        diagnostics that ran (``"sbc"``, ``"reference"``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    family = Sinusoid(noise_std=0.1)
    learner = amortized_learner()
    _say(f"meta-training for up to {max_time:.0f} s on {family} ...", verbose)
    learner.fit(family, steps=steps, max_time=max_time, device=device, seed=seed, progress=progress)
    _say(f"evaluating on {num_tasks} test tasks per shot count (1, 5, 10) ...", verbose)
    ev = evaluate_on_family(learner, family, num_tasks=num_tasks, device=learner.device, progress=progress)
    bands, post = _prediction_bands(learner, family)
    diag = demo_diagnostics(learner, family, sbc_simulations=sbc_simulations, reference_tasks=reference_tasks,
                            seed=seed, progress=progress, verbose=verbose)
    h = learner.history
    info = {"family": repr(family), "model": _MODEL, "train_steps": h.step[-1], "train_seconds": round(h.time[-1], 1),
            "final_loss": round(h.loss[-1], 4)}
    _write(out, learner, ev, diag, info)
    page = report(out, evaluation=ev, learner=learner, posterior=post, figures={"prediction_bands": bands},
                  title="bayesmeta demo", info=info, **diag)
    _say(f"wrote {page} (plots in {out}/plots), eval.json, eval.csv, learner.pt", verbose)
    return {"info": info, "evaluation": ev, "report": page, **diag}
