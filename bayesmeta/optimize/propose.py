"""Propose the next point(s) to evaluate on new tasks: Thompson sampling, EI, UCB, PI or greedy.

:func:`propose` works on ``T`` tasks at once (``x [T, S, D]``, ``y [T, S]``, ``mask [T, S]``) and
:func:`suggest` on one task. Over a finite :class:`~.space.Candidates` set the acquisition is
maximised exactly; over a :class:`~.space.Box` it is scored on a scrambled Sobol set, the best
``num_starts`` points start a local refinement (projected Adam on the acquisition when it is
differentiable in ``x``, a shrinking random local search when not), and the best point found is
kept (never worse than the best candidate).

Batches of ``q``: Thompson sampling maximises ``q`` independent function draws; the other
acquisitions choose one point at a time and condition on a fantasised outcome there (the
predictive mean, rounded for discrete outcomes: the "kriging believer").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..predictive import FamilyMixture
from .acquisition import (
    ACQUISITIONS,
    draw_acquisition,
    expected_improvement,
    probability_of_improvement,
    upper_confidence_bound,
)
from .belief import Belief
from .space import Box, Candidates, as_space, check_observations
from .surrogates import Surrogate, as_surrogate

__all__ = ["TARGETS", "Proposal", "propose", "suggest"]

TARGETS = ("auto", "y", "f")
_EVAL_ELEMENTS = 2**22  # draws x tasks x candidates scored at once


@dataclass(frozen=True)
class Proposal:
    """The points to evaluate next.

    Attributes:
        x: ``[T, q, D]`` (:func:`suggest`: ``[q, D]``).
        score: the acquisition's value at each point (Thompson sampling: the draw's value), ``[T, q]``.
        predicted_mean, predicted_std: the posterior predictive of an observation there, ``[T, q]``.
        acquisition, target: what was maximised (``target``: ``"y"`` the observation's predictive,
            ``"f"`` the noise-free function).
    """

    x: torch.Tensor
    score: torch.Tensor
    predicted_mean: torch.Tensor
    predicted_std: torch.Tensor
    acquisition: str
    target: str


def _check_options(acquisition, q, target, num_samples, num_starts, refine_steps, num_candidates) -> None:
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {ACQUISITIONS}; got {acquisition!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    for name, v, low in (("q", q, 1), ("num_samples", num_samples, 1), ("num_starts", num_starts, 0),
                         ("refine_steps", refine_steps, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}; got {v!r}")
    if num_candidates is not None and (isinstance(num_candidates, bool) or not isinstance(num_candidates, int)
                                       or num_candidates < 1):
        raise ValueError(f"num_candidates must be None or an int >= 1; got {num_candidates!r}")


def _points(space: Box | Candidates, num_tasks: int, num_candidates: int | None, seed: int,
            like: torch.Tensor) -> torch.Tensor:
    """Candidate points of every task ``[T, N, D]``."""
    if isinstance(space, Candidates):
        return space.for_tasks(num_tasks, like)
    n = num_candidates or min(4096, 512 * space.dim)
    return space.sobol(n, seed=seed).to(like).expand(num_tasks, n, space.dim)


def _scored(objective, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``objective`` on ``x [*B, N, D]`` in chunks of points, without gradients: ``[*B, N]``."""
    with torch.no_grad():
        return torch.cat([objective(part) for part in x.split(chunk, dim=-2)], -1)


