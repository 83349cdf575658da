"""Layer 5: decisions with a learned prior (Thompson sampling, expected improvement, UCB, bandits)."""

from .acquisition import (
    ACQUISITIONS,
    draw_acquisition,
    expected_improvement,
    gaussian_ei,
    probability_of_improvement,
    upper_confidence_bound,
)
from .bandits import BernoulliBandit, GaussianBandit, IndependentArms, run_bandits
from .baselines import GPBayesOpt, RandomSearch
from .belief import Belief, FunctionDraws, MixtureBelief, ParamBelief, PointBelief, ThompsonSamplingError
from .loop import AcquisitionPolicy, OptimizationTrace, as_policy, optimize, optimize_tasks
from .propose import TARGETS, Proposal, propose, suggest
from .space import Box, Candidates, as_space
from .surrogates import LearnerSurrogate, OracleSurrogate, Surrogate, as_surrogate, posterior_belief

__all__ = [
    "AcquisitionPolicy", "BernoulliBandit", "GPBayesOpt", "GaussianBandit", "IndependentArms", "OptimizationTrace",
    "RandomSearch", "as_policy", "optimize", "optimize_tasks", "run_bandits",
    "ACQUISITIONS", "TARGETS", "Belief", "Box", "Candidates", "FunctionDraws", "LearnerSurrogate", "MixtureBelief",
    "OracleSurrogate", "ParamBelief", "PointBelief", "Proposal", "Surrogate", "ThompsonSamplingError", "as_space",
    "as_surrogate", "draw_acquisition", "expected_improvement", "gaussian_ei", "posterior_belief",
    "probability_of_improvement", "propose", "suggest", "upper_confidence_bound",
]
