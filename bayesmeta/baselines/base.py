"""Shared machinery of the gradient-based meta-learners: their step of the one training loop, adapt, predict.

Every task of a batch is adapted at once with ``torch.func`` (``vmap`` over tasks of ``grad`` of
the task's masked loss, ``functional_call`` on the shared network): no Python loop over tasks.
Meta-training is :func:`bayesmeta.inference.loop.train_loop` (the loop every learner uses) with
the step :meth:`GradientMetaLearner.compute_gradients`; options are :class:`~bayesmeta.inference.TrainConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from numbers import Integral, Real
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from .._checks import check_query
from ..inference.context import FitContext
from ..inference.loop import train_loop
from ..inference.options import History, TrainConfig
from ..inference.stream import Batch, TaskStream
from ..learners import MetaLearner, check_adapt_options
from ..predictive import PosteriorPredictive
from ..tasks.dataset import Standardization
from .network import GaussianMLP

__all__ = ["GradientMetaLearner", "AdaptedTasks", "split_support_query"]


def _positive_int(name: str, value, *, allowed: str = "an int >= 1", whole=None) -> int:
    """``value`` as an int if it is an integer >= 1 (not a bool); else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be {allowed}; got {value if whole is None else whole!r}")
    return int(value)


def split_support_query(mask: torch.Tensor, max_shots: int, gen: torch.Generator, min_shots: int = 1):
    """Random support / query split of each task's observed points: ``min_shots..max_shots`` support points.

    Every task keeps at least one query point (tasks of a pool with few points get fewer shots).
    """
    u = torch.rand(mask.shape, generator=gen).to(mask.device)
    rank = torch.where(mask, u, torch.full_like(u, 2.0)).argsort(-1).argsort(-1)  # observed points first
    n = mask.sum(-1, keepdim=True)  # [T, 1]
    hi = torch.clamp(n - 1, max=max_shots)  # leave at least one query point
    lo = torch.clamp(hi, max=min_shots)
    k = lo + (torch.rand(n.shape, generator=gen).to(mask.device) * (hi - lo + 1)).floor()  # U{lo..hi}
    support = mask & (rank < k)
    return support, mask & ~support


class AdaptedTasks:
    """Task-specific networks after adaptation: ``predict(x)`` returns a :class:`~bayesmeta.PosteriorPredictive`."""

    def __init__(self, learner: GradientMetaLearner, params: dict[str, torch.Tensor], num_tasks: int) -> None:
        self.learner, self.params, self.num_tasks = learner, params, num_tasks

    def inputs(self, x) -> torch.Tensor:
        """Query inputs ``[T, N, D]`` on the learner's device (``[N, D]`` is shared by every task), checked by
        :func:`bayesmeta._checks.check_query`."""
        dtype = next(iter(self.params.values())).dtype  # the network's: float64 inputs are accepted
        return check_query(x, self.num_tasks, self.learner.net.x_dim, dtype=dtype, device=self.learner.device)

    @torch.no_grad()
    def predict(self, x, num_samples: int | None = None, *, method: str | None = None,
                seed: int | None = None) -> PosteriorPredictive:
        """Gaussian predictive ``[T, N, E]`` at ``x`` (``[T, N, D]`` or ``[N, D]`` for all tasks).

        The predictive is one Gaussian per point (a point estimate of the task's weights), so it
        takes no posterior draws: ``num_samples`` and ``method`` are refused (a ``ValueError``
        naming them), and any ``seed`` gives the same answer.
        """
        name = type(self.learner).__name__
        for arg, value in (("num_samples", num_samples), ("method", method)):
            if value is not None:
                raise ValueError(f"predict: {arg}={value!r} does not apply to {name}, whose predictive is one "
                                 "Gaussian per point (no posterior draws)")
        net = self.learner.net
        x = self.inputs(x)
        std = self.learner.standardization
        if std is not None:
            x = std.x(x)
        mean, scale = vmap(lambda p, xi: functional_call(net, p, (xi,)))(self.params, x)  # [T, N, E]
        pred = PosteriorPredictive(mean[None], scale[None], None, method=type(self.learner).__name__)
        return pred if std is None else std.predictive(pred)


