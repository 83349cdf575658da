"""Mixtures of Gaussians over query points: the numeric core of every predictive.

A predictive distribution in bayesmeta is a weighted mixture over ``n`` components (posterior
samples, importance samples or grid points), each a diagonal Gaussian over the ``E`` outputs of
every query point. This module holds the math (moments, log density, CDF, quantiles, sampling)
and depends on nothing else in the package, so task families (oracles) and learners share it.

**Memory is bounded.** A mixture over ``T`` tasks is held in blocks of tasks, and every method
works one block at a time, so no temporary is larger than about :data:`BLOCK_ELEMENTS`
elements of ``[n, T_b, N, E]`` whatever ``T`` is. A mixture built with
:meth:`GaussianMixture.from_parameters` keeps only each component's *parameters* (a few numbers
per draw) and computes component means and scales block by block when a method needs them;
it caches them up to :data:`CACHE_ELEMENTS` elements and recomputes the rest. The results are
the same as a dense mixture's, only the peak memory differs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch

__all__ = [
    "BLOCK_ELEMENTS", "CACHE_ELEMENTS", "GaussianMixture", "heaviest", "pad_components", "pad_rows",
    "systematic_resample",
]

BLOCK_ELEMENTS = 2**20  # elements of one block's [n, T_b, N, E] components worked on at once
CACHE_ELEMENTS = 2**27  # component elements a lazy mixture keeps (512 MB in float32)

_LOG_2PI = math.log(2 * math.pi)

ComponentFn = Callable[[torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor]]


def heaviest(log_weights: torch.Tensor, mass: float) -> torch.Tensor:
    """Indices ``[m, T]`` of each task's heaviest components holding ``mass`` of its weight.

    ``log_weights`` is ``[n, T]`` (unnormalised); ``m`` is the most any task needs, so the
    result is rectangular.
    """
    srt, order = torch.sort(log_weights, dim=0, descending=True)
    cum = torch.softmax(srt, 0).cumsum(0)
    keep = min(int((cum < mass).sum(0).max()) + 1, log_weights.shape[0])
    return order[:keep]


def systematic_resample(log_w: torch.Tensor, n: int) -> torch.Tensor:
    """Indices ``[n, T]`` of ``n`` equally weighted draws per task (systematic resampling).

    ``log_w`` is ``[m, T]`` (unnormalised). Unbiased, with lower variance than multinomial.
    """
    cw = torch.softmax(log_w, 0).T.cumsum(-1).contiguous()  # [T, m]
    u = (torch.arange(n, device=log_w.device, dtype=cw.dtype) + torch.rand(
        log_w.shape[1], 1, device=log_w.device, dtype=cw.dtype)) / n  # [T, n]
    return torch.searchsorted(cw, u * cw[:, -1:]).clamp_max(log_w.shape[0] - 1).T  # [n, T]


def pad_components(params: torch.Tensor, log_w: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``params [k, T, ...]`` and ``log_w [k, T]`` to ``m`` components with zero-weight
    copies of the first (log weight ``-inf``), so groups of tasks with different counts stack."""
    extra = m - params.shape[0]
    if extra <= 0:
        return params, log_w
    return pad_rows(params, m), torch.cat([log_w, log_w.new_full((extra, log_w.shape[1]), -math.inf)], 0)


def pad_rows(t: torch.Tensor, m: int) -> torch.Tensor:
    """``t [k, ...]`` with copies of its first row appended up to ``m`` rows (unchanged if ``k >= m``).

    With :func:`pad_components` for the log weights, pads a mixture's components (``loc``,
    ``scale``, parameters) so that mixtures with different component counts stack.
    """
    extra = m - t.shape[0]
    return torch.cat([t, t[:1].expand(extra, *t.shape[1:])], 0) if extra > 0 else t


