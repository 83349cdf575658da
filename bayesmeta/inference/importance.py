"""Importance sampling of task posteriors with a defensive proposal, and its diagnostics."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .._compat import arviz

__all__ = ["defensive_importance", "effective_sample_size", "pareto_k", "chunked"]

DEFAULT_MIX = {"guide": 0.5, "widened": 0.3, "prior": 0.2}


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, chunk: int) -> torch.Tensor:
    """Apply ``fn`` to ``theta [n, ...]`` in chunks of ``chunk`` samples; concatenate along dim 0."""
    return torch.cat([fn(theta[i : i + chunk]) for i in range(0, theta.shape[0], chunk)], 0)


def defensive_importance(
    log_joint: Callable[[torch.Tensor], torch.Tensor],
    guide_q,
    widened_q,
    prior,
    num_samples: int,
    *,
    mix: dict[str, float] | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalised importance sampling of ``p(theta | D) ∝ p(theta) p(D | theta)`` per task.

    The proposal is the mixture ``r = f_g q + f_w q_wide + f_p p``: the guide, a widened guide
    and the prior (defensive importance sampling, Hesterberg 1995). Samples are drawn in
    stratified numbers ``round(f * n)`` from each component and weighted by the full mixture
    density (the balance heuristic), so the weights stay bounded by ``p / (f_p p) = 1 / f_p``
    times the likelihood even where the guide misses mass.

    Args:
        log_joint: ``theta [n, T, P] -> log p(theta) + log p(D | theta)``, ``[n, T]``.
        guide_q, widened_q: batch ``[T]``, event ``[P]``.
        prior: event ``[P]``, no batch shape.
        num_samples: total number of samples per task.

    Returns:
        ``theta [n, T, P]`` and unnormalised log weights ``[n, T]``.
    """
    mix = dict(DEFAULT_MIX if mix is None else mix)
    total = sum(mix.values())
    comps = {"guide": guide_q, "widened": widened_q, "prior": prior}
    t = guide_q.batch_shape[0]
    counts = _stratify(num_samples, [mix[k] / total for k in comps])
    draws = []
    for (name, q), c in zip(comps.items(), counts, strict=True):
        if c == 0:
            continue
        shape = (c,) if name != "prior" else (c, t)
        draws.append(q.sample(shape))
    theta = torch.cat(draws, 0)  # [n, T, P]

    def log_proposal(th):
        terms = [
            math.log(mix[k] / total) + q.log_prob(th) for k, q in comps.items() if mix[k] > 0
        ]
        return torch.logsumexp(torch.stack(terms), 0)

    log_w = chunked(lambda th: log_joint(th) - log_proposal(th), theta, chunk)
    return theta, log_w


def _stratify(n: int, fractions: list[float]) -> list[int]:
    counts = [int(math.floor(f * n)) for f in fractions]
    for i in np.argsort([-(f * n - math.floor(f * n)) for f in fractions])[: n - sum(counts)]:
        counts[i] += 1
    return counts


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Kish effective sample size ``1 / sum w^2`` of normalised weights, per task ``[T]``."""
    w = torch.softmax(log_w, 0)
    return 1.0 / (w**2).sum(0)


def pareto_k(log_w: torch.Tensor) -> torch.Tensor:
    """PSIS Pareto shape ``k`` of the weights of each task ``[T]`` (``az.psislw``).

    ``k < 0.5``: reliable; ``0.5 <= k < 0.7``: usable; ``k >= 0.7``: the estimate is unreliable.
    """
    lw = log_w.detach().T.double().cpu().numpy()  # [T, n]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # ArviZ's tail fit on huge weights
        _, k = arviz().psislw(lw)
    return torch.as_tensor(np.asarray(k), dtype=log_w.dtype, device=log_w.device)
