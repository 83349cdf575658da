"""The one scoring of predictives (DESIGN.md, "one home per concept"): NLL, PIT, coverage, class metrics.

``bm.evaluate``, validation during meta-training (:mod:`bayesmeta.validation`), few-shot episode
validation (:mod:`bayesmeta.fewshot.base`) and, through validation, tuning all score with these
functions, so a number means the same wherever it is reported.
:mod:`bayesmeta.evaluation.metrics` re-exports them. Layer 0: imports nothing of ours outside this package.

For a :class:`~bayesmeta.predictive.Predictive` over query points (``shape [T, N, E]``; only what
the protocol declares is called) and observations ``y [T, N, E]`` with a mask ``[T, N]``:

* **NLL**: ``-log p(y* | x*, support)`` per query point (outputs summed), averaged over a task's
  points; tables report mean ± standard error over tasks.
* **MSE** of the predictive mean, averaged over outputs and then over a task's points.
* **CRPS** ``E|Y - y| - E|Y - Y'| / 2`` from predictive samples (unbiased in the number of
  samples), averaged over outputs and points; for a Gaussian it has the closed form of
  :func:`crps_gaussian`.
* **PIT** ``F(y)``: the predictive CDF at the observation; uniform when calibrated.
* **Coverage** of the central ``level`` interval: the fraction of (point, output) pairs inside
  it, i.e. ``|2 F(y) - 1| <= level``; pooled over tasks (the sum of :func:`task_inside`'s counts
  over the sum of its pairs), and per task for the spread.
* **Calibration error**: mean ``|coverage - level|`` over the 19 levels 0.05, 0.10, ..., 0.95
  (PACOH-NN's definition).
* Counts and other discrete outcomes: PIT and coverage use the **randomised PIT**, so coverage
  is the expected coverage of a randomised central interval (exactly ``level`` when calibrated).
* Classes (a predictive with ``num_classes``, hence ``probs [T, N, C]``; Bernoulli outcomes are two classes):
  **accuracy** of the most probable class, **Brier score** ``sum_c (p_c - 1[y = c])^2``, and the
  **ECE** over 15 equal-width confidence bins, ``sum_b (n_b / n) |accuracy_b - confidence_b|``
  (pooled over tasks), with the bins' numbers for a reliability diagram (:func:`reliability`);
  the **classwise ECE** (Kull et al. 2019), the mean over classes of the ECE of ``p_c`` against
  ``1[y = c]`` (:func:`classwise_ece`); **selective prediction**: the accuracy of the fraction of
  points kept by confidence, and its area (the mean over every cut; :func:`selective_prediction`).
"""

from __future__ import annotations

import math

import torch

from .base import Predictive

__all__ = [
    "CALIBRATION_LEVELS",
    "ECE_BINS",
    "SELECTIVE_FRACTIONS",
    "calibration_error",
    "class_probabilities",
    "classwise_ece",
    "selective_prediction",
    "confidence_and_correct",
    "reliability",
    "task_accuracy",
    "task_brier",
    "check_levels",
    "check_observations",
    "coverage",
    "coverages",
    "crps_gaussian",
    "mean_se",
    "pit",
    "task_coverages",
    "task_crps",
    "task_inside",
    "task_mse",
    "task_nll",
]

CALIBRATION_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def check_levels(levels, name: str = "levels") -> tuple[float, ...]:
    """Validate interval levels: a non-empty sequence of numbers strictly inside (0, 1)."""
    levels = tuple(float(lv) for lv in levels)
    if not levels:
        raise ValueError(f"{name} must not be empty")
    for lv in levels:
        if not 0.0 < lv < 1.0 or math.isnan(lv):
            raise ValueError(f"{name}: every level must be in (0, 1); got {lv}")
    return levels


