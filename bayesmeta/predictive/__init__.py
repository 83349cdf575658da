"""Layer 0: the ``Predictive`` protocol, its block engine, its families and the one scoring.

Every learner, baseline, few-shot classifier and task-family oracle returns a
:class:`Predictive` on query points; evaluation, validation, tuning, diagnostics and decisions
call only what it declares (see :mod:`bayesmeta.predictive.base`):

* :class:`GaussianMixture` (and :class:`PosteriorPredictive`, one with diagnostics): Gaussian
  likelihoods, MAML's Gaussian head, ensembles;
* :class:`FamilyMixture`: any other observation family (Bernoulli, Poisson, Student-t, ...);
* :class:`ClassPredictive`: class probabilities of few-shot classifiers;
* :mod:`~bayesmeta.predictive.scoring`: NLL, PIT, coverage and class metrics of any of them.

Imports nothing of ours but ``bayesmeta._checks``, ``_compat``, ``_support`` and ``io``.
"""

from . import scoring
from .base import Predictive, PredictiveDiagnostics
from .blocks import BLOCK_ELEMENTS, CACHE_ELEMENTS, BlockMixture
from .classes import ClassPredictive
from .components import heaviest, pad_components, pad_rows, systematic_resample
from .family import FamilyMixture, component_cdf
from .gaussian import GaussianMixture, PosteriorPredictive, deprecated_alias

__all__ = [
    "BLOCK_ELEMENTS",
    "CACHE_ELEMENTS",
    "BlockMixture",
    "ClassPredictive",
    "FamilyMixture",
    "GaussianMixture",
    "PosteriorPredictive",
    "Predictive",
    "PredictiveDiagnostics",
    "component_cdf",
    "deprecated_alias",
    "heaviest",
    "pad_components",
    "pad_rows",
    "scoring",
    "systematic_resample",
]
