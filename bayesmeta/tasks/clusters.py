"""Gaussian class clusters: few-shot classification tasks with an exact Bayes oracle."""

from __future__ import annotations

import math

import torch

from .._checks import check_ints
from ..predictive import ClassPredictive
from .batch import TaskBatch, check_support
from .episodes import episode_batch
from .family import TaskFamily

__all__ = ["GaussianClusters", "gaussian_class_logits"]


def gaussian_class_logits(z_support, labels, mask, z_query, ways: int, *, prior_mean, prior_var, noise_var):
    """Posterior-predictive log densities ``[T, N, ways]`` of query points under each class.

    Class means ``mu_c ~ N(prior_mean, diag(prior_var))`` and points ``z ~ N(mu_c, diag(noise_var))``
    (all ``[d]`` or scalars): with ``n_c`` support points summing to ``s_c``, the posterior of
    ``mu_c`` is ``N(m_c, 1 / lambda_c)``, ``lambda_c = 1 / prior_var + n_c / noise_var``,
    ``m_c = (prior_mean / prior_var + s_c / noise_var) / lambda_c``, and a new point of class ``c``
    is ``N(m_c, noise_var + 1 / lambda_c)``. With equal prior class probabilities the softmax of
    these log densities is the exact ``p(y = c | x, support)``.

    Args:
        z_support: ``[T, S, d]``; labels ``[T, S]`` (long, ``0..ways-1``); mask ``[T, S]`` bool.
        z_query: ``[T, N, d]``.
    """
    onehot = torch.nn.functional.one_hot(labels.clamp(0, ways - 1), ways).to(z_support.dtype)  # [T, S, W]
    onehot = onehot * mask[..., None].to(z_support.dtype)
    n = onehot.sum(1)[..., None]  # [T, W, 1]
    s = torch.einsum("tsw,tsd->twd", onehot, z_support)  # [T, W, d]
    precision = 1.0 / prior_var + n / noise_var  # [T, W, d]
    mean = (prior_mean / prior_var + s / noise_var) / precision  # [T, W, d]
    var = noise_var + 1.0 / precision  # [T, W, d]
    diff = z_query[:, :, None, :] - mean[:, None]  # [T, N, W, d]
    return -0.5 * (diff**2 / var[:, None] + torch.log(2 * math.pi * var[:, None])).sum(-1)  # [T, N, W]


class GaussianClusters(TaskFamily):
    """``ways`` classes per task with means ``mu_c ~ N(0, prior_std^2 I)`` and examples ``x ~ N(mu_c, noise_std^2 I)``.

    The class means are drawn afresh for every task, so nothing about a new task's classes is
    known before its support set; :meth:`oracle_predict` is the exact posterior predictive
    ``p(y | x, support)`` (conjugate Gaussian), the yardstick of accuracy, NLL and calibration.
    The defaults make one-shot tasks hard (oracle accuracy 0.57, NLL 1.07 at 5-way 1-shot) and
    five-shot ones easier (0.78, 0.58).

    Args:
        ways: classes per task.
        dim: feature dimension.
        prior_std: spread of the class means.
        noise_std: spread of the examples around their class mean.

    Example:
        >>> fam = GaussianClusters(ways=3, dim=2)
        >>> b = fam.sample(2, shots=1, num_query=4)
        >>> fam.oracle_predict(b.x_support, b.y_support, b.x_query).probs.shape
        torch.Size([2, 12, 3])
    """

    episodic = True
    y_dim = 1

    def __init__(self, ways: int = 5, dim: int = 16, *, prior_std: float = 1.0, noise_std: float = 1.5) -> None:
        check_ints(ways=(ways, 2), dim=(dim, 1))
        for name, v in (("prior_std", prior_std), ("noise_std", noise_std)):
            if not isinstance(v, int | float) or not 0 < v < math.inf:
                raise ValueError(f"{name} must be a finite number > 0; got {v!r}")
        self.ways, self.dim, self.x_dim = ways, dim, dim
        self.prior_std, self.noise_std = float(prior_std), float(noise_std)

    def __repr__(self) -> str:
        return (f"GaussianClusters(ways={self.ways}, dim={self.dim}, prior_std={self.prior_std}, "
                f"noise_std={self.noise_std})")

    def sample(self, num_tasks: int, shots: int, num_query: int = 0,
               generator: torch.Generator | None = None) -> TaskBatch:
        """``shots`` support and ``num_query`` query examples per class; labels ``0..ways-1``."""
        check_ints(num_tasks=(num_tasks, 1), shots=(shots, 0), num_query=(num_query, 0))
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        n = shots + num_query
        mu = self.prior_std * torch.randn(num_tasks, self.ways, 1, self.dim, generator=g)  # [T, W, 1, D]
        x = mu + self.noise_std * torch.randn(num_tasks, self.ways, n, self.dim, generator=g)  # [T, W, n, D]
        y = torch.arange(self.ways, dtype=x.dtype)[None, :, None, None].expand(num_tasks, -1, n, 1)
        b = episode_batch(x, y.contiguous(), shots)
        b.params["class_means"] = mu[:, :, 0]
        return b

    def oracle_predict(self, x_support, y_support, x_query, mask_support=None) -> ClassPredictive:
        """Exact ``p(y = c | x_query, support)`` ``[T, N, ways]`` as a :class:`ClassPredictive`."""
        xs, ys, mask = check_support(x_support, y_support, mask_support, x_dim=self.dim, y_dim=1, prefix="support ")
        xq = torch.as_tensor(x_query, dtype=xs.dtype, device=xs.device)
        if xq.dim() != 3 or xq.shape[0] != xs.shape[0] or xq.shape[-1] != self.dim:
            raise ValueError(f"x_query must have shape [{xs.shape[0]}, N, {self.dim}]; got {tuple(xq.shape)}")
        v = ys[..., 0]
        bad = mask & ((v != v.round()) | (v < 0) | (v >= self.ways))
        if bad.any():
            t, j = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"support y: label {float(v[t, j])} at task {t}, point {j} is not in 0..{self.ways - 1}")
        labels = v.round().long().masked_fill(~mask, 0)
        logits = gaussian_class_logits(xs.double(), labels, mask, xq.double(), self.ways, prior_mean=0.0,
                                       prior_var=self.prior_std**2, noise_var=self.noise_std**2)
        return ClassPredictive(logits.to(xs.dtype), method="oracle")
