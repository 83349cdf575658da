"""Hierarchical linear regression tasks with an exact (conjugate) Bayes oracle."""

from __future__ import annotations

import torch

from ..conjugate import (
    linear_gaussian_log_marginal,
    linear_gaussian_posterior,
    linear_gaussian_predict,
)
from ..predictive import GaussianMixture
from .batch import check_support
from .family import TaskFamily

__all__ = ["HierarchicalLinear", "linear_features"]


def linear_features(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """``[x, 1]`` when ``bias`` else ``x``: ``[T, N, D] -> [T, N, D + bias]``."""
    if not bias:
        return x
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


class HierarchicalLinear(TaskFamily):
    """``y = [x, 1]^T w_i + eps``, ``w_i ~ N(prior_mean, prior_cov)``, ``eps ~ N(0, noise_std^2)``.

    Args:
        dim: input dimension ``D``; weights have ``D + 1`` entries when ``bias`` (intercept last).
        prior_mean: ``[D + bias]`` mean of the task weights (default zeros).
        prior_cov: ``[D + bias, D + bias]`` covariance (default identity).
        noise_std: observation noise.
        x_range: inputs are ``U[x_range]^D``.
    """

    def __init__(self, dim=1, prior_mean=None, prior_cov=None, noise_std=0.5, *, bias=True,
                 x_range=(-2.0, 2.0)):
        if dim < 1:
            raise ValueError(f"dim must be >= 1; got {dim}")
        if noise_std <= 0:
            raise ValueError(f"noise_std must be > 0; got {noise_std}")
        f = dim + int(bias)
        mean = torch.zeros(f) if prior_mean is None else torch.as_tensor(prior_mean, dtype=torch.float64)
        cov = torch.eye(f) if prior_cov is None else torch.as_tensor(prior_cov, dtype=torch.float64)
        if mean.shape != (f,):
            raise ValueError(f"prior_mean must have shape ({f},); got {tuple(mean.shape)}")
        if cov.shape != (f, f):
            raise ValueError(f"prior_cov must have shape ({f}, {f}); got {tuple(cov.shape)}")
        try:
            self._tril = torch.linalg.cholesky(cov.double())
        except RuntimeError as err:
            raise ValueError("prior_cov must be symmetric positive definite") from err
        self.x_dim, self.bias = dim, bias
        self.prior_mean, self.prior_cov = mean.double(), cov.double()
        self.noise_std = float(noise_std)
        self.x_range = tuple(map(float, x_range))

    def __repr__(self) -> str:
        return (f"HierarchicalLinear(dim={self.x_dim}, prior_mean={self.prior_mean.tolist()}, "
                f"prior_cov={self.prior_cov.tolist()}, noise_std={self.noise_std}, bias={self.bias}, "
                f"x_range={self.x_range})")

    def sample_params(self, num_tasks, generator):
        eps = torch.randn(num_tasks, self.prior_mean.shape[0], generator=generator, dtype=torch.float64)
        return {"w": (self.prior_mean + eps @ self._tril.T).float()}

    def sample_inputs(self, num_tasks, num_points, generator):
        lo, hi = self.x_range
        return lo + (hi - lo) * torch.rand(num_tasks, num_points, self.x_dim, generator=generator)

    def mean_function(self, params, x):
        return linear_features(x, self.bias) @ params["w"].to(x)[..., None]  # [T, N, 1]

    def simulate(self, params, x, generator):
        f = self.mean_function(params, x)
        return f + self.noise_std * torch.randn(f.shape, generator=generator)

    def _prep(self, x, y, mask):
        x, y, mask = check_support(x, y, mask, x_dim=self.x_dim, y_dim=1, prefix="support ")
        return linear_features(x.double(), self.bias), y.double(), mask

    def posterior(self, x_support, y_support, mask=None):
        """Exact posterior of the task weights: mean ``[T, F]`` and covariance ``[T, F, F]``."""
        phi, y, mask = self._prep(x_support, y_support, mask)
        return linear_gaussian_posterior(phi, y, mask, self.prior_mean, self._tril, self.noise_std)

    def log_marginal_likelihood(self, x_support, y_support, mask=None) -> torch.Tensor:
        """Exact ``log p(y_support | x_support)`` per task ``[T]`` (float64)."""
        phi, y, mask = self._prep(x_support, y_support, mask)
        return linear_gaussian_log_marginal(phi, y, mask, self.prior_mean, self._tril, self.noise_std)

    def oracle_predict(self, x_support, y_support, x_query, mask=None) -> GaussianMixture:
        """Exact Gaussian posterior predictive at ``x_query`` (a one-component mixture)."""
        mean, cov = self.posterior(x_support, y_support, mask)
        xq = torch.as_tensor(x_query)
        phi_q = linear_features(xq.double(), self.bias)
        mu, sd = linear_gaussian_predict(phi_q, mean, cov, self.noise_std)
        return GaussianMixture(mu[None, ..., None].to(xq.dtype), sd[None, ..., None].to(xq.dtype))
