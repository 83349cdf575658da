"""Shared machinery of the gradient-based meta-learners: config, task batches, fit, adapt, predict.

Every task of a batch is adapted at once with ``torch.func`` (``vmap`` over tasks of ``grad`` of
the task's masked loss, ``functional_call`` on the shared network): no Python loop over tasks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from numbers import Integral, Real

import torch
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from ..inference.distributed import all_reduce_, broadcast_parameters, check_same_config, init_from_env
from ..inference.trainer import OPTIMIZERS, History, TaskStream, resolve_device, set_lr
from ..predictive import PosteriorPredictive
from ..tasks.batch import TaskBatch, check_support
from ..tasks.dataset import Standardization, standardize_pool
from .network import GaussianMLP

__all__ = ["BaselineConfig", "GradientMetaLearner", "AdaptedTasks"]


@dataclass(frozen=True)
class BaselineConfig:
    """Meta-training options of the gradient-based baselines; validated on construction.

    Each step draws ``tasks_per_step`` tasks with up to ``max_points`` points and splits each at
    random into a support set of ``min_shots..max_shots`` points and a query set of the rest.
    """

    steps: int = 2000
    max_time: float | None = None
    tasks_per_step: int = 25
    optimizer: str = "adam"
    lr: float = 1e-3
    final_lr_fraction: float = 1.0
    clip_norm: float | None = 10.0
    max_points: int = 20
    min_shots: int = 1
    max_shots: int = 10
    seed: int = 0
    progress: bool = True
    log_every: int = 50

    @property
    def min_points(self) -> int:  # the task stream's minimum: one support and one query point
        return 2

    def __post_init__(self) -> None:
        checks = [
            ("steps", isinstance(self.steps, int) and self.steps >= 1, "an int >= 1"),
            ("max_time", self.max_time is None or self.max_time > 0, "None or > 0 seconds"),
            ("tasks_per_step", isinstance(self.tasks_per_step, int) and self.tasks_per_step >= 1, "an int >= 1"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {tuple(OPTIMIZERS)}"),
            ("lr", self.lr > 0, "> 0"),
            ("final_lr_fraction", 0 < self.final_lr_fraction <= 1, "in (0, 1]"),
            ("clip_norm", self.clip_norm is None or self.clip_norm > 0, "None or > 0"),
            ("max_points", isinstance(self.max_points, int) and self.max_points >= 2, "an int >= 2"),
            ("max_shots", isinstance(self.max_shots, int) and 1 <= self.max_shots < self.max_points,
             "an int in [1, max_points)"),
            ("min_shots", isinstance(self.min_shots, int) and 1 <= self.min_shots <= self.max_shots,
             "an int in [1, max_shots]"),
            ("log_every", self.log_every >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}; got {getattr(self, name)!r}")


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

    @torch.no_grad()
    def predict(self, x, num_samples=None, *, method=None, seed=None) -> PosteriorPredictive:
        """Gaussian predictive ``[T, N, E]`` at ``x`` (``[T, N, D]`` or ``[N, D]`` for all tasks).

        ``num_samples``, ``method`` and ``seed`` are accepted for interface compatibility with
        :meth:`bayesmeta.Posterior.predict` and ignored: the predictive is one Gaussian per point.
        """
        net = self.learner.net
        x = torch.as_tensor(x, dtype=torch.get_default_dtype() if not torch.is_tensor(x) else x.dtype)
        x = x.to(self.learner.device)
        if x.dim() == 2:
            x = x.expand(self.num_tasks, *x.shape)
        if x.dim() != 3 or x.shape[0] != self.num_tasks or x.shape[-1] != net.x_dim:
            raise ValueError(f"x must have shape [{self.num_tasks}, N, {net.x_dim}] or [N, {net.x_dim}]; "
                             f"got {tuple(x.shape)}")
        std = self.learner.standardization
        if std is not None:
            x = std.x(x)
        mean, scale = vmap(lambda p, xi: functional_call(net, p, (xi,)))(self.params, x)  # [T, N, E]
        pred = PosteriorPredictive(mean[None], scale[None], None, method=type(self.learner).__name__)
        return pred if std is None else std.predictive(pred)


class GradientMetaLearner:
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
        self.net = GaussianMLP(x_dim, y_dim, hidden, noise=noise)
        self.inner_steps, self.inner_lr = inner_steps, float(inner_lr)
        self.adapt_steps = inner_steps if adapt_steps is None else adapt_steps
        self.history, self.device = History(), torch.device("cpu")
        self.standardization: Standardization | None = None  # set by fit on a TaskBatch pool
        self._distributed, self._time_up = None, False

    # ------------------------------------------------------------------ inner loop
    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.net.named_parameters())

    def inner_rates(self) -> dict[str, torch.Tensor | float]:
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

    def adapt_batch(self, x, y, mask, *, steps: int, first_order: bool):
        """Adapted parameters of every task at once: each ``[T, *shape]``."""
        rates = self.inner_rates()
        fn = lambda xi, yi, mi: self.adapt_one(self.params(), rates, xi, yi, mi, steps, first_order)  # noqa: E731
        return vmap(fn)(x, y, mask)

    def meta_loss(self, x, y, support, query) -> torch.Tensor:
        raise NotImplementedError

    def meta_step(self, optim, x, y, support, query, clip_norm) -> torch.Tensor:
        """One outer update; returns the loss (per task) for the log."""
        optim.zero_grad(set_to_none=True)
        loss = self.meta_loss(x, y, support, query)
        loss.backward()
        loss = self.average_over_ranks(loss)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.meta_parameters(), clip_norm)
        optim.step()
        return loss.detach()

    def meta_parameters(self) -> list[torch.Tensor]:
        return list(self.net.parameters())

    def average_over_ranks(self, loss: torch.Tensor) -> torch.Tensor:
        """Distributed training: average gradients and loss over ranks (the loss is a mean over tasks).

        The ranks' "time is up" flags travel in the same message, so all stop after the same step.
        """
        ctx = getattr(self, "_distributed", None)
        if ctx is None:
            return loss
        params = self.meta_parameters()
        reduced = all_reduce_(params, loss, float(self._time_up))
        for p in params:
            p.grad.div_(ctx.world_size)
        self._stop_votes = reduced[1]  # read (a host sync) only at log steps, the same step on every rank
        return reduced[0] / ctx.world_size

    # ------------------------------------------------------------------ the Learner protocol
    def to(self, device) -> GradientMetaLearner:
        self.device = resolve_device(device)
        self.net.to(self.device)
        return self

    def fit(self, source, steps: int = 2000, *, max_time: float | None = None, tasks_per_step: int = 25,
            device=None, seed: int = 0, lr: float = 1e-3, progress: bool = True, distributed: bool = False,
            standardize: bool | None = None, **options) -> GradientMetaLearner:
        """Meta-train on a task family (endless) or a ``TaskBatch`` pool; same signature as ``BayesLearner.fit``.

        Stops after ``steps`` or ``max_time`` seconds, whichever comes first. Further options are
        fields of :class:`BaselineConfig`. With ``distributed=True`` (under ``torchrun``) each rank
        draws its own tasks and gradients are averaged over ranks every step. Returns ``self``; the
        trace is ``self.history``. ``standardize`` as in ``BayesLearner.fit``: by default a
        ``TaskBatch`` pool is standardised (each column's mean and sd), so data in natural units
        train at the default learning rate; ``adapt`` and ``predict`` stay in natural units.
        """
        unknown = set(options) - set(BaselineConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"fit: unknown option(s) {sorted(unknown)}; allowed: {sorted(BaselineConfig.__dataclass_fields__)}")
        cfg = BaselineConfig(steps=steps, max_time=max_time, tasks_per_step=tasks_per_step, seed=seed, lr=lr,
                             progress=progress, **options)
        self.to(self.device if device is None else device)  # None: train where the learner is
        source, self.standardization = standardize_pool(source, standardize, default=True)
        ctx = init_from_env(self.device) if distributed else None
        rank, world = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
        torch.manual_seed(cfg.seed + 1_000_003 * rank)
        stream = TaskStream(source, cfg, self.device, self.net.x_dim, self.net.y_dim, rank=rank, world_size=world)
        if ctx is not None:
            check_same_config(ctx, {k: v for k, v in asdict(cfg).items() if k != "progress"}, self.device)
            broadcast_parameters(self.meta_parameters())
        optim = OPTIMIZERS[cfg.optimizer](self.meta_parameters(), lr=cfg.lr)
        self._distributed = ctx
        try:
            self.history = self._train(stream, optim, cfg, show=cfg.progress and rank == 0)
        finally:
            self._distributed = None
        self.train_config = asdict(cfg)
        return self

    def _train(self, stream, optim, cfg: BaselineConfig, *, show: bool) -> History:
        history, start = History(), time.perf_counter()
        bar = tqdm(total=cfg.steps, disable=not show, desc=f"meta-training {type(self).__name__}", leave=False)
        try:
            for step in range(1, cfg.steps + 1):
                set_lr(optim, cfg, step, time.perf_counter() - start)
                x, y, mask, _ = stream.next()
                support, query = split_support_query(mask, cfg.max_shots, stream.gen, cfg.min_shots)
                self._time_up = cfg.max_time is not None and time.perf_counter() - start >= cfg.max_time
                loss = self.meta_step(optim, x, y, support, query, cfg.clip_norm)
                bar.update(1)
                time_up = self._time_up
                if self._distributed is not None:
                    time_up = (step % cfg.log_every == 0 or step == cfg.steps) and float(self._stop_votes) > 0
                if step % cfg.log_every == 0 or step == cfg.steps:
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"meta-training {type(self).__name__}: non-finite loss at step {step}")
                    history.step.append(step)
                    history.loss.append(float(loss))
                    history.time.append(time.perf_counter() - start)
                    history.lr.append(optim.param_groups[0]["lr"])
                    bar.set_postfix(loss=f"{float(loss):.3f}")
                if time_up:
                    break
        finally:
            bar.close()
        if not history.step or history.step[-1] != step:
            history.step.append(step)
            history.loss.append(float(loss))
            history.time.append(time.perf_counter() - start)
            history.lr.append(optim.param_groups[0]["lr"])
        return history

    def _update_residual_scale(self, x, y, query, adapted) -> None:
        """The ``"mse"`` head's predictive scale: running RMS of query residuals (no host sync)."""
        if self.net.noise != "mse":
            return
        with torch.no_grad():
            mean = vmap(lambda p, xi: functional_call(self.net, p, (xi,))[0])(adapted, x)  # [T, N, E]
            m = query[..., None].to(mean.dtype)
            rms = (((mean - y) ** 2 * m).sum((0, 1)) / m.sum((0, 1)).clamp_min(1)).sqrt()
            self.net.residual_scale.mul_(0.99).add_(0.01 * rms)

    def adapt(self, x_support, y_support=None, mask_support=None, *, steps: int | None = None) -> AdaptedTasks:
        """Adapt the meta-learned network to each task's support set (``adapt_steps`` steps by default).

        Raises:
            ValueError: a task with no support points (gradient adaptation needs at least one).
        """
        if isinstance(x_support, TaskBatch):
            x_support, y_support, mask_support = x_support.support
        elif y_support is None:
            raise ValueError("adapt: y_support is required unless a TaskBatch is given")
        x, y, mask = check_support(x_support, y_support, mask_support, x_dim=self.net.x_dim, y_dim=self.net.y_dim,
                                   min_points=1, prefix="support ")
        steps = self.adapt_steps if steps is None else steps
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0; got {steps!r}")
        x, y, mask = x.to(self.device), y.to(self.device), mask.to(self.device)
        std = self.standardization
        if std is not None:
            x, y = std.x(x), std.y(y)
        adapted = self.adapt_batch(x, y, mask, steps=steps, first_order=True)
        return AdaptedTasks(self, {k: v.detach() for k, v in adapted.items()}, x.shape[0])