def _lead(t: torch.Tensor, dims: int) -> torch.Tensor:
    """``t`` with leading singleton dims up to ``dims`` dims (broadcasting's alignment)."""
    return t.reshape((1,) * (dims - t.dim()) + tuple(t.shape))


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its broadcast (stride-0) copies: size 1 along those dims, so it broadcasts
    back to the same values and ``numel`` counts only the memory it holds."""
    for d in range(t.dim()):
        if t.stride(d) == 0 and t.shape[d] > 1:
            t = t.narrow(d, 0, 1)
    return t


def _task_slice(t: torch.Tensor, tasks: slice, dim: int) -> torch.Tensor:
    return t.narrow(dim, tasks.start, tasks.stop - tasks.start) if t.shape[dim] != 1 else t


class _Block:
    """Tasks ``tasks`` of a mixture: log weights ``[n_b, T_b]`` and either components
    (``loc [n_b, T_b, N, E]``, ``scale`` broadcastable to it) or their ``params [n_b, T_b, P]``."""

    __slots__ = ("tasks", "log_w", "loc", "scale", "params")

    def __init__(self, tasks: slice, log_w, loc=None, scale=None, params=None) -> None:
        self.tasks, self.log_w, self.loc, self.scale, self.params = tasks, log_w, loc, scale, params

    def take(self, rows: torch.Tensor) -> _Block:
        """The block restricted to components ``rows [m, T_b]`` (per task)."""
        log_w = torch.gather(self.log_w, 0, rows)
        if self.loc is None:
            return _Block(self.tasks, log_w, params=torch.gather(
                self.params, 0, rows[..., None].expand(-1, -1, self.params.shape[-1])))
        idx = rows[:, :, None, None].expand(-1, -1, *self.loc.shape[2:])
        scale = self.scale
        if scale.shape[0] != 1 or scale.shape[1] != 1:
            scale = torch.gather(scale.expand_as(self.loc), 0, idx)
        return _Block(self.tasks, log_w, torch.gather(self.loc, 0, idx), scale)


class _Cache:
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


def _task_slices(num_tasks: int, per_block: int) -> Iterator[slice]:
    for start in range(0, num_tasks, per_block):
        yield slice(start, min(start + per_block, num_tasks))


class GaussianMixture:
    """Per-point mixture ``sum_s w_st N(y; loc_s, scale_s^2)`` over tasks ``t`` and points.

    Args:
        loc: component means ``[n, T, N, E]``.
        scale: component standard deviations, broadcastable to ``loc``.
        log_weights: ``[n, T]`` unnormalised log weights per task; ``None`` means equal weights.
        block_elements: how many elements of ``[n, T_b, N, E]`` one step of any method works on.

    Example:
        >>> mix = GaussianMixture(torch.zeros(1, 2, 3, 1), torch.ones(1, 2, 3, 1))
        >>> mix.log_prob(torch.zeros(2, 3, 1)).shape
        torch.Size([2, 3])
    """

    _affine: tuple[torch.Tensor, torch.Tensor] | None  # (scale, shift) of :meth:`affine`
    _moments: tuple[torch.Tensor, torch.Tensor] | None  # (mean, variance), computed on first use
    _dense: tuple[torch.Tensor, torch.Tensor] | None  # (loc, scale), computed on first use

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor | float, log_weights: torch.Tensor | None = None,
                 *, block_elements: int = BLOCK_ELEMENTS) -> None:
        if loc.dim() != 4:
            raise ValueError(f"loc must have shape [n, T, N, E]; got {tuple(loc.shape)}")
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        try:
            torch.broadcast_shapes(scale.shape, loc.shape)
        except RuntimeError as err:
            raise ValueError(f"scale {tuple(scale.shape)} does not broadcast to loc {tuple(loc.shape)}") from err
        log_w = self._normalised(log_weights, loc.shape[:2], loc)
        scale4 = _lead(scale, 4)
        per_block = max(1, block_elements // max(1, loc[:, 0].numel()))
        blocks = [_Block(sl, log_w[:, sl], _task_slice(loc, sl, 1), _task_slice(scale4, sl, 1))
                  for sl in _task_slices(loc.shape[1], per_block)]
        self._setup(blocks, loc.shape[1:], loc.dtype, loc.device, fn=None)
        self._dense = (loc, scale)

    @classmethod
    def from_parameters(cls, params: torch.Tensor, log_weights: torch.Tensor | None, components: ComponentFn, *,
                        shape, dtype: torch.dtype | None = None, block_elements: int = BLOCK_ELEMENTS,
                        cache_elements: int = CACHE_ELEMENTS, **attributes):
        """A mixture that stores component parameters and computes components block by block.

        Args:
            params: ``[n, T, P]`` parameters of every component (e.g. posterior draws).
            log_weights: ``[n, T]`` unnormalised; ``-inf`` marks padding (dropped per block).
            components: ``components(params_b [n_b, T_b, P], tasks: slice) -> (loc, scale)``
                with ``loc [n_b, T_b, N, E]`` for the tasks ``tasks`` and ``scale``
                broadcastable to it.
            shape: ``(T, N, E)`` of the predictive.
            cache_elements: component elements computed at once and kept; blocks beyond
                this are computed again at each use (from ``components`` as it is then).
            attributes: set on the new object (subclasses' extra fields).
        """
        n, t = params.shape[:2]
        dtype = dtype or params.dtype
        log_w = cls._normalised(log_weights, (n, t), params.new_empty((), dtype=dtype)).to(dtype)
        per_block = max(1, block_elements // max(1, n * int(shape[1]) * int(shape[2])))
        blocks = []
        for sl in _task_slices(t, per_block):
            lw, pb = log_w[:, sl], params[:, sl]
            alive = torch.isfinite(lw).any(1)  # drop components padding every task of the block
            if not bool(alive.all()):
                rows = alive.nonzero()[:, 0]
                lw, pb = lw[rows], pb[rows]
            blocks.append(_Block(sl, lw, params=pb))
        obj = cls.__new__(cls)
        # the components' means fill at most this much of the cache; their scales (broadcastable) at most as much
        needed = 2 * sum(b.params.shape[0] * b.params.shape[1] for b in blocks) * int(shape[1]) * int(shape[2])
        obj._setup(blocks, torch.Size(shape), dtype, params.device, fn=components,
                   cache=_Cache(cache_elements, needed))
        for b in blocks:  # computed now while the cache holds them; only the rest is computed on use
            obj._components(b)
            if b.loc is None:
                break
        for key, value in attributes.items():
            setattr(obj, key, value)
        return obj

    @staticmethod
    def _normalised(log_weights, shape, like: torch.Tensor) -> torch.Tensor:
        if log_weights is None:
            log_weights = torch.zeros(shape, dtype=like.dtype, device=like.device)
        if tuple(log_weights.shape) != tuple(shape):
            raise ValueError(f"log_weights must have shape {tuple(shape)}; got {tuple(log_weights.shape)}")
        return log_weights - torch.logsumexp(log_weights, dim=0, keepdim=True)

    def _setup(self, blocks, shape, dtype, device, *, fn, cache=None) -> None:
        self._blocks, self._shape, self._dtype, self._device = blocks, torch.Size(shape), dtype, device
        self._fn, self._cache = fn, cache if cache is not None else _Cache(0, 0)
        self._affine = None
        self._moments = None
        self._dense = None

    def _derived(self, blocks=None, affine=None) -> GaussianMixture:
        """A copy (of any subclass, with its extra fields) with other blocks or transform."""
        new = copy.copy(self)
        if blocks is not None:
            new._blocks = blocks
        new._affine = affine if affine is not None else self._affine
        new._moments, new._dense = None, None
        return new

    # ------------------------------------------------------------------ blocks
    def _components(self, b: _Block) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc [n_b, T_b, N, E]`` and ``scale`` (4-d, broadcastable) of one block."""
        if b.loc is not None:
            loc, scale = b.loc, b.scale
        else:
            loc, scale = self._fn(b.params, b.tasks)
            scale = _compact(_lead(torch.as_tensor(scale, device=loc.device), 4)).to(self._dtype)
            loc = loc.to(self._dtype)
            kept = self._cache.keep(loc, scale)
            if kept is not None:
                b.loc, b.scale = kept
        if self._affine is not None:
            a, c = (_task_slice(_lead(v, 3), b.tasks, 0) for v in self._affine)
            loc, scale = loc * a + c, scale * a
        return loc, scale

    def _per_block(self, fn, dim: int = 0) -> torch.Tensor:
        """``fn(block, loc, scale, weights [n_b, T_b, 1, 1])`` over blocks, joined along ``dim``.

        Each block's result is copied into one output allocated up front, so no block leaves a
        small allocation behind its temporaries (which fragments the C heap: gigabytes over
        thousands of blocks).
        """
        out: torch.Tensor | None = None
        for b in self._blocks:
            loc, scale = self._components(b)
            res = fn(b, loc, scale, b.log_w.exp()[:, :, None, None])
            if out is None:
                shape = list(res.shape)
                shape[dim] = self._shape[0]
                out = res.new_empty(shape)
            out.narrow(dim, b.tasks.start, b.tasks.stop - b.tasks.start).copy_(res)
            del res, loc, scale
        assert out is not None, "a mixture has at least one task, hence one block"
        return out

    # ------------------------------------------------------------------ shapes and weights
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

    @property
    def loc(self) -> torch.Tensor:
        """All component means ``[n, T, N, E]`` at once (dense: memory ``n T N E``)."""
        return self._dense_components()[0]

    @property
    def scale(self) -> torch.Tensor:
        """Component standard deviations, broadcastable to :attr:`loc` (dense, like ``loc``)."""
        return self._dense_components()[1]

    def _dense_components(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._dense is None:
            n, locs, scales = self.num_components, [], []
            for b in self._blocks:
                loc, scale = self._components(b)
                locs.append(pad_rows(loc, n))  # padding: zero-weight copies of the first component
                scales.append(pad_rows(scale.expand_as(loc), n))
            self._dense = (torch.cat(locs, 1), torch.cat(scales, 1))
        return self._dense

    # ------------------------------------------------------------------ moments
    def _compute_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._moments is None:
            def both(b, loc, scale, w):
                mean = (w * loc).sum(0)
                # law of total variance around the mean (not E[loc^2] - mean^2, which cancels catastrophically in
                # float32 for outcomes far from zero: a component at 5000 with sd 1 gave sd 0)
                var = (w * (scale**2 + (loc - mean) ** 2)).sum(0)
                return torch.stack([mean, var])
            m = self._per_block(both, dim=1)  # [2, T, N, E]
            self._moments = (m[0], m[1])
        return self._moments

    @property
    def mean(self) -> torch.Tensor:
        """Predictive mean ``[T, N, E]``."""
        return self._compute_moments()[0]

    @property
    def variance(self) -> torch.Tensor:
        """Predictive variance ``[T, N, E]`` (law of total variance)."""
        return self._compute_moments()[1]

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    # ------------------------------------------------------------------ densities
    def _check_y(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(y)
        if y.dim() == len(self.shape) - 1 and self.shape[-1] == 1:
            y = y.unsqueeze(-1)
        if y.shape != self.shape:
            raise ValueError(
                f"observations must have shape {tuple(self.shape)} (tasks, points, outputs); got {tuple(y.shape)}"
            )
        return y.to(dtype=self._dtype, device=self._device)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Log of the mixture density of each point, ``[T, N]`` (outputs summed).

        Raises:
            ValueError: a non-finite ``y`` (names the value, its task and point).
        """
        y = self._check_y(y)
        bad = ~torch.isfinite(y).all(-1)  # [T, N]
        if bool(bad.any()):
            t, j = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"log_prob: y = {y[t, j].tolist()} at task {t}, point {j} is not finite (the support of "
                             "a Gaussian predictive is the real line)")

        def lp(b, loc, scale, w):
            z = (y[b.tasks] - loc) / scale  # [n_b, T_b, N, E]
            comp = (-0.5 * z**2 - torch.log(scale) - 0.5 * _LOG_2PI).sum(-1)  # [n_b, T_b, N]
            return torch.logsumexp(comp + b.log_w[:, :, None], dim=0)
        return self._per_block(lp)

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """Marginal CDF of each output at ``y`` ``[T, N, E]`` (the PIT value of ``y``)."""
        y = self._check_y(y)
        return self._per_block(lambda b, loc, scale, w: (w * torch.special.ndtr((y[b.tasks] - loc) / scale)).sum(0))

    def quantile(self, q: float, iters: int = 40) -> torch.Tensor:
        """Marginal ``q``-quantile of every output ``[T, N, E]`` by vectorised bisection.

        The mixture's quantile lies between the smallest and largest component quantile, which
        brackets the search tightly.
        """
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile level must be in (0, 1); got {q}")
        z = torch.special.ndtri(torch.tensor(q, dtype=self._dtype, device=self._device))

        def bisect(b, loc, scale, w):
            comp_q = loc + scale * z  # [n_b, T_b, N, E]
            lo, hi = comp_q.amin(0), comp_q.amax(0)
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                below = (w * torch.special.ndtr((mid - loc) / scale)).sum(0) < q
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            return 0.5 * (lo + hi)
        return self._per_block(bisect)

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Central interval holding ``level`` of the predictive mass, each ``[T, N, E]``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"interval level must be in (0, 1); got {level}")
        tail = 0.5 * (1.0 - level)
        return self.quantile(tail), self.quantile(1.0 - tail)

    def nonfinite_tasks(self) -> torch.Tensor:
        """``[T]`` bool: tasks with a NaN or infinite component mean or a non-positive scale."""
        def bad(b, loc, scale, w):
            scale = scale.expand_as(loc)
            return (~torch.isfinite(loc) | ~torch.isfinite(scale) | (scale <= 0)).flatten(2).any(-1).any(0)
        return self._per_block(bad)

    # ------------------------------------------------------------------ draws and transforms
    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``[num_samples, T, N, E]`` from the predictive (jointly over a task's points)."""
        def draw(b, loc, scale, w):
            idx = torch.multinomial(b.log_w.exp().T, num_samples, replacement=True, generator=generator).T
            full = idx[:, :, None, None].expand(-1, -1, *loc.shape[2:])  # [s, T_b, N, E]
            scale = torch.gather(scale.expand_as(loc), 0, full)
            noise = torch.randn(full.shape, generator=generator, dtype=loc.dtype, device=loc.device)
            return torch.gather(loc, 0, full) + scale * noise
        return self._per_block(draw, dim=1)

    def resample_components(self, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc, scale [num, T, N, E]`` of ``num`` equally weighted components (systematic resampling)."""
        loc: torch.Tensor | None = None
        scale: torch.Tensor | None = None
        for tasks, loc_b, scale_b in self.iter_resampled(num):
            if loc is None or scale is None:
                loc, scale = loc_b.new_empty(num, *self._shape), scale_b.new_empty(num, *self._shape)
            loc[:, tasks], scale[:, tasks] = loc_b, scale_b
        assert loc is not None and scale is not None, "a mixture has at least one task, hence one block"
        return loc, scale

    def iter_resampled(self, num: int) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Block by block: ``(tasks, loc, scale)`` of ``num`` equally weighted components
        ``[num, T_b, N, E]`` of the tasks ``tasks`` (systematic resampling; bounded memory)."""
        for b in self._blocks:
            loc, scale = self._components(b)
            full = systematic_resample(b.log_w, num)[:, :, None, None].expand(-1, -1, *loc.shape[2:])
            yield b.tasks, torch.gather(loc, 0, full), torch.gather(scale.expand_as(loc), 0, full)

    def prune(self, mass: float = 1 - 1e-4) -> GaussianMixture:
        """Drop the lightest components holding less than ``1 - mass`` of each task's weight.

        Keeps the same number of components for every task of a block (the most any of them
        needs) and renormalises; moments and densities change by at most ``1 - mass`` in
        relative terms.
        """
        blocks = []
        for b in self._blocks:
            taken = b.take(heaviest(b.log_w, mass))
            taken.log_w = taken.log_w - torch.logsumexp(taken.log_w, 0, keepdim=True)
            blocks.append(taken)
        return self._derived(blocks)

    def affine(self, scale: torch.Tensor | float, shift: torch.Tensor | float) -> GaussianMixture:
        """The distribution of ``scale * y + shift`` (``scale > 0``, broadcastable to ``[T, N, E]``),
        e.g. to undo standardisation."""
        scale = torch.as_tensor(scale, dtype=self._dtype, device=self._device)
        shift = torch.as_tensor(shift, dtype=self._dtype, device=self._device)
        if (scale <= 0).any():
            raise ValueError("affine: scale must be > 0")
        if self._affine is not None:
            a, c = self._affine
            scale, shift = a * scale, c * scale + shift
        return self._derived(affine=(scale, shift))
