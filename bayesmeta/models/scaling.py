"""A model's own scaling of its inputs and outputs: how a model is written to be indifferent to units.

The library never rescales data behind a model's back (DESIGN.md, principle 1): a model sees the
user's data in the user's units, and its learned parameters come back in those units. A model
that is *written* to be indifferent to units -- a neural decoder, a GLM whose coefficients are
optimised in preconditioned coordinates -- owns a :class:`DataScaling` as ``self.scaling`` and
applies it inside its own program. ``BayesLearner.fit`` fits an unfitted ``scaling`` once, from
the training pool's observed points, before the first step; after that it is part of the
model's state (saved, checkpointed, resumed) and is never refitted behind the user's back. A
model trained on a task family (an endless stream) keeps the identity: a family sets its own
scale.

The same class normalises what the amortized guide's encoder reads (its own inputs: that changes
no model).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DataScaling", "check_model_scaling", "model_scaling"]


def _wide(like: torch.Tensor) -> torch.dtype:
    return torch.float32 if like.device.type == "mps" else torch.float64  # MPS has no float64


class DataScaling(nn.Module):
    """Per-column affine maps ``u = (v - shift) / scale`` of inputs ``x`` and outputs ``y``.

    Fitted from observed points (:meth:`fit_`): each column's mean and standard deviation, in
    float64; a constant column keeps scale 1 (it is shifted, not divided by zero). Columns listed
    in ``keep_x`` (a number of trials, a log exposure: values a formula uses as they are) and,
    with ``outputs=False``, the outputs (counts, labels, binary outcomes) stay the identity. With
    ``center=False`` nothing is shifted (a model without an intercept cannot absorb a shift).

    The maps hold float64 buffers (saved in ``state_dict``); :meth:`x` and :meth:`y` compute in
    float64 and return the input's dtype.

    Args:
        x_dim, y_dim: numbers of input and output columns.
        outputs: rescale the outputs (only for real-valued outcomes).
        keep_x: input columns left as they are (negative indices allowed).
        center: shift columns by their mean (default) or only divide by their sd.

    Example:
        >>> s = DataScaling(1, 1)
        >>> _ = s.fit_(torch.tensor([[[0.0], [2.0]]]), torch.tensor([[[10.0], [30.0]]]))
        >>> s.y(torch.tensor([30.0])).item(), s.fitted
        (1.0, True)
    """

    def __init__(self, x_dim: int, y_dim: int, *, outputs: bool = True, keep_x: tuple[int, ...] = (),
                 center: bool = True) -> None:
        super().__init__()
        for name, v in (("x_dim", x_dim), ("y_dim", y_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DataScaling: {name} must be a positive int; got {v!r}")
        bad = [c for c in keep_x if not -x_dim <= c < x_dim]
        if bad:
            raise ValueError(f"DataScaling: keep_x columns {bad} are outside the {x_dim} input columns")
        self.outputs, self.center = bool(outputs), bool(center)
        self.keep_x = tuple(sorted({c % x_dim for c in keep_x}))
        f64 = torch.float64
        self.register_buffer("x_shift", torch.zeros(x_dim, dtype=f64))
        self.register_buffer("x_scale", torch.ones(x_dim, dtype=f64))
        self.register_buffer("y_shift", torch.zeros(y_dim, dtype=f64))
        self.register_buffer("y_scale", torch.ones(y_dim, dtype=f64))
        self.register_buffer("is_fitted", torch.tensor(False))

    x_shift: torch.Tensor
    x_scale: torch.Tensor
    y_shift: torch.Tensor
    y_scale: torch.Tensor
    is_fitted: torch.Tensor

    @property
    def fitted(self) -> bool:
        return bool(self.is_fitted)

    @torch.no_grad()
    def fit_(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> DataScaling:
        """Fit the maps to the observed points of ``x [T, N, D]``, ``y [T, N, E]`` (``mask [T, N]``); returns self.

        Raises:
            ValueError: no observed point, or a non-finite observed value (naming the column).
        """
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        m = mask.reshape(-1)
        if not bool(m.any()):
            raise ValueError("DataScaling.fit_: no observed point to fit the scaling to")
        wide = _wide(x)
        xs = x.reshape(-1, x.shape[-1])[m].to(wide)
        ys = y.reshape(-1, y.shape[-1])[m].to(wide)
        self._set("x", *self._moments(xs, "x"), keep=self.keep_x)
        if self.outputs:
            self._set("y", *self._moments(ys, "y"))
        self.is_fitted.fill_(True)
        return self

    def _moments(self, v: torch.Tensor, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        bad = (~torch.isfinite(v)).any(0)
        if bool(bad.any()):
            raise ValueError(f"DataScaling.fit_: {part} column {int(bad.nonzero()[0])} has non-finite values")
        mean = v.mean(0)
        sd = v.std(0, unbiased=False)
        sd = torch.where(sd > 1e-12 * (1 + mean.abs()), sd, torch.ones_like(sd))  # a constant column: scale 1
        return (mean if self.center else torch.zeros_like(mean)), sd

    def _set(self, part: str, shift: torch.Tensor, scale: torch.Tensor, keep: tuple[int, ...] = ()) -> None:
        shift, scale = shift.clone(), scale.clone()
        for c in keep:
            shift[c], scale[c] = 0.0, 1.0
        getattr(self, f"{part}_shift").copy_(shift)
        getattr(self, f"{part}_scale").copy_(scale)

    @torch.no_grad()
    def set_(self, x_shift, x_scale, y_shift=None, y_scale=None) -> DataScaling:
        """Set the maps by value (sequences or tensors); checks they are finite with positive scales."""
        parts = [("x", x_shift, x_scale)] + ([] if y_shift is None else [("y", y_shift, y_scale)])
        for part, shift, scale in parts:
            shift = torch.as_tensor(shift, dtype=torch.float64)
            scale = torch.as_tensor(scale, dtype=torch.float64)
            want = getattr(self, f"{part}_shift").shape
            if shift.shape != want or scale.shape != want:
                raise ValueError(f"DataScaling.set_: {part} maps must have shape {tuple(want)}; got "
                                 f"{tuple(shift.shape)} and {tuple(scale.shape)}")
            if not (bool(torch.isfinite(shift).all()) and bool(torch.isfinite(scale).all()) and bool((scale > 0).all())):
                raise ValueError(f"DataScaling.set_: {part} shift must be finite and scale finite and > 0")
            getattr(self, f"{part}_shift").copy_(shift)
            getattr(self, f"{part}_scale").copy_(scale)
        self.is_fitted.fill_(True)
        return self

    def is_identity(self) -> bool:
        return all(bool((getattr(self, f"{p}_shift") == 0).all()) and bool((getattr(self, f"{p}_scale") == 1).all())
                   for p in ("x", "y"))

    # ------------------------------------------------------------------ applying the maps
    def x(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - x_shift) / x_scale`` per column, computed in float64, in ``x``'s dtype."""
        return _affine(x, self.x_shift, self.x_scale)

    def y(self, y: torch.Tensor) -> torch.Tensor:
        """``(y - y_shift) / y_scale`` per column, computed in float64, in ``y``'s dtype."""
        return _affine(y, self.y_shift, self.y_scale)

    def y_loc(self, u: torch.Tensor) -> torch.Tensor:
        """A location on the scaled outputs -> the user's units: ``y_shift + y_scale * u``."""
        return self.y_shift.to(u) + self.y_scale.to(u) * u

    def y_spread(self, s: torch.Tensor) -> torch.Tensor:
        """A scale on the scaled outputs -> the user's units: ``y_scale * s``."""
        return self.y_scale.to(s) * s

    def extra_repr(self) -> str:
        if not self.fitted:
            return "unfitted (identity)"
        fmt = lambda t: "[" + ", ".join(f"{v:.4g}" for v in t.tolist()) + "]"  # noqa: E731
        return (f"x_shift={fmt(self.x_shift)}, x_scale={fmt(self.x_scale)}, y_shift={fmt(self.y_shift)}, "
                f"y_scale={fmt(self.y_scale)}")


