"""Layer 4: few-shot classification learners with the same Learner protocol.

``fit(episodes, steps, ...)`` on an episodic family (:class:`~bayesmeta.tasks.Episodes`,
:class:`~bayesmeta.tasks.GaussianClusters`), ``adapt(support) -> adapted``,
``adapted.predict(x_query) -> ClassPredictive`` (class probabilities), so
:func:`bayesmeta.evaluate` scores every method with accuracy, NLL, Brier, ECE and selective
prediction. The Bayesian prototype classifier (:class:`BayesProto`) gives closed-form
posterior-predictive probabilities; the rest are the field's point-estimate baselines, with
temperature scaling (:class:`TemperatureScaled`) as their standard post-hoc fix.
"""

from .base import AdaptedClassifier, EpisodicClassifier, class_split
from .calibration import ClassifierEnsemble, TemperatureScaled, fit_temperature
from .gradient import FOMAMLClassifier, MAMLClassifier, MetaSGDClassifier, ReptileClassifier, SoftmaxMLP
from .metric import BayesProto, Embedding, ProtoNet, SiameseNet

CLASSIFIERS = {"bayes-proto": BayesProto, "protonet": ProtoNet, "siamese": SiameseNet, "maml": MAMLClassifier,
               "fomaml": FOMAMLClassifier, "metasgd": MetaSGDClassifier, "reptile": ReptileClassifier}
"""Few-shot classifiers by name (``bench classify --methods``, the CLI)."""

__all__ = [
    "CLASSIFIERS",
    "AdaptedClassifier",
    "BayesProto",
    "ClassifierEnsemble",
    "Embedding",
    "EpisodicClassifier",
    "FOMAMLClassifier",
    "MAMLClassifier",
    "MetaSGDClassifier",
    "ProtoNet",
    "ReptileClassifier",
    "SiameseNet",
    "SoftmaxMLP",
    "TemperatureScaled",
    "class_split",
    "fit_temperature",
]
