"""Meta-training: one objective over many tasks, mini-batched over tasks.

Two sources of tasks:

* a :class:`~bayesmeta.tasks.TaskFamily` (an endless stream): each step draws fresh tasks with
  ``max_points`` points and observes a random number ``n_i ~ U{min_points..max_points}`` of them,
  so the encoder learns every set size; the model sees exactly what the guide sees;
* a :class:`~bayesmeta.tasks.TaskBatch` pool of ``M`` tasks: each step subsamples
  ``tasks_per_step`` tasks and observes *all* their points (support and query); the tasks plate
  rescales by ``M / tasks_per_step`` so the loss is an unbiased estimate of the full objective.
  With ``encoder_subsets`` the encoder also learns random subsets of the pool tasks through an
  extra guide-only term (the model's parameters get no gradient from it).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..io import atomic_torch_save
from ..tasks.batch import TaskBatch
from ..tasks.family import TaskFamily
from .distributed import DistributedContext, all_reduce_, broadcast_parameters, check_same_config
from .objectives import OBJECTIVES, make_objective

__all__ = [
    "TrainConfig", "History", "TaskStream", "load_checkpoint", "meta_train", "pool_points", "resolve_device",
    "save_checkpoint",
]

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a ``torch.device`` -> ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: unknown device {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`meta_train`; validated on construction."""

    steps: int = 2000
    max_time: float | None = None
    tasks_per_step: int = 32
    objective: str = "elbo"
    num_particles: int = 8
    optimizer: str = "adam"
    lr: float = 1e-3
    final_lr_fraction: float = 0.1
    clip_norm: float | None = 10.0
    min_points: int = 0
    max_points: int = 20
    encoder_subsets: bool = True
    seed: int = 0
    progress: bool = True
    log_every: int = 50
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        checks = [
            ("steps", isinstance(self.steps, int) and self.steps >= 1, "an int >= 1"),
            ("tasks_per_step", isinstance(self.tasks_per_step, int) and self.tasks_per_step >= 1, "an int >= 1"),
            ("max_time", self.max_time is None or self.max_time > 0, "None or > 0 seconds"),
            ("objective", self.objective in OBJECTIVES, f"one of {OBJECTIVES}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {tuple(OPTIMIZERS)}"),
            ("lr", self.lr > 0, "> 0"),
            ("final_lr_fraction", 0 < self.final_lr_fraction <= 1, "in (0, 1]"),
            ("clip_norm", self.clip_norm is None or self.clip_norm > 0, "None or > 0"),
            ("num_particles", isinstance(self.num_particles, int) and self.num_particles >= 1, "an int >= 1"),
            ("min_points", 0 <= self.min_points <= self.max_points, "0 <= min_points <= max_points"),
            ("max_points", self.max_points >= 1, ">= 1"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("checkpoint_every", isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1, "an int >= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}; got {getattr(self, name)!r}")


@dataclass
class History:
    """Training trace, one entry every ``log_every`` steps: loss is per task (negative bound)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        return {"step": self.step, "loss": self.loss, "time": self.time, "lr": self.lr}


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
    """Yields ``(x, y, mask, num_tasks)`` mini-batches on ``device`` from a family or a pool."""

    def __init__(self, source, cfg: TrainConfig, device: torch.device, x_dim: int, y_dim: int, *, rank: int = 0,
                 world_size: int = 1) -> None:
        self.cfg, self.device = cfg, device
        self.gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * rank)  # rank 0: the single-process stream
        if isinstance(source, TaskFamily):
            if (source.x_dim, source.y_dim) != (x_dim, y_dim):
                raise ValueError(
                    f"task family {source!r} has x_dim={source.x_dim}, y_dim={source.y_dim}; the model "
                    f"expects x_dim={x_dim}, y_dim={y_dim}"
                )
            self.family, self.pool = source, None
        elif isinstance(source, TaskBatch):
            x, y, mask = pool_points(source, x_dim, y_dim)
            if world_size > len(x):
                raise ValueError(f"task pool: {len(x)} tasks cannot be sharded over {world_size} processes")
            shard = slice(rank, None, world_size)  # disjoint shards: rank r trains on tasks r, r + W, ...
            self.family, self.pool = None, (x[shard].to(device), y[shard].to(device), mask[shard].to(device))
        else:
            raise TypeError(f"source must be a TaskFamily or a TaskBatch; got {type(source).__name__}")

    @property
    def pool_size(self) -> int | None:
        return None if self.pool is None else self.pool[0].shape[0]

    def next(self):
        cfg, g = self.cfg, self.gen
        if self.family is not None:
            b = self.family.sample(cfg.tasks_per_step, shots=cfg.max_points, generator=g)
            n = torch.randint(cfg.min_points, cfg.max_points + 1, (cfg.tasks_per_step,), generator=g)
            mask = torch.arange(cfg.max_points)[None] < n[:, None]  # [T, S]
            return b.x_support.to(self.device), b.y_support.to(self.device), mask.to(self.device), None
        m = self.pool_size
        t = min(cfg.tasks_per_step, m)
        idx = torch.randperm(m, generator=g)[:t].to(self.device)
        x, y, mask = (v[idx] for v in self.pool)
        return x, y, mask, (m if t < m else None)

    def random_subset(self, mask: torch.Tensor) -> torch.Tensor:
        """Keep a uniformly random number of each task's observed points (in random positions)."""
        u = torch.rand(mask.shape, generator=self.gen).to(mask.device)
        u = torch.where(mask, u, torch.full_like(u, 2.0))
        rank = u.argsort(-1).argsort(-1)  # rank of each point among the task's points
        n = mask.sum(-1, keepdim=True)
        keep = (torch.rand(n.shape, generator=self.gen).to(mask.device) * (n + 1)).floor()
        return mask & (rank < keep)


def set_lr(optim, cfg, step: int, elapsed: float) -> None:
    """Cosine decay from ``cfg.lr`` to ``cfg.lr * cfg.final_lr_fraction`` over ``steps`` or ``max_time``.

    Progress is the larger of the step fraction and (with ``max_time``) the time fraction. Any config
    with ``lr``, ``final_lr_fraction``, ``steps`` and ``max_time`` works (the baselines share it).
    """
    frac = step / cfg.steps if cfg.max_time is None else max(step / cfg.steps, elapsed / cfg.max_time)
    final = cfg.final_lr_fraction
    factor = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    for group in optim.param_groups:
        group["lr"] = cfg.lr * factor


def meta_train(model, guide, source, config: TrainConfig, *, device: torch.device,
               conjugate: bool = False, checkpoint=None, resume: dict | None = None, on_checkpoint=None,
               distributed: DistributedContext | None = None, extra_state: dict | None = None) -> History:
    """Maximise the meta-training objective; returns the :class:`History`.

    Args:
        model: a hierarchical model (on ``device``).
        guide: an :class:`~bayesmeta.inference.AmortizedGuide` (on ``device``), or ``None``
            with ``conjugate=True``.
        source: a ``TaskFamily`` or a ``TaskBatch`` pool.
        config: :class:`TrainConfig`.
        device: where the batches go.
        conjugate: maximise the exact log marginal likelihood (type-II ML) instead of a bound.
        checkpoint: a path: every ``checkpoint_every`` steps and at the end, model, guide,
            optimiser, history and every random-number state are written there atomically.
        resume: a checkpoint (as loaded by :func:`load_checkpoint`) to continue from. With a
            step budget (``max_time=None``) on CPU the resumed run ends bit-for-bit where an
            uninterrupted one would; with ``max_time`` the schedule follows the recorded time. A
            distributed resume restores the weights and optimiser on every rank and starts fresh
            per-rank random streams (statistically equivalent, not bit-exact).
        on_checkpoint: called as ``on_checkpoint(step, history)`` after each checkpoint.
        extra_state: stored in every checkpoint as well (e.g. the learner's standardisation).
        distributed: a :class:`~bayesmeta.inference.distributed.DistributedContext`: this rank
            trains on its own tasks and gradients are summed over ranks every step (see
            :mod:`bayesmeta.inference.distributed`); only rank 0 checkpoints and shows progress.

    Raises:
        FloatingPointError: the loss became non-finite. Checked without a per-step host sync: at
            every log and checkpoint step, so a checkpoint never holds parameters updated after a
            non-finite loss.
    """
    cfg = config
    rank, world = (0, 1) if distributed is None else (distributed.rank, distributed.world_size)
    torch.manual_seed(cfg.seed + 1_000_003 * rank)
    stream = TaskStream(source, cfg, device, model.x_dim, model.y_dim, rank=rank, world_size=world)
    params = list(model.parameters()) + ([] if guide is None else list(guide.parameters()))
    if distributed is not None:
        check_same_config(distributed, {k: v for k, v in asdict(cfg).items() if k != "progress"}, device)
        broadcast_parameters(params)
    main = rank == 0
    optim = OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr)
    if conjugate:
        loss_fn = _conjugate_loss(model)
    else:
        loss_fn = make_objective(cfg.objective, cfg.num_particles)(model, guide)
    guide_params = [] if guide is None else list(guide.parameters())
    subsets = guide is not None and stream.pool is not None and cfg.encoder_subsets
    history, start, first = History(), time.perf_counter(), 1
    if resume is not None:
        first, start = _restore(resume, model, guide, optim, stream, rng=distributed is None) + 1, start - resume["elapsed"]
        if distributed is not None:  # the checkpoint holds rank 0's random streams only: fresh ones per rank
            torch.manual_seed(cfg.seed + 1_000_003 * rank + 7919 * first)
            stream.gen.manual_seed(cfg.seed + 1_000_003 * rank + 7919 * first)
        history = History(**resume["history"])
    bar = tqdm(total=cfg.steps, initial=first - 1, disable=not (cfg.progress and main), desc="meta-training",
               leave=False)
    step, bad_steps = first - 1, torch.zeros((), dtype=torch.int64, device=device)
    save = lambda: save_checkpoint(checkpoint, step, model, guide, optim, history, cfg,  # noqa: E731
                                   elapsed=time.perf_counter() - start, stream=stream, on_checkpoint=on_checkpoint,
                                   extra=extra_state)
    try:
        for step in range(first, cfg.steps + 1):
            set_lr(optim, cfg, step, time.perf_counter() - start)
            x, y, mask, num_tasks = stream.next()
            optim.zero_grad(set_to_none=True)
            try:
                loss = loss_fn(x, y, mask, num_tasks=num_tasks)
            except (RuntimeError, ValueError):  # e.g. a Cholesky of parameters a non-finite step spoiled
                _raise_if_bad(bad_steps, step - 1)
                raise
            loss.backward()
            if subsets:
                _add_guide_grads(loss_fn(x, y, stream.random_subset(mask), num_tasks=num_tasks), guide_params)
            time_up = cfg.max_time is not None and time.perf_counter() - start >= cfg.max_time
            if distributed is not None:  # one message: gradients, loss and every rank's "time is up"
                reduced = all_reduce_(params, loss, float(time_up))
                loss, stop_votes = reduced[0] / world, reduced[1]
            bad_steps += ~torch.isfinite(loss.detach())  # counted on the device: no host sync here
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            optim.step()
            bar.update(1)
            saving = checkpoint is not None and main and step % cfg.checkpoint_every == 0
            if step % cfg.log_every == 0 or step == cfg.steps or saving:  # the only host syncs
                _raise_if_bad(bad_steps, step)
                if distributed is not None:
                    time_up = bool(stop_votes > 0)  # the same answer on every rank
            elif distributed is not None:
                time_up = False
            if step % cfg.log_every == 0 or step == cfg.steps:
                per_task = float(loss.detach()) / (num_tasks or x.shape[0])
                history.step.append(step)
                history.loss.append(per_task)
                history.time.append(time.perf_counter() - start)
                history.lr.append(optim.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{per_task:.3f}")
            if saving:
                save()
            if time_up:
                break
    finally:
        bar.close()
    if step >= first:
        _raise_if_bad(bad_steps, step)
    if step >= first and (not history.step or history.step[-1] != step):
        history.step.append(step)
        history.loss.append(float(loss.detach()) / (num_tasks or x.shape[0]))
        history.time.append(time.perf_counter() - start)
        history.lr.append(optim.param_groups[0]["lr"])
    if checkpoint is not None and main and step % cfg.checkpoint_every != 0:
        save()
    return history


def _raise_if_bad(bad_steps: torch.Tensor, step: int) -> None:
    n = int(bad_steps)
    if n:
        raise FloatingPointError(f"meta-training: the loss was non-finite in {n} step(s) up to step {step}; "
                                 "the last checkpoint (if any) holds finite parameters")


CHECKPOINT_FORMAT = "bayesmeta.checkpoint/1"


def _rng_states(stream) -> dict:
    states = {"torch": torch.get_rng_state(), "stream": stream.gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path, step: int, model, guide, optim, history: History, cfg: TrainConfig, *,
                    elapsed: float | None = None, stream: TaskStream | None = None, on_checkpoint=None,
                    extra: dict | None = None) -> None:
    """Write a training checkpoint atomically (model, guide, optimiser, history, random states).

    ``optim`` and ``stream`` may be ``None`` (a fit without them, e.g. exact type-II ML).
    """
    rng = _rng_states(stream) if stream is not None else {"torch": torch.get_rng_state()}
    state = {"format": CHECKPOINT_FORMAT, "step": step,
             "elapsed": elapsed if elapsed is not None else (history.time[-1] if history.time else 0.0),
             "config": asdict(cfg), "model": model.state_dict(),
             "guide": None if guide is None else guide.state_dict(),
             "optimizer": None if optim is None else optim.state_dict(), "history": history.as_dict(), "rng": rng,
             **(extra or {})}
    atomic_torch_save(state, path)
    if on_checkpoint is not None:
        on_checkpoint(step, history)


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a training checkpoint written by :func:`meta_train` (``weights_only`` loading).

    Raises:
        FileNotFoundError: no file at ``path``.
        OSError: the file cannot be read (permissions, I/O).
        ValueError: not a bayesmeta checkpoint, or a corrupt or truncated one (naming ``path``).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no checkpoint to resume from") from None
    except OSError:
        raise
    except Exception as err:  # torch.load fails in many ways on damaged files (never retry unsafely)
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}); it cannot be "
                         f"resumed") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a bayesmeta training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def _restore(state: dict, model, guide, optim, stream, *, rng: bool = True) -> int:
    model.load_state_dict(state["model"])
    if guide is not None:
        guide.load_state_dict(state["guide"])
    optim.load_state_dict(state["optimizer"])
    if rng:
        states = state["rng"]
        torch.set_rng_state(states["torch"])
        stream.gen.set_state(states["stream"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
    return int(state["step"])


def _add_guide_grads(loss: torch.Tensor, guide_params: list[torch.Tensor]) -> None:
    grads = torch.autograd.grad(loss, guide_params, allow_unused=True)
    for p, g in zip(guide_params, grads, strict=True):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


def _conjugate_loss(model):
    if not getattr(model, "has_exact_posterior", False):
        raise ValueError(
            f"conjugate=True needs a model with an exact posterior; {type(model).__name__} has none"
        )

    def loss(x, y, mask, *, num_tasks=None):
        lml = model.log_marginal_likelihood(x, y, mask, validate=False)  # [T]; the stream validated
        return -(num_tasks or x.shape[0]) / x.shape[0] * lml.sum()

    return loss
