"""Mixtures over posterior draws of *any* observation family (Bernoulli, Poisson, Student-t, ...).

The Gaussian case has its own, faster class (:class:`~bayesmeta.predictive.GaussianMixture`); this
one works with any ``torch.distributions`` family through its ``log_prob``, ``mean``, ``variance``
and ``sample``, and with closed-form CDFs where torch or SciPy has them. Components are held as
their *parameters* (``[n, T, P]`` draws) and turned into a distribution block of tasks by block
of tasks (:mod:`bayesmeta.predictive.blocks`) when a method needs them, so memory stays bounded
for any number of tasks.

Discrete outcomes (``support.is_discrete``): ``log_prob`` is the log pmf, ``cdf(y) = P(Y <= y)``,
:meth:`FamilyMixture.pit` is the randomised PIT ``F(y - 1) + V (F(y) - F(y - 1))``,
``V ~ U(0, 1)`` (uniform when calibrated), quantiles and intervals are integers, and Bernoulli or
Categorical mixtures have :attr:`FamilyMixture.probs` (class probabilities ``[T, N, C]``).
Layer 0: imports nothing of ours but :mod:`bayesmeta._support` and this package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.distributions import constraints

from .._support import describe_support, first_outside, format_value
from .base import PredictiveDiagnostics
from .blocks import BLOCK_ELEMENTS, Block, BlockMixture, bisect, param_blocks, tasks_per_block

__all__ = ["FamilyMixture", "component_cdf"]

_MAX_SUM_TERMS = 100_000  # a discrete CDF summed term by term: at most this many values

ComponentFn = Callable[[torch.Tensor, slice], Any]


def _lower_bound(support) -> float | None:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    lb = getattr(support, "lower_bound", None)
    if isinstance(lb, int | float):
        return float(lb)
    if support is constraints.positive or support is constraints.nonnegative or support is constraints.boolean:
        return 0.0
    if isinstance(support, constraints._IntegerGreaterThan | constraints._IntegerInterval):
        return float(support.lower_bound)
    return None


def component_cdf(d: Any, y: torch.Tensor) -> torch.Tensor:
    """``P(Y <= y)`` elementwise for a distribution ``d`` (batch broadcastable with ``y``).

    torch's ``cdf`` where it exists; closed forms for Bernoulli, Categorical, Poisson
    (regularised gamma), Binomial and negative binomial (regularised beta, SciPy), Student-t and
    Beta (SciPy); other discrete families by summing the pmf from 0.
    """
    name = type(d).__name__
    if name == "Bernoulli":
        p = d.probs
        return torch.where(y < 0, 0.0, torch.where(y < 1, 1 - p, torch.ones_like(p)))
    if name == "Categorical":
        cum = d.probs.cumsum(-1)  # [..., C]
        shape = torch.broadcast_shapes(cum.shape[:-1], y.shape)
        k = y.floor().clamp(-1, cum.shape[-1] - 1).long().expand(shape)
        out = torch.gather(cum.expand(*shape, cum.shape[-1]), -1, k.clamp_min(0)[..., None])[..., 0]
        return torch.where(k < 0, torch.zeros_like(out), out)
    if name == "Poisson":
        k = y.floor()
        return torch.where(k < 0, 0.0, torch.special.gammaincc(k.clamp_min(0) + 1, d.rate))
    if name in ("Binomial", "NegativeBinomial", "StudentT", "Beta"):
        return _scipy_cdf(d, y)
    try:
        return d.cdf(y)
    except NotImplementedError:
        pass
    if d.support.is_discrete:
        return _summed_cdf(d, y)
    raise NotImplementedError(f"no CDF for {name}: PIT and coverage need one")


def _scipy_cdf(d, y: torch.Tensor) -> torch.Tensor:
    """CDFs through SciPy's special functions (on CPU; for metrics, not hot paths)."""
    from scipy import special

    name = type(d).__name__
    like = torch.broadcast_tensors(y, d.mean)[0]
    yy = like.detach().double().cpu().numpy()
    floor = np.floor(yy)
    if name == "Binomial":
        n, p = (torch.broadcast_to(v, like.shape).detach().double().cpu().numpy() for v in (d.total_count, d.probs))
        k = floor.clip(-1, None)
        inside = (k >= 0) & (k < n)
        val = np.where(k >= n, 1.0, 0.0)  # P(X <= k) = I_{1-p}(n - k, k + 1) for 0 <= k < n
        val[inside] = special.betainc((n - k)[inside], (k + 1)[inside], (1 - p)[inside])
    elif name == "NegativeBinomial":
        r, p = (torch.broadcast_to(v, like.shape).detach().double().cpu().numpy() for v in (d.total_count, d.probs))
        k = floor
        val = (k >= 0) * special.betainc(r, k.clip(0, None) + 1, 1 - p)  # torch's p: the success probability
    elif name == "StudentT":
        df, loc, scale = (torch.broadcast_to(v, like.shape).detach().double().cpu().numpy()
                          for v in (d.df, d.loc, d.scale))
        val = special.stdtr(df, (yy - loc) / scale)
    else:  # Beta
        a, b = (torch.broadcast_to(v, like.shape).detach().double().cpu().numpy()
                for v in (d.concentration1, d.concentration0))
        val = special.betainc(a, b, yy.clip(0, 1))
    return torch.as_tensor(val, dtype=like.dtype, device=like.device)


