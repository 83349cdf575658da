"""Exact linear-Gaussian algebra: posterior, marginal likelihood, predictive.

For ``y_j = phi_j^T w + eps_j`` with ``w ~ N(mu, L L^T)`` and ``eps_j ~ N(0, sigma^2)`` and a
mask over points, everything is computed in the whitened coordinates ``w = mu + L v``, in which
the posterior precision is ``A = I + L^T Phi^T Phi L / sigma^2`` (``[F, F]`` per task, eigenvalues
at least 1, so its Cholesky factor always exists). Masked points are zeroed rows and contribute
nothing. The posterior covariance is returned through a Cholesky factor ``L K`` with ``K K^T = A^{-1}``
(``K`` lower triangular), positive definite by construction.

The algebra runs in float64 whatever the inputs' dtype (designs that are rank-deficient within a
task, such as a covariate constant within each task next to an intercept, make ``A`` far too
ill-conditioned for float32) and the results are cast back to the inputs' dtype; on devices without
float64 (MPS) it runs in the inputs' dtype. No other module of the package is imported.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "linear_gaussian_posterior",
    "linear_gaussian_posterior_tril",
    "linear_gaussian_log_marginal",
    "linear_gaussian_predict",
]


def _dtypes(*tensors) -> tuple[torch.dtype, torch.dtype]:
    """(working dtype, output dtype): float64 where the device has it, and the inputs' common dtype."""
    out = tensors[0].dtype
    for t in tensors[1:]:
        out = torch.promote_types(out, t.dtype)
    if tensors[0].device.type == "mps":  # no float64 on MPS
        return torch.promote_types(out, torch.float32), out
    return torch.float64, out


def _up(work: torch.dtype, device: torch.device, *args) -> tuple[torch.Tensor, ...]:
    """Each argument (tensor or Python number) as a ``work`` tensor on ``device``, gradients kept."""
    return tuple(
        a.to(device, work) if torch.is_tensor(a) else torch.tensor(a, dtype=work, device=device) for a in args
    )


def _whitened(phi, y, mask, loc, tril, noise_std):
    m = mask.to(phi.dtype)[..., None]  # [T, N, 1]
    phi_m = phi * m  # [T, N, F]
    resid = (y - phi @ loc[..., None]).squeeze(-1) * m[..., 0]  # [T, N]
    b = phi_m @ tril / noise_std  # [T, N, F]: Phi L / sigma
    a = b.transpose(-1, -2) @ b  # [T, F, F]
    a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    chol = torch.linalg.cholesky(a)  # [T, F, F]: A = C C^T
    c = (b.transpose(-1, -2) @ resid[..., None]) / noise_std  # [T, F, 1]
    return a, chol, c, resid


def _inverse_tril(a: torch.Tensor) -> torch.Tensor:
    """Lower-triangular ``K`` with ``K K^T = A^{-1}`` for SPD ``A`` ``[..., F, F]``.

    From the Cholesky factor of ``A`` with rows and columns reversed (an upper-triangular ``R``
    with ``A = R R^T``), ``K = R^{-T}``, one triangular solve, no explicit inverse of ``A``.
    """
    flip = torch.linalg.cholesky(torch.flip(a, (-2, -1)))  # [..., F, F]: P A P = C' C'^T
    r_t = torch.flip(flip, (-2, -1)).transpose(-1, -2)  # [..., F, F]: R^T, lower (R = P C' P)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    return torch.linalg.solve_triangular(r_t, eye, upper=False)  # [..., F, F]: R^{-T}


def _posterior(phi, y, mask, loc, tril, noise_std):
    a, chol, c, _ = _whitened(phi, y, mask, loc, tril, noise_std)
    v_mean = torch.cholesky_solve(c, chol)  # [T, F, 1]
    mean = loc + (tril @ v_mean).squeeze(-1)  # [T, F]
    return mean, tril @ _inverse_tril(a)  # [T, F], [T, F, F]: lower times lower


def linear_gaussian_posterior_tril(phi, y, mask, loc, tril, noise_std):
    """Posterior mean ``[T, F]`` and covariance Cholesky factor ``[T, F, F]`` of the weights.

    Args:
        phi: features ``[T, N, F]``; y: targets ``[T, N, 1]``; mask: ``[T, N]`` bool;
        loc: prior mean ``[F]``; tril: prior Cholesky factor ``[F, F]``; noise_std: scalar.

    Returns:
        ``(mean, scale_tril)`` in the common dtype of ``phi``, ``y``, ``loc`` and ``tril``; the factor
        is lower triangular with a positive diagonal by construction, so
        ``MultivariateNormal(mean, scale_tril=scale_tril)`` is valid however ill-conditioned the design.
    """
    work, out = _dtypes(phi, y, loc, tril)
    phi_, y_, loc_, tril_, noise_ = _up(work, phi.device, phi, y, loc, tril, noise_std)
    mean, scale = _posterior(phi_, y_, mask, loc_, tril_, noise_)
    return mean.to(out), scale.to(out)


def linear_gaussian_posterior(phi, y, mask, loc, tril, noise_std):
    """Posterior mean ``[T, F]`` and covariance ``[T, F, F]`` of the weights.

    As :func:`linear_gaussian_posterior_tril` (same arguments), the covariance ``S S^T`` formed in
    float64 before the cast; prefer the factor wherever it can be used directly.
    """
    work, out = _dtypes(phi, y, loc, tril)
    phi_, y_, loc_, tril_, noise_ = _up(work, phi.device, phi, y, loc, tril, noise_std)
    mean, scale = _posterior(phi_, y_, mask, loc_, tril_, noise_)
    cov = scale @ scale.transpose(-1, -2)  # [T, F, F], symmetric by construction
    return mean.to(out), cov.to(out)


def linear_gaussian_log_marginal(phi, y, mask, loc, tril, noise_std):
    """Log marginal likelihood ``log p(y_observed)`` of every task, ``[T]``."""
    work, out = _dtypes(phi, y, loc, tril)
    phi, y, loc, tril, noise_std = _up(work, phi.device, phi, y, loc, tril, noise_std)
    _, chol, c, resid = _whitened(phi, y, mask, loc, tril, noise_std)
    n = mask.to(work).sum(-1)  # [T]
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) + 2 * n * torch.log(noise_std)
    w = torch.linalg.solve_triangular(chol, c, upper=False)  # [T, F, 1]
    quad = (resid**2).sum(-1) / noise_std**2 - (w**2).sum((-1, -2))  # [T]
    return (-0.5 * (n * math.log(2 * math.pi) + logdet + quad)).to(out)


def linear_gaussian_predict(phi_query, mean, cov, noise_std, *, tril: bool = False):
    """Predictive mean and standard deviation ``[T, N]`` at query features ``[T, N, F]``.

    Args:
        phi_query: ``[T, N, F]``; mean: posterior mean ``[T, F]``; noise_std: scalar.
        cov: posterior covariance ``[T, F, F]``, or its lower Cholesky factor when ``tril``
            (then the variance ``|phi^T S|^2 + sigma^2`` cannot come out negative).
    """
    work, out = _dtypes(phi_query, mean, cov)
    phi_query, mean, cov, noise_std = _up(work, phi_query.device, phi_query, mean, cov, noise_std)
    mu = (phi_query @ mean[..., None]).squeeze(-1)  # [T, N]
    q = phi_query @ cov  # [T, N, F]
    var = q.pow(2).sum(-1) if tril else (q * phi_query).sum(-1)  # [T, N]
    return mu.to(out), (var + noise_std**2).sqrt().to(out)
