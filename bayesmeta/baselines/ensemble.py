"""Deep ensembles of meta-learners: n independently initialised members, an equal-weight mixture."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Self

import torch

from ..inference.replay import refuse_shared_replay
from ..predictive import PosteriorPredictive, pad_components, pad_rows

__all__ = ["Ensemble"]


class _AdaptedEnsemble:
    def __init__(self, members: list) -> None:
        self.members = members

    @torch.no_grad()
    def predict(self, x, num_samples=None, **options) -> PosteriorPredictive:
        """Equal-weight mixture of the members' predictives (each may itself be a mixture).

        Options go to every member's ``predict``; one a member cannot use is its error.
        """
        if num_samples is not None:
            options["num_samples"] = num_samples
        preds = [m.predict(x, **options) for m in self.members]
        m = max(p.num_components for p in preds)
        locs, scales, weights = [], [], []
        for p in preds:  # pad with zero-weight components so that members stack
            loc, logw = pad_components(p.loc, p.log_weights - math.log(len(preds)), m)
            locs.append(loc)
            scales.append(pad_rows(torch.as_tensor(p.scale).expand_as(p.loc), m))
            weights.append(logw)
        return PosteriorPredictive(torch.cat(locs), torch.cat(scales), torch.cat(weights), method="ensemble")


class Ensemble:
    """``n`` independently initialised meta-learners whose predictive is their equal-weight mixture.

    Args:
        factory: builds one member, e.g. ``lambda: bm.baselines.MAML(x_dim=1, y_dim=1)``; any
            learner with ``fit`` and ``adapt`` works (BayesLearners too).
        n: number of members (>= 1).
        seed: member ``i`` is initialised under seed ``10007 (i + 1) + 1000003 seed`` (the global
            random state is left as it was).

    ``fit`` trains member ``i`` with seed ``seed + i``; a ``max_time`` budget is split evenly so the
    ensemble costs the same wall-clock time as one learner.
    """

    def __init__(self, factory: Callable[[], Any], n: int = 5, *, seed: int = 0) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (ensemble size) must be an int >= 1; got {n!r}")
        if not callable(factory):
            raise TypeError(f"factory must be callable; got {type(factory).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int; got {seed!r}")
        torch_state = torch.random.get_rng_state()
        self.members = []
        for i in range(n):
            torch.manual_seed(10_007 * (i + 1) + 1_000_003 * seed)  # independent initialisations, reproducibly
            self.members.append(factory())
        torch.random.set_rng_state(torch_state)
        self.n = n

    @property
    def device(self):
        return self.members[0].device

    @property
    def history(self):
        return {f"member {i}": m.history for i, m in enumerate(self.members)}

    def to(self, device) -> Self:
        for m in self.members:
            m.to(device)
        return self

    def fit(self, source, steps: int = 2000, *, max_time: float | None = None, seed: int = 0, **options) -> Self:
        refuse_shared_replay(type(self).__name__, options)
        for i, m in enumerate(self.members):
            m.fit(source, steps, max_time=None if max_time is None else max_time / self.n, seed=seed + i, **options)
        return self

    def adapt(self, *args, **kwargs) -> _AdaptedEnsemble:
        return _AdaptedEnsemble([m.adapt(*args, **kwargs) for m in self.members])
