"""Exact linear-Gaussian algebra: posterior, marginal likelihood, predictive.

For ``y_j = phi_j^T w + eps_j`` with ``w ~ N(mu, L L^T)`` and ``eps_j ~ N(0, sigma^2)`` and a
mask over points, everything is computed in the whitened coordinates ``w = mu + L v``, in which
the posterior precision is ``A = I + L^T Phi^T Phi L / sigma^2`` (``[F, F]`` per task). Masked
points are zeroed rows and contribute nothing. No other module of the package is imported.
"""

from __future__ import annotations

import math

import torch

__all__ = ["linear_gaussian_posterior", "linear_gaussian_log_marginal", "linear_gaussian_predict"]


def _whitened(phi, y, mask, loc, tril, noise_std):
    m = mask.to(phi.dtype)[..., None]  # [T, N, 1]
    phi_m = phi * m  # [T, N, F]
    resid = (y - phi @ loc[..., None]).squeeze(-1) * m[..., 0]  # [T, N]
    b = phi_m @ tril  # [T, N, F]: Phi L
    a = b.transpose(-1, -2) @ b / noise_std**2  # [T, F, F]
    a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    chol = torch.linalg.cholesky(a)
    c = (b.transpose(-1, -2) @ resid[..., None]) / noise_std**2  # [T, F, 1]
    return chol, c, resid


def linear_gaussian_posterior(phi, y, mask, loc, tril, noise_std):
    """Posterior mean ``[T, F]`` and covariance ``[T, F, F]`` of the weights.

    Args:
        phi: features ``[T, N, F]``; y: targets ``[T, N, 1]``; mask: ``[T, N]`` bool;
        loc: prior mean ``[F]``; tril: prior Cholesky factor ``[F, F]``; noise_std: scalar.
    """
    chol, c, _ = _whitened(phi, y, mask, loc, tril, noise_std)
    v_mean = torch.cholesky_solve(c, chol)  # [T, F, 1]
    a_inv = torch.cholesky_inverse(chol)  # [T, F, F]
    mean = loc + (tril @ v_mean).squeeze(-1)
    cov = tril @ a_inv @ tril.transpose(-1, -2)
    return mean, 0.5 * (cov + cov.transpose(-1, -2))


def linear_gaussian_log_marginal(phi, y, mask, loc, tril, noise_std):
    """Log marginal likelihood ``log p(y_observed)`` of every task, ``[T]``."""
    chol, c, resid = _whitened(phi, y, mask, loc, tril, noise_std)
    n = mask.to(phi.dtype).sum(-1)  # [T]
    log_var = 2 * torch.log(torch.as_tensor(noise_std, dtype=phi.dtype, device=phi.device))
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) + n * log_var
    w = torch.linalg.solve_triangular(chol, c, upper=False)  # [T, F, 1]
    quad = (resid**2).sum(-1) / noise_std**2 - (w**2).sum((-1, -2))
    return -0.5 * (n * math.log(2 * math.pi) + logdet + quad)


def linear_gaussian_predict(phi_query, mean, cov, noise_std):
    """Predictive mean and standard deviation ``[T, N]`` at query features ``[T, N, F]``."""
    mu = (phi_query @ mean[..., None]).squeeze(-1)
    var = ((phi_query @ cov) * phi_query).sum(-1) + noise_std**2
    return mu, var.sqrt()
