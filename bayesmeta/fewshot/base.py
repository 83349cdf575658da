"""What every few-shot classifier shares: episodic meta-training, checked labels, ``adapt`` and ``predict``.

Meta-training draws whole episodes from an episodic family (:class:`~bayesmeta.tasks.Episodes`,
:class:`~bayesmeta.tasks.GaussianClusters`): ``max_points`` examples per class, of which each
task keeps ``U{min_shots..max_shots}`` per class as its support set and the rest as its query
set (:func:`class_split`). The loop is :func:`bayesmeta.inference.loop.train_loop`, the one every
learner uses (progress bar, ``max_time``, checkpoints, seeds).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .._checks import check_query
from ..inference.context import FitContext
from ..inference.loop import train_loop
from ..inference.options import History, TrainConfig
from ..inference.stream import Batch, TaskStream
from ..learners import MetaLearner, check_adapt_options
from ..predictive import ClassPredictive
from ..predictive.scoring import confidence_and_correct, task_nll
from ..tasks.batch import TaskBatch, check_support

__all__ = ["AdaptedClassifier", "EpisodicClassifier", "check_episodic", "check_labels", "check_pool_size",
           "class_split", "episode_validation", "EpisodeValidation", "model_dtype", "refuse_draw_options",
           "support_ways"]

UNUSED = {"encoder_subsets": "a few-shot classifier has no set encoder",
          "polish": "the marginal-likelihood polish is a BayesLearner's (a hierarchical Pyro model's)",
          "min_points": "episodes keep min_shots..max_shots examples per class as support"}


def check_episodic(source, name: str, ways: int | None = None, *, cfg: TrainConfig | None = None,
                   distributed: bool = False) -> None:
    """A few-shot classifier meta-trains on an episodic family; ``ways`` must match a fixed-size head."""
    if distributed:
        raise ValueError(f"{name}.fit: distributed training is not implemented for few-shot classifiers")
    if cfg is not None and cfg.max_points < 2:
        raise ValueError(f"{name}.fit: max_points (examples per class per training episode) must be >= 2, so that "
                         f"each class has a support and a query example; got {cfg.max_points}")
    if not getattr(source, "episodic", False):
        raise TypeError(f"{name}.fit: source must be an episodic task family (bm.tasks.Episodes, "
                        f"bm.tasks.GaussianClusters); got {type(source).__name__}")
    if ways is not None and source.ways != ways:
        raise ValueError(f"{name}.fit: the episodes are {source.ways}-way but the classifier was built for "
                         f"ways={ways}")
    if cfg is not None:
        check_pool_size(source, cfg, name)


def check_labels(y: torch.Tensor, mask: torch.Tensor, ways: int | None = None, *, prefix: str = "support ") -> torch.Tensor:
    """Labels ``[T, S]`` (long) from ``y [T, S, 1]``: whole numbers >= 0 (and < ``ways``) at observed points."""
    if y.shape[-1] != 1:
        raise ValueError(f"{prefix}y: one class label per point expected; got y_dim={y.shape[-1]}")
    v = y[..., 0]
    bad = mask & ((v != v.round()) | (v < 0) | (ways is not None and v >= ways))
    if bad.any():
        t, j = (int(i) for i in bad.nonzero()[0])
        allowed = "a whole number >= 0" if ways is None else f"a whole number in 0..{ways - 1}"
        raise ValueError(f"{prefix}y: label {float(v[t, j])} at task {t}, point {j} is not {allowed}")
    return v.round().long().masked_fill(~mask, 0)


def support_ways(labels: torch.Tensor, mask: torch.Tensor, *, prefix: str = "support ") -> int:
    """The classes of support sets given without ``ways``: the most distinct labels of any task (at least 2).

    Labels must then be ``0..ways-1``: a label beyond (a 7 among three classes) is an error naming it,
    not a head widened to 8 classes.
    """
    if not bool(mask.any()):
        raise ValueError("adapt: no support examples; pass ways= to predict from the prior alone")
    t = labels.shape[0]
    present = torch.zeros(t, int(labels[mask].max()) + 1, dtype=torch.bool, device=labels.device)  # [T, L]
    present[torch.arange(t, device=labels.device)[:, None].expand_as(labels)[mask], labels[mask]] = True
    ways = max(2, int(present.sum(-1).max()))
    bad = mask & (labels >= ways)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{prefix}y: label {int(labels[i, j])} at task {i}, point {j} is not in 0..{ways - 1}: the "
                         f"support sets hold at most {ways} classes, so labels must be 0..{ways - 1} (relabel them, "
                         "or pass ways= when some classes have no support examples)")
    return ways


def model_dtype(net: torch.nn.Module) -> torch.dtype:
    """The dtype a network computes in (inputs of another float dtype are cast to it)."""
    return next(net.parameters()).dtype


def check_pool_size(source, cfg: TrainConfig, name: str) -> None:
    """A finite pool's smallest class must hold ``max_points`` examples (one training episode's per class)."""
    pool = getattr(source, "pool", None)
    counts = getattr(pool, "counts", None)
    if pool is None or counts is None or not len(counts) or int(counts.min()) >= cfg.max_points:
        return
    i = int(counts.argmin())
    raise ValueError(f"{name}.fit: max_points={cfg.max_points} (examples per class in a training episode) but class "
                     f"{pool.classes[i]!r} has only {int(counts[i])} examples; pass max_points={int(counts[i])} or "
                     "fewer (at least 2: a support and a query example)")


class EpisodeValidation:
    """Fixed validation episodes scored with the test-time procedure: what early stopping watches.

    Args:
        validation: an episodic family over the validation classes (``Episodes(val_pool, ways)``;
            ``episodes`` tasks per shot count are drawn once, ``query`` examples per class), or
            ``{shots per class: TaskBatch}``.
        shots: shot counts per class (default ``cfg.val_shots`` or ``(1, 5)``).
    """

    def __init__(self, validation, *, shots=(), episodes: int = 200, query: int = 15, seed: int = 0,
                 chunk: int = 100) -> None:
        if isinstance(validation, dict):
            self.sets = dict(validation)
        elif getattr(validation, "episodic", False):
            shots = tuple(shots) or (1, 5)
            pool = getattr(validation, "pool", None)
            if pool is not None:  # small validation classes: fewer query examples
                query = min(query, int(pool.counts.min()) - max(shots))
                if query < 1:
                    raise ValueError(f"validation: a validation class has {int(pool.counts.min())} examples, too few "
                                     f"for {max(shots)} shots and a query example; set val_shots")
            g = lambda k: torch.Generator().manual_seed(seed * 1000 + 7919 + k)  # noqa: E731
            self.sets = {k: validation.sample(episodes, shots=k, num_query=query, generator=g(k)) for k in shots}
        else:
            raise TypeError("validation: a few-shot classifier validates on an episodic family of validation classes "
                            f"(bm.tasks.Episodes) or a dict {{shots: TaskBatch}}; got {type(validation).__name__}")
        self.chunk = chunk

    def score(self, learner) -> dict:
        """Mean query NLL per episode and shot count (paired across validations), and accuracy per shot count,
        by :mod:`bayesmeta.predictive.scoring` (as ``bm.evaluate``)."""
        per_shot, per_task = [], []
        with torch.random.fork_rng():
            torch.manual_seed(0)
            for k, batch in self.sets.items():
                nll, hits, n = [], 0.0, 0
                for lo in range(0, len(batch), self.chunk):
                    b = batch[lo:lo + self.chunk].to(learner.device)
                    xq, yq, mq = b.query
                    pred = learner.adapt(b).predict(xq)
                    with torch.no_grad():
                        nll.append(task_nll(pred, yq, mq).double().cpu())  # [T]
                        correct = confidence_and_correct(pred.probs, yq, mq)[1]  # [M] observed query points
                        hits += float(correct.sum())
                        n += correct.numel()
                v = torch.cat(nll)
                per_task.append(v)
                per_shot.append({"shots": k, "nll": float(v.mean()), "coverage_90": math.nan, "accuracy": hits / n,
                                 "tasks": len(v)})
        return {"nll": sum(s["nll"] for s in per_shot) / len(per_shot), "coverage_90": math.nan,
                "per_shot": per_shot, "task_nll": torch.cat(per_task)}


def episode_validation(learner, source, validation, cfg, distributed):
    """``fit(..., validation=)`` of a few-shot classifier: validation episodes (early stopping), or none."""
    if validation is None or validation is False:
        return source, None
    held = EpisodeValidation(validation, shots=cfg.val_shots, seed=cfg.seed)
    return source, lambda: held.score(learner)


def class_split(batch: Batch, per_class: int, cfg: TrainConfig, gen: torch.Generator):
    """Support / query masks ``[T, W * P]`` of class-blocked episodes: the first ``K_t`` of each class's P examples.

    ``K_t ~ U{min_shots..min(max_shots, P - 1)}`` per task, so every class keeps a query example.
    """
    t, n = batch.mask.shape
    hi = max(1, min(cfg.max_shots, per_class - 1))
    lo = min(cfg.min_shots, hi)
    k = torch.randint(lo, hi + 1, (t, 1), generator=gen).to(batch.mask.device)  # [T, 1]
    pos = torch.arange(n, device=batch.mask.device) % per_class  # [W * P] position within its class
    support = batch.mask & (pos < k)
    return support, batch.mask & ~support


def refuse_draw_options(learner, num_samples, method) -> None:
    """``predict`` of a classifier with closed-form probabilities takes no posterior-draw options."""
    for arg, value in (("num_samples", num_samples), ("method", method)):
        if value is not None:
            raise ValueError(f"predict: {arg}={value!r} does not apply to {type(learner).__name__}, whose class "
                             "probabilities are computed in closed form (no posterior draws)")


class AdaptedClassifier:
    """A classifier adapted to each task's support set: ``predict(x_query)`` -> :class:`ClassPredictive`."""

    def __init__(self, learner: EpisodicClassifier, x, labels, mask, ways: int) -> None:
        self.learner, self.x, self.labels, self.mask, self.ways = learner, x, labels, mask, ways

    @property
    def num_tasks(self) -> int:
        return self.x.shape[0]

    @torch.no_grad()
    def predict(self, x, num_samples: int | None = None, *, method: str | None = None,
                seed: int | None = None) -> ClassPredictive:
        """Class probabilities ``[T, N, ways]`` at ``x`` (``[T, N, D]``, or ``[N, D]`` for every task)."""
        name = type(self.learner).__name__
        refuse_draw_options(self.learner, num_samples, method)
        xq = check_query(x, self.num_tasks, self.learner.x_dim, dtype=self.x.dtype, device=self.x.device)
        self.learner.eval_mode()
        logits = self.learner.class_logits(self.x, self.labels, self.mask, xq, self.ways)
        return ClassPredictive(logits, method=name)


