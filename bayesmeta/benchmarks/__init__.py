"""Layer 6: reproducible benchmarks (``bayesmeta bench NAME``): print a table, write JSON."""

from .classify import CLASSIFY_FAMILIES, CLASSIFY_METHODS, run_classify
from .compare import COMPARE_FAMILIES, COMPARE_METHODS, run_compare
from .continual import CONTINUAL_METHODS, run_continual
from .exact_fit import run_exact_fit
from .glm import GLM_CASES, run_glm
from .glmm import run_glmm
from .pools import POOL_CASES, run_pools
from .sinusoid import SINUSOID_VARIANTS, evaluate_on_family, run_sinusoid
from .throughput import run_throughput

BENCHMARKS = {"sinusoid": run_sinusoid, "compare": run_compare, "throughput": run_throughput,
              "exact-fit": run_exact_fit, "pools": run_pools, "glm": run_glm, "classify": run_classify,
              "continual": run_continual, "glmm": run_glmm}

__all__ = ["BENCHMARKS", "CLASSIFY_FAMILIES", "CLASSIFY_METHODS", "COMPARE_FAMILIES", "COMPARE_METHODS",
           "CONTINUAL_METHODS", "GLM_CASES", "POOL_CASES", "SINUSOID_VARIANTS",
           "evaluate_on_family", "run_classify", "run_compare", "run_continual", "run_exact_fit", "run_glm", "run_glmm", "run_pools", "run_sinusoid", "run_throughput"]
