"""Layer 6: hyperparameter and architecture search with Optuna (``bm.tune``, ``bayesmeta tune``).

Each trial is an ordinary run directory fitted from the study's fit config with the trial's
settings; the objective is the validation NLL on the config's held-out groups. Optuna is imported
only when a study runs.
"""

from .report import TuneResult, write_report
from .space import ARCHITECTURE_KEYS, SearchSpace, StudyOptions, load_space, space_from_dict
from .study import open_study, recover_stale_trials, run_worker, tune

__all__ = ["ARCHITECTURE_KEYS", "SearchSpace", "StudyOptions", "TuneResult", "load_space", "open_study",
           "recover_stale_trials", "run_worker", "space_from_dict", "tune", "write_report"]
