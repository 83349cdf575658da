"""The stream of task mini-batches the training loop draws from: a finite pool, an endless family, or
classification episodes (:func:`open_stream` picks; the loop only calls ``next()``)."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from .._checks import user_stacklevel
from ..tasks.batch import TaskBatch
from ..tasks.family import TaskFamily
from .options import TrainConfig
from .replay import ReplayBuffer, check_replay

__all__ = ["Batch", "EpisodeStream", "FamilyStream", "PoolStream", "TaskStream", "open_stream", "pool_points"]


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
    """Yields :class:`Batch` es on ``device``: the common part of every stream (see :func:`open_stream`).

    ``gen`` is the stream's random generator (the batches, the subsets), ``drawn`` the number of
    batches drawn so far (a changing family's position), ``pool`` a finite pool's points (``None``
    for a family).
    """

    pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __init__(self, cfg: TrainConfig, device: torch.device, *, rank: int = 0, min_points: int | None = None,
                 replay: ReplayBuffer | None = None) -> None:
        self.cfg, self.device, self.replay = cfg, device, replay
        self.drawn = 0
        self.min_points = cfg.min_points if min_points is None else max(min_points, cfg.min_points)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * rank)  # rank 0: the single-process stream

    @property
    def pool_size(self) -> int | None:
        return None if self.pool is None else self.pool[0].shape[0]

    def next(self) -> Batch:
        raise NotImplementedError

    def random_subset(self, mask: torch.Tensor) -> torch.Tensor:
        """Keep a uniformly random number of each task's observed points (in random positions)."""
        u = torch.rand(mask.shape, generator=self.gen).to(mask.device)
        u = torch.where(mask, u, torch.full_like(u, 2.0))
        rank = u.argsort(-1).argsort(-1)  # rank of each point among the task's points
        n = mask.sum(-1, keepdim=True)
        keep = (torch.rand(n.shape, generator=self.gen).to(mask.device) * (n + 1)).floor()
        return mask & (rank < keep)


class PoolStream(TaskStream):
    """A finite pool: ``tasks_per_step`` tasks drawn without replacement, with all their points; in a
    distributed run rank ``r`` of ``W`` trains on the disjoint shard of tasks ``r, r + W, ...``."""

    def __init__(self, pool: TaskBatch, cfg: TrainConfig, device: torch.device, x_dim: int, y_dim: int, *,
                 rank: int = 0, world_size: int = 1, **options) -> None:
        super().__init__(cfg, device, rank=rank, **options)
        x, y, mask = pool_points(pool, x_dim, y_dim)
        if world_size > len(x):
            raise ValueError(f"task pool: {len(x)} tasks cannot be sharded over {world_size} processes")
        shard = slice(rank, None, world_size)
        self.pool = (x[shard].to(device), y[shard].to(device), mask[shard].to(device))

    def next(self) -> Batch:
        assert self.pool is not None
        m = self.pool[0].shape[0]
        t = min(self.cfg.tasks_per_step, m)
        idx = torch.randperm(m, generator=self.gen)[:t].to(self.device)
        x, y, mask = (v[idx] for v in self.pool)
        return Batch(x, y, mask, m if t < m else None)


class FamilyStream(TaskStream):
    """An endless family: each task has ``max_points`` points of which ``U{min_points..max_points}`` are
    observed; the family at each step is ``family.family_at(step)`` (a changing stream moves on), and a
    replay buffer mixes stored past tasks into every batch."""

    def __init__(self, family: TaskFamily, cfg: TrainConfig, device: torch.device, x_dim: int, y_dim: int, *,
                 rank: int = 0, **options) -> None:
        super().__init__(cfg, device, rank=rank, **options)
        if (family.x_dim, family.y_dim) != (x_dim, y_dim):
            raise ValueError(f"task family {family!r} has x_dim={family.x_dim}, y_dim={family.y_dim}; the model "
                             f"expects x_dim={x_dim}, y_dim={y_dim}")
        if self.min_points > cfg.max_points:
            raise ValueError(f"max_points must be >= {self.min_points} for this learner; got {cfg.max_points}")
        self.family = family

    def next(self) -> Batch:
        cfg = self.cfg
        x, y = self._tasks()
        n = torch.randint(self.min_points, cfg.max_points + 1, (cfg.tasks_per_step,), generator=self.gen)
        mask = torch.arange(cfg.max_points)[None] < n[:, None]  # [T, S]
        return Batch(x, y, mask.to(self.device), None)

    def _tasks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A mini-batch of whole tasks ``x [T, N, D]``, ``y [T, N, E]``: fresh ones from the family (at
        this step's position) and, with a replay buffer, stored ones (the fresh ones are then offered to it)."""
        cfg, g = self.cfg, self.gen
        self.drawn += 1
        family = self.family.family_at(self.drawn)
        replayed = 0 if self.replay is None else self.replay.num_replayed(cfg.tasks_per_step)
        b = family.sample(cfg.tasks_per_step - replayed, shots=cfg.max_points, generator=g)
        x, y = b.x_support.to(self.device), b.y_support.to(self.device)  # [T - r, N, D], [T - r, N, E]
        if self.replay is None:
            return x, y
        old = self.replay.sample(replayed, g) if replayed else None
        self.replay.add(x, y, g)
        return (x, y) if old is None else (torch.cat([x, old[0]]), torch.cat([y, old[1]]))


class EpisodeStream(FamilyStream):
    """Classification episodes (``max_points`` examples per class): each class keeps a random number of
    them, or all of them (``whole_episodes``: the learner splits each class into support and query)."""

    def __init__(self, family: TaskFamily, cfg: TrainConfig, device: torch.device, x_dim: int, y_dim: int, *,
                 whole_episodes: bool = False, **options) -> None:
        super().__init__(family, cfg, device, x_dim, y_dim, **options)
        self.whole_episodes = whole_episodes

    def next(self) -> Batch:
        cfg, g = self.cfg, self.gen
        x, y = self._tasks()
        ways = x.shape[1] // cfg.max_points
        lo = min(cfg.max_points, max(1, -(-self.min_points // ways)))
        n = torch.randint(lo, cfg.max_points + 1, (cfg.tasks_per_step, 1), generator=g)
        if self.whole_episodes:
            n = torch.full_like(n, cfg.max_points)
        pos = torch.arange(x.shape[1]) % cfg.max_points  # position within its class
        return Batch(x, y, (pos < n).to(self.device), None)


def open_stream(source, cfg: TrainConfig, device: torch.device, x_dim: int, y_dim: int, *, rank: int = 0,
                world_size: int = 1, min_points: int | None = None, whole_episodes: bool = False,
                replay: ReplayBuffer | None = None) -> TaskStream:
    """The stream of ``source``: a :class:`~bayesmeta.TaskBatch` pool, a task family, or a family of
    classification episodes (``source.episodic``); a changing family says itself how far its steps reach."""
    replay = check_replay(replay, source, cfg.tasks_per_step)
    if replay is not None:
        replay.to(device)
    options: dict[str, Any] = {"rank": rank, "min_points": min_points, "replay": replay}
    if isinstance(source, TaskBatch):
        return PoolStream(source, cfg, device, x_dim, y_dim, world_size=world_size, **options)
    if not isinstance(source, TaskFamily):
        raise TypeError(f"source must be a TaskFamily or a TaskBatch; got {type(source).__name__}")
    note = source.steps_note(cfg.steps)
    if note:
        warnings.warn(f"fit: {note}", stacklevel=user_stacklevel())
    if source.episodic:
        return EpisodeStream(source, cfg, device, x_dim, y_dim, whole_episodes=whole_episodes, **options)
    return FamilyStream(source, cfg, device, x_dim, y_dim, **options)
