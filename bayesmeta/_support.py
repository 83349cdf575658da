"""Supports of distributions in words, and the first value outside one (layer 0: imports nothing of ours).

Error messages name one value and its position, never a whole tensor: a support whose bounds are
tensors (a Binomial's ``IntegerInterval(0, total_count)``) is described at the bad position only
(``"an integer in [0, 7]"``), where torch's ``repr`` would print every bound.
"""

from __future__ import annotations

import math
import re

import torch
from torch.distributions import constraints

__all__ = ["describe_support", "first_outside", "format_value", "short_error", "value_at"]


def format_value(v) -> str:
    """A number as a user wrote it: ``7`` for a whole float, ``7.5``, ``1e+30``; a list for a vector."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, list | tuple):  # one outcome's vector: at most 8 entries shown
        return "[" + ", ".join([format_value(e) for e in v[:8]] + (["..."] if len(v) > 8 else [])) + "]"
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def value_at(bound, index: tuple[int, ...]):
    """``bound`` (a number, or a tensor that broadcasts to a shape ending in ``index``'s) at ``index``: its trailing
    dims are indexed (a size-1 dim broadcasts), its extra leading dims (draws) give their first entry."""
    if not isinstance(bound, torch.Tensor):
        return bound
    b = bound.detach()
    while b.dim() > len(index):
        b = b[0]
    pos = index[len(index) - b.dim():] if b.dim() else ()
    for i in pos:
        b = b[min(i, b.shape[0] - 1)]
    return b.item()


def describe_support(support, index: tuple[int, ...] = ()) -> str:
    """``support`` in words, its tensor bounds taken at ``index`` (e.g. ``(task, point)``).

    Example:
        >>> describe_support(constraints.integer_interval(0, torch.tensor([[3., 7.]])), (0, 1))
        'an integer in [0, 7]'
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    lo = format_value(value_at(getattr(support, "lower_bound", None), index))
    hi = format_value(value_at(getattr(support, "upper_bound", None), index))
    kinds = [
        (constraints._Boolean, "0 or 1"),
        (constraints._IntegerInterval, f"an integer in [{lo}, {hi}]"),
        (constraints._IntegerGreaterThan, f"an integer >= {lo}"),
        (constraints._IntegerLessThan, f"an integer <= {hi}"),
        (constraints._GreaterThanEq, f"a number >= {lo}"),
        (constraints._GreaterThan, f"a number > {lo}"),
        (constraints._LessThan, f"a number < {hi}"),
        (constraints._HalfOpenInterval, f"a number in [{lo}, {hi})"),
        (constraints._Interval, f"a number in [{lo}, {hi}]"),
        (constraints._Simplex, "a probability vector (entries >= 0 that sum to 1)"),
        (constraints._Real, "a real number"),
    ]
    for kind, words in kinds:
        if isinstance(support, kind):
            return words
    return type(support).__name__.lstrip("_")


def first_outside(support, value: torch.Tensor, mask: torch.Tensor | None = None, *, event_dims: int = 0,
                  for_all: bool = False, finite: bool = False) -> tuple[int, ...] | None:
    """The index of the first value outside ``support``, or ``None``: over ``mask``'s dims when a mask is given
    (``(task, point)``), else over ``value``'s batch dims.

    Args:
        support: a ``torch.distributions`` constraint (its bounds may be tensors that broadcast with
            ``value``, with extra leading dims such as posterior draws).
        value: ``[..., T, N, *event]``.
        mask: ``[T, N]`` bool: only these positions are checked (default: all).
        event_dims: trailing dims of ``value`` that form one outcome (a vector is outside when
            any of its entries is).
        for_all: extra leading dims (draws): a position counts as outside only when it is outside for
            every one of them (default: for any).
        finite: non-finite values count as outside too.
    """
    with torch.no_grad():
        ok = support.check(value)
        if finite and value.is_floating_point():
            fin = torch.isfinite(value)
            for _ in range(support.event_dim):
                fin = fin.all(-1)
            ok = ok & fin
        for _ in range(max(0, event_dims - support.event_dim)):
            ok = ok.all(-1)  # an elementwise support over the outcome's event dims
        batch = value.dim() - event_dims if mask is None else mask.dim()
        while ok.dim() > batch:
            ok = ok.any(0) if for_all else ok.all(0)  # extra leading dims (draws)
        bad = ~ok.expand(value.shape[:batch]) if mask is None else ~ok & mask.to(ok.device)
        if not bool(bad.any()):
            return None
        return tuple(int(i) for i in bad.nonzero()[0])


def short_error(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line: cut at its first line break (torch's messages end with
    the whole tensor), a distribution's ``repr`` reduced to its name, at most ``limit`` characters."""
    text = str(err).strip().split("\n", 1)[0].rstrip(":")
    text = re.sub(r" of distribution (\w+)\(.*?\) to satisfy", r" of distribution \1 to satisfy", text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
