"""Validation tasks for meta-training: hold out part of a pool, split tasks into support and query, score.

A finite pool of tasks can be memorised (meta-overfitting): the training loss keeps falling while
predictions on *new* tasks get worse and, for a Bayesian learner, confidently wrong. ``fit``
guards against it by scoring held-out tasks with the real test-time procedure -- adapt on a
support set, predict the query set -- every ``val_every`` steps, keeping the best weights
(:mod:`bayesmeta.inference.early_stopping`). This module builds those validation tasks and
scores a learner on them, with the definitions ``bm.evaluate`` uses (:mod:`bayesmeta.predictive.scoring`).
"""

from __future__ import annotations

import logging
import math
import warnings

import torch

from ._checks import user_stacklevel
from .predictive.scoring import task_inside, task_nll
from .tasks.batch import TaskBatch

__all__ = ["MAX_VALIDATION_TASKS", "MIN_VALIDATION_TASKS", "ValidationSet", "auto_val_shots", "hold_out",
           "score_query"]

MIN_VALIDATION_TASKS = 2
"""The fewest held-out tasks worth validating on (and the fewest training tasks left after holding out)."""
MAX_VALIDATION_TASKS = 64
"""The most tasks :func:`hold_out` takes from a pool: enough for a validation NLL whose standard
error is small against the changes that matter, cheap enough to score often. A ``validation=``
set given to ``fit`` is used whole."""
_LEVEL = 0.9
_SEED = 7_654_321  # validation's own random stream: never the training stream
logger = logging.getLogger(__name__)


def hold_out(pool: TaskBatch, fraction: float, *, seed: int) -> tuple[TaskBatch, TaskBatch | None]:
    """Split a pool into training and validation tasks: ``round(fraction * M)`` of them at random,
    at most :data:`MAX_VALIDATION_TASKS`.

    Returns ``(pool, None)`` with a warning when the pool is too small to hold out
    :data:`MIN_VALIDATION_TASKS` tasks and keep as many for training.
    """
    m = len(pool)
    n_val = min(round(fraction * m), MAX_VALIDATION_TASKS)
    if fraction == 0:
        return pool, None
    if n_val < MIN_VALIDATION_TASKS or m - n_val < MIN_VALIDATION_TASKS:
        warnings.warn(
            f"fit: a pool of {m} tasks is too small to hold out validation tasks (val_fraction={fraction} gives "
            f"{n_val}; at least {MIN_VALIDATION_TASKS} are needed, and as many left to train on): training on all "
            "of them without validation, so meta-overfitting cannot be detected. Pass validation=TaskBatch(...) "
            "with tasks of your own, or val_fraction=0 to silence this", UserWarning, stacklevel=user_stacklevel())
        return pool, None
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed + _SEED))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return pool[train_idx.to(pool.device)], pool[val_idx.to(pool.device)]


def auto_val_shots(num_points: torch.Tensor) -> tuple[int, ...]:
    """Shot counts for validation tasks with ``num_points`` observed points each: 1, about a third
    and about two thirds of the median task's points (each leaving at least one query point)."""
    m = int(num_points.median())
    if m < 2:
        raise ValueError(f"validation: the median validation task has {m} observed point(s); splitting a task "
                         "into support and query needs at least 2")
    return tuple(sorted({k for k in (1, round(m / 3), round(2 * m / 3)) if 1 <= k <= m - 1}))


