"""Layer 5: ArviZ conversion, NUTS reference posteriors, simulation-based calibration, plots, report."""

from .calibration_plots import (
    plot_calibration_curve,
    plot_method_comparison,
    plot_pit_histogram,
    plot_reliability_diagram,
    plot_sbc_ranks,
    plot_selective_prediction,
)
from .html_report import load_run, report
from .hyper import compare_global_posteriors, hyperposterior_inference_data
from .inference_data import to_inference_data
from .plots import plot_elbo_trace, plot_forgetting, plot_prediction_bands, plot_shrinkage
from .reference import compare_posteriors, reference_diagnostics, reference_posterior
from .sbc import SBCResult, refit_posterior, simulation_based_calibration

__all__ = [
    "SBCResult",
    "compare_global_posteriors",
    "compare_posteriors",
    "hyperposterior_inference_data",
    "load_run",
    "plot_calibration_curve",
    "plot_elbo_trace",
    "plot_forgetting",
    "plot_method_comparison",
    "plot_pit_histogram",
    "plot_reliability_diagram",
    "plot_selective_prediction",
    "plot_prediction_bands",
    "plot_sbc_ranks",
    "plot_shrinkage",
    "reference_diagnostics",
    "reference_posterior",
    "report",
    "simulation_based_calibration",
    "refit_posterior",
    "to_inference_data",
]
