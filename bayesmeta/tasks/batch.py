"""``TaskBatch``: many small regression tasks padded to a common size, with masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .._checks import check_ints

__all__ = ["TaskBatch", "as_float_tensor", "check_query_1d", "check_support", "pad_ragged", "zero_padding"]

_FIELDS = ("x_support", "y_support", "mask_support", "x_query", "y_query", "mask_query")


def as_float_tensor(value, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert array-like input to a float tensor, naming ``name`` in the error."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real-valued; got dtype {value.dtype}")
        return value if value.is_floating_point() else value.to(dtype)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numeric array-like; got {type(value).__name__}") from err


def pad_ragged(tensors: Sequence[torch.Tensor], *, min_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged ``[n_i, F]`` tensors into ``[T, N, F]`` (zero-padded) and a mask ``[T, N]``.

    ``N = max(n_i, min_size)``; an empty ``[0, F]`` tensor is a task without points. The result
    has the first tensor's dtype and device (the others are converted); ``mask`` is true at
    observed positions.

    Example:
        >>> v, m = pad_ragged([torch.ones(2, 1), torch.ones(0, 1)])
        >>> v.shape, m.tolist()
        (torch.Size([2, 2, 1]), [[True, True], [False, False]])
    """
    if len(tensors) == 0:
        raise ValueError("pad_ragged: no tensors (need at least one task)")
    first = tensors[0]
    tensors = [t.to(dtype=first.dtype, device=first.device) for t in tensors]
    out = pad_sequence(tensors, batch_first=True)  # [T, max n_i, F]
    if out.shape[1] < min_size:
        out = torch.cat([out, out.new_zeros(out.shape[0], min_size - out.shape[1], *out.shape[2:])], 1)
    lengths = torch.tensor([t.shape[0] for t in tensors], device=first.device)  # [T]
    mask = torch.arange(out.shape[1], device=first.device) < lengths[:, None]  # [T, N]
    return out, mask


