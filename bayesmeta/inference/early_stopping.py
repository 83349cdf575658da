"""Validation during meta-training: the best weights, early stopping, and the meta-overfitting warning.

A learner scores held-out tasks with its real test-time procedure (adapt on a support set,
predict the query set) every ``val_every`` steps; :class:`EarlyStopping` keeps the weights of the
best validation NLL, stops after ``patience`` validations without improvement, and says once,
with the numbers, when the model starts to memorise its training tasks: validation NLL clearly
worse than at the best step while the training loss kept falling, or validation intervals that
cover far less than their level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .options import History

__all__ = ["EarlyStopping", "MetaOverfittingWarning", "Validator"]

Validator = Callable[[], dict]
"""``validate() -> {"nll", "coverage_90", "per_shot", "task_nll"}``: scores the held-out tasks now."""

COVERAGE_LEVEL = 0.9
COVERAGE_SLACK = 0.1  # "well below": 90 % intervals covering under 80 % of validation points
MIN_RISE = 0.05  # nats per point: a smaller rise of validation NLL is not called overfitting


class MetaOverfittingWarning(UserWarning):
    """Validation says the learner is memorising its training tasks (see docs/concepts.md)."""


def _clone_state(modules: dict) -> dict:
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for name, m in modules.items() if m is not None}


def _recent_loss(history: History, step: int, window: int) -> float:
    """Mean training loss logged in ``(step - window, step]`` (nan if none)."""
    vals = [lo for s, lo in zip(history.step, history.loss, strict=True) if step - window < s <= step]
    return sum(vals) / len(vals) if vals else math.nan


class EarlyStopping:
    """Tracks validation scores: best weights, patience, and the meta-overfitting warning.

    Args:
        patience: validations without a better NLL before stopping (``None``: never stop).
        window: steps between validations (the training loss is averaged over this window).
    """

    def __init__(self, patience: int | None, window: int) -> None:
        self.patience, self.window = patience, window
        self.best_nll: float = math.inf
        self.best_step: int | None = None
        self.best_state: dict | None = None
        self.best_task_nll: torch.Tensor | None = None
        self.best_loss = math.nan
        self.bad, self.warned = 0, False

    def update(self, step: int, scores: dict, modules: dict, history: History) -> tuple[bool, str | None]:
        """Record one validation; returns ``(stop now, warning message or None)``."""
        loss = _recent_loss(history, step, self.window)
        task_nll = scores["task_nll"]
        entry = {"step": step, "nll": scores["nll"], "coverage_90": scores["coverage_90"],
                 "train_loss": loss, "per_shot": scores["per_shot"]}
        history.validation.append(entry)
        message = None if self.warned else self._diagnose(step, scores, task_nll, loss, history)
        if scores["nll"] < self.best_nll:
            self.best_nll, self.best_step, self.best_loss = scores["nll"], step, loss
            self.best_task_nll = task_nll.detach().clone()
            self.best_state = _clone_state(modules)
            self.bad = 0
        else:
            self.bad += 1
        history.best_step = self.best_step
        if message is not None:
            self.warned = True
            history.notes.append(message)
        return self.patience is not None and self.bad >= self.patience, message

    def _diagnose(self, step: int, scores: dict, task_nll: torch.Tensor, loss: float,
                  history: History) -> str | None:
        """A warning when validation NLL rose clearly while training loss fell, or coverage is far too low."""
        if self.best_task_nll is not None and self.best_task_nll.shape == task_nll.shape:
            diff = task_nll - self.best_task_nll  # [V] paired over the same validation tasks
            rise = float(diff.mean())
            se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
            if rise > MIN_RISE and rise > 2 * se and loss < self.best_loss:
                return (f"meta-overfitting: validation NLL rose from {self.best_nll:.3f} (step {self.best_step}) to "
                        f"{scores['nll']:.3f} (step {step}; +{rise:.3f} ± {se:.3f} nats per point over "
                        f"{len(diff)} tasks) while the training loss fell from {self.best_loss:.3f} to {loss:.3f}: "
                        "the learner is memorising its training tasks. The best validation step's weights are "
                        "kept (restore_best=True); see docs/concepts.md, 'Meta-overfitting'")
        floor = COVERAGE_LEVEL - COVERAGE_SLACK
        earlier = history.validation[:-1]  # the entry of this step is the last one
        low = [s for s in scores["per_shot"] if s["coverage_90"] < floor and any(  # fell from an adequate level
            e["shots"] == s["shots"] and e["coverage_90"] >= floor for v in earlier for e in v["per_shot"])]
        if low:
            detail = ", ".join(f"K={s['shots']}: {s['coverage_90']:.2f}" for s in low)
            return (f"meta-overfitting: at step {step} the 90% predictive intervals cover only {detail} of the "
                    "validation tasks' query points: the learner is overconfident on tasks it has not seen. "
                    "See docs/concepts.md, 'Meta-overfitting'")
        return None

    def state_dict(self) -> dict:
        return {"best_nll": self.best_nll, "best_step": self.best_step, "best_state": self.best_state,
                "best_task_nll": self.best_task_nll, "best_loss": self.best_loss, "bad": self.bad,
                "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def restore(self, modules: dict) -> int | None:
        """Load the best validation step's weights into ``modules``; returns that step (None: no validation ran)."""
        if self.best_state is None:
            return None
        for name, m in modules.items():
            if m is not None:
                m.load_state_dict(self.best_state[name])
        return self.best_step
