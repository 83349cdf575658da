"""Data checked against a model's program before anything is trained or predicted.

* :func:`check_observed`: every observed ``y`` lies in the support of the observation *at its own
  point* (a Binomial's ``0..trials`` of that row), the observation's parameters computed from ``x``
  are valid there (a number of trials is a whole number >= 0), and a count is a whole number the
  model's dtype holds exactly (float32: up to 2^24).
* :func:`check_magnitude`: no observed value is so large that its square overflows the model's dtype.
* :func:`check_batch`: both on every part of a :class:`~bayesmeta.TaskBatch`.

Errors are one line naming the value and its position -- ``where(task, point)``, by default
``"task 3, point 0"``; the command line passes its own (a group and a CSV row) -- never a whole
tensor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pyro
import torch

from ..._support import describe_support, first_outside, format_value, short_error
from .sites import unwrap

__all__ = ["check_batch", "check_magnitude", "check_observed"]

Where = Callable[[int, int], str]
_HINTS = {"total_count": "(a number of trials is a whole number >= 0; a model that rescales its inputs must leave that "
                          "column raw: DataScaling(keep_x=...))",
          "": "(a log of a value <= 0, an exp that overflows: is it in the units the model expects?)"}
_CHUNK_POINTS = 1 << 16  # draws x points of one chunk of tasks: memory stays bounded for any pool


def _where(t: int, j: int) -> str:
    return f"task {t}, point {j}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_magnitude(v: torch.Tensor, mask: torch.Tensor, *, what: str, dtype: torch.dtype,
                    where: Where | None = None) -> None:
    """Refuse an observed value of ``v [T, N, F]`` beyond ``sqrt(finfo(dtype).max)`` (~1.8e19 in float32):
    its square overflows, and a model's densities and the encoder's statistics become NaN."""
    if v.numel() == 0 or not dtype.is_floating_point:
        return
    bound = math.sqrt(torch.finfo(dtype).max)
    big = (v.abs() > bound) & mask[..., None]  # [T, N, F]; NaN never gets here (checked as non-finite before)
    if bool(big.any()):
        t, j, c = (int(i) for i in big.nonzero()[0])
        column = f" (column {c})" if v.shape[-1] > 1 else ""
        name = _dtype_name(dtype)
        raise ValueError(f"{what}: {(where or _where)(t, j)}: value {float(v[t, j, c]):g}{column} is beyond "
                         f"±{bound:.2g}, where its square overflows {name} (the model computes in {name}): "
                         "is it a typo or a missing-value code? Otherwise rescale the column")


def check_observed(program, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, what: str = "y",
                   where: Where | None = None, y_name: str = "value") -> None:
    """Raise when an observed ``y [T, N, E]`` is outside the observation's support at its point, or the
    observation's parameters at ``x [T, N, D]`` are invalid (see the module doc), in chunks of tasks."""
    where = where or _where
    if y.numel() == 0 or not bool(mask.any()):
        return
    per = max(1, _CHUNK_POINTS // (2 * max(1, x.shape[1])))  # tasks per chunk: two draws x points each
    for start in range(0, x.shape[0], per):
        sl = slice(start, start + per)
        _check_chunk(program, x[sl], y[sl], mask[sl], what=what, y_name=y_name,
                     where=functools.partial(_shifted, where, start))


def _check_chunk(program, x, y, mask, *, what: str, where: Where, y_name: str) -> None:
    if not bool(mask.any()):
        return
    obs = program.observation
    fn = _distribution_at(program, x, mask, what)
    _check_parameters(program, fn, mask, what=what, where=where)
    if obs.real:
        return
    v = program.model_y(y, mask)
    support = fn.support
    pos = first_outside(support, v, mask, event_dims=len(obs.event_shape), for_all=True)
    if pos is not None:
        t, j = pos
        raise ValueError(f"{what}: {where(t, j)}: {y_name} {format_value(v[t, j])} is outside the support of the "
                         f"observation site '{obs.name}' ({obs.family}: {describe_support(support, (t, j))})")
    if support.is_discrete and not _is_boolean(support):
        _check_counts(v, mask, program.observation.family, what=what, where=where, y_name=y_name)
    elif not obs.event_shape:
        _check_edges(fn, support, v, mask, obs, what=what, where=where, y_name=y_name)


def check_batch(program, batch, *, what: str, dtype: torch.dtype) -> None:
    """:func:`check_magnitude` and :func:`check_observed` on the support and query sets of a ``TaskBatch``
    (positions: ``task i, point j`` of that set; ``what`` names the batch, e.g. ``"fit: validation"``)."""
    parts = [("support", batch.support)] + ([("query", batch.query)] if batch.has_query else [])
    for part, (x, y, mask) in parts:
        x, y, mask = x.to(dtype), y.to(dtype), mask.bool()
        check_magnitude(x, mask, what=f"{what} x_{part}", dtype=dtype)
        check_magnitude(y, mask, what=f"{what} y_{part}", dtype=dtype)
        check_observed(program, x, y, mask, what=f"{what} y_{part}")


def _is_boolean(support) -> bool:
    return type(support).__name__ == "_Boolean"


def _distribution_at(program, x: torch.Tensor, mask: torch.Tensor, what: str):
    """The observation's distribution at the data's own ``x`` (batch ``[2, T, N]``) for two draws of the task
    sites (the origin of their unconstrained coordinates and a prior draw; a problem counts only where both
    show it, so a formula that is singular at one draw is no data problem); built without argument validation
    so that an invalid parameter can be named with its position rather than by torch's message."""
    x = torch.where(mask[..., None], x, torch.ones_like(x))  # padding: the probe's input
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.no_grad(), pyro.validation_enabled(False), torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)  # the caller's random streams stay as they were
            g = None
            if program.has_globals:
                g = torch.cat([x.new_zeros(1, 1, program.global_dim), program.sample_globals(1)[:, None]])
            u = program.sample_prior(x, 1, g=None if g is None else g[1:])  # [1, T, P]
            u = torch.cat([torch.zeros_like(u), u])  # [2, T, P]
            return program.observation_distribution(x, u, g)
    except Exception as err:  # noqa: BLE001 - any failure of the user's program, named in one line
        raise ValueError(f"{what}: the model's observation site '{program.observation.name}' cannot be evaluated "
                         f"at these inputs ({short_error(err)})") from err