def _refine(objective, x0: torch.Tensor, v0: torch.Tensor, box: Box, steps: int, generator) -> tuple:
    """Local refinement of starts ``x0 [*B, k, D]`` (values ``v0``) inside ``box``; the best point seen is kept."""
    best_u, best_v = box.to_unit(x0).detach(), v0.clone()
    if steps == 0:
        return x0, v0
    with torch.enable_grad():
        u = best_u.clone().requires_grad_(True)
        differentiable = objective(box.from_unit(u)).requires_grad
    if differentiable:
        opt = torch.optim.Adam([u], lr=0.01)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            with torch.enable_grad():
                v = objective(box.from_unit(u))  # [*B, k]
                (u.grad,) = torch.autograd.grad(-v.sum(), u)  # gradients for u only, never the model's
            better = v.detach() > best_v
            best_u, best_v = torch.where(better[..., None], u.detach(), best_u), torch.where(better, v.detach(), best_v)
            opt.step()
            sched.step()
            with torch.no_grad():
                u.clamp_(0.0, 1.0)
        with torch.no_grad():
            v = objective(box.from_unit(u))
        better = v > best_v
        best_u, best_v = torch.where(better[..., None], u.detach(), best_u), torch.where(better, v, best_v)
    else:  # a (1+1) evolution strategy per start: the step grows after a success and shrinks after a failure
        sigma = torch.full_like(best_v, 0.05)[..., None]
        for _ in range(steps):
            noise = torch.randn(best_u.shape, generator=generator, dtype=best_u.dtype).to(best_u.device)
            trial = (best_u + sigma * noise).clamp(0.0, 1.0)
            with torch.no_grad():
                v = objective(box.from_unit(trial))
            better = v > best_v
            best_u, best_v = torch.where(better[..., None], trial, best_u), torch.where(better, v, best_v)
            sigma = torch.where(better[..., None], sigma * 1.5, sigma * 0.8).clamp(1e-4, 0.3)
    return box.from_unit(best_u).detach(), best_v


