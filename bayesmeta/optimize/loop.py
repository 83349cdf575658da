"""Sequential experiments: run a budget of evaluations with a policy and keep the trace.

* :class:`AcquisitionPolicy`: a fitted learner (or an oracle) with an acquisition
  (:func:`~.propose.propose`); :class:`~.baselines.RandomSearch` and :class:`~.baselines.GPBayesOpt`
  are policies too. A policy is called as ``policy(x, y, mask, space, q=..., seed=...)`` on ``T``
  tasks and returns a :class:`~.propose.Proposal`.
* :func:`optimize` runs one new task: ``fn(x [q, D]) -> y [q]`` (or ``[q, E]``), ``budget``
  evaluations, and returns an :class:`OptimizationTrace` (points, values, best so far, the
  predictive before each evaluation, time per round).
* :func:`optimize_tasks` runs ``T`` tasks side by side (one proposal call per round for all of
  them), which is how the benchmark runs hundreds of new tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .propose import Proposal, propose
from .space import Box, Candidates, as_space, check_observations

__all__ = ["AcquisitionPolicy", "OptimizationTrace", "as_policy", "optimize", "optimize_tasks"]


class AcquisitionPolicy:
    """A model (fitted learner, oracle family or surrogate) with an acquisition: :func:`~.propose.propose` as a policy.

    Args:
        model: as in :func:`~.propose.propose`.
        acquisition: ``"ts"``, ``"ei"``, ``"ucb"``, ``"pi"`` or ``"greedy"``.
        maximize: ``False`` to minimise.
        name: the policy's name in tables (default: the acquisition).
        options: further options of :func:`~.propose.propose` (``num_samples``, ``beta``, ...).
    """

    def __init__(self, model, acquisition: str = "ts", *, maximize: bool = True, name: str | None = None,
                 **options) -> None:
        from .surrogates import as_surrogate

        self.surrogate = as_surrogate(model, output=options.get("output", 0))
        self.acquisition, self.maximize, self.options = acquisition, maximize, options
        self.name = name or acquisition

    def __call__(self, x, y, mask, space, *, q: int = 1, seed: int | None = None) -> Proposal:
        return propose(self.surrogate, x, y, space, mask=mask, acquisition=self.acquisition, q=q,
                       maximize=self.maximize, seed=seed, **self.options)


def as_policy(model, acquisition: str = "ts", *, maximize: bool = True, **options):
    """A policy (anything with ``__call__(x, y, mask, space, q=, seed=)`` and ``name``) as it is, else an :class:`AcquisitionPolicy`."""
    if _is_policy(model):
        return model
    return AcquisitionPolicy(model, acquisition, maximize=maximize, **options)


def _is_policy(model) -> bool:
    return callable(model) and hasattr(model, "name") and not hasattr(model, "adapt") and not hasattr(model, "sample")


@dataclass
class OptimizationTrace:
    """What :func:`optimize` did, one row per evaluation.

    Attributes:
        x: ``[n, D]`` evaluated points (the initial ones first).
        y: ``[n, E]`` their outcomes.
        best: ``[n]`` best objective value so far (the maximum, or minimum when minimising).
        round: ``[n]`` the proposal round of each evaluation (``-1``: given as initial data).
        predicted_mean, predicted_std: ``[n]`` the predictive there before it was evaluated (NaN when unknown).
        seconds: time of each round's proposal.
    """

    x: torch.Tensor
    y: torch.Tensor
    best: torch.Tensor
    round: torch.Tensor
    predicted_mean: torch.Tensor
    predicted_std: torch.Tensor
    maximize: bool = True
    output: int = 0
    seconds: list[float] = field(default_factory=list)

    @property
    def best_index(self) -> int:
        v = self.y[:, self.output]
        return int(v.argmax() if self.maximize else v.argmin())

    @property
    def best_x(self) -> torch.Tensor:
        return self.x[self.best_index]

    @property
    def best_y(self) -> float:
        return float(self.y[self.best_index, self.output])

    def as_dict(self) -> dict:
        """Plain lists (JSON)."""
        return {"x": self.x.tolist(), "y": self.y.tolist(), "best": self.best.tolist(), "round": self.round.tolist(),
                "predicted_mean": self.predicted_mean.tolist(), "predicted_std": self.predicted_std.tolist(),
                "maximize": self.maximize, "seconds": self.seconds}


def _check_budget(budget, q) -> None:
    for name, v in (("budget", budget), ("q", q)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1; got {v!r}")


def _values(raw, x: torch.Tensor, evaluation: int) -> torch.Tensor:
    """A user function's outcome at ``x [q, D]`` as ``[q, E]``; non-finite values are an error naming the point."""
    try:
        v = torch.as_tensor(raw, dtype=x.dtype).reshape(x.shape[0], -1) if raw is not None else None
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"fn must return one number (or one row of outputs) per point of x {tuple(x.shape)}; got "
                         f"{raw!r}") from err
    if v is None or v.shape[-1] == 0:
        raise ValueError(f"fn returned {raw!r} for x of shape {tuple(x.shape)}: one value per point is needed")
    bad = ~torch.isfinite(v).all(-1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"fn returned a non-finite value {v[i].tolist()} at x={x[i].tolist()} (evaluation "
                         f"{evaluation + i}); NaN or inf outcomes cannot be used: return a finite number")
    return v


