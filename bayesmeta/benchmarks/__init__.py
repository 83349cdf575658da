"""Layer 6: reproducible benchmarks (``bayesmeta bench NAME``)."""

from .sinusoid import SINUSOID_VARIANTS, evaluate_on_family, run_sinusoid

BENCHMARKS = {"sinusoid": run_sinusoid}

__all__ = ["BENCHMARKS", "run_sinusoid", "evaluate_on_family", "SINUSOID_VARIANTS"]
