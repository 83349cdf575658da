"""Layer 4: gradient-based meta-learning baselines with the same Learner protocol.

``fit(source, steps, ...)``, ``adapt(support) -> adapted``, ``adapted.predict(x) -> PosteriorPredictive``,
so :func:`bayesmeta.evaluate` scores them exactly like the Bayesian learners.
"""

from .base import AdaptedTasks, GradientMetaLearner
from .ensemble import Ensemble
from .maml import FOMAML, MAML, MetaSGD, Reptile
from .network import GaussianMLP

BASELINES = {"maml": MAML, "fomaml": FOMAML, "metasgd": MetaSGD, "reptile": Reptile}
"""The gradient-based baselines by name (CLI ``--baseline``, ``bench compare``)."""

__all__ = [
    "BASELINES",
    "FOMAML",
    "MAML",
    "AdaptedTasks",
    "Ensemble",
    "GaussianMLP",
    "GradientMetaLearner",
    "MetaSGD",
    "Reptile",
]
