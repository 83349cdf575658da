"""Acquisition functions: how much a query point is worth, from a posterior predictive or from function draws.

Every function returns a **score to maximise**, ``[T, N]`` for ``T`` tasks and ``N`` points,
whether the objective is maximised or minimised (``maximize=False`` flips the sign of the
outcome first).

On a predictive (:class:`~bayesmeta.GaussianMixture`, :class:`~bayesmeta.PosteriorPredictive`
or any-family :class:`~bayesmeta.predictive.FamilyMixture`):

* :func:`expected_improvement` ``E[max(y - best, 0)]``: for a Gaussian mixture a weighted sum
  of closed-form Gaussian EIs, ``sum_s w_s sigma_s h((mu_s - best) / sigma_s)`` with
  ``h(z) = phi(z) + z Phi(z)`` (evaluated in float64 without cancellation); for other families a
  Monte-Carlo average over predictive samples.
* :func:`probability_of_improvement` ``P(y > best)``.
* :func:`upper_confidence_bound` ``mean + beta sd`` of the predictive (law of total variance).

On equally or importance-weighted function draws ``f_s(x)`` (posterior draws of the task's
parameters pushed through the model's mean function), :func:`draw_acquisition` computes the same
quantities for the noise-free function, which is what a binary or count outcome is optimised on.
"""

from __future__ import annotations

import math

import torch

from ..predictive import GaussianMixture

__all__ = [
    "ACQUISITIONS", "draw_acquisition", "expected_improvement", "gaussian_ei", "probability_of_improvement",
    "upper_confidence_bound",
]

ACQUISITIONS = ("ts", "ei", "ucb", "pi", "greedy")
"""``ts``: Thompson sampling; ``ei``: expected improvement; ``ucb``: upper confidence bound;
``pi``: probability of improvement; ``greedy``: the best predicted mean (no exploration)."""

_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)


def _h(z: torch.Tensor) -> torch.Tensor:
    """``phi(z) + z Phi(z)`` (the EI of a standard normal over 0 at offset ``z``), stable for both tails."""
    zp, zn = z.clamp_min(0.0), z.clamp_max(0.0)
    pos = torch.exp(-0.5 * zp**2) * _INV_SQRT_2PI + zp * torch.special.ndtr(zp)
    # z < 0: phi(z) (1 - |z| sqrt(pi / 2) erfcx(|z| / sqrt 2)) keeps its relative precision far into the tail
    neg = torch.exp(-0.5 * zn**2) * (_INV_SQRT_2PI + zn * 0.5 * torch.special.erfcx(-zn / math.sqrt(2.0)))
    return torch.where(z >= 0, pos, neg)