def _check_parameters(program, fn, mask: torch.Tensor, *, what: str, where: Where) -> None:
    """Each parameter the observation's distribution was given must satisfy its constraint at every point."""
    base, _ = unwrap(fn)
    obs = program.observation
    for name, constraint in getattr(base, "arg_constraints", {}).items():
        value = vars(base).get(name)  # the parameters it was given (not those it would derive lazily)
        if not isinstance(value, torch.Tensor):
            continue
        ev = constraint.event_dim
        try:
            pos = first_outside(constraint, value, mask, event_dims=ev, for_all=True, finite=True)
        except RuntimeError:  # a parameter that does not broadcast with tasks x points: not per point
            continue
        if pos is None:
            continue
        t, j = pos
        while value.dim() - ev > mask.dim():
            value = value[0]  # the first draw (where it is invalid too)
        point = value.expand(*mask.shape, *value.shape[value.dim() - ev:])[t, j]  # one point's parameter
        shown = format_value(point)
        words = describe_support(constraint, pos) if bool(torch.isfinite(point).all()) else "finite"
        raise ValueError(
            f"{what}: {where(t, j)}: the observation site '{obs.name}' ({obs.family}) gets {name}={shown} there, "
            f"which is not {words}; it is computed from x at that point: check the input column it comes from "
            f"{_HINTS.get(name, _HINTS[''])}")


def _check_edges(fn, support, v: torch.Tensor, mask: torch.Tensor, obs, *, what: str, where: Where,
                 y_name: str) -> None:
    """A continuous outcome exactly on an edge of its support (a Gamma's 0, a Beta's 0 or 1) where the density is
    0 or infinite: every posterior draw would get weight 0 (NaN predictions, a non-finite training loss)."""
    edge = torch.zeros_like(mask)
    for bound in (getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)):
        if bound is not None:
            at = v == torch.as_tensor(bound, dtype=v.dtype, device=v.device)
            edge = edge | (at.reshape(-1, *mask.shape).any(0) if at.dim() > mask.dim() else at)
    edge = edge & mask
    if not bool(edge.any()):
        return
    with torch.no_grad(), pyro.validation_enabled(False):
        lp = fn.log_prob(v)  # [2, T, N]
    bad = edge & (~torch.isfinite(lp.reshape(-1, *mask.shape))).all(0)  # for both draws
    if bool(bad.any()):
        t, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{what}: {where(t, j)}: {y_name} {format_value(v[t, j])} is on the edge of the support of "
                         f"the observation site '{obs.name}' ({obs.family}: {describe_support(support, (t, j))}), "
                         "where its density is 0 or infinite: every posterior draw would get weight 0; is it a rounded "
                         "value? Move it inside the support (e.g. by half the data's precision)")


def _check_counts(v: torch.Tensor, mask: torch.Tensor, family: str, *, what: str, where: Where, y_name: str) -> None:
    """Counts above ``2^(mantissa bits + 1)`` (2^24 in float32) are not whole numbers the dtype holds: their
    log-probabilities are rounded by more than the differences between posterior draws (ESS 1, Pareto-k inf)."""
    digits = round(-math.log2(torch.finfo(v.dtype).eps)) + 1  # float32: 24, float64: 53
    limit = 2.0**digits
    big = (v.abs() > limit) & mask if v.dim() == mask.dim() else (v.abs() > limit).any(-1) & mask
    if bool(big.any()):
        t, j = (int(i) for i in big.nonzero()[0])
        name = _dtype_name(v.dtype)
        raise ValueError(f"{what}: {where(t, j)}: {y_name} {format_value(v[t, j])} is above 2^{digits} = "
                         f"{int(limit)}, the largest count {name} holds exactly (the model computes in {name}), so "
                         f"its {family} log-probability would be rounding noise: is it a typo or a missing-value code?")


def _shifted(where, start: int, t: int, j: int):
    """``where`` of a chunk's task ``t`` (the chunk starts at task ``start``)."""
    return where(start + t, j)
