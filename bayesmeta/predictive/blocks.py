"""The block engine of every mixture predictive: tasks in blocks, a component cache, quantile bisection.

A mixture over ``T`` tasks is held in blocks of tasks, and every method works one block at a
time, so no temporary is larger than about :data:`BLOCK_ELEMENTS` elements of
``[n, T_b, N, E]`` (components x tasks x points x outputs) whatever ``T`` is. A block holds its
tasks' log weights and either its components (a Gaussian mixture's ``loc`` and ``scale``) or
their *parameters* (a few numbers per posterior draw), from which the mixture computes the
components when a method needs them; computed components are kept in a :class:`Cache` up to
:data:`CACHE_ELEMENTS` elements and recomputed beyond. :class:`BlockMixture` is the base of
:class:`~bayesmeta.predictive.GaussianMixture` and :class:`~bayesmeta.predictive.FamilyMixture`.
Layer 0: imports nothing of ours outside this package.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch

from .base import Predictive, PredictiveDiagnostics

__all__ = ["BLOCK_ELEMENTS", "CACHE_ELEMENTS", "Block", "BlockMixture", "Cache", "bisect", "normalised",
           "param_blocks", "task_slices", "tasks_per_block"]

BLOCK_ELEMENTS = 2**20  # elements of one block's [n, T_b, N, E] components worked on at once
CACHE_ELEMENTS = 2**27  # component elements a lazy mixture keeps (512 MB in float32)


def tasks_per_block(block_elements: int, per_task: int) -> int:
    """How many tasks of ``per_task`` elements (components x points x outputs) one block holds (at least 1)."""
    return max(1, block_elements // max(1, per_task))


def task_slices(num_tasks: int, per_block: int) -> list[slice]:
    """Consecutive task ranges of ``per_block`` tasks (the last may be shorter)."""
    return [slice(start, min(start + per_block, num_tasks)) for start in range(0, num_tasks, per_block)]


def normalised(log_weights: torch.Tensor | None, shape, like: torch.Tensor) -> torch.Tensor:
    """Log weights ``shape = [n, T]`` normalised over components (``None``: equal weights in ``like``'s dtype)."""
    if log_weights is None:
        log_weights = torch.zeros(shape, dtype=like.dtype, device=like.device)
    if tuple(log_weights.shape) != tuple(shape):
        raise ValueError(f"log_weights must have shape {tuple(shape)}; got {tuple(log_weights.shape)}")
    return log_weights - torch.logsumexp(log_weights, dim=0, keepdim=True)


class Block:
    """Tasks ``tasks`` of a mixture: log weights ``[n_b, T_b]`` and either components
    (``loc [n_b, T_b, N, E]``, ``scale`` broadcastable to it) or their ``params [n_b, T_b, P]``."""

    __slots__ = ("tasks", "log_w", "loc", "scale", "params")

    def __init__(self, tasks: slice, log_w, loc=None, scale=None, params=None) -> None:
        self.tasks, self.log_w, self.loc, self.scale, self.params = tasks, log_w, loc, scale, params

    def take(self, rows: torch.Tensor) -> Block:
        """The block restricted to components ``rows [m, T_b]`` (per task)."""
        log_w = torch.gather(self.log_w, 0, rows)
        if self.loc is None:
            return Block(self.tasks, log_w, params=torch.gather(
                self.params, 0, rows[..., None].expand(-1, -1, self.params.shape[-1])))
        idx = rows[:, :, None, None].expand(-1, -1, *self.loc.shape[2:])
        scale = self.scale
        if scale.shape[0] != 1 or scale.shape[1] != 1:
            scale = torch.gather(scale.expand_as(self.loc), 0, idx)
        return Block(self.tasks, log_w, torch.gather(self.loc, 0, idx), scale)


def param_blocks(params: torch.Tensor, log_w: torch.Tensor, per_block: int) -> list[Block]:
    """Blocks of ``per_block`` tasks holding ``params [n, T, P]`` and normalised ``log_w [n, T]``;
    components that pad every task of a block (log weight ``-inf``) are dropped from it."""
    blocks = []
    for sl in task_slices(params.shape[1], per_block):
        lw, pb = log_w[:, sl], params[:, sl]
        alive = torch.isfinite(lw).any(1)
        if not bool(alive.all()):
            rows = alive.nonzero()[:, 0]
            lw, pb = lw[rows], pb[rows]
        blocks.append(Block(sl, lw, params=pb))
    return blocks


class Cache:
    """Room for computed components, shared by a lazy mixture and the mixtures derived from it.

    Kept components are copied into one buffer allocated at the first use, not kept as one
    allocation per block: small long-lived allocations between a block's temporaries fragment
    the C heap when several threads allocate (measured: a 1000-task predictive's peak memory
    went from 0.7 GB to 3.7-5.0 GB in a third of runs with 2 threads). Pages of the buffer that
    are never written cost no resident memory on the CPU.
    """

    __slots__ = ("free", "size", "buffer", "used")

    def __init__(self, elements: int, size: int) -> None:
        self.free, self.size = elements, min(elements, size)
        self.buffer: torch.Tensor | None = None
        self.used = 0

    def keep(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Copies of ``tensors`` in the buffer, or ``None`` when they do not fit."""
        total = sum(t.numel() for t in tensors)
        if total > self.free or self.used + total > self.size:
            return None
        if self.buffer is None:
            self.buffer = tensors[0].new_empty(self.size)
        kept = []
        for t in tensors:
            view = self.buffer[self.used:self.used + t.numel()].view(t.shape)
            view.copy_(t)
            kept.append(view)
            self.used += t.numel()
        self.free -= total
        return tuple(kept)


def bisect(cdf: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, q: float, iters: int,
           *, discrete: bool = False) -> torch.Tensor:
    """The ``q``-quantile between brackets ``lo`` and ``hi`` (``F(lo) < q <= F(hi)``) of a monotone ``cdf``.

    Vectorised bisection for ``iters`` steps. ``discrete``: integer outcomes: midpoints are
    floored, it stops once every bracket is one apart and returns the smallest ``y`` with
    ``F(y) >= q`` (the upper end); otherwise the bracket's midpoint.
    """
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if discrete:
            mid = mid.floor()
        below = cdf(mid) < q
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        if discrete and bool(((hi - lo) <= 1).all()):
            break
    return hi if discrete else 0.5 * (lo + hi)


class BlockMixture(Predictive):
    """A mixture predictive over tasks held in :class:`Block` s; subclasses say how a block opens.

    :meth:`_open` turns a block into what the subclass's per-block functions take (a Gaussian
    mixture's ``loc, scale, weights``; a distribution of any family); :meth:`_collect` runs such a
    function over every block and joins the results along the task dim.
    """

    _blocks: list[Block]
    _shape: torch.Size
    _dtype: torch.dtype
    _device: torch.device

    def _init_blocks(self, blocks: list[Block], shape, dtype: torch.dtype, device: torch.device,
                     diagnostics: PredictiveDiagnostics | None) -> None:
        self._blocks, self._shape, self._dtype, self._device = blocks, torch.Size(shape), dtype, device
        if diagnostics is not None:
            self._diagnostics = diagnostics

    @abstractmethod
    def _open(self, b: Block) -> tuple:
        """What a per-block function takes after the block itself."""

    def _collect(self, fn: Callable[..., torch.Tensor], dim: int = 0) -> torch.Tensor:
        """``fn(block, *self._open(block))`` over blocks, joined along ``dim`` (the task dim of the results).

        Each block's result is copied into one output allocated up front, so no block leaves a
        small allocation behind its temporaries (which fragments the C heap: gigabytes over
        thousands of blocks).
        """
        out: torch.Tensor | None = None
        for b in self._blocks:
            opened = self._open(b)
            res = fn(b, *opened)
            if out is None:
                shape = list(res.shape)
                shape[dim] = self._shape[0]
                out = res.new_empty(shape)
            out.narrow(dim, b.tasks.start, b.tasks.stop - b.tasks.start).copy_(res)
            del res, opened
        assert out is not None, "a mixture has at least one task, hence one block"
        return out

    # ------------------------------------------------------------------ shape and weights
    @property
    def shape(self) -> torch.Size:
        """``[T, N, E]``: tasks, query points, outputs."""
        return self._shape

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def num_components(self) -> int:
        """The most components any task has (smaller blocks are padded in :attr:`log_weights`)."""
        return max(b.log_w.shape[0] for b in self._blocks)

    @property
    def log_weights(self) -> torch.Tensor:
        """Normalised log weights ``[n, T]``; padding components have ``-inf``."""
        n = self.num_components
        return torch.cat([torch.cat([b.log_w, b.log_w.new_full((n - b.log_w.shape[0], b.log_w.shape[1]), -math.inf)])
                          for b in self._blocks], 1)

    @property
    def weights(self) -> torch.Tensor:
        """Normalised component weights ``[n, T]``."""
        return self.log_weights.exp()

    def _check_y(self, y) -> torch.Tensor:
        """Observations as ``[T, N, E]`` in the mixture's dtype and device (``[T, N]`` for ``E = 1``)."""
        y = torch.as_tensor(y)
        if y.dim() == 2 and self._shape[-1] == 1:
            y = y.unsqueeze(-1)
        if tuple(y.shape) != tuple(self._shape):
            raise ValueError(f"observations must have shape {tuple(self._shape)} (tasks, points, outputs); "
                             f"got {tuple(y.shape)}")
        return y.to(dtype=self._dtype, device=self._device)
