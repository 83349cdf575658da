"""Simulation-based calibration (Talts et al. 2018) of an amortized posterior.

theta ~ learned prior -> simulated support set -> L posterior draws -> rank of theta among them.
If the posterior is right, the rank of every parameter coordinate is uniform on {0, ..., L}.
Too narrow a posterior piles ranks at both ends; too wide, in the middle; a biased one on a side.

A model with **global latent sites** (hyperpriors) is calibrated as a whole: the globals are
identified only by a pool of tasks, so each simulation draws ``g ~ p(g)``, a pool of tasks
``theta_i ~ p(theta | g)`` and their data, and the posterior of that pool ranks ``g`` (and, if it
returns them, the tasks' ``theta_i``: a new task with a support set is one of the pool's tasks). A
fitted ``BayesLearner``'s ``q(g)`` is the posterior of its own training pool, not amortized over
pools, so the posterior here is a callable that fits each simulated pool:
:func:`refit_posterior` (a fresh learner per pool: honest and costly) or one of your own (an exact
posterior, NUTS).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..inference.program import ModelError, program_of
from ..tasks.batch import TaskBatch

__all__ = ["SBCResult", "refit_posterior", "simulation_based_calibration"]


@dataclass(frozen=True)
class SBCResult:
    """Ranks and a uniformity test per parameter coordinate.

    Attributes:
        ranks: ``[num_simulations, P]`` ranks in ``0..num_posterior_samples``.
        names: the ``P`` coordinates, e.g. ``"w[1]"``.
        chi2, p_values: ``[P]`` chi-square statistic of the rank histogram (``bins`` bins) and its
            p-value under uniformity.
    """

    ranks: torch.Tensor
    num_posterior_samples: int
    names: list[str]
    bins: int
    chi2: torch.Tensor
    p_values: torch.Tensor

    def passed(self, alpha: float = 0.01) -> bool:
        """No coordinate rejects uniformity at level ``alpha`` (Bonferroni over coordinates)."""
        return bool((self.p_values >= alpha / len(self.names)).all())

    @classmethod
    def from_dict(cls, data: dict) -> SBCResult:
        """Rebuild from :meth:`to_dict` (e.g. a run directory's ``sbc.json``)."""
        try:
            return cls(torch.tensor(data["ranks"]).T, data["num_posterior_samples"], list(data["names"]),
                       data["bins"], torch.tensor(data["chi2"], dtype=torch.float64),
                       torch.tensor(data["p_values"], dtype=torch.float64))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an SBC result: {err}") from err

    def to_dict(self) -> dict:
        return {"num_simulations": self.ranks.shape[0], "num_posterior_samples": self.num_posterior_samples,
                "bins": self.bins, "names": self.names, "chi2": self.chi2.tolist(),
                "p_values": self.p_values.tolist(), "passed": self.passed(),
                "ranks": self.ranks.T.tolist()}


def rank_uniformity(ranks: torch.Tensor, num_posterior_samples: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chi-square test of uniform ranks on ``0..L`` per column: statistic and p-value, each ``[P]``.

    Rank values are grouped into ``bins`` bins; each bin's expected count uses the exact number
    of rank values it holds, so ``L + 1`` need not be a multiple of ``bins``.
    """
    values = num_posterior_samples + 1
    bin_of = torch.arange(values) * bins // values  # [L+1]
    expected = torch.bincount(bin_of, minlength=bins).double() / values * ranks.shape[0]  # [B]
    observed = torch.stack([torch.bincount(bin_of[c], minlength=bins) for c in ranks.T.long()]).double()  # [P, B]
    chi2 = ((observed - expected) ** 2 / expected).sum(-1)
    p = torch.special.gammaincc(torch.tensor((bins - 1) / 2, dtype=torch.float64), chi2 / 2)
    return chi2, p


def _inputs(x, num_simulations: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor of support inputs (e.g. family.sample_inputs(...)); got {type(x).__name__}")
    if x.dim() == 2:
        x = x.expand(num_simulations, *x.shape)
    if x.dim() != 3 or x.shape[0] != num_simulations:
        raise ValueError(f"x must have shape [S, D] or [{num_simulations}, S, D]; got {tuple(x.shape)}")
    return x


def _posterior_draws(posterior, model, x, y, mask, n: int, method, seed: int) -> torch.Tensor:
    if hasattr(posterior, "adapt"):
        draws = posterior.adapt(x, y, mask).sample(n, method=method, seed=seed)
    elif callable(posterior):
        draws = posterior(x, y, mask, n)
    else:
        raise TypeError(f"posterior must be a learner (with .adapt) or a callable (x, y, mask, n) -> draws; "
                        f"got {type(posterior).__name__}")
    flat = model.flatten(draws) if isinstance(draws, dict) else draws
    if flat.shape != (n, x.shape[0], model.param_dim):
        raise ValueError(f"posterior draws must have shape {(n, x.shape[0], model.param_dim)}; got {tuple(flat.shape)}")
    if not torch.isfinite(flat).all():
        raise ValueError("posterior draws hold NaN or inf")
    return flat


@torch.no_grad()
def simulation_based_calibration(model, posterior, x, *, num_simulations: int = 200,
                                 num_posterior_samples: int = 100, method: str | None = "guide",
                                 bins: int | None = None, seed: int = 0, mask: torch.Tensor | None = None,
                                 tasks: Sequence[int] | None = None) -> SBCResult:
    """SBC of a posterior for ``model``'s learned prior on support inputs ``x``.

    Args:
        model: the model whose prior and likelihood simulate the data (any model ``BayesLearner``
            takes); ranks are taken per flat unconstrained coordinate.
        posterior: a learner (``adapt(x, y, mask).sample(n, method=method)``) or a callable
            ``(x, y, mask, n) -> {site: [n, T, ...]}`` or flat ``[n, T, P]`` draws. A model with global
            sites: a callable ``(x, y, mask, n) -> draws`` of the joint posterior given a whole simulated
            pool, ``{global site: [n, *shape], task site: [n, T, *shape]}`` (the task sites may be left
            out) or flat unconstrained global draws ``[n, G]``; e.g. :func:`refit_posterior`.
        x: support inputs ``[S, D]`` (the same for every simulation) or ``[num_simulations, S, D]``.
            A model with global sites: the inputs of a pool, ``[T, N, D]`` (or ``[num_simulations, T, N,
            D]``), or a ``TaskBatch`` (its points' inputs and mask; its outcomes are not used).
        num_simulations, num_posterior_samples: Talts et al. advise >= 100 of each.
        method: for learners: ``"guide"`` (default; SBC checks the amortized guide itself),
            ``"importance"`` or ``"exact"``.
        bins: histogram bins of the uniformity test (default ``min(20, num_simulations // 10)``).
        mask: a model with global sites: ``[T, N]`` (or ``[num_simulations, T, N]``) bool, the points each
            simulated pool observes (default: all; a ragged pool, a task with a small support set).
        tasks: a model with global sites: the pool's tasks whose parameters are ranked beside the globals
            (default: every task, where the draws hold the task sites; ``()``: the globals only).

    A model with global sites ranks its flat global coordinates (``mu``, ``log_tau``) first, then
    ``"{coordinate} (task i)"`` for each task in ``tasks``.

    Raises:
        ValueError: a bad argument; for a model with global sites also a learner as the posterior (its
            ``q(g)`` belongs to its own training pool: use :func:`refit_posterior`), inputs that are not a
            pool, or draws without every global site (each named).
    """
    for name, v, low in (("num_simulations", num_simulations, 20), ("num_posterior_samples", num_posterior_samples, 10)):
        if not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}; got {v!r}")
    bins = bins or max(2, min(20, num_simulations // 10))
    if not 2 <= bins <= num_posterior_samples + 1:
        raise ValueError(f"bins must be in [2, {num_posterior_samples + 1}]; got {bins}")
    model = program_of(model)
    if model.has_globals:
        return _sbc_globals(model, posterior, x, mask, tasks, num_simulations, num_posterior_samples, bins, seed)
    for name, value in (("mask", mask), ("tasks", tasks)):
        if value is not None:
            raise ValueError(f"{name}= is for a model with global latent sites (a simulated pool of tasks); "
                             f"{type(model.model).__name__} has none")
    x = _inputs(x, num_simulations)
    probe = model.probe_inputs()  # the model's dtype and device (of its first parameter; a model may have none)
    device = probe.device
    x = x.to(device=device, dtype=probe.dtype)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        theta = model.sample_prior(x, 1)[0]  # [T, P], flat unconstrained
        y = model.observation_distribution(x, theta[None]).sample()[0]  # [T, S] or [T, S, E]
    y = (y[..., None] if len(model.observation.event_shape) == 0 else y).to(x.dtype)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
    draws = _posterior_draws(posterior, model, x, y, mask, num_posterior_samples, method, seed + 1)
    ranks = (draws < theta).sum(0).cpu()  # [T, P] in 0..L
    chi2, p = rank_uniformity(ranks, num_posterior_samples, bins)
    return SBCResult(ranks, num_posterior_samples, model.coordinate_names(), bins, chi2, p)


def _pool_inputs(program, x, mask, num_simulations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [S, T, N, D]`` and ``mask [S, T, N]`` of the simulated pools, on the model's dtype and device."""
    name = type(program.model).__name__
    if isinstance(x, TaskBatch):
        px, _, pmask = x.all_points()
        x, mask = px, pmask if mask is None else mask
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a pool's inputs [T, N, D] or a TaskBatch; got {type(x).__name__}")
    if x.dim() == 3:
        x = x.expand(num_simulations, *x.shape)
    if x.dim() != 4 or x.shape[0] != num_simulations or x.shape[1] == 0:
        raise ValueError(f"{name} has global latent sites {[s.name for s in program.global_sites]}: SBC simulates a "
                         f"whole pool of tasks (the globals are identified only by a pool), so x must be a pool's "
                         f"inputs [T, N, D] (T >= 1), [{num_simulations}, T, N, D] or a TaskBatch; got {tuple(x.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:3], dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor [T, N]; got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() == 2:
        mask = mask.expand(num_simulations, *mask.shape)
    if mask.shape != x.shape[:3]:
        raise ValueError(f"mask must have shape {tuple(x.shape[1:3])} or {tuple(x.shape[:3])}; got {tuple(mask.shape)}")
    probe = program.probe_inputs()
    return x.to(device=probe.device, dtype=probe.dtype), mask.to(probe.device)


def _sbc_globals(program, posterior, x, mask, tasks, num_simulations: int, n: int, bins: int,
                 seed: int) -> SBCResult:
    """SBC of the whole model (globals, and task sites where the draws hold them) over simulated pools."""
    name = type(program.model).__name__
    if hasattr(posterior, "adapt") or not callable(posterior):
        kind = "a learner" if hasattr(posterior, "adapt") else f"a {type(posterior).__name__}"
        raise ValueError(
            f"{name} has global latent sites {[s.name for s in program.global_sites]}: SBC needs the posterior of "
            f"every simulated pool, and posterior is {kind}. A fitted BayesLearner's q(g) is the posterior of its "
            "own training pool (it is not amortized over pools): pass bayesmeta.diagnostics.refit_posterior("
            "make_learner, steps=...) (a fresh learner fitted to each simulated pool) or a callable (x, y, mask, n) -> "
            "{site: draws} of your own")
    x, mask = _pool_inputs(program, x, mask, num_simulations)
    t = x.shape[1]
    if tasks is not None:
        tasks = list(tasks)
        bad = [i for i in tasks if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < t]
        if bad:
            raise ValueError(f"tasks must be indices of the pool's {t} tasks; got {bad}")
    device = x.device
    truths = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in range(num_simulations):
            g = program.sample_globals(1)  # [1, G]
            u, y = program.sample_joint(x[s], mask[s], g=g[:, None])  # [T, P], [T, N, E]
            if not (torch.isfinite(g).all() and torch.isfinite(u).all() and torch.isfinite(y[mask[s]]).all()):
                raise ModelError(f"{name}: simulation {s} drew a pool with non-finite values (a prior or likelihood "
                                 "too wide for the model's dtype); SBC needs finite simulated pools")
            truths.append((g[0], u, y))
        ranks = []
        for s, (g, u, y) in enumerate(truths):
            torch.manual_seed(seed + 1 + s)
            draws = posterior(x[s], y, mask[s], n)
            g_draws, u_draws = _joint_draws(program, draws, n, t, s)
            if tasks is None:
                tasks = list(range(t)) if u_draws is not None else []
            if tasks and u_draws is None:
                raise ValueError(f"posterior draws hold no task sites {[site.name for site in program.sites]} "
                                 f"(simulation {s}), but tasks={tasks} asks for their ranks; return them, or pass tasks=()")
            row = [(g_draws < g).sum(0)]
            if tasks:
                assert u_draws is not None
                row.append((u_draws[:, tasks] < u[tasks]).sum(0).reshape(-1))
            ranks.append(torch.cat(row).cpu())
    names = program.global_coordinate_names() + [f"{c} (task {i})" for i in tasks for c in program.coordinate_names()]
    stacked = torch.stack(ranks)  # [S, C] in 0..L
    chi2, p = rank_uniformity(stacked, n, bins)
    return SBCResult(stacked, n, names, bins, chi2, p)


def _joint_draws(program, draws, n: int, t: int, s: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A pool posterior's draws -> flat ``(g [n, G], u [n, T, P] or None)``, checked."""
    where = f"simulation {s}"
    if isinstance(draws, torch.Tensor):
        g, u = draws, None
    elif isinstance(draws, dict):
        missing = [site.name for site in program.global_sites if site.name not in draws]
        if missing:
            raise ValueError(f"posterior draws ({where}) lack the global sites {missing}: the pool's posterior must "
                             f"return every global site, {[site.name for site in program.global_sites]}")
        g = program.flatten_globals({site.name: draws[site.name] for site in program.global_sites})
        held = [site.name for site in program.sites if site.name in draws]
        if held and len(held) < len(program.sites):
            raise ValueError(f"posterior draws ({where}) hold the task sites {held} but not "
                             f"{[site.name for site in program.sites if site.name not in draws]}: return all or none")
        u = program.flatten({k: draws[k] for k in held}) if held else None
    else:
        raise TypeError(f"the pool's posterior must return {{site: draws}} or flat global draws [n, G]; got "
                        f"{type(draws).__name__}")
    if g.shape != (n, program.global_dim):
        raise ValueError(f"posterior draws ({where}): the globals must have shape {(n, program.global_dim)} "
                         f"(flat); got {tuple(g.shape)}")
    if u is not None and u.shape != (n, t, program.param_dim):
        raise ValueError(f"posterior draws ({where}): the task sites must have shape {(n, t, program.param_dim)} "
                         f"(flat); got {tuple(u.shape)}")
    if not torch.isfinite(g).all() or (u is not None and not torch.isfinite(u).all()):
        raise ValueError(f"posterior draws ({where}) hold NaN or inf")
    return g, u


def refit_posterior(make_learner: Callable[[], Any], steps: int, *, task_draws: bool = True,
                    **fit_options) -> Callable:
    """A pool's posterior for :func:`simulation_based_calibration` of a model with global sites: a fresh
    learner fitted to each simulated pool.

    Each call builds ``make_learner()`` (a ``BayesLearner`` of the model), fits it to the pool for ``steps``
    (``fit_options``: any other ``fit`` option; progress off), and returns draws of its hyperposterior (the
    importance-corrected draws where the fit kept them, else ``q(g)``) and, with ``task_draws``, each task's
    parameters from the amortized guide given each global draw. This checks the whole procedure, training
    included, as a user runs it -- and costs a fit per simulation (a few seconds each on a small pool):
    budget ``num_simulations`` fits.

    Example:
        >>> from bayesmeta.diagnostics.sbc import refit_posterior
        >>> post = refit_posterior(lambda: bm.BayesLearner(bm.models.EightSchools()), 300)  # doctest: +SKIP
        >>> bm.simulation_based_calibration(model, post, pool, num_simulations=100)  # doctest: +SKIP
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    fit_options = {"progress": False, **fit_options}

    def fit(x, y, mask, n):
        learner = make_learner()
        program = getattr(learner, "program", None)
        if program is None or not program.has_globals or getattr(learner, "guide", None) is None:
            raise ValueError("make_learner must return a BayesLearner of a model with global latent sites")
        with torch.enable_grad():
            learner.fit(TaskBatch(x, y, mask), steps, **fit_options)
        with torch.no_grad():
            g = learner.hyperposterior()(n, 1)  # [n, 1, G]
            draws = program.split_globals(g[:, 0])
            if task_draws:
                u = learner.guide.build(learner.guide.encode(x, y, mask), g=g).sample()  # [n, T, P]
                draws.update(program.split(u))
        return draws

    return fit


def expected_rank_band(num_simulations: int, num_posterior_samples: int, bins: int, level: float = 0.99):
    """Per-bin count range a uniform rank histogram stays inside with probability ``level`` (binomial)."""
    p = 1.0 / bins
    mean = num_simulations * p
    z = torch.special.ndtri(torch.tensor(0.5 + level / 2)).item()
    half = z * math.sqrt(num_simulations * p * (1 - p))
    return mean - half, mean + half

