"""What a decision needs to know about ``T`` new tasks: a belief over each task's function.

A :class:`Belief` answers three questions at query points ``x [T, N, D]``:

* :meth:`~Belief.function_draws`: ``n`` *coherent* draws of each task's function (one posterior
  draw of the task parameters, pushed through the model's mean function ``E[y | x, theta]``),
  for Thompson sampling; each draw can be evaluated anywhere (``[n, T, K, D] -> [n, T, K]``), so
  it can be maximised over a continuous box;
* :meth:`~Belief.function_pool`: weighted function draws ``[m, T, N]`` (expected improvement,
  UCB and the posterior mean of the noise-free function);
* :meth:`~Belief.predictive`: the posterior predictive of an observation (a Gaussian mixture when
  the observation model is Gaussian, an any-family mixture otherwise).

:class:`ParamBelief` holds weighted parameter draws and two maps (mean function, observation
distribution): a ``BayesLearner``'s posterior and every Bayes oracle are one. :class:`PointBelief`
is a point estimate (MAML family): no function draws, so no Thompson sampling. :class:`MixtureBelief`
is an equal-weight mixture of beliefs (an ensemble).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..predictive import FamilyMixture, GaussianMixture, systematic_resample

__all__ = ["Belief", "FunctionDraws", "MixtureBelief", "ParamBelief", "PointBelief", "ThompsonSamplingError"]


class ThompsonSamplingError(ValueError):
    """Thompson sampling asked of a belief that has no posterior draws (a point estimate)."""


class FunctionDraws:
    """``n`` coherent function draws for each of ``T`` tasks.

    Call with ``x [T, K, D]`` (every draw at the same points) or ``[n, T, K, D]`` (each draw at
    its own points); returns ``[n, T, K]``. Differentiable in ``x`` where the model is.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], num_draws: int, num_tasks: int) -> None:
        self._fn, self.num_draws, self.num_tasks = fn, num_draws, num_tasks

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.expand(self.num_draws, *x.shape)
        if x.dim() != 4 or x.shape[:2] != (self.num_draws, self.num_tasks):
            raise ValueError(f"function draws: x must be [T, K, D] or [{self.num_draws}, {self.num_tasks}, K, D]; "
                             f"got {tuple(x.shape)}")
        return self._fn(x)