class EpisodicClassifier(MetaLearner):
    """Base of the metric-based few-shot classifiers (the Learner protocol for classes).

    Subclasses hold their modules in ``self.net`` and implement :meth:`class_logits`
    (differentiable; used for training and prediction) and, when the training loss is not the
    query cross-entropy, :meth:`episode_loss`.
    """

    net: torch.nn.Module

    def __init__(self, x_dim: int) -> None:
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be an int >= 1; got {x_dim!r}")
        self._x_dim = x_dim
        self.history, self.device, self.standardization = History(), torch.device("cpu"), None

    @property
    def x_dim(self) -> int:
        return self._x_dim

    @property
    def y_dim(self) -> int:
        return 1

    def _modules(self) -> dict[str, torch.nn.Module | None]:
        return {"net": self.net}

    def _unused_options(self, source, distributed: bool) -> dict[str, str]:
        return dict(UNUSED)

    _validation = episode_validation

    def eval_mode(self) -> None:
        self.net.eval()

    def class_logits(self, x_support, labels, mask, x_query, ways: int) -> torch.Tensor:
        """Unnormalised ``log p(y = c | x_query, support)`` ``[T, N, ways]``."""
        raise NotImplementedError

    def episode_loss(self, x, labels, support, query, ways: int) -> torch.Tensor:
        """Mean cross-entropy of the query labels given the support set, per task ``[T]``."""
        logits = self.class_logits(x, labels, support, x, ways)  # [T, N, W]: every point scored, query kept
        nll = -torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]  # [T, N]
        q = query.to(nll.dtype)
        return (nll * q).sum(-1) / q.sum(-1).clamp_min(1)

    def _meta_train(self, source, cfg: TrainConfig, context: FitContext) -> History:
        check_episodic(source, type(self).__name__, getattr(self, "ways", None), cfg=cfg,
                       distributed=context.distributed)
        if context.standardize:
            raise ValueError(f"{type(self).__name__}.fit: standardize does not apply to classification episodes")
        ways, per_class = source.ways, cfg.max_points

        def make_step(stream: TaskStream):
            def step(b: Batch) -> torch.Tensor:
                self.net.train()
                labels = b.y[..., 0].round().long()  # [T, W * P]
                support, query = class_split(b, per_class, cfg, stream.gen)
                loss = self.episode_loss(b.x, labels, support, query, ways).mean()
                loss.backward()
                return loss.detach()
            return step

        return train_loop(make_step, self._modules(), list(self.net.parameters()), source, cfg, device=self.device,
                          x_dim=self.x_dim, y_dim=1, grad_mean=True,
                          context=replace(context, extra_state=self._extra_state()),
                          desc=f"meta-training {type(self).__name__}", whole_episodes=True)

    def adapt(self, x_support, y_support=None, mask_support=None, *, ways: int | None = None,
              steps: int | None = None, lr: float | None = None) -> AdaptedClassifier:
        """Condition on each task's support set (labels ``0..ways-1``); ``predict`` gives class probabilities.

        Args:
            x_support: ``[T, S, D]`` features, or a :class:`TaskBatch` (its support set).
            y_support: ``[T, S]`` or ``[T, S, 1]`` labels (whole numbers).
            mask_support: ``[T, S]`` bool (``None``: all observed).
            ways: classes per task (default: the largest support label + 1, at least 2).
            steps, lr: test-time gradient steps do not apply to metric methods (must be ``None``
                or 0).
        """
        check_adapt_options(steps, lr)
        if steps or lr is not None:
            raise ValueError(f"adapt: {type(self).__name__} has no test-time gradient steps (steps/lr)")
        if isinstance(x_support, TaskBatch):
            x_support, y_support, mask_support = x_support.support
        elif y_support is None:
            raise ValueError("adapt: y_support is required unless a TaskBatch is given")
        x, y, mask = check_support(x_support, y_support, mask_support, x_dim=self.x_dim, y_dim=1, prefix="support ")
        labels = check_labels(y, mask, ways)
        if ways is None:
            ways = support_ways(labels, mask)
        x = x.to(self.device, model_dtype(self.net))  # [T, S, D] in the network's dtype (float64 input is cast)
        return AdaptedClassifier(self, x, labels.to(self.device), mask.to(self.device), ways)
