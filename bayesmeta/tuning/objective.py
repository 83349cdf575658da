"""One trial: the trial's config fitted into its own run directory, scored on the validation groups.

The score is the validation NLL (mean over the space's ``objective.shots``) at the step the fit
keeps (early stopping's best step): the same held-out groups, support / query splits and
predictive as ``bayesmeta fit`` validates on. Each validation is reported to Optuna, so a pruner
can stop a trial that trails the others at the same step.

A trial that diverges finishes the same way, with the best validation NLL it reached before (or
the worst finished trial's value if it never validated); ``diverged`` says so.

A trial the pruner stops is *not* recorded as pruned: it finishes with the best validation NLL it
reached (``stopped_at`` says when). Optuna's Gaussian-process sampler learns only from finished
trials, so with pruned ones it never learns that a region is bad and proposes it again and again
(measured: 51 of 85 trials pruned at their first validation, nearly all in two spots); a finished
trial with its pessimistic value steers it away. Its run directory is removed (it is not a
trained run), and the report never picks it as the best trial.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from ..io import atomic_write_text
from ..runs.config import FitConfig
from .space import SearchSpace

__all__ = ["trial_objective", "validation_score"]

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


def _diverged_value(trial, reported: dict[int, float]) -> float | None:
    """What a diverged trial tells the sampler: the best validation NLL it reached, else the worst finished
    trial's value (a failed trial would teach a Gaussian-process sampler nothing, and it would propose the
    same diverging setting again); ``None`` before any trial has finished."""
    if reported:
        return min(reported.values())
    import optuna

    done = [t.value for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None]
    return max(done) if done else None


def trial_objective(base: FitConfig, space: SearchSpace, out: Path, *, progress: bool = False):
    """The Optuna objective of a study: ``objective(trial) -> validation NLL``."""
    from ..runs.directory import process_start
    from ..runs.fit import fit_run

    def objective(trial) -> float:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                 "run": f"trials/{trial.number:04d}"}  # the run: relative to the study directory
        for key, attr in owner.items():
            trial.set_user_attr(key, attr)
        values = {p.key: p.suggest(trial) for p in space.params}
        cfg = space.apply(base, values)
        run = out / "trials" / f"{trial.number:04d}"
        reported: dict[int, float] = {}

        pruned: list[int] = []

        def on_validation(step: int, scores: dict) -> bool:  # every validation reported; True: the pruner stops it
            reported[step] = float(scores["nll"])
            trial.report(reported[step], step)
            if trial.should_prune():
                pruned.append(step)
            return bool(pruned)

        try:
            learner = fit_run(cfg, run, progress=progress, on_validation=on_validation)
        except FloatingPointError as err:  # diverged (e.g. too large a learning rate): a bad value, not a failure
            value = _diverged_value(trial, reported)
            if value is None:
                raise
            trial.set_user_attr("diverged", str(err).split("(")[0].strip())
            return value
        h = learner.history
        if pruned:  # stopped by the pruner: not a trained run
            shutil.rmtree(run, ignore_errors=True)
            trial.set_user_attr("stopped_at", pruned[0])
            return min(reported.values())
        value, step = validation_score(h)
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
