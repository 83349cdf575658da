"""Argument checks every layer shares (layer 0: imports nothing of ours)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

__all__ = ["check_ints", "user_stacklevel"]

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
