"""One trial: the trial's config fitted into its own run directory, scored on the validation groups.

The score is the validation NLL (mean over the space's ``objective.shots``) at the step the fit
keeps (early stopping's best step): the same held-out groups, support / query splits and
predictive as ``bayesmeta fit`` validates on. Each validation is reported to Optuna, so a pruner
can stop a trial that trails the others at the same step.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from ..config import FitConfig
from ..io import atomic_write_text
from .space import SearchSpace

__all__ = ["make_objective", "validation_score"]

TRIAL_FILE = "trial.json"


def validation_score(history) -> tuple[float, int]:
    """``(validation NLL, step)`` of the weights a fit kept (its best validation step, else the last)."""
    val = history.validation
    if not val:
        raise ValueError("tune: the fit never validated (no held-out groups: set data.val_fraction > 0, and a "
                         "train.val_every below the steps a trial runs)")
    best = history.best_step
    entry = next((v for v in val if v["step"] == best), None) or val[-1]
    return float(entry["nll"]), int(entry["step"])


def make_objective(base: FitConfig, space: SearchSpace, out: Path, *, progress: bool = False):
    """The Optuna objective of a study: ``objective(trial) -> validation NLL``."""
    import optuna

    from ..cli.runs import fit_run

    def objective(trial) -> float:
        values = {p.key: p.suggest(trial) for p in space.params}
        cfg = space.apply(base, values)
        run = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        reported: set[int] = set()

        def on_checkpoint(step: int, history) -> None:
            for v in history.validation:
                if v["step"] not in reported:
                    reported.add(v["step"])
                    trial.report(float(v["nll"]), v["step"])
            if reported and trial.should_prune():
                raise optuna.TrialPruned(f"validation NLL trails the other trials at step {max(reported)}")

        learner = fit_run(cfg, run, progress=progress, on_checkpoint=on_checkpoint)
        value, step = validation_score(learner.history)
        h = learner.history
        trial.set_user_attr("best_step", step)
        trial.set_user_attr("train_steps", h.step[-1])
        trial.set_user_attr("train_seconds", round(h.time[-1], 1))
        per_shot: list = next((v["per_shot"] for v in h.validation if v["step"] == step), [])
        for s in per_shot:
            trial.set_user_attr(f"val_nll_K{s['shots']}", float(s["nll"]))
        atomic_write_text(json.dumps({"trial": trial.number, "params": values, "value": value, "best_step": step,
                                      "per_shot": per_shot}, indent=1, default=str), run / TRIAL_FILE)
        return value

    return objective