def _pad(arrays: Sequence, name: str, dim_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ragged ``[n_i, F]`` (or ``[n_i]``) arrays and pad them into ``[T, max n_i, F]`` plus a mask."""
    if len(arrays) == 0:
        raise ValueError(f"{name} is empty: need at least one task")
    tensors = []
    for i, a in enumerate(arrays):
        t = as_float_tensor(a, f"{name}[{i}]")
        if t.dim() == 1:
            t = t.unsqueeze(-1)  # [n] -> [n, 1]
        if t.dim() != 2:
            raise ValueError(
                f"{name}[{i}] must have shape [n] or [n, {dim_name}]; got {tuple(t.shape)}"
            )
        tensors.append(t)
    widths = {t.shape[1] for t in tensors}
    if len(widths) != 1:
        raise ValueError(f"{name}: tasks disagree on {dim_name}: {sorted(widths)}")
    return pad_ragged(tensors)


def zero_padding(v, mask):
    """``v [T, S, F]`` with masked-out positions (``mask [T, S]`` false) set to zero.

    Padding values are never used, but a NaN there would still poison masked log-densities
    (``0 * nan``): they are zero-filled wherever a batch is built or validated. Inputs of another
    shape, type or device are returned unchanged (validation reports them).
    """
    ok = (isinstance(v, torch.Tensor) and isinstance(mask, torch.Tensor) and v.dim() == 3
          and mask.shape == v.shape[:2] and mask.device == v.device)
    if not ok:
        return v
    return v.masked_fill(~mask.bool()[..., None], 0)  # [T, S, F]


def check_support(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    x_dim: int | None = None,
    y_dim: int | None = None,
    min_points: int = 0,
    prefix: str = "",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and normalise one padded set: returns ``x [T,S,D]``, ``y [T,S,E]``, ``mask [T,S]``.

    Observed values must be finite; masked-out (padding) values are ignored and come back as zeros.

    Raises:
        ValueError: wrong shapes, non-finite observed values, too few points in a task.
        TypeError: non-numeric input.
    """
    x = as_float_tensor(x, f"{prefix}x")
    y = as_float_tensor(y, f"{prefix}y", dtype=x.dtype)
    if x.dim() == 2 and x_dim == 1:
        x = x.unsqueeze(-1)
    if x.dim() != 3:
        raise ValueError(f"{prefix}x must have shape [tasks, points, x_dim]; got {tuple(x.shape)}")
    if y.dim() == 2:
        y = y.unsqueeze(-1)  # [T, S] -> [T, S, 1]
    if y.dim() != 3 or y.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"{prefix}y must have shape [tasks, points, y_dim] matching {prefix}x "
            f"{tuple(x.shape[:2])}; got {tuple(y.shape)}"
        )
    if x_dim is not None and x.shape[-1] != x_dim:
        raise ValueError(f"{prefix}x has x_dim={x.shape[-1]} but the model expects x_dim={x_dim}")
    if y_dim is not None and y.shape[-1] != y_dim:
        raise ValueError(f"{prefix}y has y_dim={y.shape[-1]} but the model expects y_dim={y_dim}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    mask = torch.as_tensor(mask, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"{prefix}mask must have shape {tuple(x.shape[:2])}; got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not torch.isin(mask, torch.tensor([0, 1], device=mask.device)).all():
            raise ValueError(f"{prefix}mask must be boolean (or 0/1)")
        mask = mask.bool()
    for name, v in (("x", x), ("y", y)):
        bad = ~torch.isfinite(v).all(-1) & mask  # [T, S]
        if bad.any():
            task, point = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{prefix}{name} has a non-finite value in task {task}, point {point}")
    x, y = zero_padding(x, mask), zero_padding(y, mask)
    counts = mask.sum(-1)
    if (counts < min_points).any():
        task = int((counts < min_points).nonzero()[0, 0])
        raise ValueError(
            f"task {task} has {int(counts[task])} observed {prefix}points; "
            f"this method needs at least {min_points}"
        )
    return x, y, mask


@dataclass
class TaskBatch:
    """``T`` tasks (regression, counts or classes) padded to common sizes ``S`` (support) and ``Q`` (query).

    Fields are ``x_support [T,S,D]``, ``y_support [T,S,E]``, ``mask_support [T,S]`` (bool) and the
    same for the query set (optional). ``params`` holds per-task generating parameters when known
    (synthetic families), each ``[T, ...]``. Values at masked-out (padding) positions are set to
    zero on construction and by :meth:`validate`, so a NaN there can never reach a model.

    Example:
        >>> b = TaskBatch.from_arrays(x_support=[[0.0, 1.0], [2.0]], y_support=[[1.0, 2.0], [3.0]])
        >>> b.x_support.shape, b.mask_support.sum(-1).tolist()
        (torch.Size([2, 2, 1]), [2, 1])
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    mask_support: torch.Tensor
    x_query: torch.Tensor | None = None
    y_query: torch.Tensor | None = None
    mask_query: torch.Tensor | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._zero_padding()

    def _zero_padding(self) -> None:
        self.x_support = zero_padding(self.x_support, self.mask_support)
        self.y_support = zero_padding(self.y_support, self.mask_support)
        if self.mask_query is not None:
            self.x_query = zero_padding(self.x_query, self.mask_query)
            self.y_query = zero_padding(self.y_query, self.mask_query)

    @classmethod
    def from_arrays(cls, x_support, y_support, x_query=None, y_query=None) -> TaskBatch:
        """Build from ragged per-task arrays (lists of ``[n_i, D]`` / ``[n_i]`` arrays)."""
        if len(x_support) != len(y_support):
            raise ValueError(
                f"x_support has {len(x_support)} tasks but y_support has {len(y_support)}"
            )
        for i, (a, b) in enumerate(zip(x_support, y_support, strict=True)):
            if len(a) != len(b):
                raise ValueError(f"task {i}: x_support has {len(a)} points, y_support {len(b)}")
        xs, ms = _pad(x_support, "x_support", "x_dim")
        ys, _ = _pad(y_support, "y_support", "y_dim")
        xq = yq = mq = None
        if x_query is not None or y_query is not None:
            if x_query is None or y_query is None or len(x_query) != len(x_support):
                raise ValueError("x_query and y_query must both be given, one entry per task")
            xq, mq = _pad(x_query, "x_query", "x_dim")
            yq, _ = _pad(y_query, "y_query", "y_dim")
        return cls(xs, ys, ms, xq, yq, mq).validate()

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.x_support.shape[0]

    @property
    def num_tasks(self) -> int:
        return len(self)

    @property
    def x_dim(self) -> int:
        return self.x_support.shape[-1]

    @property
    def y_dim(self) -> int:
        return self.y_support.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.x_support.device

    @property
    def labels(self) -> torch.Tensor:
        """Support labels of a classification batch as ``long [T, S]`` (``y_support`` holds them as whole-number floats)."""
        if self.y_support.shape[-1] != 1:
            raise ValueError(f"labels: a classification batch has one label per point; y_support is "
                             f"{tuple(self.y_support.shape)}")
        return self.y_support[..., 0].round().long()

    @property
    def has_query(self) -> bool:
        return self.x_query is not None

    @property
    def support(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x_support, self.y_support, self.mask_support

    @property
    def query(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, mask = self.x_query, self.y_query, self.mask_query
        if x is None:
            raise ValueError("this TaskBatch has no query set")
        if y is None or mask is None:
            missing = [f for f, v in (("y_query", y), ("mask_query", mask)) if v is None]
            raise ValueError(f"this TaskBatch has x_query but no {' or '.join(missing)}")
        return x, y, mask

    def all_points(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support and query concatenated per task (padding stays masked)."""
        if not self.has_query:
            return self.support
        xq, yq, mq = self.query
        x = torch.cat([self.x_support, xq], 1)  # [T, S+Q, D]
        y = torch.cat([self.y_support, yq], 1)  # [T, S+Q, E]
        return x, y, torch.cat([self.mask_support, mq], 1)

    def _map(self, fn) -> TaskBatch:
        # Any: the optional query fields stay None.
        kwargs: dict[str, Any] = {f: (None if getattr(self, f) is None else fn(getattr(self, f))) for f in _FIELDS}
        return replace(self, **kwargs, params={k: fn(v) for k, v in self.params.items()})

    def to(self, device: torch.device | str) -> TaskBatch:
        """Move every tensor to ``device``."""
        return self._map(lambda t: t.to(device))

    def __getitem__(self, idx) -> TaskBatch:
        """Select tasks by integer, slice, index tensor or boolean mask (keeps the task dim)."""
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, torch.Tensor) and idx.device != self.device:
            idx = idx.to(self.device)
        return self._map(lambda t: t[idx])

    def first_shots(self, k: int) -> tuple[TaskBatch, torch.Tensor]:
        """The first ``k`` observed support points of every task that has at least ``k``.

        Returns the K-shot batch (support width ``k``, all observed; query unchanged) and the
        indices ``[T']`` of the tasks kept, so callers can report the ones left out.
        """
        check_ints(shots=(k, 0))
        keep = (self.mask_support.sum(-1) >= k).nonzero()[:, 0]  # [T']
        b = self[keep]
        order = torch.sort((~b.mask_support).to(torch.int8), dim=1, stable=True).indices[:, :k]  # observed first
        gather = lambda t: torch.gather(t, 1, order[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        return replace(b, x_support=gather(b.x_support), y_support=gather(b.y_support),
                       mask_support=torch.ones_like(order, dtype=torch.bool)), keep

    def validate(self, *, min_support: int = 0, min_query: int = 0) -> TaskBatch:
        """Check shapes, dtypes and finiteness; errors name the field and the task.

        Observed values must be finite; padding is (again) zero-filled, in case it was written to
        after construction. Returns ``self``.
        """
        check_support(*self.support, min_points=min_support, prefix="support ")
        if self.has_query:
            xq, yq, mq = self.query
            if xq.shape[0] != len(self):
                raise ValueError(
                    f"query set has {xq.shape[0]} tasks, support set {len(self)}"
                )
            check_support(
                xq, yq, mq, x_dim=self.x_dim, y_dim=self.y_dim, min_points=min_query,
                prefix="query ",
            )
        self._zero_padding()
        return self

    def __repr__(self) -> str:
        q = f", Q={self.x_query.shape[1]}" if self.x_query is not None else ""
        return (
            f"TaskBatch(T={len(self)}, S={self.x_support.shape[1]}{q}, D={self.x_dim}, "
            f"E={self.y_dim}, device={self.device})"
        )


def check_query_1d(x_query, num_tasks: int) -> tuple[torch.Tensor, torch.dtype]:
    """One-input query points of an oracle: ``[T, N]`` or ``[T, N, 1]`` -> ``[T, N, 1]``, and the
    dtype of the results (``x_query``'s if floating, else float32)."""
    xq = torch.as_tensor(x_query)
    if xq.dim() == 2:
        xq = xq.unsqueeze(-1)
    if xq.dim() != 3 or xq.shape[0] != num_tasks or xq.shape[-1] != 1:
        raise ValueError(f"x_query must have shape [{num_tasks}, N, 1]; got {tuple(xq.shape)}")
    return xq, xq.dtype if xq.is_floating_point() else torch.float32
