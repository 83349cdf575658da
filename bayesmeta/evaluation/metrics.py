"""Predictive metrics: a re-export of :mod:`bayesmeta.predictive.scoring`, the one home of their definitions.

Kept so that ``bm.evaluation.metrics.<name>`` and imports from here keep working; new code imports
from :mod:`bayesmeta.predictive.scoring`.
"""

from __future__ import annotations

from ..predictive.scoring import (
    CALIBRATION_LEVELS,
    ECE_BINS,
    SELECTIVE_FRACTIONS,
    calibration_error,
    check_levels,
    check_observations,
    class_probabilities,
    classwise_ece,
    confidence_and_correct,
    coverage,
    coverages,
    crps_gaussian,
    mean_se,
    pit,
    reliability,
    selective_prediction,
    task_accuracy,
    task_brier,
    task_coverages,
    task_crps,
    task_inside,
    task_mse,
    task_nll,
)

__all__ = [
    "CALIBRATION_LEVELS",
    "ECE_BINS",
    "SELECTIVE_FRACTIONS",
    "calibration_error",
    "check_levels",
    "check_observations",
    "class_probabilities",
    "classwise_ece",
    "confidence_and_correct",
    "coverage",
    "coverages",
    "crps_gaussian",
    "mean_se",
    "pit",
    "reliability",
    "selective_prediction",
    "task_accuracy",
    "task_brier",
    "task_coverages",
    "task_crps",
    "task_inside",
    "task_mse",
    "task_nll",
]
