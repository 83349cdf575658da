"""Post-hoc and ensemble fixes of point-estimate classifiers: temperature scaling and deep ensembles.

* **Temperature scaling** (Guo et al. 2017): one scalar ``T > 0`` divides every log probability;
  fitted by minimising the NLL of held-out (validation) episodes' query labels. It changes
  confidence, never the predicted class. :class:`TemperatureScaled` wraps any classifier.
* **Deep ensembles** (Lakshminarayanan et al. 2017): :class:`ClassifierEnsemble` trains several
  members from different seeds and averages their class probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from ..inference.options import History
from ..inference.replay import refuse_shared_replay
from ..predictive import ClassPredictive
from ..tasks.batch import TaskBatch

__all__ = ["ClassifierEnsemble", "TemperatureScaled", "fit_temperature"]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, bounds=(0.05, 20.0)) -> float:
    """The temperature minimising the mean NLL of ``labels`` ``[M]`` under ``softmax(logits / T)`` ``[M, C]``.

    The NLL is convex in ``1 / T``: a golden-section search on ``log T`` within ``bounds`` finds it to
    1e-4 relative precision.
    """
    logits, labels = logits.double().reshape(-1, logits.shape[-1]), labels.reshape(-1).long()
    if logits.shape[0] == 0:
        raise ValueError("fit_temperature: no labelled points")
    finite = torch.isfinite(logits)
    logits = torch.where(finite, logits, torch.full_like(logits, -1e30))  # absent classes stay absent

    def nll(log_t: float) -> float:
        lp = torch.log_softmax(logits / math.exp(log_t), -1)
        return float(-lp.gather(-1, labels[:, None]).mean())

    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-4:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


class _Tempered:
    def __init__(self, adapted, temperature: float) -> None:
        self.adapted, self.temperature = adapted, temperature

    def predict(self, x, **options) -> ClassPredictive:
        pred = self.adapted.predict(x, **options)
        return pred.tempered(self.temperature).with_diagnostics(method=f"{pred.method}+T")


class TemperatureScaled:
    """A classifier whose class probabilities are tempered by a temperature fitted on validation episodes.

    Example:
        >>> # clf = bm.fewshot.ProtoNet(x_dim=16).fit(train_episodes, steps=2000)
        >>> # ts = bm.fewshot.TemperatureScaled(clf).calibrate(val_episodes.sample(200, 5, 15))
        >>> # ts.temperature, ts.adapt(test).predict(test.x_query)
    """

    def __init__(self, learner, temperature: float = 1.0) -> None:
        if not hasattr(learner, "adapt"):
            raise TypeError(f"learner must have adapt(); got {type(learner).__name__}")
        self.learner, self.temperature = learner, float(temperature)

    @property
    def device(self) -> torch.device:
        return getattr(self.learner, "device", torch.device("cpu"))

    def calibrate(self, tasks: TaskBatch | dict[int, TaskBatch]) -> TemperatureScaled:
        """Fit the temperature on validation episodes (a TaskBatch, or ``{shots: TaskBatch}`` pooled); returns ``self``."""
        batches = list(tasks.values()) if isinstance(tasks, dict) else [tasks]
        logits, labels = [], []
        for b in batches:
            if not isinstance(b, TaskBatch) or not b.has_query:
                raise ValueError("calibrate: tasks must be TaskBatch episodes with query sets")
            xq, yq, m = b.query
            pred = self.learner.adapt(b).predict(xq)
            logits.append(pred.logits[m.to(pred.device)].cpu())
            labels.append(yq[..., 0][m].round().long().cpu())
        self.temperature = fit_temperature(torch.cat(logits), torch.cat(labels))
        return self

    def adapt(self, *args, **kwargs) -> _Tempered:
        return _Tempered(self.learner.adapt(*args, **kwargs), self.temperature)


class ClassifierEnsemble:
    """Deep ensemble: ``members`` classifiers from ``make(seed)``, trained with seeds ``seed..seed+members-1``.

    ``fit`` splits ``steps`` and ``max_time`` evenly among the members; ``predict`` averages
    their class probabilities.
    """

    def __init__(self, make: Callable[[int], object], members: int = 5) -> None:
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members must be an int >= 1; got {members!r}")
        self.make, self.members = make, [make(i) for i in range(members)]
        self.history = History()

    @property
    def device(self) -> torch.device:
        return getattr(self.members[0], "device", torch.device("cpu"))

    def fit(self, source, steps: int | None = None, *, config=None, **options) -> ClassifierEnsemble:
        refuse_shared_replay(type(self).__name__, options)
        n = len(self.members)
        seed = options.pop("seed", getattr(config, "seed", 0))
        max_time = options.get("max_time", getattr(config, "max_time", None))
        if max_time is not None:  # the ensemble's budget is shared by its members
            options["max_time"] = max_time / n
        for i, m in enumerate(self.members):
            cfg = None if config is None else replace(config, seed=seed + i)
            m.fit(source, None if steps is None else max(1, steps // n), config=cfg,  # type: ignore[attr-defined]
                  **({} if cfg is not None else {"seed": seed + i}), **options)
        self.history = self.members[0].history  # type: ignore[attr-defined]
        return self

    def adapt(self, *args, **kwargs) -> _Averaged:
        return _Averaged([m.adapt(*args, **kwargs) for m in self.members])  # type: ignore[attr-defined]


class _Averaged:
    def __init__(self, adapted: list) -> None:
        self.adapted = adapted

    def predict(self, x, **options) -> ClassPredictive:
        preds = [a.predict(x, **options) for a in self.adapted]
        logp = torch.logsumexp(torch.stack([p.logits for p in preds]), 0) - math.log(len(preds))
        return ClassPredictive(logp, method=f"ensemble({preds[0].method})")