class GradientMetaLearner(MetaLearner):
    """Base class: a :class:`GaussianMLP` whose initialisation is meta-learned.

    Subclasses define :meth:`meta_loss` (or :meth:`meta_step`) on a batch of tasks. ``x_dim``,
    ``y_dim``, the ``hidden`` widths, ``inner_steps`` and ``adapt_steps`` must be ints >= 1 and
    ``inner_lr`` a finite number > 0 (a ``ValueError`` names the argument and its value).
    """

    def __init__(self, x_dim: int, y_dim: int = 1, *, hidden=(40, 40), inner_steps: int = 1, inner_lr: float = 0.01,
                 noise: str = "global", adapt_steps: int | None = None) -> None:
        x_dim, y_dim = _positive_int("x_dim", x_dim), _positive_int("y_dim", y_dim)
        inner_steps = _positive_int("inner_steps", inner_steps)
        if adapt_steps is not None:
            adapt_steps = _positive_int("adapt_steps", adapt_steps, allowed="None or an int >= 1")
        if isinstance(hidden, str) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a sequence of ints >= 1 (layer widths); got {hidden!r}")
        hidden = tuple(_positive_int("hidden", h, allowed="a sequence of ints >= 1 (layer widths)", whole=hidden)
                       for h in hidden)
        if isinstance(inner_lr, bool) or not isinstance(inner_lr, Real) or not 0 < inner_lr < math.inf:
            raise ValueError(f"inner_lr must be > 0 (a finite number); got {inner_lr!r}")
        self.net: GaussianMLP = GaussianMLP(x_dim, y_dim, hidden, noise=noise)
        self.inner_steps: int = inner_steps
        self.inner_lr: float = float(inner_lr)
        self.adapt_steps: int = inner_steps if adapt_steps is None else adapt_steps
        self.history, self.device = History(), torch.device("cpu")
        self.standardization: Standardization | None = None  # set by fit on a TaskBatch pool

    # ------------------------------------------------------------------ inner loop
    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.net.named_parameters())

    def inner_rates(self) -> dict[str, Any]:
        """Inner learning rate per parameter tensor (Meta-SGD learns these)."""
        return dict.fromkeys(self.params(), self.inner_lr)

    def task_loss(self, params, x, y, mask) -> torch.Tensor:
        """Masked mean loss of one task: ``x [N, D]``, ``y [N, E]``, ``mask [N]``."""
        mean, scale = functional_call(self.net, params, (x,))
        per_point = self.net.point_loss(mean, scale, y)  # [N]
        m = mask.to(per_point.dtype)
        return (per_point * m).sum() / m.sum().clamp_min(1)

    def adapt_one(self, params, rates, x, y, mask, steps: int, first_order: bool):
        """``steps`` gradient steps on one task's loss (differentiable unless ``first_order``)."""
        for _ in range(steps):
            g = grad(self.task_loss)(params, x, y, mask)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            params = {k: p - rates[k] * g[k] for k, p in params.items()}
        return params

    def adapt_batch(self, x, y, mask, *, steps: int, first_order: bool, lr_scale: float = 1.0):
        """Adapted parameters of every task at once: each ``[T, *shape]`` (inner rates times ``lr_scale``)."""
        rates = self.inner_rates()
        if lr_scale != 1.0:
            rates = {k: r * lr_scale for k, r in rates.items()}
        fn = lambda xi, yi, mi: self.adapt_one(self.params(), rates, xi, yi, mi, steps, first_order)  # noqa: E731
        return vmap(fn)(x, y, mask)

    def meta_loss(self, x, y, support, query) -> torch.Tensor:
        raise NotImplementedError

    def compute_gradients(self, x, y, support, query) -> torch.Tensor:
        """The step of the training loop: gradients of the meta-loss on :meth:`meta_parameters`.

        ``x [T, N, D]``, ``y [T, N, E]``, ``support``/``query`` ``[T, N]`` masks. Returns the loss
        (a mean over tasks) for the log.
        """
        loss = self.meta_loss(x, y, support, query)
        loss.backward()
        return loss.detach()

    def meta_parameters(self) -> list[torch.Tensor]:
        return list(self.net.parameters())

    def _modules(self) -> dict[str, torch.nn.Module | None]:
        return {"net": self.net}

    # ------------------------------------------------------------------ the Learner protocol
    @property
    def x_dim(self) -> int:
        return self.net.x_dim

    @property
    def y_dim(self) -> int:
        return self.net.y_dim

    def _settings(self) -> dict:
        return {"learner": type(self).__name__, "inner_steps": self.inner_steps, "inner_lr": self.inner_lr}

    def _unused_options(self, source, distributed: bool) -> dict[str, str]:
        return {"encoder_subsets": f"{type(self).__name__} has no encoder",
                "polish": "the marginal-likelihood polish is a BayesLearner's (a hierarchical Pyro model's)"}

    def _meta_train(self, source, cfg: TrainConfig, context: FitContext) -> History:
        """Each step splits every task at random into ``U{min_shots..max_shots}`` support points and a query set."""
        source = self._prepare_source(source, context.resume, context.standardize, default=True)

        def make_step(stream: TaskStream):
            def step(b: Batch) -> torch.Tensor:
                support, query = split_support_query(b.mask, cfg.max_shots, stream.gen, cfg.min_shots)
                return self.compute_gradients(b.x, b.y, support, query)
            return step

        return train_loop(make_step, self._modules(), self.meta_parameters(), source, cfg, device=self.device,
                          x_dim=self.x_dim, y_dim=self.y_dim, min_points=2, grad_mean=True,
                          context=replace(context, extra_state=self._extra_state()),
                          desc=f"meta-training {type(self).__name__}")

    def _update_residual_scale(self, x, y, query, adapted) -> None:
        """The ``"mse"`` head's predictive scale: running RMS of query residuals (no host sync)."""
        if self.net.noise != "mse":
            return
        with torch.no_grad():
            mean = vmap(lambda p, xi: functional_call(self.net, p, (xi,))[0])(adapted, x)  # [T, N, E]
            m = query[..., None].to(mean.dtype)
            rms = (((mean - y) ** 2 * m).sum((0, 1)) / m.sum((0, 1)).clamp_min(1)).sqrt()
            self.net.residual_scale.mul_(0.99).add_(0.01 * rms)

    def adapt(self, x_support, y_support=None, mask_support=None, *, steps: int | None = None,
              lr: float | None = None) -> AdaptedTasks:
        """Adapt the meta-learned network to each task's support set.

        Args:
            x_support: ``[T, S, D]`` inputs, or a :class:`TaskBatch` (its support set is used).
            y_support: ``[T, S, E]`` targets; ``mask_support``: ``[T, S]`` bool (``None``: all).
            steps: test-time adaptation steps, as on every learner: gradient steps on the
                support loss (default ``adapt_steps``).
            lr: their step size (default: the inner learning rate; Meta-SGD's learned rates
                are scaled by ``lr / inner_lr``).

        Raises:
            ValueError: a task with no support points (gradient adaptation needs at least one).
        """
        check_adapt_options(steps, lr)
        x, y, mask, _ = self._support(x_support, y_support, mask_support, min_points=1)
        dtype = next(self.net.parameters()).dtype
        x, y = x.to(dtype), y.to(dtype)  # float64 inputs are cast to the network's dtype
        steps = self.adapt_steps if steps is None else steps
        scale = 1.0 if lr is None else lr / self.inner_lr
        adapted = self.adapt_batch(x, y, mask, steps=steps, first_order=True, lr_scale=scale)
        return AdaptedTasks(self, {k: v.detach() for k, v in adapted.items()}, x.shape[0])