class ValidationSet:
    """Fixed support/query splits of validation tasks at several shot counts, and the score of a learner on them.

    Each task's observed points (support and query together) are put in one random order, fixed
    for the whole run; at ``k`` shots the first ``k`` are the support set and the rest the query
    set. Tasks with fewer than ``k + 1`` points are skipped at ``k`` (listed in a warning for
    shot counts the user chose, in the log for automatic ones); a shot count no task can serve is
    an error.

    Args:
        tasks: the validation tasks (natural units, as given to ``fit``).
        shots: shot counts (``()``: :func:`auto_val_shots`).
        x_dim, y_dim: the learner's sizes (checked).
        device: where the learner adapts.
        seed: the order of each task's points.
        predict_options: keyword arguments of ``posterior.predict`` (e.g. fewer posterior draws
            than a final evaluation uses).
        chunk: tasks adapted at once.
    """

    def __init__(self, tasks: TaskBatch, shots: tuple[int, ...], *, x_dim: int, y_dim: int, device: torch.device,
                 seed: int = 0, predict_options: dict | None = None, chunk: int = 100) -> None:
        if not isinstance(tasks, TaskBatch):
            raise TypeError(f"validation must be a TaskBatch (or None/False); got {type(tasks).__name__}")
        tasks.validate()
        if (tasks.x_dim, tasks.y_dim) != (x_dim, y_dim):
            raise ValueError(f"validation tasks have x_dim={tasks.x_dim}, y_dim={tasks.y_dim}; the learner expects "
                             f"x_dim={x_dim}, y_dim={y_dim}")
        x, y, mask = tasks.all_points()  # [V, N, D], [V, N, E], [V, N]
        n = mask.sum(-1)  # [V]
        chosen = bool(shots)
        shots = shots or auto_val_shots(n)
        g = torch.Generator().manual_seed(seed + _SEED)
        u = torch.where(mask.cpu(), torch.rand(mask.shape, generator=g), torch.full(mask.shape, 2.0))
        order = u.argsort(-1).to(mask.device)  # observed points first, in random order
        x, y = (torch.gather(t, 1, order[..., None].expand_as(t)) for t in (x, y))
        self.num_tasks, self.chunk, self.device = len(tasks), chunk, device
        self.predict_options = dict(predict_options or {})
        self.sets: dict[int, tuple[torch.Tensor, TaskBatch]] = {}
        self.skipped: dict[int, list[int]] = {}
        for k in shots:
            keep = (n >= k + 1).nonzero()[:, 0]  # [V']
            if len(keep) == 0:
                raise ValueError(f"validation: no validation task has more than {k} points, so none can be split "
                                 f"into {k} support point(s) and a query set (largest task: {int(n.max())} "
                                 f"points); use smaller val_shots")
            if len(keep) < len(n):
                self.skipped[k] = (n < k + 1).nonzero()[:, 0].tolist()
            width = int(n.max())
            q_mask = (torch.arange(k, width, device=mask.device)[None] < n[keep, None])  # [V', N - k]
            batch = TaskBatch(x[keep, :k], y[keep, :k], torch.ones(len(keep), k, dtype=torch.bool, device=mask.device),
                              x[keep, k:width], y[keep, k:width], q_mask)
            self.sets[k] = (keep.to(device), batch.to(device))
        if self.skipped:
            detail = "; ".join(f"K={k}: tasks {v}" for k, v in self.skipped.items())
            message = f"validation: tasks with too few points for a shot count are skipped there ({detail})"
            if chosen:  # the user's shot counts: say so; automatic ones follow the median task (logged)
                warnings.warn(message, UserWarning, stacklevel=user_stacklevel())
            else:
                logger.info(message)

    @property
    def shots(self) -> tuple[int, ...]:
        return tuple(self.sets)

    def score(self, learner) -> dict:
        """Adapt ``learner`` on each support set and score its predictive on the query set.

        Returns:
            ``nll`` (mean over shot counts of the mean over tasks of the per-point NLL; a task
            whose NLL is NaN counts as inf), ``coverage_90`` (pooled over shot counts and
            points; the randomised PIT for discrete outcomes, as in ``bm.evaluate``; NaN for
            class predictives, whose labels have no central intervals), ``per_shot`` (the same
            per shot count, with ``tasks``) and ``task_nll`` ``[V]`` (each task's NLL averaged
            over the shot counts it was scored at).
        """
        modes = {name: m.training for name, m in learner._modules().items() if m is not None}
        total = torch.zeros(self.num_tasks, dtype=torch.float64, device=self.device)
        count = torch.zeros_like(total)
        per_shot, inside, pairs = [], 0.0, 0.0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(_SEED)
            for k, (keep, batch) in self.sets.items():
                nll, cov = self._score_shots(learner, batch)  # [V'], ([V'], [V'])
                total.index_add_(0, keep, nll)
                count.index_add_(0, keep, torch.ones_like(nll))
                inside, pairs = inside + float(cov[0].sum()), pairs + float(cov[1].sum())
                per_shot.append({"shots": k, "nll": float(nll.mean()), "coverage_90": float(cov[0].sum() / cov[1].sum()),
                                 "tasks": len(keep)})
        for name, m in learner._modules().items():
            if m is not None:
                m.train(modes[name])
        per_task = total / count.clamp_min(1)
        return {"nll": sum(s["nll"] for s in per_shot) / len(per_shot), "coverage_90": inside / max(pairs, 1.0),
                "per_shot": per_shot, "task_nll": per_task[count > 0]}

    def _score_shots(self, learner, batch: TaskBatch):
        """Per-task NLL ``[V']`` and (inside, pairs) counts ``([V'], [V'])`` of one shot count's tasks."""
        nlls, inside, pairs = [], [], []
        for lo in range(0, len(batch), self.chunk):
            b = batch[lo:lo + self.chunk]
            xq, yq, mq = b.query
            pred = learner.adapt(b).predict(xq, seed=0, **self.predict_options)
            with torch.no_grad():
                nll, (ins, n) = score_query(pred, yq, mq)
            nlls.append(nll)
            inside.append(ins)
            pairs.append(n)
        nll = torch.cat(nlls)
        if not bool(torch.isfinite(nll).all()):
            nll = torch.nan_to_num(nll, nan=math.inf)
        return nll, (torch.cat(inside), torch.cat(pairs))


def score_query(pred, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Validation's scores of a predictive on query points, by :mod:`bayesmeta.predictive.scoring` (as ``bm.evaluate``).

    Args:
        pred: the predictive, ``shape [T, Q, E]``.
        y: query outcomes ``[T, Q, E]``; mask: observed query points ``[T, Q]``.

    Returns:
        ``nll [T]`` (float64, NaN/inf where the predictive is not finite: not an error while
        training) and ``(inside [T], pairs [T])``, the (point, output) pairs inside the central 90 %
        interval (randomised PIT for discrete outcomes) and all pairs; ``inside`` is NaN for a class
        predictive (``classes_only``: labels have no order, so no intervals).
    """
    nll = task_nll(pred, y, mask, check_finite=False).double()  # [T]
    if pred.classes_only:
        pairs = (mask.sum(-1) * y.shape[-1]).double()  # [T]
        return nll, (torch.full_like(pairs, math.nan), pairs)
    inside, pairs = task_inside(pred, y, mask, (_LEVEL,), check_finite=False)  # [T, 1], [T]
    return nll, (inside[:, 0], pairs)
