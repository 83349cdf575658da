"""``Posterior`` over task parameters: draws (guide, importance, exact) and the predictive they make on query points.

Layer 4 (it draws with :mod:`bayesmeta.inference`); the predictives it returns are layer 0's
:class:`~bayesmeta.predictive.PosteriorPredictive` (Gaussian likelihoods) and
:class:`~bayesmeta.predictive.FamilyMixture` (any other family).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch

from .._checks import check_query
from ..inference.hyper import ConditionalJoint, HyperProgram
from ..inference.importance import defensive_importance, effective_sample_size, pareto_k
from ..inference.program import program_of, unwrap
from ..inference.program.data import check_magnitude
from ..predictive import (
    FamilyMixture,
    PosteriorPredictive,
    PredictiveDiagnostics,
    heaviest,
    pad_components,
    systematic_resample,
)

__all__ = ["Posterior", "PREDICT_METHODS"]

PREDICT_METHODS = ("importance", "guide", "exact")
DEFAULT_SAMPLES = {"importance": 1000, "guide": 200}
DEFAULT_MIN_ESS = 100.0
_CHUNK_ELEMENTS = 2**25  # decoder rows x 64 per chunk when evaluating many samples
_DRAW_ELEMENTS = 2**24  # draws x tasks x (parameters + support points) held at once
_BLOCK_ELEMENTS = 2**18  # components x query points per likelihood call (decoder activations)
MAX_TASK_ELEMENTS = 2**28  # one task's draws x (parameters + points), or draws x query points: ~1 GB


def _gather_draws(theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(theta, 0, idx[..., None].expand(-1, -1, theta.shape[-1]))  # [n, T, P]


def _reduce(theta: torch.Tensor, log_w: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the draws holding 1 - 1e-3 of each task's weight; beyond ``cap`` draws, resample.

    Systematic resampling to ``cap`` equally weighted draws keeps the mixture unbiased and
    bounds the cost of evaluating the likelihood on many query points.
    """
    keep = heaviest(log_w, 1 - 1e-3)  # [m, T]
    if keep.shape[0] <= cap:
        idx, kept_w = keep, torch.gather(log_w, 0, keep)
    else:
        idx = systematic_resample(log_w, cap)
        kept_w = torch.zeros(idx.shape, dtype=log_w.dtype, device=log_w.device)
    return _gather_draws(theta, idx), kept_w


def _check_num_samples(n) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_samples must be a positive int; got {n!r}")
    return n