def _affine(v: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    wide = _wide(v)
    return ((v.to(wide) - shift.to(device=v.device, dtype=wide)) / scale.to(device=v.device, dtype=wide)).to(v.dtype)



def model_scaling(model: nn.Module) -> DataScaling | None:
    """The model's own :class:`DataScaling` (its ``scaling`` attribute), or ``None`` for a model that
    sees the data exactly as given."""
    scaling = getattr(model, "scaling", None)
    return scaling if isinstance(scaling, DataScaling) else None


def check_model_scaling(model: nn.Module, program) -> None:
    """Refuse a model whose declared scaling cannot be right for its program.

    Raises:
        ValueError: the scaling rescales outputs that are not real-valued (counts, labels, binary
            outcomes: a shift or a division would put them outside their support), or its column
            numbers do not match the program's ``x_dim`` / ``y_dim``.
    """
    scaling = model_scaling(model)
    if scaling is None:
        return
    name = type(model).__name__
    if scaling.outputs and not program.observation.real:
        raise ValueError(f"{name}.scaling rescales the outputs, but the observation site {program.observation.name!r} "
                         f"is not real-valued ({program.observation.family}); build it with "
                         "DataScaling(..., outputs=False): counts, labels and binary outcomes are modelled as they are")
    if (scaling.x_shift.numel(), scaling.y_shift.numel()) != (program.x_dim, program.y_dim):
        raise ValueError(f"{name}.scaling has {scaling.x_shift.numel()} input and {scaling.y_shift.numel()} output "
                         f"columns; the model has x_dim={program.x_dim}, y_dim={program.y_dim}")