def gaussian_ei(mu: torch.Tensor, sigma: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Closed-form ``E[max(y - best, 0)]`` for ``y ~ N(mu, sigma^2)`` (broadcasting; float64 inside)."""
    mu64, sigma64 = mu.double(), sigma.double().clamp_min(1e-300)
    return (sigma64 * _h((mu64 - best.double()) / sigma64)).to(mu.dtype)


def _sign(maximize: bool) -> float:
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize must be True or False; got {maximize!r}")
    return 1.0 if maximize else -1.0


def _best(best, num_tasks: int, like: torch.Tensor) -> torch.Tensor:
    """``best`` as ``[T, 1]`` (a number is shared by every task)."""
    b = torch.as_tensor(best, dtype=like.dtype, device=like.device).reshape(-1)
    if b.numel() == 1:
        b = b.expand(num_tasks)
    if b.shape != (num_tasks,):
        raise ValueError(f"best must be a number or one value per task ({num_tasks}); got shape {tuple(b.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError(f"best must be finite; got {b.tolist()}")
    return b[:, None]


def _check_output(output: int, num_outputs: int) -> int:
    if isinstance(output, bool) or not isinstance(output, int) or not 0 <= output < num_outputs:
        raise ValueError(f"output must be an int in [0, {num_outputs}) (the predictive has {num_outputs} "
                         f"output(s)); got {output!r}")
    return output


def _mixture(pred: GaussianMixture, output: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Components of a Gaussian mixture on one output: ``loc, scale [n, T, N]``, weights ``[n, T, 1]``."""
    e = _check_output(output, pred.shape[-1])
    loc = pred.loc[..., e]  # [n, T, N]
    scale = torch.as_tensor(pred.scale).expand_as(pred.loc)[..., e]
    return loc, scale, pred.log_weights.exp()[..., None]


def _samples(pred, output: int, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    e = _check_output(output, pred.shape[-1])
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")
    return pred.sample(num_samples, generator=generator)[..., e].to(pred.dtype)  # [S, T, N]


def expected_improvement(predictive, best, *, maximize: bool = True, output: int = 0, num_samples: int = 2048,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Expected improvement over ``best`` of each point of a predictive, ``[T, N]``.

    Args:
        predictive: ``[T, N, E]`` predictive (a Gaussian mixture: closed form; any other family:
            ``num_samples`` Monte-Carlo draws, reproducible with ``generator``).
        best: the incumbent, a number or ``[T]`` (per task).
        maximize: ``False``: improvement means a lower outcome, ``E[max(best - y, 0)]``.
        output: which output column is the objective.

    Example:
        >>> import bayesmeta as bm
        >>> pred = bm.GaussianMixture(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
        >>> round(float(expected_improvement(pred, 0.0)), 4)  # 1 / sqrt(2 pi)
        0.3989
    """
    s = _sign(maximize)
    if isinstance(predictive, GaussianMixture):
        loc, scale, w = _mixture(predictive, output)
        b = _best(best, loc.shape[1], loc)
        return (w * gaussian_ei(s * loc, scale, s * b)).sum(0)
    y = _samples(predictive, output, num_samples, generator)
    b = _best(best, y.shape[1], y)
    return (s * (y - b)).clamp_min(0).mean(0)


def probability_of_improvement(predictive, best, *, maximize: bool = True, output: int = 0, num_samples: int = 2048,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """``P(y > best)`` (``P(y < best)`` when minimising) at each point, ``[T, N]``; arguments as :func:`expected_improvement`."""
    s = _sign(maximize)
    if isinstance(predictive, GaussianMixture):
        loc, scale, w = _mixture(predictive, output)
        b = _best(best, loc.shape[1], loc)
        return (w * torch.special.ndtr(s * (loc - b) / scale)).sum(0)
    y = _samples(predictive, output, num_samples, generator)
    b = _best(best, y.shape[1], y)
    return (s * (y - b) > 0).to(y.dtype).mean(0)


def upper_confidence_bound(predictive, beta: float = 2.0, *, maximize: bool = True, output: int = 0) -> torch.Tensor:
    """``mean + beta sd`` of the predictive at each point (``-(mean - beta sd)`` when minimising), ``[T, N]``.

    The mean and sd are the mixture's (law of total variance: the spread between components counts).
    """
    s = _sign(maximize)
    beta = _check_beta(beta)
    if isinstance(predictive, GaussianMixture):
        loc, scale, w = _mixture(predictive, output)
        mean = (w * loc).sum(0)
        var = (w * (scale**2 + (loc - mean) ** 2)).sum(0)
        return s * mean + beta * var.clamp_min(0).sqrt()
    e = _check_output(output, predictive.shape[-1])
    return s * predictive.mean[..., e] + beta * predictive.variance[..., e].clamp_min(0).sqrt()


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta < math.inf:
        raise ValueError(f"beta must be a finite number >= 0; got {beta!r}")
    return float(beta)


def draw_acquisition(values: torch.Tensor, log_weights: torch.Tensor | None, kind: str, *, best=None,
                     beta: float = 2.0, maximize: bool = True) -> torch.Tensor:
    """An acquisition on weighted function draws: ``values [m, T, N]``, log weights ``[m, T]`` (``None``: equal).

    ``kind`` is ``"ei"``, ``"pi"``, ``"ucb"`` or ``"greedy"`` (the posterior mean); ``best`` (a
    number or ``[T]``) is needed by ``"ei"`` and ``"pi"``. Returns ``[T, N]``, larger is better.
    """
    s = _sign(maximize)
    if log_weights is None:
        w = values.new_full(values.shape[:2], 1.0 / values.shape[0])
    else:
        w = torch.softmax(log_weights.to(values.dtype), 0)
    w = w[..., None]  # [m, T, 1]
    if kind == "greedy":
        return s * (w * values).sum(0)
    if kind == "ucb":
        mean = (w * values).sum(0)
        return s * mean + _check_beta(beta) * (w * (values - mean) ** 2).sum(0).clamp_min(0).sqrt()
    if kind in ("ei", "pi"):
        if best is None:
            raise ValueError(f"draw_acquisition: kind={kind!r} needs best")
        b = _best(best, values.shape[1], values)
        gain = s * (values - b)
        return (w * (gain.clamp_min(0) if kind == "ei" else (gain > 0).to(values.dtype))).sum(0)
    raise ValueError(f"kind must be one of 'ei', 'pi', 'ucb', 'greedy'; got {kind!r}")
