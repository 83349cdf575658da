"""The Learner protocol (:class:`MetaLearner`) and ``BayesLearner``: meta-train, adapt to new tasks, predict."""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Self

import torch

from .inference.convergence import convergence_problem
from .inference.distributed import init_from_env
from .inference.exact import ConvergenceWarning, fit_type2_ml
from .inference.guides import AmortizedGuide
from .inference.objectives import OBJECTIVES, SLEEP_OBJECTIVES, check_sleep_objective
from .inference.options import DEFAULT_LR
from .inference.polish import can_polish, polish_marginal_likelihood
from .inference.program import ModelProgram, program_of
from .inference.refine import refine_local
from .inference.replay import check_replay
from .inference.trainer import (
    History,
    TrainConfig,
    load_checkpoint,
    meta_train,
    resolve_device,
    save_checkpoint,
)
from .io import atomic_torch_save
from .legacy import absorb_standardization, legacy_checkpoint_problem, with_new_buffers
from .models.scaling import check_model_scaling, model_scaling
from .predictive import Posterior
from .tasks.batch import TaskBatch, check_support
from .tasks.dataset import Standardization, standardize_pool
from .validation import ValidationSet, hold_out

__all__ = ["BayesLearner", "MetaLearner"]

_FORMAT = "bayesmeta.BayesLearner/2"
_FORMAT_V1 = "bayesmeta.BayesLearner/1"  # learner-level standardisation: converted on load (legacy.py)
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
        x, y, mask = x.to(self.device), y.to(self.device), mask.to(self.device)
        std = self.standardization
        if std is not None:
            x, y = std.x(x), std.y(y)
        return x, y, mask, std

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
            checkpoint=None, resume: bool = False, on_checkpoint=None, distributed: bool = False,
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
        check_replay(replay, source, cfg.tasks_per_step)  # every learner, before anything is trained or held out
        self.to(self.device if cfg.device is None else cfg.device)  # None: train where the learner is
        self._whole_pool = source if isinstance(source, TaskBatch) and validation is None else None
        source, validate = self._validation(source, validation, cfg, distributed)
        state = self._resume_state(checkpoint, resume, cfg)
        try:
            self.history = self._meta_train(source, cfg, state=state, standardize=standardize,
                                            checkpoint=checkpoint, on_checkpoint=on_checkpoint,
                                            distributed=distributed, validate=validate, replay=replay)
        finally:
            self._whole_pool = None  # the user's pool is not kept alive by the learner after fit
        self.train_config = asdict(cfg)
        return self

    def _meta_train(self, source, cfg: TrainConfig, *, state, standardize, checkpoint, on_checkpoint,
                    distributed: bool, validate=None, replay=None) -> History:
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


