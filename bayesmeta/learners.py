"""``BayesLearner``: meta-train a hierarchical model, adapt to new tasks, predict."""

from __future__ import annotations

import importlib
from dataclasses import asdict
from pathlib import Path

import torch

from .inference.distributed import init_from_env
from .inference.exact import fit_type2_ml
from .inference.guides import AmortizedGuide
from .inference.refine import refine_local
from .inference.trainer import (
    History,
    TrainConfig,
    load_checkpoint,
    meta_train,
    resolve_device,
    save_checkpoint,
)
from .io import atomic_torch_save
from .models.base import HierarchicalModel
from .predictive import Posterior
from .tasks.batch import TaskBatch, check_support
from .tasks.dataset import Standardization, standardize_pool

__all__ = ["BayesLearner"]

_FORMAT = "bayesmeta.BayesLearner/1"
_MAY_CHANGE_ON_RESUME = {"progress", "steps", "max_time", "log_every", "checkpoint_every"}


def _check_resumable(saved: dict, now: dict) -> None:
    changed = sorted(k for k in now if k not in _MAY_CHANGE_ON_RESUME and saved.get(k) != now[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"resume: the checkpoint was trained with other settings ({detail})")


class BayesLearner:
    """Amortized (or exact) Bayesian meta-learner around a hierarchical model.

    Args:
        model: a :class:`~bayesmeta.models.HierarchicalModel`.
        guide: ``"diagonal"`` or ``"flow"`` (an :class:`~bayesmeta.inference.AmortizedGuide`
            of that family is built from ``model.task_sites``), or a guide instance.
        conjugate: use the model's exact posterior (linear-Gaussian models): ``fit``
            maximises the exact marginal likelihood, ``adapt`` is exact, no guide is built.
        objective: ``"elbo"`` (``TraceMeanField_ELBO``, default), ``"iwae"`` (per-task
            importance-weighted bound) or ``"iwae-dreg"`` (the same with DReG gradients).
        num_particles: particles of the training objective (vectorised).
        guide_options: keyword arguments of :class:`~bayesmeta.inference.AmortizedGuide`.

    Example:
        >>> import bayesmeta as bm
        >>> learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=4))
        >>> _ = learner.fit(bm.tasks.Sinusoid(), steps=2, progress=False)
    """

    def __init__(self, model: HierarchicalModel, *, guide="diagonal", conjugate: bool = False,
                 objective: str = "elbo", num_particles: int = 8, guide_options: dict | None = None) -> None:
        if not isinstance(model, HierarchicalModel):
            raise TypeError(f"model must be a bayesmeta HierarchicalModel; got {type(model).__name__}")
        if conjugate and not getattr(model, "has_exact_posterior", False):
            raise ValueError(f"conjugate=True needs a model with an exact posterior; {type(model).__name__} has none")
        TrainConfig(objective=objective, num_particles=num_particles)  # validates both
        self.model, self.conjugate = model, conjugate
        self.objective, self.num_particles = objective, num_particles
        if conjugate:
            self.guide = None
        elif isinstance(guide, AmortizedGuide):
            self.guide = guide
        elif isinstance(guide, str):
            self.guide = AmortizedGuide(model, guide, **(guide_options or {}))
        else:
            raise TypeError(f"guide must be 'diagonal', 'flow' or an AmortizedGuide; got {guide!r}")
        self.history = History()
        self.standardization: Standardization | None = None
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ training
    def to(self, device) -> BayesLearner:
        self.device = resolve_device(device)
        self.model.to(self.device)
        if self.guide is not None:
            self.guide.to(self.device)
        return self

    def fit(self, source, steps: int = 2000, *, max_time: float | None = None, tasks_per_step: int = 32,
            device=None, seed: int = 0, lr: float = 1e-3, progress: bool = True, checkpoint=None,
            resume: bool = False, on_checkpoint=None, distributed: bool = False, standardize: bool | None = None,
            **options) -> BayesLearner:
        """Meta-train on a task family (endless) or a ``TaskBatch`` pool.

        Stops after ``steps`` or ``max_time`` seconds, whichever comes first. With
        ``conjugate=True``, a model with fixed features (``HierarchicalLinearRegression``) and a
        ``TaskBatch`` pool, the fit is exact type-II maximum likelihood instead: full-batch L-BFGS
        from the data's own scale (:func:`~bayesmeta.inference.fit_type2_ml`; ``steps`` bounds
        its iterations, a :class:`~bayesmeta.inference.ConvergenceWarning` says when it did not
        converge), so data in natural units need no standardising; it ignores ``max_time``, ``lr``,
        ``tasks_per_step`` and ``seed`` (a deterministic full-batch fit) and a resume refits. Further options
        are fields of :class:`~bayesmeta.inference.TrainConfig` (``max_points``, ``clip_norm``,
        ``optimizer``, ``final_lr_fraction``, ``checkpoint_every``, ...). Returns ``self``; the
        trace is ``self.history``.

        Args:
            device: where to train (``"cpu"``, ``"cuda"``, ...); ``None`` (default) keeps the
                learner on its current device.
            checkpoint: path of a training checkpoint, written atomically every
                ``checkpoint_every`` steps and at the end (model, guide, optimiser, RNG states).
            resume: continue from ``checkpoint`` (which must exist) instead of starting over.
            on_checkpoint: called as ``on_checkpoint(step, history)`` after each checkpoint.
            distributed: train in the ``torch.distributed`` process group of a ``torchrun``
                launch (every rank calls ``fit`` with the same arguments; see
                :mod:`bayesmeta.inference.distributed`). ``WORLD_SIZE=1`` trains normally.
            standardize: train on standardised inputs and outputs (each column's mean and sd
                over the pool's points), so data in any units train with the default learning
                rate. ``None`` (default): on for a ``TaskBatch`` pool (your data), off for a task
                family (synthetic families set their own scale) and for exact type-II ML (which
                starts from the data's scale and keeps the model in natural units). ``adapt`` and
                ``predict`` take and return natural units either way; the model's parameters
                and ``Posterior.sample`` are on the standardised scale (``self.standardization``).
        """
        unknown = set(options) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"fit: unknown option(s) {sorted(unknown)}; allowed: {sorted(TrainConfig.__dataclass_fields__)}")
        cfg = TrainConfig(steps=steps, max_time=max_time, tasks_per_step=tasks_per_step, seed=seed, lr=lr,
                          progress=progress, objective=self.objective, num_particles=self.num_particles,
                          **options)
        self.to(self.device if device is None else device)  # None: train where the learner is
        state = None
        if resume:
            if checkpoint is None:
                raise ValueError("resume=True needs checkpoint= (the path to continue from)")
            state = load_checkpoint(checkpoint, map_location=self.device)
            _check_resumable(state["config"], asdict(cfg))
        self.model.train()
        exact = self._fits_exactly(source, distributed)
        if state is not None:  # a resumed run keeps the standardisation it started with
            saved = state.get("standardization")
            self.standardization = None if saved is None else Standardization.from_dict(saved)
            source = source if self.standardization is None else self.standardization.batch(source)
        else:
            source, self.standardization = standardize_pool(source, standardize, default=not exact)
        extra = {"standardization": None if self.standardization is None else self.standardization.to_dict()}
        if exact:
            self.history = fit_type2_ml(self.model, source, max_iter=steps)
            if checkpoint is not None:
                save_checkpoint(checkpoint, len(self.history.step), self.model, None, None, self.history, cfg,
                                on_checkpoint=on_checkpoint, extra=extra)
        else:
            ctx = init_from_env(self.device) if distributed else None
            self.history = meta_train(self.model, self.guide, source, cfg, device=self.device,
                                      conjugate=self.conjugate, checkpoint=checkpoint, resume=state,
                                      on_checkpoint=on_checkpoint, distributed=ctx, extra_state=extra)
        self.train_config = asdict(cfg)
        return self

    def _fits_exactly(self, source, distributed: bool) -> bool:
        """Conjugate model with fixed features on a finite pool: full-batch type-II ML (L-BFGS)."""
        return (self.conjugate and isinstance(source, TaskBatch) and not distributed
                and getattr(self.model, "fixed_features", False))

    # ------------------------------------------------------------------ adaptation
    def adapt(self, x_support, y_support=None, mask_support=None, *, refine_steps: int = 0,
              refine_lr: float = 1e-2) -> Posterior:
        """Posterior over task parameters for new tasks from their support sets.

        Args:
            x_support: ``[T, S, D]`` inputs, or a :class:`TaskBatch` (its support set is used).
            y_support: ``[T, S, E]`` (or ``[T, S]``) targets.
            mask_support: ``[T, S]`` bool; ``None`` means every point is observed. Tasks may
                have no observed points (the posterior is then the prior).
            refine_steps: semi-amortized refinement steps on each task's local parameters.
        """
        if isinstance(x_support, TaskBatch):
            x_support, y_support, mask_support = x_support.support
        elif y_support is None:
            raise ValueError("adapt: y_support is required unless a TaskBatch is given")
        x, y, mask = check_support(x_support, y_support, mask_support, x_dim=self.model.x_dim,
                                   y_dim=self.model.y_dim, prefix="support ")
        x, y, mask = x.to(self.device), y.to(self.device), mask.to(self.device)
        std = self.standardization
        if std is not None:
            x, y = std.x(x), std.y(y)
        self.model.eval()
        with torch.no_grad():
            if self.conjugate:
                return Posterior(self.model, x, y, mask, exact=self.model.exact_posterior(x, y, mask),
                                 standardization=std)
            local = self.guide.encode(x, y, mask)
        local = refine_local(self.guide, self.model, x, y, mask, local, steps=refine_steps, lr=refine_lr,
                             num_particles=self.num_particles, objective=self.objective)
        return Posterior(self.model, x, y, mask, guide=self.guide, local=local, standardization=std)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write model, guide and settings to ``path`` atomically (loadable on any device)."""
        cls = type(self.model)
        state = {
            "format": _FORMAT,
            "model_class": f"{cls.__module__}:{cls.__qualname__}",
            "model_config": self.model.config,
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "conjugate": self.conjugate,
            "objective": self.objective,
            "num_particles": self.num_particles,
            "guide_config": None if self.guide is None else self.guide.config,
            "guide_state": None if self.guide is None else {k: v.detach().cpu() for k, v in self.guide.state_dict().items()},
            "history": self.history.as_dict(),
            "standardization": None if self.standardization is None else self.standardization.to_dict(),
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
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a saved BayesLearner (format {_FORMAT})")
        try:
            module, _, qualname = state["model_class"].partition(":")
            model_cls = importlib.import_module(module)
            for part in qualname.split("."):
                model_cls = getattr(model_cls, part)
            if not (isinstance(model_cls, type) and issubclass(model_cls, HierarchicalModel)):
                raise ValueError(f"{path}: {state['model_class']} is not a HierarchicalModel")
            model = model_cls(**state["model_config"])
            model.load_state_dict(state["model_state"])
            guide = "diagonal"
            if state["guide_config"] is not None:
                cfg = dict(state["guide_config"])
                guide = AmortizedGuide(model, cfg.pop("family"), **cfg)
                guide.load_state_dict(state["guide_state"])
            learner = cls(model, guide=guide, conjugate=state["conjugate"], objective=state["objective"],
                          num_particles=state["num_particles"])
            learner.history = History(**state["history"])
            if state.get("standardization") is not None:
                learner.standardization = Standardization.from_dict(state["standardization"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ImportError) as err:
            if isinstance(err, ValueError) and str(path) in str(err):
                raise
            raise damaged(err) from err
        return learner.to(device)
