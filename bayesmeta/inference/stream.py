"""The stream of task mini-batches the training loop draws from: a task family (endless) or a finite pool."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from .._checks import user_stacklevel
from ..tasks.batch import TaskBatch
from ..tasks.family import TaskFamily
from ..tasks.phases import Phases
from .options import TrainConfig
from .replay import ReplayBuffer, check_replay

__all__ = ["Batch", "TaskStream", "pool_points"]


class Batch(NamedTuple):
    """A mini-batch of tasks: points ``x [T, N, D]``, ``y [T, N, E]``, observed ``mask [T, N]``.

    ``num_tasks`` is the pool's size when the batch is a subsample of a finite pool (the
    objective rescales by ``num_tasks / T``), else ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    num_tasks: int | None


def pool_points(pool: TaskBatch, x_dim: int, y_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A validated pool's points (support and query together), each task with at least one."""
    pool.validate(min_support=0)
    x, y, mask = pool.all_points()
    empty = (mask.sum(-1) == 0).nonzero()
    if len(empty):
        raise ValueError(f"task pool: task {int(empty[0, 0])} has no observed points")
    if x.shape[-1] != x_dim or y.shape[-1] != y_dim:
        raise ValueError(f"task pool has x_dim={x.shape[-1]}, y_dim={y.shape[-1]}; the model expects "
                         f"x_dim={x_dim}, y_dim={y_dim}")
    return x, y, mask


class TaskStream:
    """Yields :class:`Batch` es on ``device`` from a task family (endless) or a ``TaskBatch`` pool.

    From a family each task has ``cfg.max_points`` points of which ``U{min_points..max_points}``
    are observed (``min_points`` defaults to ``cfg.min_points``); from a pool, ``tasks_per_step``
    tasks drawn without replacement with all their points. In a distributed run rank ``r`` of
    ``W`` trains on the disjoint shard of pool tasks ``r, r + W, ...``.
    """

    def __init__(self, source, cfg: TrainConfig, device: torch.device, x_dim: int, y_dim: int, *, rank: int = 0,
                 world_size: int = 1, min_points: int | None = None, whole_episodes: bool = False,
                 replay: ReplayBuffer | None = None) -> None:
        self.cfg, self.device, self.whole_episodes = cfg, device, whole_episodes
        self.drawn = 0  # batches drawn so far: a Phases stream's position
        self.replay = check_replay(replay, source, cfg.tasks_per_step)
        if self.replay is not None:
            self.replay.to(device)
        if isinstance(source, Phases) and cfg.steps < source.total_steps:
            warnings.warn(f"fit: steps={cfg.steps} ends in phase {source.phase_at(cfg.steps) + 1} of the {len(source)} "
                          f"phases of this stream ({source.total_steps} steps); give steps=stream.total_steps to see "
                          "them all", stacklevel=user_stacklevel())
        self.min_points = cfg.min_points if min_points is None else max(min_points, cfg.min_points)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * rank)  # rank 0: the single-process stream
        if isinstance(source, TaskFamily):
            if (source.x_dim, source.y_dim) != (x_dim, y_dim):
                raise ValueError(
                    f"task family {source!r} has x_dim={source.x_dim}, y_dim={source.y_dim}; the model "
                    f"expects x_dim={x_dim}, y_dim={y_dim}"
                )
            if self.min_points > cfg.max_points:
                raise ValueError(f"max_points must be >= {self.min_points} for this learner; got {cfg.max_points}")
            self.family: TaskFamily | None = source
            self.pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        elif isinstance(source, TaskBatch):
            x, y, mask = pool_points(source, x_dim, y_dim)
            if world_size > len(x):
                raise ValueError(f"task pool: {len(x)} tasks cannot be sharded over {world_size} processes")
            shard = slice(rank, None, world_size)
            self.family, self.pool = None, (x[shard].to(device), y[shard].to(device), mask[shard].to(device))
        else:
            raise TypeError(f"source must be a TaskFamily or a TaskBatch; got {type(source).__name__}")

    @property
    def pool_size(self) -> int | None:
        return None if self.pool is None else self.pool[0].shape[0]

    def next(self) -> Batch:
        cfg, g = self.cfg, self.gen
        if self.pool is None:
            x, y = self._family_tasks()
            if getattr(self.family, "episodic", False):  # classification episodes: max_points per class
                ways = x.shape[1] // cfg.max_points
                lo = min(cfg.max_points, max(1, -(-self.min_points // ways)))
                n = torch.randint(lo, cfg.max_points + 1, (cfg.tasks_per_step, 1), generator=g)
                if self.whole_episodes:  # the learner splits each class into support and query itself
                    n = torch.full_like(n, cfg.max_points)
                pos = torch.arange(x.shape[1]) % cfg.max_points  # position within its class
                return Batch(x, y, (pos < n).to(self.device), None)
            n = torch.randint(self.min_points, cfg.max_points + 1, (cfg.tasks_per_step,), generator=g)
            mask = torch.arange(cfg.max_points)[None] < n[:, None]  # [T, S]
            return Batch(x, y, mask.to(self.device), None)
        m = self.pool[0].shape[0]
        t = min(cfg.tasks_per_step, m)
        idx = torch.randperm(m, generator=g)[:t].to(self.device)
        x, y, mask = (v[idx] for v in self.pool)
        return Batch(x, y, mask, m if t < m else None)

    def _family_tasks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A mini-batch of whole tasks ``x [T, N, D]``, ``y [T, N, E]``: fresh ones from the family (at
        this step's phase) and, with a replay buffer, stored ones (the fresh ones are then offered to it)."""
        assert self.family is not None
        cfg, g = self.cfg, self.gen
        self.drawn += 1
        family = self.family.family_at(self.drawn) if isinstance(self.family, Phases) else self.family
        replayed = 0 if self.replay is None else self.replay.num_replayed(cfg.tasks_per_step)
        b = family.sample(cfg.tasks_per_step - replayed, shots=cfg.max_points, generator=g)
        x, y = b.x_support.to(self.device), b.y_support.to(self.device)  # [T - r, N, D], [T - r, N, E]
        if self.replay is None:
            return x, y
        old = self.replay.sample(replayed, g) if replayed else None
        self.replay.add(x, y, g)
        return (x, y) if old is None else (torch.cat([x, old[0]]), torch.cat([y, old[1]]))

    def random_subset(self, mask: torch.Tensor) -> torch.Tensor:
        """Keep a uniformly random number of each task's observed points (in random positions)."""
        u = torch.rand(mask.shape, generator=self.gen).to(mask.device)
        u = torch.where(mask, u, torch.full_like(u, 2.0))
        rank = u.argsort(-1).argsort(-1)  # rank of each point among the task's points
        n = mask.sum(-1, keepdim=True)
        keep = (torch.rand(n.shape, generator=self.gen).to(mask.device) * (n + 1)).floor()
        return mask & (rank < keep)