class BayesLearner(MetaLearner):
    """Amortized (or exact) Bayesian meta-learner around a hierarchical model.

    Args:
        model: a hierarchical model: any ``PyroModule`` whose ``forward(x, y=None, mask=None)``
            samples task sites inside a tasks plate (dim -2) and one masked observation site
            inside a points plate (dim -1) -- see :mod:`bayesmeta.inference.program` and
            ``docs/custom-model.md`` -- e.g. one of :mod:`bayesmeta.models`.
        guide: ``"diagonal"`` or ``"flow"`` (an :class:`~bayesmeta.inference.AmortizedGuide`
            of that family over all task sites), or a guide instance.
        conjugate: use the model's exact posterior (linear-Gaussian models): ``fit``
            maximises the exact marginal likelihood, ``adapt`` is exact, no guide is built.
        objective: ``"rws"`` (default: reweighted wake-sleep -- the model on importance-weighted
            gradients, the guide on forward KL from real tasks and from tasks simulated from the
            model; :class:`~bayesmeta.inference.ReweightedWakeSleep`), ``"rws-wake"``/``"rws-sleep"``
            (the guide on one of the two), ``"elbo+sleep"`` (the ELBO plus a sleep phase for the
            guide), ``"elbo"`` (``TraceMeanField_ELBO``), ``"iwae"`` (per-task
            importance-weighted bound) or ``"iwae-dreg"`` (the same with DReG gradients).
        num_particles: particles of the training objective (vectorised).
        guide_options: keyword arguments of :class:`~bayesmeta.inference.AmortizedGuide`.
        x_dim, y_dim: input and output sizes when the model has no ``x_dim`` / ``y_dim``
            attribute (``y_dim`` defaults to the observation site's event size).

    Example:
        >>> import bayesmeta as bm
        >>> learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=4))
        >>> _ = learner.fit(bm.tasks.Sinusoid(), steps=2, progress=False)
    """

    # lr=None trains at 3e-3: on sinusoids (reweighted wake-sleep, 3x64 decoder) 60 s at 3e-3 end 0.05 nats from
    # the oracle at K=5 with calibrated intervals, 1e-3 ends 0.28 nats away with 98 % coverage of 90 % intervals
    default_lr = 3e-3

    def __init__(self, model: torch.nn.Module, *, guide="diagonal", conjugate: bool = False,
                 objective: str = "rws", num_particles: int = 8, guide_options: dict | None = None,
                 x_dim: int | None = None, y_dim: int | None = None) -> None:
        if isinstance(model, ModelProgram):
            model = model.model
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a PyroModule (a Pyro program with forward(x, y=None, mask=None)); "
                            f"got {type(model).__name__}")
        if conjugate and not getattr(model, "has_exact_posterior", False):
            raise ValueError(f"conjugate=True needs a model with an exact posterior; {type(model).__name__} has none")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be an int >= 1; got {num_particles!r}")
        self.model, self.conjugate = model, conjugate
        self.program = program_of(model, x_dim=x_dim, y_dim=y_dim)
        check_model_scaling(model, self.program)
        self.objective, self.num_particles = objective, num_particles
        if objective in SLEEP_OBJECTIVES and not conjugate:
            check_sleep_objective(self.program, objective)
        if conjugate:
            self.guide = None
        elif isinstance(guide, AmortizedGuide):
            self.guide = guide
        elif isinstance(guide, str):
            self.guide = AmortizedGuide(self.program, guide, **(guide_options or {}))
        else:
            raise TypeError(f"guide must be 'diagonal', 'flow' or an AmortizedGuide; got {guide!r}")
        self.history = History()
        self.standardization: Standardization | None = None
        first = next(iter(model.parameters()), None)
        self.device = torch.device("cpu") if first is None else first.device

    @property
    def x_dim(self) -> int:
        return self.program.x_dim

    @property
    def y_dim(self) -> int:
        return self.program.y_dim

    # ------------------------------------------------------------------ training
    def _modules(self) -> dict[str, torch.nn.Module | None]:
        return {"model": self.model, "guide": self.guide}

    def _settings(self) -> dict:
        return {"learner": "BayesLearner", "objective": self.objective, "num_particles": self.num_particles,
                "conjugate": self.conjugate}

    def _unused_options(self, source, distributed: bool) -> dict[str, str]:
        unused = dict.fromkeys(("min_shots", "max_shots"), "the support/query split of the gradient-based baselines")
        if self.guide is None:
            unused["encoder_subsets"] = "a conjugate learner has no encoder"
        if self._fits_exactly(source, distributed):
            why = "the exact type-II ML fit is a deterministic full-batch L-BFGS; steps bounds its iterations"
            unused.update(dict.fromkeys(
                ("max_time", "tasks_per_step", "optimizer", "lr", "final_lr_fraction", "clip_norm", "min_points",
                 "max_points", "seed", "log_every", "checkpoint_every", "weight_decay", "val_fraction", "val_shots",
                 "val_every", "patience", "restore_best", "polish"), why))
        return unused

    def _validates(self, source, distributed: bool) -> bool:
        return not self._fits_exactly(source, distributed)

    def _checkpoint_problem(self, state: dict) -> str | None:
        return legacy_checkpoint_problem(state, self._modules())

    def _validation_predict_options(self) -> dict:
        # importance-corrected, as at test time, with a quarter of the default draws: validation runs often
        return {} if self.conjugate else {"num_samples": 250}

    def _meta_train(self, source, cfg: TrainConfig, *, state, standardize, checkpoint, on_checkpoint,
                    distributed: bool, validate=None, replay=None) -> History:
        """SVI on the ELBO (or the exact marginal likelihood); exact type-II ML where it applies.

        The model is fitted to the data as given (its own units). A model written to be indifferent
        to units owns a :class:`~bayesmeta.models.DataScaling` (``model.scaling``): an unfitted
        one is fitted here, once, to the training pool's points (and the guide's encoder fits its
        own input normalisation), before the first step.

        With ``conjugate=True``, a model with fixed features (``HierarchicalLinearRegression``)
        and a ``TaskBatch`` pool, the fit is exact type-II maximum likelihood: full-batch L-BFGS
        from the data's own scale (:func:`~bayesmeta.inference.fit_type2_ml`; ``steps`` bounds its
        iterations, a :class:`~bayesmeta.inference.ConvergenceWarning` says when it did not
        converge); a resume refits.
        """
        check_standardize_option(standardize, type(self).__name__)
        self.model.train()
        exact = self._fits_exactly(source, distributed)
        if state is None:
            self._fit_scalings(source)
        if exact:
            history = fit_type2_ml(self.model, source, max_iter=cfg.steps)
            if checkpoint is not None:
                save_checkpoint(checkpoint, len(history.step), {"model": self.model, "guide": None}, None, history,
                                cfg, on_checkpoint=on_checkpoint, extra=self._extra_state())
            return history
        if isinstance(source, TaskBatch):
            x, y, mask = source.all_points()
            self.program.check_y(x.to(self.device), y.to(self.device), mask.to(self.device), what="task pool y")
        ctx = init_from_env(self.device) if distributed else None
        history = meta_train(self.program, self.guide, source, cfg, device=self.device, objective=self.objective,
                             num_particles=self.num_particles, conjugate=self.conjugate, checkpoint=checkpoint,
                             resume=state, on_checkpoint=on_checkpoint, distributed=ctx,
                             extra_state=self._extra_state(), validate=validate, replay=replay)
        if not isinstance(source, TaskBatch):
            return history
        whole = getattr(self, "_whole_pool", None)  # the pool with the tasks validation held out (fit sets it)
        polished = self._polish(whole if whole is not None else source, cfg, history, distributed)
        problem = convergence_problem(history) if history.best_step is None else None  # ended on its budget
        if problem and polished:  # the model's parameters are fitted; the guide may not be
            problem = problem.split(": the learned parameters")[0] + (
                ": the model's parameters were then fitted by the marginal-likelihood polish, but the amortized guide "
                "may be undertrained, so predictions lean on importance correction (check pred.ess); train longer")
        if problem:
            history.notes.append(problem)
            warnings.warn(f"{type(self).__name__}.fit: {problem}", ConvergenceWarning, stacklevel=4)
        return history

    def _polish(self, pool: TaskBatch, cfg: TrainConfig, history: History, distributed: bool) -> bool:
        """Type-II ML of a small model's parameters after SVI (``cfg.polish``); True if kept.

        On every task of the pool ``fit`` was given, those validation held out included: validation chose
        when stochastic training stopped, and a model with at most 64 parameters fitted by maximum marginal
        likelihood does not memorise tasks (a ``validation=`` set of the user's own stays out).
        """
        if not cfg.polish or distributed or self.guide is None or not can_polish(self.program):
            return False
        x, y, mask = (t.to(self.device) for t in pool.all_points())
        with torch.no_grad():
            start = self.guide.distribution(x, y, mask).mean  # [T, P]: where each task's mode search starts
        report = polish_marginal_likelihood(self.program, pool.to(self.device), u_init=start, seed=cfg.seed)
        history.polish = report
        if not report["accepted"]:
            why = report.get("why") or (f"its marginal likelihood {report['log_marginal']:.4g} was not above the "
                                        f"stochastic fit's {report['log_marginal_before']:.4g}")
            history.notes.append(f"polish not kept: {why}")
        return bool(report["accepted"])

    def _fit_scalings(self, source) -> None:
        """Fit the model's own ``scaling`` and the encoder's input normalisation to a pool, where unfitted."""
        if not isinstance(source, TaskBatch):
            return  # a task family sets its own scale: the scalings stay as they are (the identity when new)
        x, y, mask = (t.to(self.device) for t in source.validate(min_support=0).all_points())
        scaling = model_scaling(self.model)
        if scaling is not None and not scaling.fitted:
            scaling.fit_(x, y, mask)
        if self.guide is not None:
            self.guide.fit_input_scaling(x, y, mask)

    def _fits_exactly(self, source, distributed: bool) -> bool:
        """Conjugate model with fixed features on a finite pool: full-batch type-II ML (L-BFGS)."""
        return (self.conjugate and isinstance(source, TaskBatch) and not distributed
                and getattr(self.model, "fixed_features", False))

    # ------------------------------------------------------------------ adaptation
    def adapt(self, x_support, y_support=None, mask_support=None, *, steps: int | None = None,
              lr: float | None = None, **deprecated) -> Posterior:
        """Posterior over task parameters for new tasks from their support sets.

        Args:
            x_support: ``[T, S, D]`` inputs, or a :class:`TaskBatch` (its support set is used).
            y_support: ``[T, S, E]`` (or ``[T, S]``) targets.
            mask_support: ``[T, S]`` bool; ``None`` means every point is observed. Tasks may
                have no observed points (the posterior is then the prior).
            steps: test-time adaptation steps, as on every learner: here semi-amortized
                refinement of each task's local variational parameters (default 0: the
                encoder's output as it is). ``refine_steps`` is its deprecated name.
            lr: step size of the refinement (default 0.01). ``refine_lr`` is its deprecated name.

        Raises:
            ValueError: ``steps`` or ``lr`` on a conjugate learner (its posterior is exact).
        """
        steps, lr = _renamed(deprecated, steps, lr)
        check_adapt_options(steps, lr)
        x, y, mask, _ = self._support(x_support, y_support, mask_support, min_points=0)
        self.program.check_y(x, y, mask, what="y_support")
        self.model.eval()
        if self.conjugate:
            if steps or lr is not None:
                raise ValueError("adapt: steps and lr do not apply to a conjugate learner (its posterior is exact)")
            with torch.no_grad():
                exact = getattr(self.model, "exact_posterior")(x, y, mask)  # noqa: B009 - any nn.Module
                return Posterior(self.program, x, y, mask, exact=exact)
        assert self.guide is not None  # every non-conjugate learner has one
        with torch.no_grad():
            local = self.guide.encode(x, y, mask)
        local = refine_local(self.guide, self.program, x, y, mask, local, steps=steps or 0,
                             lr=1e-2 if lr is None else lr, num_particles=self.num_particles, objective=self.objective)
        return Posterior(self.program, x, y, mask, guide=self.guide, local=local)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write model, guide and settings to ``path`` atomically (loadable on any device)."""
        cls = type(self.model)
        state = {
            "format": _FORMAT,
            "model_class": f"{cls.__module__}:{cls.__qualname__}",
            "model_config": getattr(self.model, "config", None),
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "conjugate": self.conjugate,
            "objective": self.objective,
            "num_particles": self.num_particles,
            "guide_config": None if self.guide is None else self.guide.config,
            "guide_state": None if self.guide is None else {k: v.detach().cpu() for k, v in self.guide.state_dict().items()},
            "history": self.history.as_dict(),
        }
        return atomic_torch_save(state, path)

    @classmethod
    def load(cls, path, *, device="cpu") -> BayesLearner:
        """Rebuild a learner saved with :meth:`save` on ``device``.

        Raises:
            FileNotFoundError, IsADirectoryError, OSError: the file cannot be read (names it).
            ValueError: not a saved BayesLearner, or a corrupt or truncated file (names the
                path; the original error is chained).
        """
        from .io import file_error

        path = Path(path)
        damaged = lambda err: ValueError(  # noqa: E731
            f"{path}: not a saved BayesLearner, or a corrupt or truncated file ({type(err).__name__} while loading it)")
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not a saved BayesLearner")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except OSError as err:
            raise file_error(err, path, "read") from err
        except Exception as err:  # torch.load fails in many ways on damaged files (never pass weights_only=False)
            raise damaged(err) from err
        if not isinstance(state, dict) or state.get("format") not in (_FORMAT, _FORMAT_V1):
            raise ValueError(f"{path}: not a saved BayesLearner (format {_FORMAT})")
        try:
            module, _, qualname = state["model_class"].partition(":")
            model_cls = importlib.import_module(module)
            for part in qualname.split("."):
                model_cls = getattr(model_cls, part)
            if not (isinstance(model_cls, type) and issubclass(model_cls, torch.nn.Module)):
                raise ValueError(f"{path}: {state['model_class']} is not a model (a torch Module)")
            if state["model_config"] is None:
                raise ValueError(f"{path}: the model {state['model_class']} has no `config` (its constructor "
                                 "arguments), so it cannot be rebuilt; give the model a `config` dict")
            model = model_cls(**state["model_config"])
            model.load_state_dict(with_new_buffers(model, state["model_state"]))
            guide = "diagonal"
            if state["guide_config"] is not None:
                cfg = dict(state["guide_config"])
                guide = AmortizedGuide(model, cfg.pop("family"), **cfg)
                guide.load_state_dict(with_new_buffers(guide, state["guide_state"]))
            learner = cls(model, guide=guide, conjugate=state["conjugate"], objective=state["objective"],
                          num_particles=state["num_particles"])
            learner.history = History(**state["history"])
            if state.get("standardization") is not None:  # format 1: the model was trained on standardised data
                absorb_standardization(learner, Standardization.from_dict(state["standardization"]), str(path))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ImportError) as err:
            if isinstance(err, ValueError) and str(path) in str(err):
                raise
            raise damaged(err) from err
        return learner.to(device)
