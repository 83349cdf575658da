"""Permutation-invariant, masked set encoder (DeepSets)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.nn import MLP

__all__ = ["SetEncoder"]


class SetEncoder(nn.Module):
    """``r = rho(mean_j phi([x_j, y_j]), log(1 + n))`` over the observed points of each task.

    Padding (``mask == False``) is ignored, so the output does not depend on the padding or
    on the order of the points, and a task with no observed points gets the embedding of the
    empty set (:meth:`empty`). The point count enters explicitly: a posterior narrows with
    the number of points, which a plain mean cannot see.

    Args:
        x_dim, y_dim: input and output dimensions of the points.
        hidden: hidden widths of ``phi`` and ``rho``.
        embed_dim: size of the output embedding ``r``.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: Sequence[int] = (128, 128),
                 embed_dim: int = 128) -> None:
        super().__init__()
        self.phi = MLP(x_dim + y_dim, hidden, hidden[-1] if hidden else embed_dim)
        width = hidden[-1] if hidden else embed_dim
        self.rho = MLP(width + 1, hidden, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [T, S, D]``, ``y [T, S, E]``, ``mask [T, S]`` -> ``r [T, R]``."""
        m = mask.to(x.dtype)[..., None]  # [T, S, 1]
        h = self.phi(torch.cat([x, y], -1)) * m  # [T, S, H]
        n = m.sum(-2)  # [T, 1]
        pooled = h.sum(-2) / n.clamp_min(1.0)  # [T, H]; zero for an empty set
        return self.rho(torch.cat([pooled, torch.log1p(n)], -1))

    def empty(self, like: torch.Tensor) -> torch.Tensor:
        """Embedding of the empty set ``[R]`` (what a task with no points gets)."""
        return self.rho(like.new_zeros(self.rho.in_dim))
