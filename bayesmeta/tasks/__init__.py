"""Layer 1: tasks. ``TaskBatch``, synthetic task families with Bayes oracles, labelled pools and episodes."""

from .batch import TaskBatch, check_support
from .clusters import GaussianClusters
from .dataset import Standardization, TaskDataset
from .episodes import Episodes, LabelledPool
from .family import TaskFamily
from .glm import HierarchicalLogistic, HierarchicalPoisson
from .linear import HierarchicalLinear, linear_features
from .sinusoid import Sinusoid

__all__ = [
    "Episodes",
    "GaussianClusters",
    "HierarchicalLinear",
    "HierarchicalLogistic",
    "HierarchicalPoisson",
    "LabelledPool",
    "Sinusoid",
    "Standardization",
    "TaskBatch",
    "TaskDataset",
    "TaskFamily",
    "check_support",
    "linear_features",
]
