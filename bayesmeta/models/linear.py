"""Linear-Gaussian hierarchical models with an exact posterior: linear regression and a Bayesian last layer."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ..conjugate import (
    linear_gaussian_log_marginal,
    linear_gaussian_posterior_tril,
    linear_gaussian_predict,
)
from ..tasks.batch import check_support
from ..tasks.linear import linear_features
from .base import HierarchicalModel
from .nn import MLP, softplus_inv

__all__ = ["LinearGaussianModel", "HierarchicalLinearRegression", "BayesianHeadRegression"]


class LinearGaussianModel(HierarchicalModel):
    """``y = phi(x)^T w_i + eps``, ``w_i ~ N(mu, L L^T)``, ``eps ~ N(0, sigma^2)``: all learned.

    Subclasses define the feature map :meth:`features` (``[T, N, D] -> [T, N, F]``). The task
    posterior, the marginal likelihood and the predictive are exact (:mod:`bayesmeta.conjugate`),
    computed in float64 whatever the model's dtype and returned in the model's dtype.
    """

    has_exact_posterior = True

    def __init__(self, x_dim: int, num_features: int, *, init_noise: float = 1.0) -> None:
        super().__init__(x_dim, 1)
        self.task_sites = {"w": torch.Size([num_features])}
        f = num_features
        self.prior = nn.ParameterDict({
            "loc": nn.Parameter(torch.zeros(f)),
            "tril_offdiag": nn.Parameter(torch.zeros(f, f)),
            "tril_rawdiag": nn.Parameter(torch.full((f,), softplus_inv(1.0))),
            "raw_noise": nn.Parameter(torch.tensor(softplus_inv(init_noise))),
        })

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def fixed_features(self) -> bool:
        """True when every learned parameter is a prior parameter (the features are fixed), so
        type-II ML is a small deterministic problem (:func:`bayesmeta.inference.fit_type2_ml`)."""
        prior = {id(p) for p in self.prior.parameters()}
        return all(id(p) in prior for p in self.parameters())

    @torch.no_grad()
    def init_from_data(self, x, y, mask) -> None:
        """Set prior and noise from the data's own scale (before type-II ML on a pool).

        Prior mean: pooled least squares; prior covariance: the spread of per-task least-squares
        fits (lightly ridged; the pooled fit's scale where tasks are too small); noise: the
        per-task fits' residuals (the pooled fit's where no task has spare points).
        """
        phi, y, mask = self._prep(x, y, mask)
        m = mask.to(phi.dtype)[..., None]  # [T, N, 1]
        phi_m, y_m = phi * m, y * m  # [T, N, F], [T, N, 1]
        f = phi.shape[-1]
        eye = torch.eye(f, dtype=phi.dtype, device=phi.device)
        gram = phi_m.transpose(-1, -2) @ phi_m  # [T, F, F]
        rhs = phi_m.transpose(-1, -2) @ y_m  # [T, F, 1]
        ridge = 1e-6 * gram.sum(0).diagonal().mean() / max(1, phi.shape[0])
        pooled = torch.linalg.solve(gram.sum(0) + ridge * eye, rhs.sum(0))  # [F, 1]
        per_task = torch.linalg.solve(gram + ridge * eye, rhs)  # [T, F, 1]
        n = mask.sum(-1).to(phi.dtype)  # [T]
        dof = (n - f).clamp_min(0)
        resid = ((y_m - phi_m @ per_task) ** 2).sum((-1, -2))  # [T]
        if dof.sum() > 0:
            noise_var = (resid * (dof > 0)).sum() / dof.sum()
        else:
            noise_var = ((y_m - phi_m @ pooled) ** 2).sum() / n.sum().clamp_min(1)
        w = per_task[..., 0][n >= f]  # tasks whose own fit is determined
        if w.shape[0] >= 2:
            cov = torch.cov(w.T).reshape(f, f)
        else:  # no task determines its own weights: a prior that lets each feature explain all of y's spread
            var_y = ((y_m - phi_m @ pooled) ** 2).sum() / n.sum().clamp_min(1)
            cov = torch.diag(var_y / ((phi_m**2).sum((0, 1)) / n.sum().clamp_min(1)).clamp_min(1e-12))
        scale = cov.diagonal().mean().clamp_min(1e-12)
        tril = torch.linalg.cholesky(cov + 1e-3 * scale * eye)
        self._set_prior(pooled[:, 0], tril, noise_var.clamp_min(1e-12).sqrt())

    def _set_prior(self, loc: torch.Tensor, tril: torch.Tensor, noise_std: torch.Tensor) -> None:
        p = self.prior
        p["loc"].copy_(loc)
        p["tril_offdiag"].copy_(torch.tril(tril, -1))
        diag = (tril.diagonal() - 1e-6).clamp_min(1e-6)
        p["tril_rawdiag"].copy_(diag + torch.log(-torch.expm1(-diag)))  # softplus inverse, stable
        noise = (noise_std - 1e-6).clamp_min(1e-6)
        p["raw_noise"].copy_(noise + torch.log(-torch.expm1(-noise)))

    @property
    def prior_scale_tril(self) -> torch.Tensor:
        """Cholesky factor ``L`` ``[F, F]`` of the prior covariance."""
        p = self.prior
        return torch.tril(p["tril_offdiag"], -1) + torch.diag(F.softplus(p["tril_rawdiag"]) + 1e-6)

    @property
    def noise_std(self) -> torch.Tensor:
        """Learned observation noise standard deviation (scalar tensor)."""
        return F.softplus(self.prior["raw_noise"]) + 1e-6

    def site_priors(self):
        return {"w": dist.MultivariateNormal(self.prior["loc"], scale_tril=self.prior_scale_tril)}

    def likelihood(self, x, theta):
        phi = self.features(x)  # [T, N, F]
        w = theta["w"]  # [..., T, F]
        loc = (phi * w.unsqueeze(-2)).sum(-1, keepdim=True)  # [..., T, N, 1]
        return dist.Normal(loc, self.noise_std.expand_as(loc))

    # ------------------------------------------------------------------ exact inference
    def _prep(self, x, y, mask, validate: bool = True):
        if validate:
            x, y, mask = check_support(x, y, mask, x_dim=self.x_dim, y_dim=1, prefix="support ")
        dev = self.prior["loc"].device
        x, y, mask = x.to(dev), y.to(dev), mask.to(dev)
        return self.features(x.to(self.prior["loc"].dtype)), y.to(self.prior["loc"].dtype), mask

    def exact_posterior(self, x, y, mask=None) -> dist.MultivariateNormal:
        """Exact posterior ``p(w_i | D_i)`` under the learned prior, batch shape ``[T]``.

        Parameterised by its Cholesky factor (computed in float64), so it is a valid distribution
        even where the design is rank-deficient within a task (a covariate constant within each
        task next to the intercept, fewer points than weights) and the model is float32.
        """
        phi, y, mask = self._prep(x, y, mask)
        mean, scale_tril = linear_gaussian_posterior_tril(
            phi, y, mask, self.prior["loc"], self.prior_scale_tril, self.noise_std
        )
        return dist.MultivariateNormal(mean, scale_tril=scale_tril)

    def log_marginal_likelihood(self, x, y, mask=None, *, validate: bool = True) -> torch.Tensor:
        """Exact ``log p(y_i | x_i)`` per task ``[T]`` (the type-II likelihood).

        ``validate=False`` skips the input checks (and their device syncs): for callers that
        already validated ``x [T, N, D]``, ``y [T, N, 1]`` and ``mask [T, N]``, e.g. a training loop.
        """
        phi, y, mask = self._prep(x, y, mask, validate)
        return linear_gaussian_log_marginal(
            phi, y, mask, self.prior["loc"], self.prior_scale_tril, self.noise_std
        )

    def exact_predict(self, posterior: dist.MultivariateNormal, x_query: torch.Tensor):
        """Predictive mean and std ``[T, N, 1]`` at ``x_query`` under a Gaussian weight posterior."""
        phi_q = self.features(x_query)  # [T, N, F]
        mu, sd = linear_gaussian_predict(
            phi_q, posterior.mean, posterior.scale_tril, self.noise_std, tril=True
        )
        return mu[..., None], sd[..., None]


class HierarchicalLinearRegression(LinearGaussianModel):
    """Bayesian linear regression per task with a learned Gaussian prior over the weights.

    Fitted by type-II maximum likelihood (``BayesLearner(model, conjugate=True)``) this is a
    linear mixed model with correlated random slopes (and intercept when ``bias``), fitted by ML.

    Args:
        x_dim: input dimension ``D``.
        bias: add a task-specific intercept (the last weight).

    Example:
        >>> m = HierarchicalLinearRegression(x_dim=2)
        >>> m.prior_distribution().event_shape
        torch.Size([3])
    """

    def __init__(self, x_dim: int, bias: bool = True, *, init_noise: float = 1.0) -> None:
        super().__init__(x_dim, x_dim + int(bias), init_noise=init_noise)
        self.bias = bias
        self.config.update(bias=bias, init_noise=init_noise)
        del self.config["y_dim"]

    def features(self, x):
        return linear_features(x, self.bias)


class BayesianHeadRegression(LinearGaussianModel):
    """Shared feature network ``phi(x)``, task-specific Bayesian last layer ``w_i ~ N(mu, Sigma)``.

    The ALPaCA / ABML idea: the feature network and the prior over the head are meta-learned;
    adapting to a task is exact Bayesian linear regression on the features.

    Args:
        x_dim: input dimension.
        num_features: width of the last hidden layer (the head has ``num_features + 1`` weights).
        hidden: hidden widths of the feature network.
    """

    def __init__(self, x_dim: int, num_features: int = 32, hidden: Sequence[int] = (64, 64), *,
                 init_noise: float = 1.0) -> None:
        super().__init__(x_dim, num_features + 1, init_noise=init_noise)
        self.net = nn.Sequential(MLP(x_dim, hidden, num_features), nn.Tanh())
        self.config.update(num_features=num_features, hidden=list(hidden), init_noise=init_noise)
        del self.config["y_dim"]

    def features(self, x):
        return linear_features(self.net(x), True)  # [T, N, F + 1]
