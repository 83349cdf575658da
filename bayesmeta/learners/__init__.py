"""Layer 4: the Learner protocol (:class:`MetaLearner`), ``BayesLearner`` and its persistence."""

from .base import MetaLearner, check_adapt_options, check_standardize_option
from .bayes import BayesLearner

__all__ = ["BayesLearner", "MetaLearner", "check_adapt_options", "check_standardize_option"]