def optimize(fn: Callable, model, space, *, budget: int, acquisition: str = "ts", q: int = 1,
             maximize: bool | None = None,
             x_init=None, y_init=None, seed: int = 0, callback: Callable | None = None, progress: bool = False,
             **options) -> OptimizationTrace:
    """Optimise one new task: ``budget`` evaluations of ``fn``, ``q`` at a time, proposed by ``model``.

    Args:
        fn: ``fn(x [q, D]) -> y`` (``[q]`` or ``[q, E]``; numbers, numpy or torch).
        model: a fitted learner, a task family with an oracle, a surrogate or a policy (e.g.
            :class:`~.baselines.RandomSearch`).
        space: :class:`~.space.Box` or :class:`~.space.Candidates`.
        maximize: ``False`` to minimise (default: the policy's own ``maximize`` if it has one, else ``True``).
        budget: evaluations of ``fn`` (those of an ``x_init`` given without ``y_init`` included; outcomes
            given in ``y_init`` are not evaluations).
        x_init, y_init: evaluations made before (``[S, D]``, ``[S]``); ``x_init`` alone is evaluated first.
        seed: every round's proposal is reproducible from it.
        callback: ``callback(round, trace)`` after each round.
        options: of :func:`~.propose.propose` (``target``, ``beta``, ``num_samples``, ...).

    Example:
        >>> import bayesmeta as bm
        >>> fam = bm.tasks.Sinusoid()
        >>> tr = optimize(lambda x: torch.sin(x[:, 0]), fam, Box(-5.0, 5.0), budget=3, seed=0)
        >>> tr.x.shape, tr.best.shape
        (torch.Size([3, 1]), torch.Size([3]))
    """
    _check_budget(budget, q)
    space = as_space(space)
    own = getattr(model, "maximize", None) if _is_policy(model) else None
    if maximize is not None and own is not None and maximize != own:
        raise ValueError(f"maximize={maximize} but the policy {getattr(model, 'name', model)!r} has maximize={own}")
    maximize = own if maximize is None and own is not None else (True if maximize is None else maximize)
    policy = as_policy(model, acquisition, maximize=maximize, **options)
    output = options.get("output", 0)
    x, y, rounds = _initial(fn, x_init, y_init, space, budget)
    given = x.shape[0] if y_init is not None else 0  # evaluations made before: not counted in the budget
    pm = torch.full((x.shape[0],), float("nan"))
    ps = pm.clone()
    trace = OptimizationTrace(x, y, torch.zeros(0), rounds, pm, ps, maximize, output)
    r = 0
    bar = _progress(progress, budget)
    while trace.x.shape[0] - given < budget:
        k = min(q, budget - (trace.x.shape[0] - given))
        t0 = time.perf_counter()
        prop = policy(trace.x[None], trace.y[None], None, space, q=k, seed=seed * 1_000_003 + r)
        trace.seconds.append(time.perf_counter() - t0)
        xn = prop.x[0].detach().cpu()
        yn = _values(fn(xn), xn, trace.x.shape[0])
        _append(trace, xn, yn, r, prop)
        if callback is not None:
            callback(r, trace)
        bar.update(k)
        r += 1
    bar.close()
    _best_so_far(trace)
    return trace


