"""Layer 1: tasks. ``TaskBatch`` and synthetic task families with Bayes oracles."""

from .batch import TaskBatch, check_support
from .family import TaskFamily
from .linear import HierarchicalLinear, linear_features
from .sinusoid import Sinusoid

__all__ = ["TaskBatch", "TaskFamily", "Sinusoid", "HierarchicalLinear", "check_support", "linear_features"]
