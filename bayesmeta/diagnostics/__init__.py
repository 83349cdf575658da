"""Layer 5: ArviZ conversion, NUTS reference posteriors, simulation-based calibration, plots, report."""

from .inference_data import to_inference_data
from .plots import plot_prediction_bands
from .reference import compare_posteriors, reference_diagnostics, reference_posterior
from .sbc import SBCResult, simulation_based_calibration

__all__ = [
    "SBCResult",
    "compare_posteriors",
    "plot_prediction_bands",
    "reference_diagnostics",
    "reference_posterior",
    "simulation_based_calibration",
    "to_inference_data",
]