def _progress(on: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluations", disable=not on)


def _initial(fn, x_init, y_init, space, budget):
    """The initial points ``[S, D]``, their outcomes ``[S, E]`` (``fn`` evaluated at them when ``y_init`` is None)."""
    d = space.dim
    empty = torch.zeros(0, d), torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    if x_init is None:
        if y_init is not None:
            raise ValueError("y_init without x_init: give the points the outcomes were measured at")
        return empty
    x = torch.as_tensor(x_init, dtype=torch.get_default_dtype())
    x = x[:, None] if x.dim() == 1 and d == 1 else x
    if x.dim() != 2 or x.shape[-1] != d:
        raise ValueError(f"x_init must have shape [S, {d}] (the search space has {d} dimension(s)); got {tuple(x.shape)}")
    rounds = torch.full((x.shape[0],), -1, dtype=torch.long)
    if y_init is None:
        if x.shape[0] > budget:
            raise ValueError(f"x_init has {x.shape[0]} points to evaluate, more than budget={budget}")
        y = _values(fn(x), x, 0) if x.shape[0] else torch.zeros(0, 1)
    else:
        y = torch.as_tensor(y_init, dtype=x.dtype)
        y = y[:, None] if y.dim() == 1 else y
        if y.dim() != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y_init must have one value (or row of outputs) per point of x_init ({x.shape[0]}); "
                             f"got shape {tuple(y.shape)}")
    check_observations(x[None], y[None], None, space, x_dim=None, prefix="initial ")
    return x, y, rounds


def _append(trace: OptimizationTrace, xn, yn, r: int, prop: Proposal) -> None:
    if trace.y.shape[0] == 0:
        trace.y = trace.y.reshape(0, yn.shape[-1])
    if yn.shape[-1] != trace.y.shape[-1]:
        raise ValueError(f"fn returned {yn.shape[-1]} output(s); earlier outcomes have {trace.y.shape[-1]}")
    trace.x = torch.cat([trace.x, xn.to(trace.x.dtype)])
    trace.y = torch.cat([trace.y, yn.to(trace.y.dtype)])
    trace.round = torch.cat([trace.round, torch.full((xn.shape[0],), r, dtype=torch.long)])
    trace.predicted_mean = torch.cat([trace.predicted_mean, prop.predicted_mean[0].detach().cpu().float()])
    trace.predicted_std = torch.cat([trace.predicted_std, prop.predicted_std[0].detach().cpu().float()])


def _best_so_far(trace: OptimizationTrace) -> None:
    v = trace.y[:, trace.output] if trace.maximize else -trace.y[:, trace.output]
    best = torch.cummax(v, 0).values if v.numel() else v
    trace.best = best if trace.maximize else -best


def optimize_tasks(policy, simulate: Callable[[torch.Tensor], torch.Tensor], space: Box | Candidates, *,
                   num_tasks: int, budget: int, q: int = 1, seed: int = 0, progress: bool = False) -> dict:
    """Run ``policy`` on ``T`` tasks side by side for ``budget`` evaluations each.

    Args:
        policy: ``policy(x [T, S, D], y [T, S, E], mask, space, q=, seed=) -> Proposal``.
        simulate: ``simulate(x [T, q, D]) -> y [T, q, E]``, the tasks' outcomes (noisy).

    Returns:
        ``{"x": [T, budget, D], "y": [T, budget, E], "seconds": [rounds]}``.
    """
    _check_budget(budget, q)
    d = space.dim
    x, y = torch.zeros(num_tasks, 0, d), None
    seconds = []
    from tqdm.auto import tqdm

    for r in tqdm(range(-(-budget // q)), desc=getattr(policy, "name", "policy"), disable=not progress):
        k = min(q, budget - x.shape[1])
        ys = torch.zeros(num_tasks, 0, 1) if y is None else y
        t0 = time.perf_counter()
        prop = policy(x, ys, None, space, q=k, seed=seed * 1_000_003 + r)
        seconds.append(time.perf_counter() - t0)
        xn = prop.x.detach().cpu().to(x.dtype)
        yn = torch.as_tensor(simulate(xn)).to(x.dtype).reshape(num_tasks, k, -1)
        x = torch.cat([x, xn], 1)
        y = yn if y is None else torch.cat([y, yn], 1)
    return {"x": x, "y": y, "seconds": seconds}
