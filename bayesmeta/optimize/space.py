"""Search spaces of a decision: a continuous :class:`Box` or a finite set of :class:`Candidates`.

Both check the observations made so far against themselves (dimension, finite values, inside the
box) with errors that name the argument, and produce the candidate points an acquisition is
maximised over (a scrambled Sobol set for a box, the points themselves for a finite set).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Box", "Candidates", "as_space", "check_observations"]


def _as_float(value, name: str) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers; got dtype {t.dtype}")
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class Box:
    """The box ``low <= x <= high`` (per coordinate), ``D`` dimensions.

    Args:
        low: ``[D]`` lower corner (a number for ``D = 1``).
        high: ``[D]`` upper corner, ``> low`` in every coordinate.

    Raises:
        ValueError: shapes that differ, non-finite corners, or ``high <= low`` somewhere.

    Example:
        >>> Box(-5.0, 5.0).dim, Box([0, 0], [1, 2]).high.tolist()
        (1, [1.0, 2.0])
    """

    def __init__(self, low: torch.Tensor | float | Sequence[float], high: torch.Tensor | float | Sequence[float]) -> None:
        lo, hi = _as_float(low, "low").reshape(-1), _as_float(high, "high").reshape(-1)
        if lo.shape != hi.shape or lo.numel() == 0:
            raise ValueError(f"Box: low and high must have the same shape [D] (D >= 1); got {tuple(lo.shape)} "
                             f"and {tuple(hi.shape)}")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError(f"Box: corners must be finite; got low={lo.tolist()}, high={hi.tolist()}")
        if not (hi > lo).all():
            bad = int((hi <= lo).nonzero()[0])
            raise ValueError(f"Box: high must be > low in every coordinate; coordinate {bad} has low={float(lo[bad])}, "
                             f"high={float(hi[bad])}")
        self.low, self.high = lo, hi

    def __repr__(self) -> str:
        return f"Box(low={self.low.tolist()}, high={self.high.tolist()})"

    @property
    def dim(self) -> int:
        return self.low.shape[0]

    def to(self, like: torch.Tensor) -> Box:
        """The same box with ``like``'s dtype and device."""
        return Box(self.low.to(like), self.high.to(like))

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Points of the unit cube ``u [..., D]`` mapped into the box."""
        low, high = self.low.to(u), self.high.to(u)
        return low + (high - low) * u

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.low.to(x), self.high.to(x)
        return (x - low) / (high - low)

    def sobol(self, n: int, *, seed: int) -> torch.Tensor:
        """``n`` scrambled Sobol points in the box ``[n, D]`` (reproducible from ``seed``)."""
        engine = torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=seed)
        return self.from_unit(engine.draw(n, dtype=torch.float64).to(self.low.dtype))

    def uniform(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform points ``[*shape, D]`` in the box."""
        u = torch.rand(*shape, self.dim, generator=generator, dtype=self.low.dtype)
        return self.from_unit(u)


class Candidates:
    """A finite search space: ``points [N, D]`` shared by every task, or ``[T, N, D]`` per task (``[N]``: ``D = 1``).

    Raises:
        ValueError: no points, a wrong shape or non-finite values.

    Example:
        >>> Candidates(torch.eye(3)).dim
        3
    """

    def __init__(self, points: torch.Tensor | Sequence) -> None:
        p = _as_float(points, "candidates")
        if p.dim() == 1:
            p = p[:, None]  # [N] -> [N, 1]
        if p.dim() not in (2, 3):
            raise ValueError(f"candidates must have shape [N, D] (or [T, N, D] per task); got {tuple(p.shape)}")
        if p.shape[-2] == 0 or p.shape[-1] == 0:
            raise ValueError(f"candidates: the candidate set is empty (shape {tuple(p.shape)}); give at least one point")
        if not torch.isfinite(p).all():
            raise ValueError("candidates: non-finite values (NaN or inf) in the candidate points")
        self.points = p

    def __repr__(self) -> str:
        return f"Candidates({tuple(self.points.shape)})"

    @property
    def dim(self) -> int:
        return self.points.shape[-1]

    def for_tasks(self, num_tasks: int, like: torch.Tensor) -> torch.Tensor:
        """The candidates of every task ``[T, N, D]`` with ``like``'s dtype and device."""
        p = self.points.to(like)
        if p.dim() == 2:
            return p.expand(num_tasks, *p.shape)
        if p.shape[0] != num_tasks:
            raise ValueError(f"candidates: per-task candidates for {p.shape[0]} tasks; the observations have {num_tasks}")
        return p


def as_space(space) -> Box | Candidates:
    """A :class:`Box` or :class:`Candidates` as it is; an array ``[N, D]`` (or ``[N]``) is a candidate set."""
    if isinstance(space, Box | Candidates):
        return space
    if space is None:
        raise ValueError("space: give a Box(low, high) or a candidate set [N, D]; got None")
    return Candidates(space)


def check_observations(x, y, mask, space: Box | Candidates, *, x_dim: int | None,
                       prefix: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Observations of ``T`` tasks so far, checked: ``x [T, S, D]``, ``y [T, S]`` or ``[T, S, E]``, ``mask [T, S]``.

    Returns ``x``, ``y [T, S, E]`` and ``mask`` (``bool``; padding zero-filled).

    Raises:
        ValueError: a dimension that differs from the space's or the model's (``x_dim``), NaN or
            infinite observed values, or observed points outside a box (each names the argument,
            the task and the point).
    """
    x, y = _as_float(x, f"{prefix}x_observed"), _as_float(y, f"{prefix}y_observed")
    if x.dim() != 3:
        raise ValueError(f"{prefix}x_observed must have shape [tasks, points, D]; got {tuple(x.shape)}")
    y = y.to(x.dtype)
    if y.dim() == 2:
        y = y[..., None]
    if y.dim() != 3 or y.shape[:2] != x.shape[:2]:
        raise ValueError(f"{prefix}y_observed must have shape [tasks, points] or [tasks, points, E] matching "
                         f"x_observed {tuple(x.shape[:2])}; got {tuple(y.shape)}")
    mask = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
    mask = mask.to(x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"{prefix}mask must have shape {tuple(x.shape[:2])}; got {tuple(mask.shape)}")
    if x.shape[-1] != space.dim:
        raise ValueError(f"{prefix}x_observed has {x.shape[-1]} input dimension(s) but the search space has {space.dim}")
    if x_dim is not None and space.dim != x_dim:
        raise ValueError(f"space: the search space has {space.dim} dimension(s) but the model's inputs have {x_dim}")
    for name, v in (("x_observed", x), ("y_observed", y)):
        bad = mask & ~torch.isfinite(v).all(-1)
        if bad.any():
            t, j = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{prefix}{name}: non-finite value {v[t, j].tolist()} at task {t}, point {j} "
                             "(NaN or inf observations cannot be used; drop or re-measure them)")
    if isinstance(space, Box):
        low, high = space.low.to(x), space.high.to(x)
        eps = 1e-6 * (high - low)
        bad = mask & ((x < low - eps) | (x > high + eps)).any(-1)
        if bad.any():
            t, j = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{prefix}x_observed: point {x[t, j].tolist()} at task {t}, point {j} is outside the box "
                             f"[{low.tolist()}, {high.tolist()}]")
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(mask[..., None], x, zero), torch.where(mask[..., None], y, zero), mask
