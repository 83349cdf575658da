"""The Learner protocol (:class:`MetaLearner`): the ``fit`` plumbing every learner shares."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Self

import torch

from ..inference.checkpoints import load_checkpoint
from ..inference.context import FitContext
from ..inference.options import DEFAULT_LR, History, TrainConfig, resolve_device
from ..inference.program.data import check_magnitude
from ..inference.replay import check_replay
from ..tasks.batch import TaskBatch, check_support
from ..tasks.dataset import Standardization, standardize_pool
from ..validation import ValidationSet, hold_out

__all__ = ["MetaLearner", "check_adapt_options", "check_standardize_option"]

_MAY_CHANGE_ON_RESUME = {"progress", "steps", "max_time", "log_every", "checkpoint_every", "device", "patience",
                         "val_every", "restore_best"}
_FIELDS = tuple(TrainConfig.__dataclass_fields__)
_RENAMED = {"refine_steps": "steps", "refine_lr": "lr"}


def _renamed(deprecated: dict, steps, lr):
    """Accept ``adapt``'s old keyword names (``refine_steps``, ``refine_lr``) with one DeprecationWarning."""
    unknown = sorted(set(deprecated) - set(_RENAMED))
    if unknown:
        raise TypeError(f"adapt() got an unexpected keyword argument {unknown[0]!r}")
    if deprecated:
        names = ", ".join(f"{old}= -> {_RENAMED[old]}=" for old in deprecated)
        warnings.warn(f"adapt: refine_steps/refine_lr are deprecated ({names}): steps and lr are the same names "
                      "on every learner", DeprecationWarning, stacklevel=3)
    steps = deprecated.get("refine_steps", steps)
    lr = deprecated.get("refine_lr", lr)
    return steps, lr


