"""Argument checks every layer shares (layer 0: imports nothing of ours)."""

from __future__ import annotations

__all__ = ["check_ints"]


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
