"""``ClassPredictive``: class probabilities on query points, the predictive of few-shot classifiers.

A few-shot classifier's prediction for each query point is a categorical distribution over the
``C`` classes of its task (labels ``0..C-1``). Bayesian classifiers give the posterior-predictive
probabilities (integrated over the task's parameters); point-estimate methods (prototypical
networks, MAML) give a softmax. Both are held the same way, so one set of metrics (accuracy, NLL,
Brier, ECE, selective prediction) scores them all. Labels have no order, so it is
``classes_only``: no CDF, PIT or intervals (the :class:`~bayesmeta.predictive.Predictive` protocol
raises ``NotImplementedError`` for them). Layer 0: imports nothing of ours outside this package.
"""

from __future__ import annotations

import torch

from .base import Predictive, PredictiveDiagnostics

__all__ = ["ClassPredictive"]


class ClassPredictive(Predictive):
    """Categorical predictive ``p(y = c | x, support)`` per query point, ``[T, N]`` points x ``C`` classes.

    Args:
        logits: ``[T, N, C]`` unnormalised log probabilities (normalised here); ``-inf`` marks a
            class the task does not have.
        method: the name of what made it (shown in tables).

    Example:
        >>> pred = ClassPredictive(torch.zeros(2, 3, 4))
        >>> pred.probs.shape, float(pred.log_prob(torch.zeros(2, 3))[0, 0])
        (torch.Size([2, 3, 4]), -1.3862943649291992)
    """

    classes_only = True  # no CDF or intervals: evaluation scores it with the classification metrics
    discrete = True

    def __init__(self, logits: torch.Tensor, *, method: str = "") -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            raise ValueError(f"logits must be a tensor [T, N, C]; got {getattr(logits, 'shape', type(logits))}")
        if logits.shape[-1] < 2:
            raise ValueError(f"logits: need at least 2 classes; got {logits.shape[-1]}")
        self.logits = torch.log_softmax(logits, -1)  # [T, N, C]
        self.num_classes = logits.shape[-1]
        self._diagnostics = PredictiveDiagnostics(method=method)

    @property
    def shape(self) -> torch.Size:
        """``[T, N, 1]``: tasks, query points, one label each."""
        return torch.Size((*self.logits.shape[:2], 1))

    @property
    def device(self) -> torch.device:
        return self.logits.device

    @property
    def dtype(self) -> torch.dtype:
        return self.logits.dtype

    @property
    def probs(self) -> torch.Tensor:
        """Class probabilities ``[T, N, C]``."""
        return self.logits.exp()

    @property
    def mode(self) -> torch.Tensor:
        """The most probable class per point ``[T, N]`` (long)."""
        return self.logits.argmax(-1)

    @property
    def confidence(self) -> torch.Tensor:
        """The probability of the most probable class per point ``[T, N]``."""
        return self.logits.max(-1).values.exp()

    def _labels(self, y) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.device)
        if y.dim() == 3 and y.shape[-1] == 1:
            y = y[..., 0]
        if tuple(y.shape) != tuple(self.logits.shape[:2]):
            raise ValueError(f"y: labels of shape {tuple(self.logits.shape[:2])} (or with a trailing 1) expected; "
                             f"got {tuple(y.shape)}")
        labels = y.round().long() if y.is_floating_point() else y.long()
        if y.is_floating_point() and not torch.equal(labels.to(y.dtype), y):
            raise ValueError("y: class labels must be whole numbers")
        c = self.logits.shape[-1]
        bad = (labels < 0) | (labels >= c)
        if bad.any():
            t, j = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"y: label {int(labels[t, j])} at task {t}, point {j} is outside 0..{c - 1}")
        return labels

    def log_prob(self, y) -> torch.Tensor:
        """``log p(y | x, support)`` per point ``[T, N]`` for labels ``y`` ``[T, N]`` or ``[T, N, 1]``."""
        return self.logits.gather(-1, self._labels(y)[..., None])[..., 0]

    @property
    def mean(self) -> torch.Tensor:
        """The most probable class as ``[T, N, 1]`` floats (what a point prediction of a label is)."""
        return self.mode[..., None].to(self.dtype)

    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels drawn from the predictive, ``[num_samples, T, N, 1]`` (floats, as ``y``)."""
        probs = torch.distributions.Categorical(logits=self.logits).probs.reshape(-1, self.logits.shape[-1])
        draws = torch.multinomial(probs, num_samples, True, generator=generator).T  # [n, T * N], as Categorical.sample
        return draws.reshape(num_samples, *self.logits.shape[:2], 1).to(self.dtype)

    def nonfinite_tasks(self) -> torch.Tensor:
        """``[T]`` bool: tasks with a NaN log probability (``-inf`` marks a class the task does not have)."""
        return torch.isnan(self.logits).flatten(1).any(1)

    def tempered(self, temperature: float | torch.Tensor) -> ClassPredictive:
        """The predictive with log probabilities divided by ``temperature`` (> 1 softens, < 1 sharpens)."""
        t = torch.as_tensor(temperature, dtype=self.dtype, device=self.device)
        if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"temperature must be finite and > 0; got {temperature}")
        return self._like(self.logits / t)

    def __getitem__(self, tasks) -> ClassPredictive:
        return self._like(self.logits[tasks])

    def _like(self, logits: torch.Tensor) -> ClassPredictive:
        """A predictive of other ``logits`` with these diagnostics."""
        new = ClassPredictive(logits)
        new._diagnostics = self._diagnostics
        return new

    def __repr__(self) -> str:
        t, n, c = self.logits.shape
        return f"ClassPredictive(tasks={t}, points={n}, classes={c}{', method=' + self.method if self.method else ''})"
