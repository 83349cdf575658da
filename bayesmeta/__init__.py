"""bayesmeta: Bayesian meta-learning with hierarchical Pyro models.

Users write ``import bayesmeta as bm``::

    family = bm.tasks.Sinusoid(noise_std=0.1)
    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1))
    learner.fit(family, steps=20_000)
    pred = learner.adapt(test).predict(test.x_query)
"""

from . import baselines, diagnostics, evaluation, fewshot, inference, models, optimize, runs, tasks, tuning
from .diagnostics import (
    compare_posteriors,
    reference_posterior,
    report,
    simulation_based_calibration,
    to_inference_data,
)
from .evaluation import Evaluation, evaluate
from .inference import ConvergenceWarning, MetaOverfittingWarning, ReplayBuffer, TrainConfig
from .inference.program import ModelError
from .learners import BayesLearner
from .learners.posterior import Posterior
from .predictive import ClassPredictive, GaussianMixture, PosteriorPredictive, deprecated_alias
from .tasks import TaskBatch
from .tuning import tune

__version__ = "0.1.0"


def __getattr__(name: str):
    """``bm.Predictive``: the old name of :class:`PosteriorPredictive` (deprecated, one release)."""
    return deprecated_alias(__name__, name)


__all__ = [
    "BayesLearner",
    "ClassPredictive",
    "Evaluation",
    "GaussianMixture",
    "MetaOverfittingWarning",
    "ConvergenceWarning",
    "ModelError",
    "TrainConfig",
    "Posterior",
    "PosteriorPredictive",
    "ReplayBuffer",
    "TaskBatch",
    "baselines",
    "fewshot",
    "optimize",
    "diagnostics",
    "evaluate",
    "evaluation",
    "inference",
    "models",
    "tasks",
    "compare_posteriors",
    "reference_posterior",
    "report",
    "simulation_based_calibration",
    "to_inference_data",
    "tune",
    "runs",
    "tuning",
    "__version__",
]
