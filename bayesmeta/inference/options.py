"""Meta-training options (:class:`TrainConfig`) and the training trace (:class:`History`).

One options class for every learner, the CLI's ``[train]`` section and the benchmarks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

__all__ = ["DEFAULT_LR", "OPTIMIZERS", "History", "TrainConfig", "resolve_device"]

DEFAULT_LR = 1e-3  # the learning rate of a learner that does not choose its own (lr=None)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
_DEVICE = re.compile(r"cpu|auto|mps|meta|cuda(:\d+)?")


def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a ``torch.device`` -> ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: unknown device {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


def _is_int(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """Options of meta-training, shared by every learner, the CLI's ``[train]`` section and the benchmarks.

    Validated on construction: a bad value is a ``ValueError`` naming the field and what is allowed.
    ``learner.fit(source, steps, **options)`` builds one from its keyword arguments (or takes
    ``config=TrainConfig(...)``); a learner that does not use a field refuses it by name.

    Attributes:
        steps: optimiser steps at most.
        max_time: seconds at most (``None``: no limit); training stops at whichever comes first.
        tasks_per_step: tasks in each mini-batch.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: initial learning rate; cosine decay to ``lr * final_lr_fraction`` over ``steps`` (or
            ``max_time``, if that fraction is larger). ``None`` (default): the learner's own
            default (``BayesLearner``: 3e-3; the gradient-based baselines: 1e-3).
        final_lr_fraction: in ``(0, 1]``; 1 keeps the rate constant.
        clip_norm: global gradient-norm clipping (``None``: none).
        min_points, max_points: tasks drawn from a family have ``max_points`` points, of which
            ``U{min_points..max_points}`` are observed (the Bayesian learners: every set size
            the encoder will meet); the gradient-based baselines observe at least 2.
        min_shots, max_shots: gradient-based baselines split each task at random into
            ``U{min_shots..max_shots}`` support points and a query set of the rest.
        encoder_subsets: Bayesian learners on a ``TaskBatch`` pool: also train the encoder on
            random subsets of each task's points (a guide-only term).
        seed: seed of the initial random state and of the task stream.
        device: where to train (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"``);
            ``None`` keeps the learner where it is.
        progress: show a progress bar.
        log_every: steps between history entries (and non-finite checks).
        checkpoint_every: steps between checkpoints, when a checkpoint path is given.
        weight_decay: precision of a zero-mean Gaussian prior on the network weights (every
            parameter with two or more dimensions: encoder and decoder matrices, not the learned
            prior or noise scales). With ``adam``/``sgd`` its gradient is added to the objective's
            (an L2 penalty ``weight_decay / 2 * |w|^2``): for a Bayesian learner on a pool the
            objective is the whole pool's negative bound, so this is MAP under that prior and its
            weight falls as the pool grows. With ``adamw`` it is AdamW's decoupled decay.
        val_fraction: share of a ``TaskBatch`` pool's tasks held out for validation when ``fit``
            gets no ``validation=`` set (0: hold none out). Task families need none (fresh tasks
            every step cannot be memorised).
        val_shots: shot counts at which validation tasks are split into support and query
            (``()``: automatic, 1 and about a third and two thirds of a validation task's points).
        val_every: steps between validations (``None``: ``steps // 20``, between 50 and 500).
        patience: stop after this many validations without a better validation NLL
            (``None``: never stop early).
        restore_best: end with the weights of the best validation step (else the last).
        polish: after meta-training on a finite pool, maximise the pool's marginal likelihood over the
            model's parameters directly (Laplace, then adaptive quadrature: type-II maximum likelihood, as
            mixed-model software does; :mod:`bayesmeta.inference.polish`) when the model has at most 64
            learned scalars and at most 8 task parameters (mixed models, mechanistic formulas); kept only
            if no worse than the stochastic fit. A ``BayesLearner`` option.
    """

    steps: int = 2000
    max_time: float | None = None
    tasks_per_step: int = 32
    optimizer: str = "adam"
    lr: float | None = None
    final_lr_fraction: float = 0.1
    clip_norm: float | None = 10.0
    min_points: int = 0
    max_points: int = 20
    min_shots: int = 1
    max_shots: int = 10
    encoder_subsets: bool = True
    seed: int = 0
    device: str | None = None
    progress: bool = True
    log_every: int = 50
    checkpoint_every: int = 500
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    val_shots: tuple[int, ...] = ()
    val_every: int | None = None
    patience: int | None = 10
    restore_best: bool = True
    polish: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.device, torch.device):
            object.__setattr__(self, "device", str(self.device))
        if isinstance(self.val_shots, list):
            object.__setattr__(self, "val_shots", tuple(self.val_shots))
        for name, ok, allowed in self._checks():
            if not ok:
                raise ValueError(f"{name} must be {allowed}; got {getattr(self, name)!r}")

    def _checks(self) -> list[tuple[str, bool, str]]:
        positive = lambda v: _is_number(v) and v > 0  # noqa: E731
        return [
            ("steps", _is_int(self.steps, 1), "an int >= 1"),
            ("max_time", self.max_time is None or positive(self.max_time), "None or > 0 seconds"),
            ("tasks_per_step", _is_int(self.tasks_per_step, 1), "an int >= 1"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {tuple(OPTIMIZERS)}"),
            ("lr", self.lr is None or positive(self.lr), "None (the learner's default) or a finite number > 0"),
            ("final_lr_fraction", positive(self.final_lr_fraction) and self.final_lr_fraction <= 1, "in (0, 1]"),
            ("clip_norm", self.clip_norm is None or positive(self.clip_norm), "None or > 0"),
            ("max_points", _is_int(self.max_points, 1), "an int >= 1"),
            ("min_points", _is_int(self.min_points, 0) and self.min_points <= self.max_points,
             "an int with 0 <= min_points <= max_points"),
            ("max_shots", _is_int(self.max_shots, 1), "an int >= 1"),
            ("min_shots", _is_int(self.min_shots, 1) and self.min_shots <= self.max_shots,
             "an int with 1 <= min_shots <= max_shots"),
            ("encoder_subsets", isinstance(self.encoder_subsets, bool), "true or false"),
            ("seed", _is_int(self.seed, 0), "an int >= 0"),
            ("device", self.device is None or (isinstance(self.device, str) and bool(_DEVICE.fullmatch(self.device))),
             "None, 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"),
            ("progress", isinstance(self.progress, bool), "true or false"),
            ("log_every", _is_int(self.log_every, 1), "an int >= 1"),
            ("checkpoint_every", _is_int(self.checkpoint_every, 1), "an int >= 1"),
            ("weight_decay", _is_number(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            ("val_fraction", _is_number(self.val_fraction) and 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("val_shots", isinstance(self.val_shots, tuple) and all(_is_int(k, 0) for k in self.val_shots)
             and len(set(self.val_shots)) == len(self.val_shots), "a tuple of distinct ints >= 0 (() = automatic)"),
            ("val_every", self.val_every is None or (_is_int(self.val_every, 1) and self.val_every <= self.steps),
             f"None or an int from 1 to steps={self.steps} (a longer interval would never validate)"),
            ("patience", self.patience is None or _is_int(self.patience, 1),
             "None (no early stopping) or an int >= 1 (validations without improvement)"),
            ("restore_best", isinstance(self.restore_best, bool), "true or false"),
            ("polish", isinstance(self.polish, bool), "true or false"),
        ]

    @property
    def validation_interval(self) -> int:
        """Steps between validations: ``val_every``, or ``steps // 20`` clipped to ``[min(50, steps), 500]``."""
        if self.val_every is not None:
            return self.val_every
        return max(min(50, self.steps), min(500, self.steps // 20))


@dataclass
class History:
    """Training trace: the loss per task (a negative bound) every ``log_every`` steps, and validation.

    ``validation`` holds one entry per validation (``step``, ``nll``, ``coverage_90``, and
    ``per_shot``: the same per shot count); ``best_step`` is the step whose weights the learner
    ended with when validation chose them; ``notes`` are the warnings training raised; ``polish`` the
    report of the marginal-likelihood polish (:mod:`bayesmeta.inference.polish`) where one ran;
    ``hyper`` the importance correction of a model's global sites (ESS, Pareto-k, kept) where one ran.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    best_step: int | None = None
    notes: list[str] = field(default_factory=list)
    polish: dict | None = None
    hyper: dict | None = None

    def as_dict(self) -> dict:
        return {"step": self.step, "loss": self.loss, "time": self.time, "lr": self.lr,
                "validation": self.validation, "best_step": self.best_step, "notes": self.notes,
                "polish": self.polish, "hyper": self.hyper}

    def append(self, step: int, loss: float, seconds: float, lr: float) -> None:
        self.step.append(step)
        self.loss.append(loss)
        self.time.append(seconds)
        self.lr.append(lr)
