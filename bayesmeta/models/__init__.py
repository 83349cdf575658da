"""Layer 2: hierarchical Pyro models with learned priors over task parameters.

Any ``PyroModule`` following :mod:`bayesmeta.inference.program` is a model; these are shipped.
"""

from .base import HierarchicalModel
from .glm import (
    LIKELIHOODS,
    HierarchicalLogisticRegression,
    HierarchicalPoissonRegression,
    HierarchicalRegression,
)
from .hyper import EightSchools, VaryingIntercepts, eight_schools_data
from .latent import LatentCodeModel, LatentCodeRegression
from .linear import BayesianHeadRegression, HierarchicalLinearRegression, LinearGaussianModel
from .nn import MLP
from .scaling import DataScaling

__all__ = [
    "HierarchicalModel",
    "HierarchicalLogisticRegression",
    "HierarchicalPoissonRegression",
    "HierarchicalRegression",
    "LIKELIHOODS",
    "LatentCodeModel",
    "LatentCodeRegression",
    "HierarchicalLinearRegression",
    "BayesianHeadRegression",
    "LinearGaussianModel",
    "MLP",
    "DataScaling",
    "EightSchools",
    "VaryingIntercepts",
    "eight_schools_data",
]