def check_adapt_options(steps, lr) -> None:
    """``steps``: None or an int >= 0; ``lr``: None or a finite number > 0 (errors name the argument)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be None or an int >= 0; got {steps!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf):
        raise ValueError(f"lr must be None or a finite number > 0; got {lr!r}")


class MetaLearner:
    """The Learner protocol and the ``fit`` plumbing every learner shares.

    A learner meta-trains with ``fit(source, steps, **options)`` (options: the fields of
    :class:`~bayesmeta.inference.TrainConfig`, or ``config=TrainConfig(...)``), adapts to new
    tasks with ``adapt(x_support, y_support, mask_support, steps=...)`` and predicts with
    ``adapt(...).predict(x_query)``, which returns a :class:`~bayesmeta.PosteriorPredictive`.
    Subclasses set ``x_dim``/``y_dim``, implement :meth:`_meta_train`, and say which options
    they do not use (:meth:`_unused_options`): passing one is an error, never a silent no-op.
    """

    device: torch.device
    history: History
    default_lr: float = DEFAULT_LR  # the learning rate of ``lr=None`` (TrainConfig's default)
    standardization: Standardization | None
    train_config: dict

    def _unused_options(self, source, distributed: bool) -> dict[str, str]:
        """Options this learner does not use for ``source``: ``{name: why}``."""
        return {}

    def _settings(self) -> dict:
        """Settings a resumed run must share with the checkpoint (besides the TrainConfig)."""
        return {"learner": type(self).__name__}

    def _train_config(self, source, config, steps, options: dict, distributed: bool) -> TrainConfig:
        """Merge ``config``, ``steps`` and keyword options into a validated :class:`TrainConfig`."""
        name = type(self).__name__
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"{name}.fit: config must be a bayesmeta.inference.TrainConfig; got {type(config).__name__}")
        unknown = sorted(set(options) - set(_FIELDS))
        if unknown:
            raise ValueError(f"{name}.fit: unknown option(s) {unknown}; the options are the fields of "
                             f"TrainConfig: {sorted(_FIELDS)}")
        unused = self._unused_options(source, distributed)
        for key in options:
            if key in unused:
                raise ValueError(f"{name}.fit: option {key}={options[key]!r} does not apply here ({unused[key]})")
        if steps is not None:
            options = {**options, "steps": steps}
        cfg = replace(config or TrainConfig(), **options)
        return cfg if cfg.lr is not None else replace(cfg, lr=self.default_lr)

    def _resume_state(self, checkpoint, resume: bool, cfg: TrainConfig) -> dict | None:
        if not resume:
            return None
        if checkpoint is None:
            raise ValueError("resume=True needs checkpoint= (the path to continue from)")
        state = load_checkpoint(checkpoint, map_location=self.device)
        problem = self._checkpoint_problem(state)
        if problem:
            raise ValueError(f"resume: {checkpoint}: {problem}")
        saved, now = state["config"], asdict(cfg)
        changed = [(k, saved[k], now[k]) for k in sorted(now)
                   if k not in _MAY_CHANGE_ON_RESUME and k in saved and saved[k] != now[k]]
        for k, v in self._settings().items():
            if k in state.get("settings", {}) and state["settings"][k] != v:
                changed.append((k, state["settings"][k], v))
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
            raise ValueError(f"resume: the checkpoint was trained with other settings ({detail})")
        return state

    def _checkpoint_problem(self, state: dict) -> str | None:
        """Why this learner cannot resume from a checkpoint's ``state`` (older files), or ``None``."""
        return None

    def _validates(self, source, distributed: bool) -> bool:
        """Whether validation applies to this fit (it does unless a learner says otherwise)."""
        return True

    def _validation_predict_options(self) -> dict:
        """``predict`` options of validation during training (the defaults unless a learner says otherwise)."""
        return {}

    def _validation(self, source, validation, cfg: TrainConfig, distributed: bool):
        """``(training source, validate callable or None)``: hold out part of a pool unless told otherwise."""
        name = type(self).__name__
        if validation is False:
            return source, None
        if validation is None:
            if not isinstance(source, TaskBatch) or not self._validates(source, distributed):
                return source, None
            source, validation = hold_out(source, cfg.val_fraction, seed=cfg.seed)
            if validation is None:
                return source, None
        elif not isinstance(validation, TaskBatch):
            raise TypeError(f"{name}.fit: validation must be a TaskBatch, None (hold out val_fraction of a pool) or "
                            f"False (none); got {type(validation).__name__}")
        elif not self._validates(source, distributed):
            raise ValueError(f"{name}.fit: validation does not apply to this fit (the exact type-II ML fit of a "
                             "conjugate model has no training trajectory to stop early)")
        held = ValidationSet(validation, cfg.val_shots, x_dim=self.x_dim, y_dim=self.y_dim, device=self.device,
                             seed=cfg.seed, predict_options=self._validation_predict_options())
        return source, lambda: held.score(self)

    def _prepare_source(self, source, state: dict | None, standardize: bool | None, *, default: bool):
        """Standardise a pool (or keep the standardisation a resumed run started with)."""
        if state is not None:
            saved = state.get("standardization")
            self.standardization = None if saved is None else Standardization.from_dict(saved)
            return source if self.standardization is None else self.standardization.batch(source)
        y, keep_x = self._standardized_columns()
        source, self.standardization = standardize_pool(source, standardize, default=default, y=y, keep_x=keep_x)
        return source

    def _standardized_columns(self) -> tuple[bool, tuple[int, ...]]:
        """Whether outputs are standardised, and the input columns that are not (default: all are)."""
        return True, ()

    @property
    def x_dim(self) -> int:
        raise NotImplementedError

    @property
    def y_dim(self) -> int:
        raise NotImplementedError

    def _support(self, x_support, y_support, mask_support, *, min_points: int):
        """Validated support set on the learner's device and scale: ``x, y, mask`` and the standardisation."""
        if isinstance(x_support, TaskBatch):
            x_support, y_support, mask_support = x_support.support
        elif y_support is None:
            raise ValueError("adapt: y_support is required unless a TaskBatch is given")
        x, y, mask = check_support(x_support, y_support, mask_support, x_dim=self.x_dim, y_dim=self.y_dim,
                                   min_points=min_points, prefix="support ")
        dtype = self._dtype()  # float64 inputs are cast to the model's dtype
        x, y, mask = x.to(self.device, dtype), y.to(self.device, dtype), mask.to(self.device)
        std = self.standardization
        if std is not None:
            x, y = std.x(x), std.y(y)
        check_magnitude(x, mask, what="support x", dtype=dtype)
        check_magnitude(y, mask, what="support y", dtype=dtype)
        return x, y, mask, std

    def _dtype(self) -> torch.dtype:
        """The floating dtype the learner computes in (its first module's first floating parameter)."""
        for module in self._modules().values():
            for p in () if module is None else module.parameters():
                if p.is_floating_point():
                    return p.dtype
        return torch.get_default_dtype()

    def _pool(self, batch, what: str):
        """A ``TaskBatch`` the learner trains or validates on, checked against its sizes and cast to its dtype."""
        if not isinstance(batch, TaskBatch):
            return batch
        name = type(self).__name__
        if (batch.x_dim, batch.y_dim) != (self.x_dim, self.y_dim):
            raise ValueError(f"{name}.fit: the {what} has x_dim={batch.x_dim}, y_dim={batch.y_dim} (its x and y "
                             f"columns) but the model has x_dim={self.x_dim}, y_dim={self.y_dim}")
        dtype = self._dtype()
        return batch._map(lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t)

    def _check_pools(self, source, validation) -> None:
        """Check the training pool and the validation tasks before anything is trained (subclasses: their values)."""

    def _extra_state(self) -> dict:
        std = self.standardization
        return {"standardization": None if std is None else std.to_dict(), "settings": self._settings()}

    def _modules(self) -> dict[str, torch.nn.Module | None]:
        """The learner's modules by name: what ``to`` moves and a training checkpoint holds."""
        raise NotImplementedError

    def to(self, device) -> Self:
        """Move every module to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``); returns ``self``."""
        self.device = resolve_device(device)
        for module in self._modules().values():
            if module is not None:
                module.to(self.device)
        return self

    def fit(self, source, steps: int | None = None, *, config: TrainConfig | None = None, validation=None,
            checkpoint=None, resume: bool = False, on_checkpoint=None, on_validation=None, distributed: bool = False,
            standardize: bool | None = None, replay=None, **options) -> Self:
        """Meta-train on a task family (an endless stream) or a ``TaskBatch`` pool; returns ``self``.

        A finite pool can be memorised (meta-overfitting), so by default ``fit`` holds out
        ``val_fraction`` (20 %) of a pool's tasks and scores them every ``val_every`` steps the
        way new tasks are scored -- adapt on a support set, predict the query set -- at a few
        shot counts; the learner ends with the weights of the best validation NLL, stops after
        ``patience`` validations without improvement, and warns (``MetaOverfittingWarning``)
        when the validation NLL rises while the training loss falls. ``self.history.validation``
        holds the scores and ``self.history.best_step`` the step kept.

        Stops after ``steps`` or ``max_time`` seconds, whichever comes first. The options are the
        fields of :class:`~bayesmeta.inference.TrainConfig` (``max_time``, ``tasks_per_step``,
        ``lr``, ``seed``, ``device``, ``progress``, ``max_points``, ``clip_norm``, ...), given as
        keywords or as ``config=TrainConfig(...)`` (keywords override it). An option this learner
        does not use is a ``ValueError`` naming it. The trace is ``self.history``.

        Args:
            source: a :class:`~bayesmeta.tasks.TaskFamily` or a :class:`~bayesmeta.TaskBatch`.
            steps: optimiser steps at most (default: ``config.steps``, 2000).
            config: a :class:`~bayesmeta.inference.TrainConfig` (default: the defaults).
            validation: held-out tasks (a ``TaskBatch`` in the same units as ``source``) to
                validate on; ``None`` (default): hold out ``val_fraction`` of a pool's tasks (a
                family: no validation); ``False``: no validation.
            checkpoint: path of a training checkpoint, written atomically every
                ``checkpoint_every`` steps and at the end (weights, optimiser, RNG states).
            resume: continue from ``checkpoint`` (which must exist) instead of starting over.
            on_checkpoint: called as ``on_checkpoint(step, history)`` after each checkpoint.
            on_validation: called as ``on_validation(step, scores)`` after each validation
                (``scores["nll"]``, ``["coverage_90"]``, ``["per_shot"]``); a true return value ends
                the fit there like early stopping (the best weights are kept, ``history.notes``
                says so): a tuning study's pruner, or a stopping rule of your own.
            distributed: train in the ``torch.distributed`` process group of a ``torchrun``
                launch (every rank calls ``fit`` with the same arguments; see
                :mod:`bayesmeta.inference.distributed`). ``WORLD_SIZE=1`` trains normally.
            standardize: the gradient-based baselines only (MAML, Reptile, ...): their own network
                reads standardised inputs and outputs (each column's mean and sd over the pool's
                points); ``None`` (default): on for a ``TaskBatch`` pool, off for a task family.
                ``adapt`` and ``predict`` take and return natural units either way. A
                ``BayesLearner`` fits its model to the data exactly as given (a model that is
                indifferent to units rescales itself: :class:`~bayesmeta.models.DataScaling`),
                so ``standardize=True`` is refused there.
            replay: a :class:`~bayesmeta.ReplayBuffer` for a changing task stream (``docs/continual.md``):
                stored past tasks mixed into every mini-batch; kept across fits and in checkpoints.

        Example:
            >>> import bayesmeta as bm
            >>> learner = bm.baselines.MAML(x_dim=1, y_dim=1)
            >>> _ = learner.fit(bm.tasks.Sinusoid(), 2, lr=1e-3, progress=False)
            >>> learner.train_config["tasks_per_step"]
            32
        """
        cfg = self._train_config(source, config, steps, options, distributed)
        if checkpoint is not None and Path(checkpoint).is_dir():
            raise IsADirectoryError(f"checkpoint: {checkpoint} is a directory; give the checkpoint file's path, e.g. "
                                    f"{Path(checkpoint) / 'last.pt'}")
        check_replay(replay, source, cfg.tasks_per_step)  # every learner, before anything is trained or held out
        self.to(self.device if cfg.device is None else cfg.device)  # None: train where the learner is
        source = self._pool(source, "training pool")
        validation = self._pool(validation, "validation set")
        self._check_pools(source, validation)  # every pool, before anything is held out or trained
        self._whole_pool = source if isinstance(source, TaskBatch) and validation is None else None
        source, validate = self._validation(source, validation, cfg, distributed)
        state = self._resume_state(checkpoint, resume, cfg)
        context = FitContext(checkpoint=checkpoint, resume=state, distributed=distributed, validate=validate,
                             replay=replay, standardize=standardize, on_checkpoint=on_checkpoint,
                             on_validation=on_validation)
        try:
            self.history = self._meta_train(source, cfg, context)
        finally:
            self._whole_pool = None  # the user's pool is not kept alive by the learner after fit
        self.train_config = asdict(cfg)
        return self

    def _meta_train(self, source, cfg: TrainConfig, context: FitContext) -> History:
        """Train on ``source`` with the options ``cfg`` and this fit's ``context``; returns the history."""
        raise NotImplementedError


def check_standardize_option(standardize, name: str) -> None:
    """``BayesLearner.fit(standardize=...)``: the model sees the data as given, so only ``None``/``False`` are accepted."""
    if standardize is None:
        return
    if standardize is False:
        warnings.warn(f"{name}.fit: standardize=False is the only behaviour now (the model is fitted to the data as "
                      "given) and the argument will be removed; drop it", DeprecationWarning, stacklevel=4)
        return
    raise ValueError(f"{name}.fit: standardize={standardize!r} is not supported: the library never rescales data "
                     "behind a model's back, so the model is fitted to the data in your units. A model that is "
                     "written to be indifferent to units rescales itself (bayesmeta.models.DataScaling as "
                     "model.scaling; the shipped neural and GLM models do): see docs/custom-model.md")


