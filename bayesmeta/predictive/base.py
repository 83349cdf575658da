"""The ``Predictive`` protocol: what every predictive on query points offers its consumers.

A predictive holds, for ``T`` tasks and ``N`` query points each, a distribution over the ``E``
outputs of every point (``shape [T, N, E]``). Learners, baselines, few-shot classifiers and the
Bayes oracles of task families all return one, and evaluation, validation, tuning, diagnostics
and decisions call only what :class:`Predictive` declares here: no ``hasattr`` probing.

It is an abstract base class rather than a ``typing.Protocol``: the implementations share code
(``std``, ``interval``, ``pit``, the diagnostics and their old attribute names), the flags
(``discrete``, ``classes_only``, ``num_classes``) need defaults that a Protocol cannot give, and
``isinstance(pred, Predictive)`` is a real check that the scoring uses to name a wrong object.
Layer 0: imports nothing of ours.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from typing import Self

import torch

__all__ = ["Predictive", "PredictiveDiagnostics"]


@dataclasses.dataclass(frozen=True, eq=False)
class PredictiveDiagnostics:
    """How a predictive was made and how far to trust it; every field may be ``None``.

    Args:
        method: what made it: ``"importance"``, ``"guide"``, ``"exact"``, a learner's name,
            ``"oracle"``, ...
        ess: Kish effective sample size of each task's importance weights, ``[T]``.
        pareto_k: PSIS Pareto-k of each task's weights, ``[T]`` (``k > 0.7``: unreliable).
        num_draws: posterior draws each task used, ``[T]``.

    Raises:
        TypeError: a ``method`` that is not a string.
        ValueError: a per-task field that is not a 1-d tensor.

    Example:
        >>> PredictiveDiagnostics(method="importance", ess=torch.tensor([80.0, 12.5])).ess.shape
        torch.Size([2])
    """

    method: str | None = None
    ess: torch.Tensor | None = None
    pareto_k: torch.Tensor | None = None
    num_draws: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.method is not None and not isinstance(self.method, str):
            raise TypeError(f"diagnostics: method must be a string or None; got {type(self.method).__name__}")
        for name, value in (("ess", self.ess), ("pareto_k", self.pareto_k), ("num_draws", self.num_draws)):
            if value is not None and (not isinstance(value, torch.Tensor) or value.dim() != 1):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"diagnostics: {name} must be a tensor [T] (one value per task); got {shape}")


_NO_DIAGNOSTICS = PredictiveDiagnostics()


class Predictive(ABC):
    """A predictive distribution on the query points of ``T`` tasks, ``shape [T, N, E]``.

    What a consumer may call:

    * always: :attr:`shape`, :attr:`device`, :attr:`dtype`, :meth:`log_prob` (``[T, N]``, outputs
      summed; a log pmf for discrete outcomes), :attr:`mean` (``[T, N, E]``), :meth:`sample`
      (``[n, T, N, E]``), :meth:`nonfinite_tasks` (``[T]`` bool), :attr:`diagnostics` (and its
      fields under their old names :attr:`method`, :attr:`ess`, :attr:`pareto_k`, :attr:`num_draws`)
      and the flags below;
    * unless :attr:`classes_only`: :attr:`variance`, :attr:`std`, :meth:`cdf`, :meth:`pit`,
      :meth:`quantile` and :meth:`interval` (each ``[T, N, E]``);
    * when :attr:`num_classes` is not ``None``: :attr:`probs` (``[T, N, C]``).

    Flags (plain attributes; subclasses set them):
        discrete: outcomes are integers (counts, labels): :meth:`log_prob` is a pmf, :meth:`pit`
            is randomised, quantiles are integers.
        classes_only: class labels without an order: the CDF, intervals and moments of a label
            mean nothing, so scoring uses :meth:`log_prob` and :attr:`probs` only.
        num_classes: ``C`` for a predictive with class probabilities (Bernoulli: 2), else ``None``.
    """

    discrete: bool = False
    classes_only: bool = False
    num_classes: int | None = None
    _diagnostics: PredictiveDiagnostics = _NO_DIAGNOSTICS

    # ------------------------------------------------------------------ what every predictive has
    @property
    @abstractmethod
    def shape(self) -> torch.Size:
        """``[T, N, E]``: tasks, query points, outputs."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where its tensors live."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The floating dtype of its results."""

    @abstractmethod
    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Log predictive density (pmf for discrete outcomes) of observations ``y [T, N, E]``: ``[T, N]``."""

    @property
    @abstractmethod
    def mean(self) -> torch.Tensor:
        """Predictive mean ``[T, N, E]`` (for class labels: the most probable class)."""

    @abstractmethod
    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws ``[num_samples, T, N, E]`` (jointly over a task's points)."""

    @abstractmethod
    def nonfinite_tasks(self) -> torch.Tensor:
        """``[T]`` bool: tasks whose predictive holds NaN or inf (scoring refuses them, naming the task)."""

    # ------------------------------------------------------------------ where meaningful
    def _undefined(self, what: str) -> NotImplementedError:
        why = "class labels have no order" if self.classes_only else "not implemented for this family"
        return NotImplementedError(f"{what}: not defined for a {type(self).__name__} ({why})")

    @property
    def variance(self) -> torch.Tensor:
        """Predictive variance ``[T, N, E]``."""
        raise self._undefined("variance")

    @property
    def std(self) -> torch.Tensor:
        """Predictive standard deviation ``[T, N, E]``."""
        return self.variance.sqrt()

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """``P(Y <= y)`` of each output ``[T, N, E]``."""
        raise self._undefined("cdf")

    def pit(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """PIT values ``[T, N, E]``, uniform when calibrated: ``F(y)`` here (discrete families randomise it)."""
        return self.cdf(y)

    def quantile(self, q: float) -> torch.Tensor:
        """Marginal ``q``-quantile of every output ``[T, N, E]``."""
        raise self._undefined("quantile")

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Central interval holding ``level`` of the predictive mass, each ``[T, N, E]``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"interval level must be in (0, 1); got {level}")
        tail = 0.5 * (1.0 - level)
        return self.quantile(tail), self.quantile(1.0 - tail)

    @property
    def probs(self) -> torch.Tensor:
        """Class probabilities ``[T, N, C]`` (only when :attr:`num_classes` is not ``None``)."""
        raise AttributeError(f"probs: a {type(self).__name__} has no class probabilities (num_classes is None)")

    # ------------------------------------------------------------------ diagnostics
    @property
    def diagnostics(self) -> PredictiveDiagnostics:
        """How it was made and how far to trust it (:class:`PredictiveDiagnostics`)."""
        return self._diagnostics

    def with_diagnostics(self, **changes) -> Self:
        """A shallow copy (same components) whose diagnostics have ``changes`` (field names of
        :class:`PredictiveDiagnostics`)."""
        new = copy.copy(self)
        new._diagnostics = dataclasses.replace(self._diagnostics, **changes)
        return new

    @property
    def method(self) -> str | None:
        """``diagnostics.method``: what made the predictive."""
        return self._diagnostics.method

    @property
    def ess(self) -> torch.Tensor | None:
        """``diagnostics.ess``: effective sample size per task ``[T]`` (importance sampling)."""
        return self._diagnostics.ess

    @property
    def pareto_k(self) -> torch.Tensor | None:
        """``diagnostics.pareto_k``: PSIS Pareto-k per task ``[T]`` (``> 0.7``: unreliable weights)."""
        return self._diagnostics.pareto_k

    @property
    def num_draws(self) -> torch.Tensor | None:
        """``diagnostics.num_draws``: posterior draws used per task ``[T]``."""
        return self._diagnostics.num_draws