def _summed_cdf(d, y: torch.Tensor) -> torch.Tensor:
    top = int(y.max().clamp_min(0))
    if top >= _MAX_SUM_TERMS:
        raise ValueError(f"a {type(d).__name__} CDF at {top}: summing more than {_MAX_SUM_TERMS} pmf terms")
    total = torch.zeros(torch.broadcast_shapes(y.shape, d.batch_shape), dtype=y.dtype, device=y.device)
    for k in range(top + 1):
        value = torch.full_like(total, float(k))
        total = total + torch.where(y >= k, d.log_prob(value).exp(), 0.0)
    return total.clamp_max(1.0)


class FamilyMixture(BlockMixture):
    """Per-point mixture ``sum_s w_st p(y; component_st)`` of any observation family.

    Args:
        params: ``[n, T, P]`` parameters of every component (posterior draws).
        log_weights: ``[n, T]`` unnormalised (``-inf``: padding); ``None``: equal weights.
        components: ``components(params_b [n_b, T_b, P], tasks: slice)`` -> a distribution with
            batch ``[n_b, T_b, N]`` and event ``()`` (scalar outcomes) or ``[E]``.
        shape: ``(T, N, E)`` of the predictive (``E = 1`` for scalar outcomes).
        dtype: of the results.
        diagnostics: how it was made (:class:`~bayesmeta.predictive.PredictiveDiagnostics`).

    Example:
        >>> import torch.distributions as D
        >>> mix = FamilyMixture(torch.rand(5, 2, 1), None,
        ...                     lambda p, sl: D.Bernoulli(probs=p[..., None, 0].expand(-1, -1, 3)), shape=(2, 3, 1))
        >>> mix.probs.shape, mix.interval(0.9)[0].shape
        (torch.Size([2, 3, 2]), torch.Size([2, 3, 1]))
    """

    def __init__(self, params: torch.Tensor, log_weights: torch.Tensor | None, components: ComponentFn, *,
                 shape, dtype: torch.dtype | None = None, block_elements: int = BLOCK_ELEMENTS,
                 diagnostics: PredictiveDiagnostics | None = None) -> None:
        n, t = params.shape[:2]
        dtype = dtype or params.dtype
        if log_weights is None:
            log_weights = params.new_zeros((n, t), dtype=dtype)
        if tuple(log_weights.shape) != (n, t):
            raise ValueError(f"log_weights must have shape {(n, t)}; got {tuple(log_weights.shape)}")
        log_w = log_weights.to(dtype)
        log_w = log_w - torch.logsumexp(log_w, 0, keepdim=True)
        per_block = tasks_per_block(block_elements, n * int(shape[1]) * int(shape[2]))
        self._init_blocks(param_blocks(params, log_w, per_block), shape, dtype, params.device, diagnostics)
        self._fn = components
        probe = components(params[:1, :1], slice(0, 1))
        self.scalar = len(probe.event_shape) == 0
        self.support = probe.support
        self.discrete = bool(probe.support.is_discrete)
        self.family = type(probe).__name__
        self.classes_only = self.family == "Categorical"  # labels have no order: class probabilities only
        if self.family == "Bernoulli":
            self.num_classes = 2
        elif self.family == "Categorical":
            self.num_classes = int(probe.probs.shape[-1])

    # ------------------------------------------------------------------ blocks
    def _open(self, b: Block) -> tuple[Any]:
        """The block's distribution ``[n_b, T_b, N(, E)]``."""
        return (self._fn(b.params, b.tasks),)

    def _y(self, y: torch.Tensor, sl: slice) -> torch.Tensor:
        """Observations ``[T, N, E]`` of a block in the family's format (``[T_b, N]`` for scalars)."""
        yb = y[sl]
        return yb[..., 0] if self.scalar else yb

    def _out(self, v: torch.Tensor) -> torch.Tensor:
        """A per-point result ``[..., T_b, N]`` (scalar) or ``[..., T_b, N, E]`` -> ``[..., T_b, N, E]``."""
        return v.unsqueeze(-1) if self.scalar else v

    def _w(self, b: Block) -> torch.Tensor:
        """The block's weights, broadcastable to its per-point values ``[n_b, T_b, N(, E)]``."""
        return b.log_w.exp()[..., None] if self.scalar else b.log_w.exp()[..., None, None]

    # ------------------------------------------------------------------ moments and densities
    def _moment(self, which: str) -> torch.Tensor:
        def fn(b, d):
            w = self._w(b)
            mean = _mean(d).to(self._dtype)
            if which == "mean":
                return self._out((w * mean).sum(0))
            m = (w * mean).sum(0)  # the law of total variance around m (no E[y^2] - m^2 cancellation)
            return self._out((w * (_variance(d).to(self._dtype) + (mean - m) ** 2)).sum(0))
        return self._collect(fn)

    @property
    def mean(self) -> torch.Tensor:
        """Predictive mean ``[T, N, E]`` (expected count, probability of 1, expected class index)."""
        return self._moment("mean")

    @property
    def variance(self) -> torch.Tensor:
        """Predictive variance ``[T, N, E]`` (law of total variance)."""
        return self._moment("variance")

    def log_prob(self, y) -> torch.Tensor:
        """Log predictive density (pmf for discrete outcomes) of each point ``[T, N]`` (outputs summed).

        Raises:
            ValueError: a value outside the family's support at its point (a negative or fractional
                count, a label beyond the classes, successes above that point's trials): names the
                value, its task and point, and the support there.
        """
        y = self._check_y(y)

        def fn(b, d):
            yb = self._y(y, b.tasks)
            self._check_support(d.support, yb, b.tasks.start)
            lp = d.log_prob(yb).to(self._dtype)  # [n, T_b, N]
            return torch.logsumexp(lp + b.log_w[..., None], 0)
        return self._collect(fn)

    def _check_support(self, support, yb: torch.Tensor, first_task: int) -> None:
        """Raise on the first value of a block ``yb [T_b, N(, E)]`` outside ``support`` (one line, one value)."""
        pos = first_outside(support, yb, event_dims=0 if self.scalar else 1)
        if pos is None:
            return
        t, j = pos
        raise ValueError(f"log_prob: y = {format_value(yb[t, j])} at task {first_task + t}, point {j} is outside the "
                         f"support of the {self.family} predictive ({describe_support(support, (t, j))})")

    def cdf(self, y) -> torch.Tensor:
        """``P(Y <= y)`` of each output ``[T, N, E]`` (for discrete outcomes a step function)."""
        y = self._check_y(y)
        return self._collect(lambda b, d: self._out((self._w(b) * component_cdf(d, self._y(y, b.tasks)).to(
            self._dtype)).sum(0)))

    def pit(self, y, generator: torch.Generator | None = None) -> torch.Tensor:
        """PIT values ``[T, N, E]``: ``F(y)`` for continuous outcomes; for discrete ones the
        randomised PIT ``F(y - 1) + V (F(y) - F(y - 1))``, ``V ~ U(0, 1)``, uniform when calibrated."""
        y = self._check_y(y)
        upper = self.cdf(y)
        if not self.discrete:
            return upper
        lower = self.cdf(y - 1)
        v = torch.rand(upper.shape, generator=generator, dtype=upper.dtype, device=upper.device) if generator is None \
            else torch.rand(upper.shape, generator=generator, dtype=upper.dtype).to(upper.device)
        return lower + v * (upper - lower)

    @property
    def probs(self) -> torch.Tensor:
        """Class probabilities ``[T, N, C]`` (Bernoulli: ``C = 2``, ``[P(0), P(1)]``)."""
        if self.num_classes is None:
            raise AttributeError(f"probs: a {self.family} predictive has no class probabilities")

        def fn(b, d):
            w = b.log_w.exp()[..., None, None]
            p = d.probs.to(self._dtype)
            if self.family == "Bernoulli":
                p = torch.stack([1 - p, p], -1)
            return (w * p).sum(0)
        return self._collect(fn)

    # ------------------------------------------------------------------ quantiles and draws
    def quantile(self, q: float, iters: int = 50) -> torch.Tensor:
        """Marginal ``q``-quantile ``[T, N, E]``: the smallest ``y`` with ``F(y) >= q`` (an integer
        for discrete outcomes), by bracketing and bisection on the mixture CDF."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile level must be in (0, 1); got {q}")
        lo, hi = self._bracket(q)
        return bisect(self.cdf, lo, hi, q, iters, discrete=self.discrete)

    def _bracket(self, q: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``lo, hi [T, N, E]`` with ``F(lo) < q <= F(hi)``: mean -+ 4 sd, widened where needed (within the support)."""
        mean, sd = self.mean, self.std.clamp_min(1e-6)
        lb = _lower_bound(self.support)
        floor = None if lb is None else lb - (1.0 if self.discrete else 0.0)
        lo, hi = mean - 4 * sd, mean + 4 * sd
        if floor is not None:
            lo = lo.clamp_min(floor)
        if self.discrete:
            lo, hi = lo.floor(), hi.ceil()
        for _ in range(64):  # widen until F(lo) < q <= F(hi)
            below, above = self.cdf(lo) >= q, self.cdf(hi) < q
            if not (below.any() or above.any()):
                break
            width = (hi - lo).clamp_min(1.0)
            lo = torch.where(below, lo - width, lo)
            if floor is not None:
                lo = lo.clamp_min(floor)
            hi = torch.where(above, hi + width, hi)
        return lo, hi

    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``[num_samples, T, N, E]`` from the predictive (jointly over a task's points)."""
        def fn(b, d):
            idx = torch.multinomial(b.log_w.exp().T, num_samples, replacement=True, generator=generator).T  # [s, T_b]
            picked = torch.gather(b.params, 0, idx[..., None].expand(-1, -1, b.params.shape[-1]))
            return self._out(self._fn(picked, b.tasks).sample().to(self._dtype))  # [s, T_b, N, E]
        return self._collect(fn, dim=1)

    def nonfinite_tasks(self) -> torch.Tensor:
        """``[T]`` bool: tasks whose components have a NaN or infinite mean."""
        def fn(b, d):
            m = _mean(d)
            m = m if self.scalar else m.flatten(-2)
            return (~torch.isfinite(m)).flatten(2).any(-1).any(0) if m.dim() > 2 else (~torch.isfinite(m)).any(0)
        return self._collect(fn)


def _mean(d) -> torch.Tensor:
    if type(d).__name__ == "Categorical":  # the expected class index
        p = d.probs
        return (p * torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)).sum(-1)
    return d.mean


def _variance(d) -> torch.Tensor:
    if type(d).__name__ == "Categorical":
        p = d.probs
        k = torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)
        return (p * k**2).sum(-1) - _mean(d) ** 2
    return d.variance