class Belief:
    """Base class; see the module docstring. ``point_estimate``: no posterior draws (no Thompson sampling)."""

    num_tasks: int
    point_estimate: bool = False

    def function_draws(self, num_draws: int, generator: torch.Generator | None = None) -> FunctionDraws:
        raise NotImplementedError

    def function_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def predictive(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of each task's function ``[T, N]``."""
        values, log_w = self.function_pool(x)
        w = values.new_full(values.shape[:2], 1.0 / values.shape[0]) if log_w is None else torch.softmax(log_w, 0)
        return (w[..., None] * values).sum(0)


def _normal(d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of a Normal observation distribution (through masks and ``Independent``), else None."""
    while hasattr(d, "base_dist"):
        d = d.base_dist
    if type(d).__name__ == "Normal":
        return d.loc, d.scale
    return None


class ParamBelief(Belief):
    """Weighted parameter draws of ``T`` tasks and the maps from parameters to functions and observations.

    Args:
        params: ``[m, T, P]`` parameter draws (posterior draws, grid points, ...).
        log_weights: ``[m, T]`` unnormalised log weights (``-inf``: padding), or ``None`` (equal).
        function: ``function(params [k, T', P], x [T', N, D]) -> [k, T', N]``, the mean function.
        observation: ``observation(params [k, T', P], x [T', N, D])`` -> the observation
            distribution, batch ``[k, T', N]`` and a scalar event.
        pool_size: the pool behind :meth:`function_pool` and :meth:`predictive` is resampled to
            at most this many equally weighted draws per task (bounds their cost).
        generator: for that resampling.
    """

    def __init__(self, params: torch.Tensor, log_weights: torch.Tensor | None, function, observation, *,
                 pool_size: int = 256, generator: torch.Generator | None = None) -> None:
        if params.dim() != 3:
            raise ValueError(f"params must have shape [m, T, P]; got {tuple(params.shape)}")
        self.params, self.log_weights = params, log_weights
        self.function, self.observation = function, observation
        self.num_tasks = params.shape[1]
        if log_weights is None and params.shape[0] <= pool_size:
            self._pool, self._pool_log_w = params, None
        else:
            self._pool = self._resample(pool_size, generator)
            self._pool_log_w = None

    def _probs(self) -> torch.Tensor:
        """``[T, m]`` normalised weights (for sampling draws)."""
        if self.log_weights is None:
            return self.params.new_ones(self.num_tasks, self.params.shape[0])
        return torch.softmax(self.log_weights.double(), 0).T

    def _resample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """``n`` equally weighted draws ``[n, T, P]`` (systematic resampling of the weighted set)."""
        log_w = self.log_weights
        if log_w is None:
            log_w = self.params.new_zeros(self.params.shape[:2])
        with _generator_state(generator):
            idx = systematic_resample(log_w, n)  # [n, T]
        return torch.gather(self.params, 0, idx[..., None].expand(-1, -1, self.params.shape[-1]))

    def function_draws(self, num_draws: int, generator: torch.Generator | None = None) -> FunctionDraws:
        """``num_draws`` independent draws per task, from the weights (multinomial)."""
        idx = torch.multinomial(self._probs().cpu(), num_draws, replacement=True, generator=generator).T  # [n, T]
        idx = idx.to(self.params.device)
        params = torch.gather(self.params, 0, idx[..., None].expand(-1, -1, self.params.shape[-1]))  # [n, T, P]
        n, t, p = params.shape

        def fn(x: torch.Tensor) -> torch.Tensor:  # x [n, T, K, D]: draw s of task t at its own points
            flat = self.function(params.reshape(1, n * t, p), x.reshape(n * t, *x.shape[2:]))  # [1, n T, K]
            return flat.reshape(n, t, x.shape[2])
        return FunctionDraws(fn, n, t)

    def function_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.function(self._pool, x), self._pool_log_w

    def predictive(self, x: torch.Tensor):
        d = self.observation(self._pool, x)
        normal = _normal(d)
        if normal is not None:
            loc, scale = normal
            scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device).expand_as(loc)
            return GaussianMixture(loc[..., None], scale[..., None], self._pool_log_w)
        pool = self._pool
        return FamilyMixture(pool, self._pool_log_w, lambda p, sl: self.observation(p, x[sl]),
                             shape=(*x.shape[:2], 1), dtype=x.dtype)


class _generator_state:
    """Run ``systematic_resample`` (global RNG) from a generator's stream when one is given."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def __enter__(self):
        if self.generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(seed)
        return self

    def __exit__(self, *exc):
        if self.generator is not None:
            self._fork.__exit__(*exc)
        return False


class PointBelief(Belief):
    """A point estimate per task (the MAML family): its predictive and its mean function, no draws.

    Args:
        adapted: the learner's adapted tasks (``predict(x) -> predictive``).
        output: the objective's output column.
    """

    point_estimate = True

    def __init__(self, adapted, num_tasks: int, *, output: int = 0, name: str = "a point-estimate learner") -> None:
        self.adapted, self.num_tasks, self.output, self.name = adapted, num_tasks, output, name

    def predictive(self, x: torch.Tensor):
        return self.adapted.predict(x)

    def function_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.predictive(x).mean[None, ..., self.output], None  # [1, T, N]

    def mean_draws(self, num_draws: int) -> FunctionDraws:
        """The mean function as ``num_draws`` identical "draws" (a member of an ensemble)."""
        def fn(x: torch.Tensor) -> torch.Tensor:  # [n, T, K, D] -> one call on [T, n K, D]
            n, t, k = x.shape[:3]
            flat = x.permute(1, 0, 2, 3).reshape(t, n * k, x.shape[-1])
            return self.function_pool(flat)[0][0].reshape(t, n, k).permute(1, 0, 2)
        return FunctionDraws(fn, num_draws, self.num_tasks)

    def function_draws(self, num_draws: int, generator: torch.Generator | None = None) -> FunctionDraws:
        raise ThompsonSamplingError(
            f"acquisition='ts': Thompson sampling needs posterior draws of the task's function, and {self.name} "
            "gives one point estimate per task; use acquisition='greedy' (its predicted best, which is what "
            "'Thompson sampling' with a point estimate would be), 'ei' or 'ucb', or an ensemble of such learners")


class MixtureBelief(Belief):
    """An equal-weight mixture of beliefs over the same tasks (an ensemble's members).

    A function draw picks a member uniformly and takes one of its draws (a point-estimate member's
    mean function is its only draw), so Thompson sampling works for ensembles of point estimates.
    """

    def __init__(self, members: list[Belief]) -> None:
        if not members:
            raise ValueError("MixtureBelief: no members")
        self.members, self.num_tasks = members, members[0].num_tasks

    def function_draws(self, num_draws: int, generator: torch.Generator | None = None) -> FunctionDraws:
        which = torch.randint(len(self.members), (num_draws, self.num_tasks), generator=generator)
        draws = [m.mean_draws(num_draws) if isinstance(m, PointBelief) else m.function_draws(num_draws, generator)
                 for m in self.members]

        def fn(x: torch.Tensor) -> torch.Tensor:
            values = torch.stack([d(x) for d in draws])  # [M, n, T, K]
            idx = which.to(values.device)[None, :, :, None].expand(1, *values.shape[1:])
            return torch.gather(values, 0, idx)[0]
        return FunctionDraws(fn, num_draws, self.num_tasks)

    def function_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, log_ws = [], []
        for m in self.members:
            v, lw = m.function_pool(x)
            lw = v.new_zeros(v.shape[:2]) if lw is None else lw
            values.append(v)
            log_ws.append(torch.log_softmax(lw, 0) - math.log(len(self.members)))
        return torch.cat(values), torch.cat(log_ws)

    def predictive(self, x: torch.Tensor) -> GaussianMixture:
        preds = [m.predictive(x) for m in self.members]
        if not all(isinstance(p, GaussianMixture) for p in preds):
            raise ValueError("an ensemble's predictive mixes only Gaussian members; use target='f' (the mean function)")
        loc = torch.cat([p.loc for p in preds])
        scale = torch.cat([torch.as_tensor(p.scale).expand_as(p.loc) for p in preds])
        log_w = torch.cat([p.log_weights - math.log(len(preds)) for p in preds])
        return GaussianMixture(loc, scale, log_w)
