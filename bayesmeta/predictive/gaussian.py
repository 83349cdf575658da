"""Mixtures of Gaussians over query points: the predictive of every Gaussian-likelihood model.

A Gaussian predictive is a weighted mixture over ``n`` components (posterior samples, importance
samples or grid points), each a diagonal Gaussian over the ``E`` outputs of every query point.
This module holds its math (moments, log density, CDF, quantiles, sampling); memory is bounded by
the block engine (:mod:`bayesmeta.predictive.blocks`). A mixture built with
:meth:`GaussianMixture.from_parameters` keeps only each component's *parameters* and computes
component means and scales block by block when a method needs them; the results are the same as
a dense mixture's, only the peak memory differs. Layer 0: imports nothing of ours outside this package.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator

import torch

from .base import PredictiveDiagnostics
from .blocks import (
    BLOCK_ELEMENTS,
    CACHE_ELEMENTS,
    Block,
    BlockMixture,
    Cache,
    bisect,
    normalised,
    param_blocks,
    task_slices,
    tasks_per_block,
)
from .components import heaviest, pad_rows, systematic_resample

__all__ = ["GaussianMixture", "PosteriorPredictive", "deprecated_alias"]

_LOG_2PI = math.log(2 * math.pi)

ComponentFn = Callable[[torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor]]


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


class GaussianMixture(BlockMixture):
    """Per-point mixture ``sum_s w_st N(y; loc_s, scale_s^2)`` over tasks ``t`` and points.

    Args:
        loc: component means ``[n, T, N, E]``.
        scale: component standard deviations, broadcastable to ``loc``.
        log_weights: ``[n, T]`` unnormalised log weights per task; ``None`` means equal weights.
        block_elements: how many elements of ``[n, T_b, N, E]`` one step of any method works on.
        diagnostics: how it was made (:class:`~bayesmeta.predictive.PredictiveDiagnostics`).

    Example:
        >>> mix = GaussianMixture(torch.zeros(1, 2, 3, 1), torch.ones(1, 2, 3, 1))
        >>> mix.log_prob(torch.zeros(2, 3, 1)).shape
        torch.Size([2, 3])
    """

    _affine: tuple[torch.Tensor, torch.Tensor] | None  # (scale, shift) of :meth:`affine`
    _moments: tuple[torch.Tensor, torch.Tensor] | None  # (mean, variance), computed on first use
    _dense: tuple[torch.Tensor, torch.Tensor] | None  # (loc, scale), computed on first use

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor | float, log_weights: torch.Tensor | None = None,
                 *, block_elements: int = BLOCK_ELEMENTS, diagnostics: PredictiveDiagnostics | None = None) -> None:
        if loc.dim() != 4:
            raise ValueError(f"loc must have shape [n, T, N, E]; got {tuple(loc.shape)}")
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        try:
            torch.broadcast_shapes(scale.shape, loc.shape)
        except RuntimeError as err:
            raise ValueError(f"scale {tuple(scale.shape)} does not broadcast to loc {tuple(loc.shape)}") from err
        log_w = normalised(log_weights, loc.shape[:2], loc)
        scale4 = _lead(scale, 4)
        per_block = tasks_per_block(block_elements, loc[:, 0].numel())
        blocks = [Block(sl, log_w[:, sl], _task_slice(loc, sl, 1), _task_slice(scale4, sl, 1))
                  for sl in task_slices(loc.shape[1], per_block)]
        self._setup(blocks, loc.shape[1:], loc.dtype, loc.device, fn=None, diagnostics=diagnostics)
        self._dense = (loc, scale)

    @classmethod
    def from_parameters(cls, params: torch.Tensor, log_weights: torch.Tensor | None, components: ComponentFn, *,
                        shape, dtype: torch.dtype | None = None, block_elements: int = BLOCK_ELEMENTS,
                        cache_elements: int = CACHE_ELEMENTS, diagnostics: PredictiveDiagnostics | None = None):
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
            diagnostics: how it was made (:class:`~bayesmeta.predictive.PredictiveDiagnostics`).
        """
        n, t = params.shape[:2]
        dtype = dtype or params.dtype
        log_w = normalised(log_weights, (n, t), params.new_empty((), dtype=dtype)).to(dtype)
        blocks = param_blocks(params, log_w, tasks_per_block(block_elements, n * int(shape[1]) * int(shape[2])))
        obj = cls.__new__(cls)
        # the components' means fill at most this much of the cache; their scales (broadcastable) at most as much
        needed = 2 * sum(b.params.shape[0] * b.params.shape[1] for b in blocks) * int(shape[1]) * int(shape[2])
        obj._setup(blocks, torch.Size(shape), dtype, params.device, fn=components,
                   cache=Cache(cache_elements, needed), diagnostics=diagnostics)
        for b in blocks:  # computed now while the cache holds them; only the rest is computed on use
            obj._components(b)
            if b.loc is None:
                break
        return obj

    def _setup(self, blocks, shape, dtype, device, *, fn, cache=None, diagnostics=None) -> None:
        self._init_blocks(blocks, shape, dtype, device, diagnostics)
        self._fn, self._cache = fn, cache if cache is not None else Cache(0, 0)
        self._affine = None
        self._moments = None
        self._dense = None

    def _derived(self, blocks=None, affine=None) -> GaussianMixture:
        """A copy (of any subclass, with its diagnostics) with other blocks or transform."""
        new = copy.copy(self)
        if blocks is not None:
            new._blocks = blocks
        new._affine = affine if affine is not None else self._affine
        new._moments, new._dense = None, None
        return new

    # ------------------------------------------------------------------ blocks
    def _components(self, b: Block) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _open(self, b: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``loc``, ``scale`` and the weights ``[n_b, T_b, 1, 1]`` of a block."""
        loc, scale = self._components(b)
        return loc, scale, b.log_w.exp()[:, :, None, None]

    # ------------------------------------------------------------------ components
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
            m = self._collect(both, dim=1)  # [2, T, N, E]
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

    # ------------------------------------------------------------------ densities
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
        return self._collect(lp)

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """Marginal CDF of each output at ``y`` ``[T, N, E]`` (the PIT value of ``y``)."""
        y = self._check_y(y)
        return self._collect(lambda b, loc, scale, w: (w * torch.special.ndtr((y[b.tasks] - loc) / scale)).sum(0))

    def quantile(self, q: float, iters: int = 40) -> torch.Tensor:
        """Marginal ``q``-quantile of every output ``[T, N, E]`` by vectorised bisection.

        The mixture's quantile lies between the smallest and largest component quantile, which
        brackets the search tightly.
        """
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile level must be in (0, 1); got {q}")
        z = torch.special.ndtri(torch.tensor(q, dtype=self._dtype, device=self._device))

        def block_quantile(b, loc, scale, w):
            comp_q = loc + scale * z  # [n_b, T_b, N, E]
            return bisect(lambda mid: (w * torch.special.ndtr((mid - loc) / scale)).sum(0),
                          comp_q.amin(0), comp_q.amax(0), q, iters)
        return self._collect(block_quantile)

    def nonfinite_tasks(self) -> torch.Tensor:
        """``[T]`` bool: tasks with a NaN or infinite component mean or a non-positive scale."""
        def bad(b, loc, scale, w):
            scale = scale.expand_as(loc)
            return (~torch.isfinite(loc) | ~torch.isfinite(scale) | (scale <= 0)).flatten(2).any(-1).any(0)
        return self._collect(bad)

    # ------------------------------------------------------------------ draws and transforms
    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``[num_samples, T, N, E]`` from the predictive (jointly over a task's points)."""
        def draw(b, loc, scale, w):
            idx = torch.multinomial(b.log_w.exp().T, num_samples, replacement=True, generator=generator).T
            full = idx[:, :, None, None].expand(-1, -1, *loc.shape[2:])  # [s, T_b, N, E]
            scale = torch.gather(scale.expand_as(loc), 0, full)
            noise = torch.randn(full.shape, generator=generator, dtype=loc.dtype, device=loc.device)
            return torch.gather(loc, 0, full) + scale * noise
        return self._collect(draw, dim=1)

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


class PosteriorPredictive(GaussianMixture):
    """Posterior predictive on query points: a Gaussian mixture over posterior samples, with diagnostics.

    ``mean``, ``std``, ``interval(level)``, ``log_prob(y)`` (log of the Monte-Carlo mixture
    density per point, ``[T, N]``), ``cdf(y)`` and ``sample()`` come from
    :class:`GaussianMixture` (block-wise over tasks: bounded memory). With
    ``method="importance"`` the components are weighted posterior draws, and ``ess``,
    ``pareto_k`` and ``num_draws`` (per task ``[T]``, in :attr:`diagnostics`) say how far to trust
    the weights: PSIS ``k > 0.7`` means the estimate is unreliable.

    Args:
        loc, scale, log_weights: as :class:`GaussianMixture`.
        method, ess, pareto_k, num_draws: the fields of its
            :class:`~bayesmeta.predictive.PredictiveDiagnostics`.
    """

    _diagnostics = PredictiveDiagnostics(method="guide")

    def __init__(self, loc, scale, log_weights=None, *, method: str = "guide", ess=None, pareto_k=None,
                 num_draws=None) -> None:
        super().__init__(loc, scale, log_weights, diagnostics=PredictiveDiagnostics(method, ess, pareto_k, num_draws))


_DEPRECATED = {"Predictive": PosteriorPredictive}


def deprecated_alias(module: str, name: str):
    """``Predictive`` (renamed ``PosteriorPredictive``, so that it does not shadow ``pyro.infer.Predictive``).

    Kept for one release with a ``DeprecationWarning``; ``module.__getattr__`` calls this.
    """
    if name not in _DEPRECATED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new = _DEPRECATED[name]
    warnings.warn(f"bayesmeta.{name} is deprecated and will be removed in the next release; use "
                  f"bayesmeta.{new.__name__} (the old name clashed with pyro.infer.Predictive)", DeprecationWarning,
                  stacklevel=3)
    return new
