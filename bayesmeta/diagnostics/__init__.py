"""Layer 5: diagnostics and plots."""

from .plots import plot_prediction_bands

__all__ = ["plot_prediction_bands"]
