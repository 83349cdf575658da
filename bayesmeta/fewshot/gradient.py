"""MAML, first-order MAML, Meta-SGD and Reptile with a softmax head, for N-way few-shot classification.

The regression baselines of :mod:`bayesmeta.baselines` with the network's Gaussian head replaced
by ``ways`` logits and the loss by the cross-entropy; inner loops are the same vectorised
``torch.func`` code (every task of a batch adapted at once). Episodes are split per class
(:func:`~bayesmeta.fewshot.base.class_split`) and predictions are :class:`ClassPredictive`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..baselines.base import AdaptedTasks
from ..baselines.maml import FOMAML, MAML, MetaSGD, Reptile
from ..inference.context import FitContext
from ..inference.loop import train_loop
from ..inference.options import History, TrainConfig
from ..inference.stream import Batch, TaskStream
from ..learners import check_adapt_options
from ..predictive import ClassPredictive
from ..tasks.batch import TaskBatch, check_support
from .base import (
    UNUSED,
    check_episodic,
    check_labels,
    class_split,
    episode_validation,
    model_dtype,
    refuse_draw_options,
)

__all__ = ["FOMAMLClassifier", "MAMLClassifier", "MetaSGDClassifier", "ReptileClassifier", "SoftmaxMLP"]


class SoftmaxMLP(nn.Module):
    """``x -> logits [.., N, ways]``: a ReLU MLP with a softmax head (the interface of :class:`GaussianMLP`)."""

    noise = "softmax"  # no residual-scale bookkeeping

    def __init__(self, x_dim: int, ways: int, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        self.x_dim, self.y_dim, self.ways = x_dim, 1, ways
        layers: list[nn.Module] = []
        d = x_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers, nn.Linear(d, ways))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.body(x)
        return logits, logits

    def point_loss(self, logits: torch.Tensor, _unused: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per point ``[.., N]`` of labels ``y [.., N, 1]``."""
        return -torch.log_softmax(logits, -1).gather(-1, y.long())[..., 0]


class AdaptedSoftmax(AdaptedTasks):
    """Each task's adapted network: ``predict(x)`` -> :class:`ClassPredictive` ``[T, N, ways]``."""

    @torch.no_grad()
    def predict(self, x, num_samples: int | None = None, *, method: str | None = None,  # type: ignore[override]
                seed: int | None = None) -> ClassPredictive:
        refuse_draw_options(self.learner, num_samples, method)
        net = self.learner.net
        logits = vmap(lambda p, xi: functional_call(net, p, (xi,))[0])(self.params, self.inputs(x))  # [T, N, W]
        return ClassPredictive(logits, method=type(self.learner).__name__)


