"""Predictive metrics with the definitions of DESIGN.md (the contract).

* NLL: ``-log p(y* | x*, support)`` per query point, averaged over a task's points, then
  over tasks (mean ± standard error over tasks).
* MSE of the predictive mean, per task.
* Coverage of central intervals: the fraction of query points inside the interval, pooled
  over tasks; calibration error = mean ``|coverage - level|`` over levels 0.05, 0.10, ..., 0.95.
"""

from __future__ import annotations

import math

import torch

__all__ = ["task_nll", "task_mse", "pit", "coverages", "coverage", "calibration_error", "mean_se", "CALIBRATION_LEVELS"]

CALIBRATION_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _mask(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(y.shape[:2], dtype=torch.bool, device=y.device) if mask is None else mask


def _per_task_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp_min(1)


def task_nll(predictive, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log predictive density of each task's query points, ``[T]``."""
    return _per_task_mean(-predictive.log_prob(y), _mask(y, mask))


def task_mse(predictive, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of the predictive mean per task ``[T]`` (outputs averaged)."""
    y = y if y.dim() == 3 else y.unsqueeze(-1)
    err = ((predictive.mean - y.to(predictive.mean)) ** 2).mean(-1)  # [T, N]
    return _per_task_mean(err, _mask(y, mask))


def pit(predictive, y: torch.Tensor) -> torch.Tensor:
    """Probability integral transform ``F(y)`` of each observation under its predictive ``[T, N, E]``."""
    return predictive.cdf(y)


def coverages(predictive, y: torch.Tensor, mask: torch.Tensor | None = None,
              levels=CALIBRATION_LEVELS) -> dict[float, float]:
    """Coverage of central intervals at several levels, pooled over tasks and points.

    ``y`` lies inside the central ``level`` interval exactly when ``|2 F(y) - 1| <= level``
    (``F`` the predictive CDF), so one CDF evaluation serves every level.
    """
    for lv in levels:
        if not 0.0 < lv < 1.0:
            raise ValueError(f"coverage levels must be in (0, 1); got {lv}")
    y = y if y.dim() == 3 else y.unsqueeze(-1)
    dist_from_median = (2 * pit(predictive, y) - 1).abs()  # [T, N, E]
    m = _mask(y, mask)[..., None].expand_as(dist_from_median)
    d = dist_from_median[m]
    return {lv: float((d <= lv).double().mean()) for lv in levels}


def coverage(predictive, y: torch.Tensor, mask: torch.Tensor | None = None, *, level: float = 0.9) -> float:
    """Fraction of (point, output) pairs of ``y`` inside the central ``level`` interval, pooled."""
    return coverages(predictive, y, mask, levels=(level,))[level]


def calibration_error(predictive, y: torch.Tensor, mask: torch.Tensor | None = None,
                      levels=CALIBRATION_LEVELS) -> float:
    """Mean ``|coverage - level|`` over central-interval levels (PACOH-NN's definition)."""
    cov = coverages(predictive, y, mask, levels)
    return sum(abs(c - lv) for lv, c in cov.items()) / len(levels)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of per-task values."""
    v = values.double()
    se = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se
