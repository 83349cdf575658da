"""Layer 2: hierarchical Pyro models with learned priors over task parameters."""

from .base import HierarchicalModel
from .latent import LatentCodeRegression
from .linear import BayesianHeadRegression, HierarchicalLinearRegression, LinearGaussianModel
from .nn import MLP

__all__ = [
    "HierarchicalModel",
    "LatentCodeRegression",
    "HierarchicalLinearRegression",
    "BayesianHeadRegression",
    "LinearGaussianModel",
    "MLP",
]