def _check_draw_budget(min_ess, n: int, max_draws: int, method: str) -> float:
    """The target ESS: ``min_ess`` if given (a finite number >= 0 that the draws can reach, importance only),
    else ``DEFAULT_MIN_ESS`` or the most draws doubling from ``n`` reaches within ``max_draws``, if fewer."""
    reachable = n * 2 ** int(math.floor(math.log2(max(max_draws, n) / n)))  # n, 2n, 4n, ... <= max_draws
    if min_ess is None:
        return float(min(DEFAULT_MIN_ESS, reachable))
    if isinstance(min_ess, bool) or not isinstance(min_ess, int | float) or not 0 <= min_ess < float("inf"):
        raise ValueError(f"min_ess must be None or a finite number >= 0 (0: no extra draws); got {min_ess!r}")
    if method == "importance" and min_ess > reachable:
        raise ValueError(f"min_ess={min_ess} is above the draw budget max_draws={max_draws} (doubling from "
                         f"num_samples={n} reaches {reachable} draws, and n draws have an effective sample size of "
                         "at most n): lower min_ess or raise max_draws / num_samples")
    return float(min_ess)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Posterior:
    """Posterior over the task parameters of ``T`` tasks given their support sets.

    Built by :meth:`bayesmeta.BayesLearner.adapt`. Holds either the amortized guide's local
    parameters (approximate posterior, optionally refined) or an exact Gaussian posterior. The
    support, the task parameters and the predictives are in the data's units, as the model has them.

    For a model with global sites (``hyper``: draws of their posterior given the training pool), each
    task's draws are joint ``(g, theta)``: global draws from the hyperposterior and task draws given
    each, so predictions integrate over both and :meth:`sample` returns the global sites too (one
    draw per task and sample, ``[n, T, *event]``: the hyperposterior as this task's support updates it).
    """

    def __init__(self, model, x, y, mask, *, guide=None, local=None, exact=None, hyper=None) -> None:
        if (exact is None) == (guide is None or local is None):
            raise ValueError("Posterior needs either guide and local parameters, or an exact posterior")
        if hyper is not None and not isinstance(model, HyperProgram):
            model = HyperProgram(program_of(model), hyper)
        self.program = model if isinstance(model, HyperProgram) else program_of(model)
        self.guide, self.local, self.exact, self.hyper = guide, local, exact, hyper
        self.x_support, self.y_support, self.mask_support = x, y, mask

    @property
    def model(self):
        """Deprecated: the model's :class:`~bayesmeta.inference.program.ModelProgram` is :attr:`program`."""
        warnings.warn("Posterior.model is the model's program; use Posterior.program (Posterior.program.model is "
                      "your Pyro module)", DeprecationWarning, stacklevel=2)
        return self.program

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x_support.device

    def distribution(self, widen: float = 1.0):
        """The (approximate) posterior over flat task parameters: batch ``[T]``, event ``[P]``."""
        if self.exact is not None:
            if widen == 1.0:
                return self.exact
            return type(self.exact)(self.exact.loc, scale_tril=self.exact.scale_tril * widen)
        if self.hyper is not None:
            return ConditionalJoint(self.guide, self.local, self.hyper, widen=widen)
        return self.guide.build(self.local, widen=widen)

    @torch.no_grad()
    def sample(self, num_samples: int = 1000, *, method: str | None = None, seed: int | None = None,
               min_ess: float | None = None) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` equally weighted parameter sets per task: ``{site: [n, T, *event]}``.

        Args:
            method: as in :meth:`predict`: ``"importance"`` (default for approximate
                posteriors) resamples self-normalised importance draws of the model's exact
                posterior; ``"guide"`` draws from the amortized guide; ``"exact"`` (default for
                conjugate posteriors) from the exact posterior.
            seed: makes the draws reproducible.
            min_ess: importance only: target effective sample size (default 100); tasks below it get more draws
                (doubling, up to ``16 * num_samples``).
        """
        method = self._method(method)
        n = _check_num_samples(num_samples)
        min_ess = _check_draw_budget(min_ess, n, 16 * n, method)
        if method == "exact" and self.exact is None:
            raise ValueError("method='exact' needs an exact posterior (BayesLearner(..., conjugate=True))")
        with _seeded(seed, self.device):
            theta, log_w, *_ = self._draws(method, n, min_ess=min_ess, max_draws=16 * n)
            if log_w is not None:
                theta = _gather_draws(theta, systematic_resample(log_w, n))
        return self.program.split(theta)  # [n, T, *event] per site

    def _method(self, method: str | None) -> str:
        if method is None:
            return "exact" if self.exact is not None else "importance"
        if method not in PREDICT_METHODS:
            raise ValueError(f"method must be one of {PREDICT_METHODS}; got {method!r}")
        return method

    def _query(self, x) -> torch.Tensor:
        x = check_query(x, self.num_tasks, self.program.x_dim, dtype=self.x_support.dtype, device=self.device)
        check_magnitude(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device), what="x", dtype=x.dtype)
        return x

    @torch.no_grad()
    def predict(self, x, num_samples: int | None = None, *, method: str | None = None,
                seed: int | None = None, min_ess: float | None = None, max_draws: int | None = None) -> PosteriorPredictive | FamilyMixture:
        """Posterior predictive at query inputs ``x`` ``[T, N, D]`` (or ``[N, D]`` for all tasks).

        Args:
            method: ``"importance"`` (default for approximate posteriors): self-normalised
                importance sampling of the model's exact task posterior with a defensive
                proposal (guide, widened guide, prior); ``"guide"``: plain samples from the
                guide; ``"exact"`` (default for conjugate posteriors): closed form.
            num_samples: posterior samples (default 1000 for importance, 200 for guide).
            seed: makes the Monte-Carlo draws reproducible.
            min_ess: importance only: target effective sample size per task (default 100, or
                the most draws the budget reaches if fewer). A task below it
                gets as many draws again (its earlier draws kept), until it reaches ``min_ess`` or
                ``max_draws`` (default ``16 * num_samples``). Only the draws that carry weight, at
                most ``num_samples`` per task (systematic resampling beyond), are pushed through
                the likelihood on ``x``, which bounds the cost.

        Raises:
            ValueError: a bad ``method``, ``num_samples``, ``min_ess`` or ``max_draws``, or a target
                ESS the draw budget cannot reach (``min_ess > max_draws``).
        """
        return self._predict(self._query(x), num_samples, method=method, seed=seed, min_ess=min_ess,
                             max_draws=max_draws)

    def _predict(self, x, num_samples, *, method, seed, min_ess, max_draws) -> PosteriorPredictive | FamilyMixture:
        """:meth:`predict` with ``x`` already checked."""
        method = self._method(method)
        if method == "exact":
            return self._predict_exact(x)
        n = _check_num_samples(DEFAULT_SAMPLES[method] if num_samples is None else num_samples)
        if max_draws is not None and (isinstance(max_draws, bool) or not isinstance(max_draws, int) or max_draws < n):
            raise ValueError(f"max_draws must be None or an int >= num_samples={n}; got {max_draws!r}")
        min_ess = _check_draw_budget(min_ess, n, max_draws or 16 * n, method)
        self._task_chunks(max(n, max_draws or 16 * n) if method == "importance" else n)  # checks the draws' bound
        if n * x.shape[1] * self.program.y_dim > MAX_TASK_ELEMENTS:
            raise ValueError(f"x: {x.shape[1]} query points x {n} draws is {n * x.shape[1]:.2e} mixture components "
                             f"per task (at most {MAX_TASK_ELEMENTS:.2e}); predict on fewer query points at a time "
                             f"or with a smaller num_samples")
        with _seeded(seed, self.device):
            theta, log_w, ess, k, used = self._draws(method, n, min_ess=min_ess, max_draws=max_draws or 16 * n)
        diagnostics = PredictiveDiagnostics(method, ess, k, used)
        if self.program.observation.family != "Normal":
            return FamilyMixture(theta, log_w, self._observation_components(x), shape=(*x.shape[:2], self.program.y_dim),
                                 dtype=x.dtype, block_elements=_BLOCK_ELEMENTS, diagnostics=diagnostics)
        return PosteriorPredictive.from_parameters(
            theta, log_w, self._likelihood_components(x), shape=(*x.shape[:2], self.program.y_dim), dtype=x.dtype,
            block_elements=_BLOCK_ELEMENTS, diagnostics=diagnostics)

    def _task_chunks(self, draws_per_task: int) -> list[torch.Tensor]:
        """Task indices in groups small enough that draws x tasks x (P + S) stays bounded (with global sites, the
        guide's head also runs per draw and task: its input and hidden activations count too)."""
        per_draw = self.program.param_dim + self.x_support.shape[1] + 1
        if self.hyper is not None and self.guide is not None:  # head input [n, T, R + G] and its hidden layers
            per_draw += sum(m.in_features + m.out_features for m in self.guide.head.modules()
                            if isinstance(m, torch.nn.Linear))
        per_task = draws_per_task * per_draw
        if per_task > MAX_TASK_ELEMENTS:
            raise ValueError(
                f"num_samples/max_draws: {draws_per_task} draws per task x {self.x_support.shape[1]} support points "
                f"need {per_task:.2e} elements for one task (at most {MAX_TASK_ELEMENTS:.2e}); use fewer draws")
        size = max(1, _DRAW_ELEMENTS // per_task)
        idx = torch.arange(self.num_tasks, device=self.device)
        return list(idx.split(size))

    def _draws(self, method: str, n: int, *, min_ess: float, max_draws: int):
        """Posterior draws ``theta [m, T, P]`` task group by task group (bounded memory).

        Returns ``theta``, log weights ``[m, T]`` (``None`` for unweighted draws; padding has
        weight zero), and per task the ESS, Pareto-k and draws used (``None`` unless importance).
        """
        if method != "importance":
            groups = self._task_chunks(n)
            parts = [(self if len(groups) == 1 else self._subset(g)).distribution().sample((n,)) for g in groups]
            return torch.cat(parts, 1), None, None, None, None
        groups = self._task_chunks(max_draws)
        parts = [(self if len(groups) == 1 else self._subset(g))._importance_draws(
            n, min_ess=min_ess, max_draws=max_draws, cap=n) for g in groups]
        m = max(p[0].shape[0] for p in parts)
        padded = [pad_components(p[0], p[1], m) for p in parts]
        theta, log_w = torch.cat([p[0] for p in padded], 1), torch.cat([p[1] for p in padded], 1)
        return (theta, log_w, *(torch.cat([p[i] for p in parts]) for i in (2, 3, 4)))

    def _likelihood_components(self, x: torch.Tensor):
        """``(params [n_b, T_b, P], tasks) -> (loc, scale)`` of the model's likelihood on ``x``.

        Blocks beyond the predictive's cache are computed when used, from the model as it is then
        (a copy of ``x`` is kept); see :meth:`~bayesmeta.predictive.GaussianMixture.from_parameters`.
        """
        program, x = self.program, x.clone()

        def components(params: torch.Tensor, tasks: slice):
            with torch.no_grad():
                base, _ = unwrap(program.observation_distribution(x[tasks], params))  # Normal [n_b, T_b, N(, E)]
            loc, scale = base.loc, base.scale
            if len(program.observation.event_shape) == 0:
                loc, scale = loc.unsqueeze(-1), scale.unsqueeze(-1)
            return loc, scale
        return components

    def _observation_components(self, x: torch.Tensor):
        """``(params [n_b, T_b, P], tasks) -> observation distribution [n_b, T_b, N]`` on ``x``."""
        program, x = self.program, x.clone()

        def components(params: torch.Tensor, tasks: slice):
            with torch.no_grad():
                return program.observation_distribution(x[tasks], params)
        return components

    def _importance_draws(self, n: int, *, min_ess: float, max_draws: int, cap: int, earlier=None):
        """Importance draws for every task; tasks whose ESS < ``min_ess`` get as many draws again (their
        earlier draws are kept: one proposal, one weighted sample), until ``max_draws``.

        Returns the components to keep (``theta [m, T, P]``, log weights ``[m, T]``; padding has
        weight zero), and per task the ESS, Pareto-k and number of draws used.
        """
        theta, log_w = self.importance_samples(n)
        if earlier is not None:
            theta, log_w = torch.cat([earlier[0], theta]), torch.cat([earlier[1], log_w])
        total = theta.shape[0]
        ess = effective_sample_size(log_w)
        low = (ess < min_ess).nonzero()[:, 0]
        more = len(low) > 0 and 2 * total <= max_draws
        if more:
            sub = self._subset(low)._importance_draws(total, min_ess=min_ess, max_draws=max_draws, cap=cap,
                                                      earlier=(theta[:, low], log_w[:, low]))
        done = torch.ones_like(ess, dtype=torch.bool)
        if more:
            done[low] = False
        k = torch.full_like(ess, float("nan"))
        k[done] = pareto_k(log_w[:, done])  # the tasks given more draws get theirs from the last round
        used = torch.full_like(ess, float(total))
        theta, log_w = _reduce(theta, log_w, cap)
        if more:
            theta, log_w = pad_components(theta, log_w, sub[0].shape[0])
            sub_theta, sub_log_w = pad_components(sub[0], sub[1], theta.shape[0])
            theta[:, low], log_w[:, low] = sub_theta, sub_log_w
            ess[low], k[low], used[low] = sub[2], sub[3], sub[4]
        return theta, log_w, ess, k, used

    def _subset(self, idx: torch.Tensor) -> Posterior:
        x, y, m = self.x_support[idx], self.y_support[idx], self.mask_support[idx]
        if self.exact is not None:
            exact = type(self.exact)(self.exact.loc[idx], scale_tril=self.exact.scale_tril[idx])
            return Posterior(self.program, x, y, m, exact=exact)
        local = {key: v[idx] for key, v in self.local.items()}
        return Posterior(self.program, x, y, m, guide=self.guide, local=local, hyper=self.hyper)

    def importance_samples(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``theta [n, T, P]`` and log weights ``[n, T]`` targeting the model's exact posterior."""
        x, y, m = self.x_support, self.y_support, self.mask_support
        chunk = max(1, _CHUNK_ELEMENTS // max(1, self.num_tasks * x.shape[1] * 64))
        prior = self.program.gaussian_prior()
        return defensive_importance(
            lambda th: self.program.log_joint(x, y, m, th),
            self.distribution(),
            self.distribution(widen=2.0),
            _TracedPrior(self.program, x) if prior is None else prior,
            num_samples,
            chunk=chunk,
        )

    def _predict_exact(self, x) -> PosteriorPredictive:
        model: Any = self.program.model
        if self.exact is None or not hasattr(model, "exact_predict"):
            raise ValueError("method='exact' needs an exact posterior (BayesLearner(..., conjugate=True))")
        mu, sd = model.exact_predict(self.exact, x)  # [T, N, 1]
        return PosteriorPredictive(mu[None], sd[None], None, method="exact")


class _TracedPrior:
    """The prior over flat unconstrained task parameters of the tasks of ``x``, from the program:
    ``sample((n, T))`` -> ``[n, T, P]`` and ``log_prob(u [n, T, P])`` -> ``[n, T]`` (for a prior that is
    not Gaussian in those coordinates)."""

    def __init__(self, program, x: torch.Tensor) -> None:
        self.program, self.x = program, x

    def sample(self, shape) -> torch.Tensor:
        n, t = shape
        if t != self.x.shape[0]:
            raise ValueError(f"prior draws for {t} tasks; the support has {self.x.shape[0]}")
        return self.program.sample_prior(self.x, n)

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return self.program.log_prior(self.x, u)