def _maximize(objective, points: torch.Tensor, space: Box | Candidates, *, num_starts: int, refine_steps: int,
              chunk: int, generator, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The maximiser ``[*B, D]`` and maximum ``[*B]`` of ``objective`` (``[*B, K, D] -> [*B, K]``)."""
    values = _scored(objective, points, chunk)  # [*B, N]
    if exclude is not None:
        values = values.masked_fill(exclude, -math.inf)
    if isinstance(space, Candidates) or num_starts == 0:
        idx = values.argmax(-1)
        x = torch.gather(points, -2, idx[..., None, None].expand(*idx.shape, 1, points.shape[-1]))[..., 0, :]
        return x, values.gather(-1, idx[..., None])[..., 0]
    k = min(num_starts, values.shape[-1])
    top_v, top_i = values.topk(k, dim=-1)  # [*B, k]
    x0 = torch.gather(points, -2, top_i[..., None].expand(*top_i.shape, points.shape[-1]))  # [*B, k, D]
    x, v = _refine(objective, x0, top_v, space.to(points), refine_steps, generator)
    j = v.argmax(-1)
    return x.gather(-2, j[..., None, None].expand(*j.shape, 1, x.shape[-1]))[..., 0, :], v.gather(-1, j[..., None])[..., 0]


def _incumbent(belief: Belief, target: str, x, y, mask, points, *, sign: float, output: int, chunk: int) -> torch.Tensor:
    """The best value so far per task ``[T]``: the best observed ``y`` (target ``y``) or the best posterior mean
    at an observed point (target ``f``); a task without observations: the best posterior mean over the candidates."""
    with torch.no_grad():
        fallback = sign * (sign * _scored(belief.mean, points, chunk)).amax(-1)  # [T]
        if x.shape[1] == 0:
            return fallback
        values = y[..., output] if target == "y" else belief.mean(x)  # [T, S]
        seen = sign * torch.where(mask, sign * values, -math.inf).amax(-1)
    return torch.where(mask.any(1), seen, fallback)


def _objective(belief: Belief, kind: str, target: str, best, *, beta: float, maximize: bool, generator):
    """The acquisition ``x [T, K, D] -> [T, K]`` (larger is better)."""
    if kind == "greedy":
        return lambda x: (1.0 if maximize else -1.0) * belief.mean(x)
    if target == "f":
        def on_draws(x):
            values, log_w = belief.function_pool(x)
            return draw_acquisition(values, log_w, kind, best=best, beta=beta, maximize=maximize)
        return on_draws
    out = getattr(belief, "output", 0)
    if kind == "ucb":
        return lambda x: upper_confidence_bound(belief.predictive(x), beta, maximize=maximize, output=out)
    fn = expected_improvement if kind == "ei" else probability_of_improvement
    return lambda x: fn(belief.predictive(x), best, maximize=maximize, output=out, generator=generator)


def _predicted(belief: Belief, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = getattr(belief, "output", 0)
    with torch.no_grad():
        pred = belief.predictive(x)
        return pred.mean[..., out], pred.std[..., out]


def _fantasy(belief: Belief, x: torch.Tensor) -> torch.Tensor:
    """The kriging believer's outcome at ``x [T, 1, D]``: the predictive mean (rounded for discrete outcomes)."""
    with torch.no_grad():
        pred = belief.predictive(x)
        y = pred.mean[..., getattr(belief, "output", 0)]
        return y.round() if pred.discrete else y


def propose(model, x, y, space, *, mask=None, acquisition: str = "ts", q: int = 1, maximize: bool = True,
            target: str = "auto", beta: float = 2.0, best=None, num_samples: int = 256,
            num_candidates: int | None = None, num_starts: int = 4, refine_steps: int = 50, output: int = 0,
            seed: int | None = None) -> Proposal:
    """The next ``q`` points for each of ``T`` tasks, from a fitted learner (or an oracle) and the observations so far.

    Args:
        model: a fitted learner (``BayesLearner``, MAML family, ``Ensemble``), a task family with
            an oracle, or a :class:`~.surrogates.Surrogate`.
        x: ``[T, S, D]`` observed inputs (``S = 0``: nothing observed yet).
        y: ``[T, S]`` or ``[T, S, E]`` observed outcomes.
        space: a :class:`~.space.Box` or :class:`~.space.Candidates` (or an array ``[N, D]``).
        mask: ``[T, S]`` which observations are real (default: all).
        acquisition: ``"ts"`` (Thompson sampling), ``"ei"``, ``"ucb"``, ``"pi"`` or ``"greedy"``.
        q: points per task.
        maximize: ``False`` to minimise the objective.
        target: ``"y"``: EI/UCB/PI on the posterior predictive of an observation; ``"f"``: on
            the posterior of the noise-free function (from draws); ``"auto"``: ``"y"`` when the
            predictive is Gaussian, else ``"f"`` (a success probability, a rate).
        beta: UCB's width in predictive standard deviations.
        best: EI/PI's incumbent (a number or ``[T]``); default: see :func:`_incumbent`.
        num_samples: posterior draws behind the predictive (and the Thompson draws' pool).
        num_candidates: Sobol points scored in a box (default ``min(4096, 512 D)``).
        num_starts, refine_steps: local refinement in a box (``0``: none).
        output: the objective's output column.
        seed: makes the proposal reproducible (``None``: from torch's global generator).

    Raises:
        ValueError: an unknown acquisition or target, ``q < 1``, dimensions that disagree, NaN
            observations, points outside the box, an empty candidate set, or Thompson sampling
            with a point-estimate learner (:class:`~.belief.ThompsonSamplingError`).
    """
    _check_options(acquisition, q, target, num_samples, num_starts, refine_steps, num_candidates)
    surrogate: Surrogate = as_surrogate(model, output=output)
    space = as_space(space)
    x, y, mask = check_observations(x, y, mask, space, x_dim=surrogate.x_dim)
    if surrogate.device is not None or surrogate.dtype is not None:  # the model's device and precision
        x, y = x.to(surrogate.device, surrogate.dtype), y.to(surrogate.device, surrogate.dtype)
        mask = mask.to(x.device)
    if not 0 <= output < y.shape[-1] and y.shape[1] > 0:
        raise ValueError(f"output={output}: y_observed has {y.shape[-1]} output(s)")
    seed = int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else int(seed)
    gen = torch.Generator().manual_seed(seed)
    t = x.shape[0]
    points = _points(space, t, num_candidates, seed, x)
    chunk = max(1, _EVAL_ELEMENTS // max(1, t * max(num_samples, q)))
    if x.shape[1] == 0:  # nothing observed yet: one masked-out point (models and oracles need a points dim > 0)
        x, y = x.new_zeros(t, 1, x.shape[-1]), y.new_zeros(t, 1, y.shape[-1])
        mask = torch.zeros(t, 1, dtype=torch.bool, device=x.device)
    belief = surrogate.belief(x, y, mask, pool_size=num_samples, seed=seed)
    if target == "auto":
        with torch.no_grad():
            target = "f" if isinstance(belief.predictive(points[:, :1]), FamilyMixture) else "y"
    opts = {"num_starts": num_starts, "refine_steps": refine_steps, "chunk": chunk, "generator": gen}
    if acquisition == "ts":
        draws = belief.function_draws(q, gen)
        sign = 1.0 if maximize else -1.0
        xs, scores = _maximize(lambda p: sign * draws(p), points.expand(q, *points.shape), space, **opts)
        xs, scores = xs.transpose(0, 1), scores.T  # [T, q, D], [T, q]
        target = "f"
    else:
        xs, scores = _sequential(surrogate, belief, acquisition, target, x, y, mask, points, space, q=q, best=best,
                                 beta=beta, maximize=maximize, output=output, seed=seed, pool_size=num_samples, opts=opts)
    mean, std = _predicted(belief, xs)
    return Proposal(xs, scores, mean, std, acquisition, target)


def _sequential(surrogate, belief, kind, target, x, y, mask, points, space, *, q, best, beta, maximize, output, seed,
                pool_size, opts) -> tuple[torch.Tensor, torch.Tensor]:
    """EI / UCB / PI / greedy, one point at a time, each conditioned on a fantasised outcome at the earlier ones."""
    sign = 1.0 if maximize else -1.0
    chosen, scores = [], []
    exclude = None
    for j in range(q):
        inc = best if best is not None else _incumbent(belief, target, x, y, mask, points, sign=sign,
                                                       output=output, chunk=opts["chunk"])
        obj = _objective(belief, kind, target, inc, beta=beta, maximize=maximize, generator=opts["generator"])
        xj, sj = _maximize(obj, points, space, exclude=exclude, **opts)  # [T, D], [T]
        chosen.append(xj)
        scores.append(sj)
        if isinstance(space, Candidates) and points.shape[1] > q:  # a finite set: q distinct points
            hit = (points == xj[:, None]).all(-1)
            exclude = hit if exclude is None else exclude | hit
        if j == q - 1:
            break
        yj = torch.zeros(*xj.shape[:1], 1, y.shape[-1], dtype=y.dtype, device=y.device)
        yj[..., output] = _fantasy(belief, xj[:, None]).to(y)
        x, y = torch.cat([x, xj[:, None]], 1), torch.cat([y, yj], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        belief = surrogate.belief(x, y, mask, pool_size=pool_size, seed=seed + j + 1)
    return torch.stack(chosen, 1), torch.stack(scores, 1)


def suggest(model, x_observed, y_observed, space, *, acquisition: str = "ts", q: int = 1, maximize: bool = True,
            **options) -> Proposal:
    """The next ``q`` points for **one** new task: :func:`propose` with ``x_observed [S, D]``, ``y_observed [S]``.

    Options are those of :func:`propose`. The proposal's ``x`` is ``[q, D]``, its scores and
    predictions ``[q]``.

    Example:
        >>> import bayesmeta as bm
        >>> fam = bm.tasks.HierarchicalLinear(dim=1)
        >>> p = suggest(fam, torch.tensor([[0.0]]), torch.tensor([1.0]), Box(-2.0, 2.0), seed=0)
        >>> p.x.shape
        torch.Size([1, 1])
    """
    space = as_space(space)
    x = torch.as_tensor(x_observed)
    x = x.reshape(0, space.dim) if x.numel() == 0 else x
    if x.dim() == 1 and space.dim == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"x_observed must have shape [S, D] (one task); got {tuple(x.shape)}")
    yt = torch.as_tensor(y_observed)
    if yt.dim() not in (1, 2):
        raise ValueError(f"y_observed must have shape [S] or [S, E] (one task); got {tuple(yt.shape)}")
    p = propose(model, x[None], yt[None], space, acquisition=acquisition, q=q, maximize=maximize, **options)
    return Proposal(p.x[0], p.score[0], p.predicted_mean[0], p.predicted_std[0], p.acquisition, p.target)