class _Softmax:
    """Mixin: a softmax head, per-class episode splits and class predictions for a gradient-based learner."""

    net: Any
    ways: int

    def _classifier_init(self, x_dim: int, ways: int, hidden) -> None:
        if isinstance(ways, bool) or not isinstance(ways, int) or ways < 2:
            raise ValueError(f"ways must be an int >= 2; got {ways!r}")
        self.ways = ways
        self.net = SoftmaxMLP(x_dim, ways, tuple(hidden))

    _validation = episode_validation

    def _unused_options(self, source, distributed: bool) -> dict[str, str]:
        return dict(UNUSED)

    def _meta_train(self, source, cfg: TrainConfig, context: FitContext) -> History:
        name = type(self).__name__
        check_episodic(source, name, self.ways, cfg=cfg, distributed=context.distributed)
        if context.standardize:
            raise ValueError(f"{name}.fit: standardize does not apply to classification episodes")

        def make_step(stream: TaskStream):
            def step(b: Batch) -> torch.Tensor:
                support, query = class_split(b, cfg.max_points, cfg, stream.gen)
                return self.compute_gradients(b.x, b.y, support, query)  # type: ignore[attr-defined]
            return step

        return train_loop(make_step, self._modules(), self.meta_parameters(), source, cfg,  # type: ignore[attr-defined]
                          device=self.device, x_dim=self.x_dim, y_dim=1, grad_mean=True,  # type: ignore[attr-defined]
                          context=replace(context, extra_state=self._extra_state()),  # type: ignore[attr-defined]
                          desc=f"meta-training {name}", whole_episodes=True)

    def adapt(self, x_support, y_support=None, mask_support=None, *, steps: int | None = None,
              lr: float | None = None) -> AdaptedSoftmax:
        """Gradient steps on each task's support cross-entropy (labels ``0..ways-1``); see the regression ``adapt``."""
        check_adapt_options(steps, lr)
        if isinstance(x_support, TaskBatch):
            x_support, y_support, mask_support = x_support.support
        elif y_support is None:
            raise ValueError("adapt: y_support is required unless a TaskBatch is given")
        x, y, mask = check_support(x_support, y_support, mask_support, x_dim=self.net.x_dim, y_dim=1,
                                   min_points=1, prefix="support ")
        labels = check_labels(y, mask, self.ways)
        x = x.to(self.device, model_dtype(self.net))  # type: ignore[attr-defined]  # float64 input is cast
        y, mask = labels[..., None].to(x.dtype).to(self.device), mask.to(self.device)  # type: ignore[attr-defined]
        steps = self.adapt_steps if steps is None else steps  # type: ignore[attr-defined]
        scale = 1.0 if lr is None else lr / self.inner_lr  # type: ignore[attr-defined]
        adapted = self.adapt_batch(x, y, mask, steps=steps, first_order=True, lr_scale=scale)  # type: ignore[attr-defined]
        return AdaptedSoftmax(self, {k: v.detach() for k, v in adapted.items()}, x.shape[0])  # type: ignore[arg-type]


class MAMLClassifier(_Softmax, MAML):
    """MAML with a softmax head over ``ways`` classes (second-order meta-gradients).

    Args:
        x_dim: input features.
        ways: classes per task (the head's size; labels ``0..ways-1``).
        hidden: the MLP's widths.
        inner_steps, inner_lr, adapt_steps: as for the regression MAML (defaults: 5 steps of 0.1,
            the MAML paper's few-shot classification settings).
    """

    def __init__(self, x_dim: int, ways: int = 5, *, hidden: Sequence[int] = (128, 128), inner_steps: int = 5,
                 inner_lr: float = 0.1, adapt_steps: int | None = None) -> None:
        MAML.__init__(self, x_dim, 1, hidden=hidden, inner_steps=inner_steps, inner_lr=inner_lr, noise="mse",
                      adapt_steps=adapt_steps)
        self._classifier_init(x_dim, ways, hidden)

    def _settings(self) -> dict:
        return {**super()._settings(), "ways": self.ways}


class FOMAMLClassifier(_Softmax, FOMAML):
    """First-order MAML with a softmax head (see :class:`MAMLClassifier`)."""

    __init__ = MAMLClassifier.__init__


class MetaSGDClassifier(_Softmax, MetaSGD):
    """Meta-SGD (learned per-entry inner rates) with a softmax head (see :class:`MAMLClassifier`)."""

    def __init__(self, x_dim: int, ways: int = 5, **kwargs) -> None:
        MAMLClassifier.__init__(self, x_dim, ways, **kwargs)  # type: ignore[arg-type]
        self.rates = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(torch.full_like(p, self.inner_lr))
                                       for k, p in self.net.named_parameters()})


class ReptileClassifier(_Softmax, Reptile):
    """Reptile with a softmax head: 5 inner SGD steps of 0.1 on all of an episode's examples, by default."""

    def __init__(self, x_dim: int, ways: int = 5, *, hidden: Sequence[int] = (128, 128), inner_steps: int = 5,
                 inner_lr: float = 0.1, adapt_steps: int | None = None) -> None:
        Reptile.__init__(self, x_dim, 1, hidden=hidden, inner_steps=inner_steps, inner_lr=inner_lr, noise="mse",
                         adapt_steps=adapt_steps)
        self._classifier_init(x_dim, ways, hidden)
