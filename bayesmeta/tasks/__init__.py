"""Layer 1: tasks. ``TaskBatch``, synthetic task families with Bayes oracles, labelled pools and episodes, streams that change in phases."""

from .batch import TaskBatch, check_support
from .clusters import GaussianClusters
from .dataset import Standardization, TaskDataset
from .episodes import Episodes, LabelledPool
from .family import TaskFamily
from .glm import HierarchicalLogistic, HierarchicalPoisson
from .linear import HierarchicalLinear, linear_features
from .phases import Phases, TaskMixture, drifting_sinusoid
from .sinusoid import Sinusoid

__all__ = [
    "Episodes",
    "GaussianClusters",
    "HierarchicalLinear",
    "HierarchicalLogistic",
    "HierarchicalPoisson",
    "LabelledPool",
    "Phases",
    "Sinusoid",
    "Standardization",
    "TaskBatch",
    "TaskDataset",
    "TaskFamily",
    "TaskMixture",
    "check_support",
    "drifting_sinusoid",
    "linear_features",
]
