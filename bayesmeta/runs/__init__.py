"""Run directories: configs, a learner from a config (a built-in model or your own class), fitting,
evaluating, predicting and suggesting on your own grouped data, and few-shot classification runs.

The library under the command line (``bayesmeta fit / evaluate / predict / suggest``): each command
is one call here, so a script or a tuning study does exactly what the command line does::

    from bayesmeta.runs import evaluate_run, fit_run, load_config

    cfg = load_config("fit.toml")
    fit_run(cfg, "runs/sleep")
    evaluate_run("runs/sleep", "test.csv", shots=[1, 5])
"""

from .config import (
           DataConfig,
           FitConfig,
           ModelConfig,
           apply_overrides,
           config_from_dict,
           load_config,
           to_toml,
)
from .evaluate import evaluate_run
from .fit import fit_run, resume_config
from .layout import CHECKPOINT, LEARNER_FILE, load_run_config
from .learner import build_learner, load_fitted, predictor
from .predict import predict_run
from .suggest import suggest_run

__all__ = ["CHECKPOINT", "DataConfig", "FitConfig", "LEARNER_FILE", "ModelConfig", "apply_overrides", "build_learner",
           "config_from_dict", "evaluate_run", "fit_run", "load_config", "load_fitted", "load_run_config",
           "predict_run", "predictor", "resume_config", "suggest_run", "to_toml"]
