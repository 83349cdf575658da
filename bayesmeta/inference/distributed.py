"""Multi-process meta-training on the standard PyTorch stack (``torchrun`` + ``torch.distributed``).

Each rank draws its own tasks (a family: its own seed; a finite pool: a disjoint shard, tasks
``rank::world_size``), computes its gradient, and one flattened ``all_reduce`` (SUM) of all
gradients plus the loss makes every rank take the step a single process would take on the union
of the ranks' batches. Parameters start identical (broadcast from rank 0) and stay identical.
Only rank 0 writes checkpoints, logs and progress bars. Every collective has a timeout.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "all_reduce_", "check_same_config", "init_from_env"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the process group."""

    rank: int
    world_size: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device, *, timeout_s: float = 300.0) -> DistributedContext | None:
    """Join (or reuse) the process group described by ``torchrun``'s environment variables.

    Returns ``None`` with a warning when ``WORLD_SIZE`` is 1 (a single process trains as usual).

    Raises:
        ValueError: no process-group environment (not launched by ``torchrun``).
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), dist.get_backend())
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ValueError(f"distributed=True but the process-group environment is missing {missing}: launch with "
                         "`torchrun --nproc_per_node=N ...` (or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
    world = int(os.environ["WORLD_SIZE"])
    if world == 1:
        warnings.warn("distributed=True with WORLD_SIZE=1: training in this single process", stacklevel=3)
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), backend)


def check_same_config(ctx: DistributedContext, config: dict, device: torch.device) -> None:
    """Raise on every rank if any rank's training configuration differs (compared by hash)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).digest()[:8]
    mine = torch.tensor([int.from_bytes(digest, "little", signed=True)], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(every, mine)
    differ = [r for r, h in enumerate(every) if int(h) != int(every[0])]
    if differ:
        raise ValueError(f"distributed training: rank(s) {differ} were started with a different configuration "
                         "than rank 0 (same command and config on every rank, please)")


def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Copy rank 0's parameter values to every rank (one flattened broadcast)."""
    with torch.no_grad():
        flat = torch.cat([p.reshape(-1) for p in params])
        dist.broadcast(flat, src=0)
        torch.nn.utils.vector_to_parameters(flat, params)


def all_reduce_(params: list[torch.Tensor], *scalars) -> torch.Tensor:
    """Sum gradients (in place) and some scalars over ranks in one flattened ``all_reduce``.

    ``scalars`` ride along in the same message (e.g. the loss, and a "my time is up" flag so that
    every rank stops after the same step); returns their sums, ``[len(scalars)]``.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    extra = torch.stack([torch.as_tensor(v, dtype=grads[0].dtype, device=grads[0].device).detach().reshape(())
                         for v in scalars])
    flat = torch.cat([g.reshape(-1) for g in grads] + [extra])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    start = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[start : start + n].view_as(p).clone()
        start += n
    return flat[start:]
