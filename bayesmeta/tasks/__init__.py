"""Layer 1: tasks. ``TaskBatch`` and synthetic task families with Bayes oracles."""

from .batch import TaskBatch, check_support
from .dataset import Standardization, TaskDataset
from .family import TaskFamily
from .glm import HierarchicalLogistic, HierarchicalPoisson
from .linear import HierarchicalLinear, linear_features
from .sinusoid import Sinusoid

__all__ = [
    "HierarchicalLinear",
    "HierarchicalLogistic",
    "HierarchicalPoisson",
    "Sinusoid",
    "Standardization",
    "TaskBatch",
    "TaskDataset",
    "TaskFamily",
    "check_support",
    "linear_features",
]
