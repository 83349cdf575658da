"""Layer 3: set encoders, amortized guides, objectives, the one training loop, refinement, importance sampling, replay."""

from .checkpoints import load_checkpoint, save_checkpoint
from .context import FitContext
from .early_stopping import EarlyStopping, MetaOverfittingWarning
from .encoder import SetEncoder
from .exact import ConvergenceWarning, fit_type2_ml
from .global_guide import GlobalGuide
from .global_objective import GLOBAL_OBJECTIVES, GlobalObjective
from .guides import GUIDE_FAMILIES, AmortizedGuide
from .importance import defensive_importance, effective_sample_size, pareto_k
from .loop import train_loop
from .objectives import OBJECTIVES, ReweightedWakeSleep, TaskImportanceELBO, make_objective, sleep_log_q
from .options import History, TrainConfig, resolve_device
from .refine import refine_local
from .replay import REPLAY_STRATEGIES, ReplayBuffer
from .svi import meta_train

__all__ = [
    "ConvergenceWarning",
    "EarlyStopping",
    "MetaOverfittingWarning",
    "fit_type2_ml",
    "SetEncoder",
    "AmortizedGuide",
    "GlobalGuide",
    "GlobalObjective",
    "GLOBAL_OBJECTIVES",
    "GUIDE_FAMILIES",
    "TaskImportanceELBO",
    "ReweightedWakeSleep",
    "sleep_log_q",
    "make_objective",
    "OBJECTIVES",
    "TrainConfig",
    "FitContext",
    "History",
    "load_checkpoint",
    "save_checkpoint",
    "meta_train",
    "train_loop",
    "resolve_device",
    "refine_local",
    "REPLAY_STRATEGIES",
    "ReplayBuffer",
    "defensive_importance",
    "effective_sample_size",
    "pareto_k",
]
