"""Hold modules' parameters fixed for a block of code (NUTS under the learned prior, local refinement)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["frozen"]


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module | None) -> Iterator[None]:
    """No gradient for the parameters of ``modules`` inside the block; their flags are restored after.

    ``None`` and objects that are not ``torch.nn.Module`` s are skipped (a plain Pyro program has
    no parameters to freeze); a parameter shared by several modules is handled once.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> with frozen(net):
        ...     net.weight.requires_grad
        False
        >>> net.weight.requires_grad
        True
    """
    params = {id(p): p for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters()}
    flags = [(p, p.requires_grad) for p in params.values()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
