"""Layer 5: predictive metrics (definitions of DESIGN.md) and ``evaluate`` over test tasks."""

from .continual import ContinualResult, continual_evaluation, forgetting_table
from .metrics import (
    CALIBRATION_LEVELS,
    calibration_error,
    coverage,
    coverages,
    crps_gaussian,
    mean_se,
    pit,
    task_coverages,
    task_crps,
    task_mse,
    task_nll,
)
from .results import Evaluation
from .runner import COVERAGE_LEVELS, METRICS, evaluate, make_test_sets

__all__ = [
    "CALIBRATION_LEVELS",
    "COVERAGE_LEVELS",
    "METRICS",
    "ContinualResult",
    "Evaluation",
    "continual_evaluation",
    "forgetting_table",
    "calibration_error",
    "coverage",
    "coverages",
    "crps_gaussian",
    "evaluate",
    "make_test_sets",
    "mean_se",
    "pit",
    "task_coverages",
    "task_crps",
    "task_mse",
    "task_nll",
]