def check_observations(predictive: Predictive, y, mask=None, *, check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``y`` and ``mask`` against a predictive; return ``y [T, N, E]`` and ``mask [T, N]``.

    Args:
        predictive: a :class:`~bayesmeta.predictive.Predictive`.
        check_finite: also check the predictive's components (its ``nonfinite_tasks``);
            ``False`` skips that pass, and a non-finite predictive then scores NaN or inf
            (validation during training maps such a task's NLL to inf instead of stopping).

    Raises:
        TypeError: ``predictive`` is not a :class:`~bayesmeta.predictive.Predictive`.
        ValueError: shapes that do not match the predictive's ``[T, N, E]``, non-finite
            observed values, or (``check_finite``) a predictive whose components hold NaN/inf
            (naming the task).
    """
    if not isinstance(predictive, Predictive):
        raise TypeError(f"predictive: expected a bayesmeta.predictive.Predictive (GaussianMixture, FamilyMixture, "
                        f"ClassPredictive or another subclass); got {type(predictive).__name__}")
    shape = tuple(predictive.shape)
    y = torch.as_tensor(y).to(predictive.device)
    if y.dim() == 2 and shape[-1] == 1:
        y = y.unsqueeze(-1)
    if tuple(y.shape) != shape:
        raise ValueError(f"y: shape {tuple(y.shape)} does not match the predictive's [T, N, E] = {shape}")
    if mask is None:
        mask = torch.ones(shape[:2], dtype=torch.bool, device=y.device)
    mask = torch.as_tensor(mask).to(y.device)
    if tuple(mask.shape) != shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor of shape {shape[:2]}; got {mask.dtype} {tuple(mask.shape)}")
    bad_y = (~torch.isfinite(y)).any(-1) & mask  # [T, N]
    if bad_y.any():
        t, j = (int(i) for i in bad_y.nonzero()[0])
        raise ValueError(f"y: non-finite value at task {t}, point {j}")
    if check_finite:
        _check_finite_predictive(predictive)
    return y, mask


def _check_finite_predictive(predictive: Predictive) -> None:
    """Raise on a predictive whose components hold NaN/inf (its ``nonfinite_tasks``)."""
    bad = predictive.nonfinite_tasks()  # [T], computed block by block
    if bad.any():
        raise ValueError(f"predictive: NaN, inf or non-positive scale in the samples of task {int(bad.nonzero()[0])}")


def _per_task_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp_min(1)


def task_nll(predictive: Predictive, y, mask=None, *, check_finite: bool = True) -> torch.Tensor:
    """Mean negative log predictive density of each task's query points, ``[T]`` (``check_finite``:
    see :func:`check_observations`)."""
    y, mask = check_observations(predictive, y, mask, check_finite=check_finite)
    return _per_task_mean(-predictive.log_prob(y), mask)


def task_mse(predictive: Predictive, y, mask=None) -> torch.Tensor:
    """Mean squared error of the predictive mean per task ``[T]`` (outputs averaged)."""
    y, mask = check_observations(predictive, y, mask)
    err = ((predictive.mean - y.to(predictive.mean)) ** 2).mean(-1)  # [T, N]
    return _per_task_mean(err, mask)


def crps_gaussian(loc: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Closed-form CRPS of ``N(loc, scale^2)`` at ``y`` (elementwise)."""
    z = (y - loc) / scale
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return scale * (z * (2 * torch.special.ndtr(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def _crps_from_samples(samples: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased sample CRPS: ``mean|X - y| - sum_{i != j}|X_i - X_j| / (2 m (m - 1))``.

    ``samples [m, ...]``, ``y [...]``; the pair sum uses sorted samples,
    ``sum_{i,j}|X_i - X_j| = 2 sum_i (2i - m - 1) X_(i)``.
    """
    m = samples.shape[0]
    first = (samples - y).abs().mean(0)
    srt = samples.sort(0).values
    coef = (2 * torch.arange(1, m + 1, dtype=srt.dtype, device=srt.device) - m - 1).reshape(-1, *[1] * y.dim())
    return first - (coef * srt).sum(0) / (m * (m - 1))


def task_crps(predictive: Predictive, y, mask=None, *, num_samples: int = 200, generator=None) -> torch.Tensor:
    """CRPS per task ``[T]`` from ``num_samples`` predictive draws (outputs, then points averaged)."""
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: CRPS needs an int >= 2 samples; got {num_samples!r}")
    y, mask = check_observations(predictive, y, mask)
    draws = predictive.sample(num_samples, generator=generator)  # [m, T, N, E]
    per_point = _crps_from_samples(draws, y.to(draws)).mean(-1)  # [T, N]
    return _per_task_mean(per_point, mask)


def _pit_values(predictive: Predictive, y: torch.Tensor) -> torch.Tensor:
    """``F(y)`` ``[T, N, E]``; for discrete outcomes the predictive's randomised PIT (its ``pit``)."""
    return predictive.pit(y)


def pit(predictive: Predictive, y, mask=None) -> torch.Tensor:
    """Probability integral transform ``F(y)`` of each observed (point, output): flat ``[M]``.

    For discrete outcomes (counts, labels) the randomised PIT ``F(y - 1) + V (F(y) - F(y - 1))``,
    ``V ~ U(0, 1)`` (torch's global generator): uniform exactly when the predictive is calibrated.
    """
    y, mask = check_observations(predictive, y, mask)
    u = _pit_values(predictive, y)  # [T, N, E]
    return u[mask[..., None].expand_as(u)]


def _distance_from_median(predictive: Predictive, y, mask, check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    y, mask = check_observations(predictive, y, mask, check_finite=check_finite)
    d = (2 * _pit_values(predictive, y) - 1).abs()  # [T, N, E]: y is inside the level-interval iff d <= level
    return d, mask[..., None].expand_as(d)


def coverages(predictive: Predictive, y, mask=None, levels=CALIBRATION_LEVELS) -> dict[float, float]:
    """Coverage of central intervals at several levels, pooled over tasks, points and outputs.

    ``y`` lies inside the central ``level`` interval exactly when ``|2 F(y) - 1| <= level``
    (``F`` the predictive CDF), so one CDF evaluation serves every level.
    """
    levels = check_levels(levels)
    d, m = _distance_from_median(predictive, y, mask)
    d = d[m]
    return {lv: float((d <= lv).double().mean()) for lv in levels}


def task_inside(predictive: Predictive, y, mask=None, levels=CALIBRATION_LEVELS, *,
                check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per task, the (point, output) pairs inside the central interval at each level, and all pairs.

    The counts behind every coverage: pooled coverage is ``inside.sum(0) / pairs.sum()``. For
    discrete outcomes "inside" is that of the randomised PIT (torch's global generator), so
    the count is random and its expectation is ``level`` times the pairs when calibrated.

    Args:
        predictive: a :class:`~bayesmeta.predictive.Predictive` ``[T, N, E]`` (not ``classes_only``).
        y: observations ``[T, N, E]``; mask: observed points ``[T, N]`` (default all).
        levels: central-interval levels in (0, 1).
        check_finite: see :func:`check_observations`.

    Returns:
        ``inside [T, L]`` and ``pairs [T]``, float64 counts.

    Example:
        >>> from bayesmeta.predictive import GaussianMixture
        >>> pred = GaussianMixture(torch.zeros(1, 1, 2, 1), 1.0)  # N(0, 1) at 2 points of 1 task
        >>> task_inside(pred, torch.tensor([[[0.0], [3.0]]]), levels=(0.9,))
        (tensor([[1.]], dtype=torch.float64), tensor([2.], dtype=torch.float64))
    """
    levels = check_levels(levels)
    d, m = _distance_from_median(predictive, y, mask, check_finite)  # [T, N, E] each
    lv = torch.tensor(levels, dtype=d.dtype, device=d.device)
    inside = ((d[..., None] <= lv) & m[..., None]).flatten(1, 2).double().sum(1)  # [T, L]
    return inside, m.flatten(1).double().sum(1)  # [T, L], [T]


def task_coverages(predictive: Predictive, y, mask=None, levels=CALIBRATION_LEVELS) -> torch.Tensor:
    """Per-task coverage ``[T, L]`` of the central intervals at ``levels`` (:func:`task_inside` over its pairs)."""
    inside, pairs = task_inside(predictive, y, mask, levels)
    return inside / pairs[:, None].clamp_min(1)


def coverage(predictive: Predictive, y, mask=None, *, level: float = 0.9) -> float:
    """Fraction of (point, output) pairs of ``y`` inside the central ``level`` interval, pooled."""
    return coverages(predictive, y, mask, levels=(level,))[float(level)]


def calibration_error(predictive: Predictive, y, mask=None, levels=CALIBRATION_LEVELS) -> float:
    """Mean ``|coverage - level|`` over central-interval levels (PACOH-NN's definition)."""
    cov = coverages(predictive, y, mask, levels)
    return sum(abs(c - lv) for lv, c in cov.items()) / len(cov)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of per-task values (``nan`` s.e. for a single value)."""
    v = torch.as_tensor(values).double()
    if v.numel() == 0:
        raise ValueError("mean_se: no values")
    se = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


ECE_BINS = 15


def class_probabilities(predictive: Predictive) -> torch.Tensor | None:
    """Class probabilities ``[T, N, C]`` of a predictive with classes (``num_classes``: Bernoulli, Categorical,
    :class:`~bayesmeta.predictive.ClassPredictive`), else ``None``."""
    return predictive.probs if predictive.num_classes is not None else None


def _labels(y: torch.Tensor) -> torch.Tensor:
    return y[..., 0].round().long()  # [T, N]


def task_accuracy(probs: torch.Tensor, y, mask) -> torch.Tensor:
    """Accuracy of the most probable class per task ``[T]``."""
    hit = (probs.argmax(-1) == _labels(y)).to(probs.dtype)
    return _per_task_mean(hit, mask)


def task_brier(probs: torch.Tensor, y, mask) -> torch.Tensor:
    """Brier score ``sum_c (p_c - 1[y = c])^2`` per point, averaged per task ``[T]``."""
    onehot = torch.nn.functional.one_hot(_labels(y).clamp(0, probs.shape[-1] - 1), probs.shape[-1]).to(probs.dtype)
    return _per_task_mean(((probs - onehot) ** 2).sum(-1), mask)


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Reliability-diagram numbers and the ECE from flat ``confidence`` and ``correct`` ``[M]``.

    Equal-width bins over [0, 1] (the last closed); returns ``ece``, and per bin its
    ``count``, mean ``confidence`` and ``accuracy`` (``nan`` for an empty bin).
    """
    confidence, correct = confidence.double().reshape(-1), correct.double().reshape(-1)
    if confidence.numel() == 0:
        raise ValueError("reliability: no predictions")
    idx = (confidence * bins).floor().clamp(0, bins - 1).long()
    count = torch.bincount(idx, minlength=bins).double()
    conf = torch.bincount(idx, confidence, minlength=bins) / count
    acc = torch.bincount(idx, correct, minlength=bins) / count
    gaps = torch.where(count > 0, (acc - conf).abs() * count, torch.zeros_like(count))
    return {"ece": float(gaps.sum() / count.sum()), "count": count.tolist(), "confidence": conf.tolist(),
            "accuracy": acc.tolist(), "bins": bins}


def confidence_and_correct(probs: torch.Tensor, y, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat confidence (probability of the predicted class) and correctness of the observed points."""
    conf, pred = probs.max(-1)
    correct = pred == _labels(y)
    return conf[mask], correct[mask]


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Mean over classes of the ECE of ``p_c`` against ``1[y = c]`` (equal-width bins): ``probs [M, C]``, ``labels [M]``."""
    probs, labels = probs.double().reshape(-1, probs.shape[-1]), labels.reshape(-1).long()
    if probs.shape[0] == 0:
        raise ValueError("classwise_ece: no predictions")
    idx = (probs * bins).floor().clamp(0, bins - 1).long()  # [M, C]
    hit = torch.nn.functional.one_hot(labels, probs.shape[-1]).double()  # [M, C]
    total = 0.0
    for c in range(probs.shape[-1]):
        count = torch.bincount(idx[:, c], minlength=bins).double()
        gap = (torch.bincount(idx[:, c], hit[:, c], minlength=bins) - torch.bincount(idx[:, c], probs[:, c],
                                                                                       minlength=bins)).abs()
        total += float(gap.sum() / count.sum())
    return total / probs.shape[-1]


SELECTIVE_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def selective_prediction(confidence: torch.Tensor, correct: torch.Tensor, fractions=SELECTIVE_FRACTIONS) -> dict:
    """Accuracy of the most confident ``fraction`` of points, and the area under that curve.

    ``area`` is the mean, over every cut ``k = 1..M``, of the accuracy of the ``k`` most confident
    points (ties broken by order): 1 is perfect; a confidence that says nothing gives the accuracy.
    """
    confidence, correct = confidence.double().reshape(-1), correct.double().reshape(-1)
    m = confidence.numel()
    if m == 0:
        raise ValueError("selective_prediction: no predictions")
    order = torch.argsort(confidence, descending=True, stable=True)
    running = torch.cumsum(correct[order], 0) / torch.arange(1, m + 1, dtype=torch.float64, device=correct.device)
    acc = [float(running[max(1, math.ceil(f * m)) - 1]) for f in fractions]
    return {"fractions": list(fractions), "accuracy": acc, "area": float(running.mean())}
