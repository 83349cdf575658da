"""Layer 3: set encoders, amortized guides, objectives, meta-training, refinement, importance sampling."""

from .encoder import SetEncoder
from .exact import ConvergenceWarning, fit_type2_ml
from .guides import GUIDE_FAMILIES, AmortizedGuide
from .importance import defensive_importance, effective_sample_size, pareto_k
from .objectives import OBJECTIVES, TaskImportanceELBO, make_objective
from .refine import refine_local
from .trainer import History, TrainConfig, meta_train, resolve_device

__all__ = [
    "ConvergenceWarning",
    "fit_type2_ml",
    "SetEncoder",
    "AmortizedGuide",
    "GUIDE_FAMILIES",
    "TaskImportanceELBO",
    "make_objective",
    "OBJECTIVES",
    "TrainConfig",
    "History",
    "meta_train",
    "resolve_device",
    "refine_local",
    "defensive_importance",
    "effective_sample_size",
    "pareto_k",
]
