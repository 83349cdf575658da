"""``BayesLearner``: an amortized (or exact) Bayesian meta-learner around a hierarchical Pyro model."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch

from ..inference.checkpoints import save_checkpoint
from ..inference.context import FitContext
from ..inference.convergence import convergence_problem
from ..inference.exact import ConvergenceWarning, fit_type2_ml
from ..inference.global_objective import GLOBAL_OBJECTIVES
from ..inference.guides import AmortizedGuide
from ..inference.hyper import WeightedDraws, correct_globals
from ..inference.objectives import OBJECTIVES, SLEEP_OBJECTIVES, check_sleep_objective
from ..inference.options import History, TrainConfig
from ..inference.polish import can_polish, polish_marginal_likelihood
from ..inference.program import ModelProgram, program_of
from ..inference.program.data import check_batch
from ..inference.refine import refine_local
from ..inference.svi import meta_train
from ..legacy import legacy_checkpoint_problem
from ..models.scaling import check_model_scaling, model_scaling
from ..tasks.batch import TaskBatch
from ..tasks.dataset import Standardization
from .base import MetaLearner, _renamed, check_adapt_options, check_standardize_option
from .persistence import load_learner, save_learner
from .posterior import Posterior

__all__ = ["BayesLearner"]


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

    A model with **global latent sites** (hyperpriors sampled outside every plate) gets a guide of
    their own (a full-rank Gaussian ``q(g)``) beside the amortized local guide, which is conditioned
    on the global draw; the objectives count the globals once per pool
    (:class:`~bayesmeta.inference.GlobalObjective`). After a fit on a pool, the hyperposterior is
    importance-corrected (``global_draws``; ``history.hyper`` holds its ESS and Pareto-k) and
    predictions for new tasks integrate over it. Such a model is fitted to every task of a pool (no
    validation hold-out unless ``fit(validation=...)`` is given one).

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
        if self.program.has_globals:
            names = [s.name for s in self.program.global_sites]
            if conjugate:
                raise ValueError(f"conjugate=True: the model has global latent sites {names}, whose posterior is "
                                 "not part of an exact task posterior; drop conjugate")
            if objective not in GLOBAL_OBJECTIVES:
                raise ValueError(f"objective={objective!r} is not available for a model with global latent sites "
                                 f"{names}; use one of {GLOBAL_OBJECTIVES}")
        self.global_draws: dict | None = None  # importance-corrected hyperposterior draws (a fit on a pool)
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
        if self.guide is not None:
            self.guide.to(dtype=self.program.dtype)  # a float64 model (model.double()) gets a float64 guide
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

    def _validation(self, source, validation, cfg: TrainConfig, distributed: bool):
        # a model with global sites is fitted to every task of a pool by default: its hyperposterior is the
        # posterior given all of them, and the small pools it is for have no tasks to spare
        if validation is None and self.program.has_globals:
            return source, None
        return super()._validation(source, validation, cfg, distributed)

    def _checkpoint_problem(self, state: dict) -> str | None:
        return legacy_checkpoint_problem(state, self._modules())

    def _validation_predict_options(self) -> dict:
        # importance-corrected, as at test time, with a quarter of the default draws: validation runs often
        return {} if self.conjugate else {"num_samples": 250}

    def _check_pools(self, source, validation) -> None:
        """Every value of the training pool and of the validation tasks the model can take, before any training."""
        for what, batch in (("fit: training pool", source), ("fit: validation", validation)):
            if isinstance(batch, TaskBatch):
                check_batch(self.program, batch.to(self.device), what=what, dtype=self.program.dtype)

    def _meta_train(self, source, cfg: TrainConfig, context: FitContext) -> History:
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
        check_standardize_option(context.standardize, type(self).__name__)
        state, distributed = context.resume, context.distributed
        self.model.train()
        if state is None:  # a new fit: draws corrected for an earlier fit's guide no longer describe q(g)
            self.global_draws = None
        exact = self._fits_exactly(source, distributed)
        if state is None:
            self._fit_scalings(source)
        if exact:
            history = fit_type2_ml(self.model, source, max_iter=cfg.steps)
            if context.checkpoint is not None:
                save_checkpoint(context.checkpoint, len(history.step), {"model": self.model, "guide": None}, None,
                                history, cfg, on_checkpoint=context.on_checkpoint, extra=self._extra_state())
            return history
        history = meta_train(self.program, self.guide, source, cfg, device=self.device, objective=self.objective,
                             num_particles=self.num_particles, conjugate=self.conjugate,
                             context=replace(context, extra_state=self._extra_state()))
        if not isinstance(source, TaskBatch):
            return history
        whole = getattr(self, "_whole_pool", None)  # the pool with the tasks validation held out (fit sets it)
        if self.program.has_globals:
            self._correct_globals(whole if whole is not None else source, history, cfg.seed)
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

    def correct_hyperposterior(self, pool: TaskBatch, *, seed: int | None = 0) -> dict:
        """Importance-correct the fitted global guide ``q(g)`` on ``pool`` (what ``fit`` does on its pool; call it
        after training the model and guide in your own loop). Returns the report (``ess``, ``pareto_k``,
        ``kept``), also in ``history.hyper``; predictions use the corrected draws where ``kept``.

        Raises:
            ValueError: the model has no global latent sites, or ``pool`` is not a ``TaskBatch``.
        """
        if not self.program.has_globals:
            raise ValueError(f"{type(self.model).__name__} has no global latent sites")
        if not isinstance(pool, TaskBatch):
            raise ValueError(f"pool must be a TaskBatch (the tasks the model was fitted to); got {type(pool).__name__}")
        self._correct_globals(pool, self.history, seed)
        return dict(self.history.hyper or {})

    def _correct_globals(self, pool: TaskBatch, history: History, seed: int | None) -> None:
        """Importance-correct the hyperposterior on the whole pool (kept where PSIS Pareto-k < 0.7)."""
        x, y, mask = (t.to(self.device) for t in pool.all_points())
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0 if seed is None else seed)
            result = correct_globals(self.program, self.guide, x, y, mask)
        if result is None:
            history.hyper = {"kept": False, "why": "the pool is too large for the correction (its hyperposterior is "
                                                  "concentrated: q(g) describes it)"}
            self.global_draws = None
            return
        kept = result["pareto_k"] < 0.7
        history.hyper = {"ess": result["ess"], "pareto_k": result["pareto_k"], "num_draws": int(result["g"].shape[0]),
                         "kept": bool(kept)}
        self.global_draws = {"g": result["g"], "log_w": result["log_w"]} if kept else None
        if not kept:
            history.notes.append(f"hyperposterior: the importance correction of q(g) was not kept (Pareto-k "
                                 f"{result['pareto_k']:.2f} >= 0.7, ESS {result['ess']:.0f}); predictions draw the "
                                 "globals from the fitted guide q(g)")

    def hyperposterior(self):
        """Draws of the global sites' posterior given the training pool: ``(n, T) -> g [n, T, G]`` (flat
        unconstrained); the importance-corrected draws where a fit on a pool kept them, else ``q(g)``.

        Raises:
            ValueError: the model has no global latent sites.
        """
        if not self.program.has_globals:
            raise ValueError(f"{type(self.model).__name__} has no global latent sites")
        assert self.guide is not None and self.guide.globals is not None, "a model with globals has a global guide"
        if self.global_draws is not None:
            return WeightedDraws(self.global_draws["g"].to(self.device), self.global_draws["log_w"].to(self.device))
        q = self.guide.globals.distribution()
        return lambda n, t: q.sample((n, t))

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
        if self.program.has_globals:
            if steps:
                raise ValueError("adapt: steps > 0 (semi-amortized refinement) is not supported yet for a model "
                                 "with global latent sites; predictions are importance-corrected instead")
            return Posterior(self.program, x, y, mask, guide=self.guide, local=local, hyper=self.hyperposterior())
        local = refine_local(self.guide, self.program, x, y, mask, local, steps=steps or 0,
                             lr=1e-2 if lr is None else lr, num_particles=self.num_particles, objective=self.objective)
        return Posterior(self.program, x, y, mask, guide=self.guide, local=local)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write model, guide and settings to ``path`` atomically (loadable on any device)."""
        return save_learner(self, path)

    @classmethod
    def load(cls, path, *, device="cpu") -> BayesLearner:
        """Rebuild a learner saved with :meth:`save` on ``device``.

        Raises:
            FileNotFoundError, IsADirectoryError, OSError: the file cannot be read (names it).
            ValueError: not a saved BayesLearner, or a corrupt or truncated file (names the
                path; the original error is chained).
        """
        return load_learner(cls, path, device=device)
