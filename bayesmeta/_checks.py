"""Argument checks every layer shares (layer 0: imports nothing of ours)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import torch

__all__ = ["check_ints", "check_query", "user_stacklevel"]

_PACKAGE = str(Path(__file__).resolve().parent)


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that points at the first frame outside bayesmeta.

    For warnings raised deep inside the library (e.g. during training), so that the message
    names the user's line (their ``fit`` call), whatever the path through the library.
    """
    frame: FrameType | None = sys._getframe(1)  # the caller of this function: the one calling warnings.warn
    level = 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def check_ints(**bounds: tuple[object, int]) -> None:
    """Each keyword ``name=(value, low)`` must be an int ``>= low`` (not a bool); the error names it.

    Example:
        >>> check_ints(num_tasks=(10, 1), shots=(0, 0))
        >>> check_ints(chunk=(0, 1))
        Traceback (most recent call last):
        ...
        ValueError: chunk must be an int >= 1; got 0
    """
    for name, (value, low) in bounds.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")


def check_query(x, num_tasks: int, x_dim: int, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Query inputs of ``num_tasks`` adapted tasks as a ``[T, N, D]`` tensor of ``dtype`` on ``device``.

    The one check of ``predict(x)``'s input for every adapted type (Bayesian posteriors, the
    gradient-based baselines, few-shot classifiers).

    Args:
        x: ``[T, N, D]`` inputs, or ``[N, D]``: the same points for every task.
        num_tasks: ``T``; x_dim: ``D``.
        dtype, device: of the result (the model's: float64 inputs of a float32 model are cast).

    Raises:
        ValueError: another shape, no query points, or a non-finite value (naming its task and point).

    Example:
        >>> check_query(torch.zeros(5, 1), 2, 1, dtype=torch.float32, device="cpu").shape
        torch.Size([2, 5, 1])
    """
    x = torch.as_tensor(x, dtype=dtype, device=device)
    if x.dim() == 2:
        x = x.expand(num_tasks, *x.shape)  # same points for every task
    if x.dim() != 3 or x.shape[0] != num_tasks or x.shape[-1] != x_dim:
        raise ValueError(f"x must have shape [{num_tasks}, N, {x_dim}] or [N, {x_dim}]; got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"x: no query points (shape {tuple(x.shape)}); give at least one point to predict at")
    bad = ~torch.isfinite(x).all(-1)  # [T, N]
    if bad.any():
        t, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"x: non-finite value at task {t}, point {j}")
    return x
