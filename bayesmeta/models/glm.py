"""Hierarchical generalised linear models, written as plain Pyro programs.

Each task ``i`` has its own weights ``w_i ~ N(mu, L L^T)`` over the features ``[x, 1]`` (``mu`` and
``L`` learned: a GLM with correlated random slopes and intercept, fitted by empirical Bayes);
the outcome follows the chosen likelihood through its usual link:

==================== ============================== ==========================================
``likelihood``       outcome                        link
==================== ============================== ==========================================
``gaussian``         real ``y``                     identity; learned noise sd
``student-t``        real ``y``, heavy tails        identity; learned scale and degrees of freedom
``bernoulli``        0 / 1                          logit
``binomial``         successes out of trials        logit; trials in the last column of ``x``
``poisson``          counts                         log (+ log exposure, last column, ``offset=True``)
``negative-binomial`` over-dispersed counts         log (+ offset); learned dispersion
==================== ============================== ==========================================

Columns that are not features (trials, log exposure) are named in ``raw_x_columns``.

The model is written in the data's units: the task site ``w`` holds the coefficients of the
user's columns (a slope per unit of ``x``, the intercept in units of the linear predictor), the
learned prior :meth:`HierarchicalRegression.prior_distribution` and the noise scale are in those
units. Internally the prior's parameters live in coordinates preconditioned by the model's own
:class:`~bayesmeta.models.DataScaling` (``self.scaling``, fitted from the training pool by
``BayesLearner.fit``): ``w = A v + b`` with ``v ~ N(loc, L L^T)`` in the coordinates of
standardised features (and outputs, for real ``y``), so optimisation does not depend on units. This
is an exact reparameterisation of the same model: the intercept absorbs the columns' means, so a
model without an intercept (``bias=False``) is preconditioned by scales only.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from ..tasks.linear import linear_features
from .nn import softplus_inv
from .scaling import DataScaling

__all__ = ["HierarchicalRegression", "HierarchicalLogisticRegression", "HierarchicalPoissonRegression", "LIKELIHOODS"]

LIKELIHOODS = ("gaussian", "student-t", "bernoulli", "binomial", "poisson", "negative-binomial")


class GaussianPrior(nn.Module):
    """A learned Gaussian ``N(loc, L L^T)`` over ``dim`` task weights (full Cholesky factor)."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.tril_offdiag = nn.Parameter(torch.zeros(dim, dim))
        self.tril_rawdiag = nn.Parameter(torch.full((dim,), softplus_inv(scale)))

    @property
    def scale_tril(self) -> torch.Tensor:
        return torch.tril(self.tril_offdiag, -1) + torch.diag(F.softplus(self.tril_rawdiag) + 1e-6)

    def distribution(self) -> dist.MultivariateNormal:
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril)


class HierarchicalRegression(PyroModule):
    """Per-task GLM weights with a learned Gaussian prior and any of :data:`LIKELIHOODS`.

    Args:
        x_dim: number of features (``x``'s columns, not counting trials or an offset).
        bias: a task-specific intercept.
        likelihood: one of :data:`LIKELIHOODS`.
        offset: ``poisson`` / ``negative-binomial``: the last column of ``x`` is a log exposure
            added to the linear predictor (``x`` then has ``x_dim + 1`` columns).

    ``binomial`` reads the number of trials from the last column of ``x`` (``x_dim + 1`` columns).

    Example:
        >>> m = HierarchicalRegression(x_dim=2, likelihood="poisson", offset=True)
        >>> m.x_dim, m.raw_x_columns
        (3, (-1,))
    """

    def __init__(self, x_dim: int, bias: bool = True, *, likelihood: str = "gaussian", offset: bool = False) -> None:
        super().__init__()
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be a positive int; got {x_dim!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}; got {likelihood!r}")
        if offset and likelihood not in ("poisson", "negative-binomial"):
            raise ValueError(f"offset=True applies to count likelihoods (poisson, negative-binomial); got {likelihood!r}")
        self.num_features, self.bias, self.likelihood, self.offset = x_dim, bias, likelihood, offset
        extra = likelihood == "binomial" or offset
        self.x_dim, self.y_dim = x_dim + int(extra), 1
        self.raw_x_columns: tuple[int, ...] = (-1,) if extra else ()
        self.prior = GaussianPrior(x_dim + int(bias))  # over preconditioned coefficients (see the module doc)
        self.scaling = DataScaling(self.x_dim, 1, outputs=likelihood in ("gaussian", "student-t"),
                                   keep_x=self.raw_x_columns, center=bias)
        if likelihood in ("gaussian", "student-t"):
            self.raw_noise = nn.Parameter(torch.tensor(softplus_inv(1.0)))
        if likelihood == "student-t":
            self.raw_df = nn.Parameter(torch.tensor(softplus_inv(4.0)))
        if likelihood == "negative-binomial":
            self.raw_concentration = nn.Parameter(torch.tensor(softplus_inv(10.0)))
        self.config = {"x_dim": x_dim, "bias": bias, "likelihood": likelihood, "offset": offset}

    def preconditioner(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [P, P], b [P])`` with ``w = A v + b``: preconditioned coefficients ``v`` -> the data's units.

        With features standardised by the model's scaling (``x_k -> (x_k - m_k) / s_k``) and real
        outputs by ``y -> (y - m_y) / s_y``, a slope becomes ``s_y v_k / s_k`` and the intercept
        ``m_y + s_y (v_0 - sum_k v_k m_k / s_k)``. ``A`` is lower triangular (the intercept comes
        last), so ``A L`` is the Cholesky factor of the prior in the data's units. The identity
        while the scaling is unfitted.
        """
        sc, f = self.scaling, self.num_features
        dtype, device = self.prior.loc.dtype, self.prior.loc.device
        mx, sx = sc.x_shift[:f].to(device, dtype), sc.x_scale[:f].to(device, dtype)  # [F]
        my, sy = sc.y_shift[0].to(device, dtype), sc.y_scale[0].to(device, dtype)
        p = f + int(self.bias)
        a = torch.zeros(p, p, dtype=dtype, device=device)
        a[range(f), range(f)] = sy / sx
        b = torch.zeros(p, dtype=dtype, device=device)
        if self.bias:
            a[f, :f] = -sy * mx / sx
            a[f, f] = sy
            b[f] = my
        return a, b

    def prior_distribution(self) -> dist.MultivariateNormal:
        """The learned prior over a task's coefficients ``w`` ``[P]`` (features, then the intercept), in the data's units."""
        loc, tril = self.prior.loc, self.prior.scale_tril
        if not self.scaling.fitted:
            return dist.MultivariateNormal(loc, scale_tril=tril)
        a, b = self.preconditioner()
        return dist.MultivariateNormal(a @ loc + b, scale_tril=a @ tril)

    @property
    def noise_scale(self) -> torch.Tensor:
        """The learned noise scale of a ``gaussian`` (sd) or ``student-t`` (scale) outcome, in ``y``'s units."""
        if self.likelihood not in ("gaussian", "student-t"):
            raise AttributeError(f"a {self.likelihood} outcome has no noise scale")
        return self.scaling.y_spread(F.softplus(self.raw_noise) + 1e-6)

    def observation(self, eta: torch.Tensor, x: torch.Tensor):
        """Distribution of ``y`` given the linear predictor ``eta [..., T, N]`` (batch ``[..., T, N]``)."""
        kind = self.likelihood
        if kind == "gaussian":
            return dist.Normal(eta, self.noise_scale)
        if kind == "student-t":
            return dist.StudentT(F.softplus(self.raw_df) + 0.5, eta, self.noise_scale)
        if kind == "bernoulli":
            return dist.Bernoulli(logits=eta)
        if kind == "binomial":
            return dist.Binomial(total_count=x[..., -1], logits=eta)
        if self.offset:
            eta = eta + x[..., -1]
        if kind == "poisson":
            return dist.Poisson(eta.clamp(-30.0, 30.0).exp())
        r = F.softplus(self.raw_concentration) + 1e-6  # mean exp(eta), variance mean + mean^2 / r
        return dist.NegativeBinomial(total_count=r, logits=eta - torch.log(r))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """``x [T, N, x_dim]``, ``y [T, N]`` (or ``None`` to sample), ``mask [T, N]``."""
        t, n = x.shape[:2]
        phi = linear_features(x[..., : self.num_features], self.bias)  # [T, N, P]
        with pyro.plate("tasks", t, dim=-2):
            w = pyro.sample("w", self.prior_distribution())  # [..., T, 1, P], the data's units
            eta = (phi * w).sum(-1)  # [..., T, N]
            with pyro.plate("points", n, dim=-1):
                d = self.observation(eta, x)
                return pyro.sample("y", d.mask(mask) if mask is not None else d, obs=y)


class HierarchicalLogisticRegression(HierarchicalRegression):
    """Hierarchical logistic regression: ``y_ij ~ Bernoulli(sigmoid(w_i^T [x_ij, 1]))``.

    With ``trials=True`` the outcome is a number of successes, ``Binomial(n_ij, sigmoid(...))``,
    with ``n_ij`` in the last column of ``x``.

    Example:
        >>> m = HierarchicalLogisticRegression(x_dim=1)
        >>> m.likelihood
        'bernoulli'
    """

    def __init__(self, x_dim: int, bias: bool = True, *, trials: bool = False) -> None:
        super().__init__(x_dim, bias, likelihood="binomial" if trials else "bernoulli")
        self.config = {"x_dim": x_dim, "bias": bias, "trials": trials}


class HierarchicalPoissonRegression(HierarchicalRegression):
    """Hierarchical Poisson regression: ``y_ij ~ Poisson(exp(w_i^T [x_ij, 1] + offset_ij))``.

    With ``offset=True`` the last column of ``x`` is the log exposure; ``negative_binomial=True``
    adds a learned over-dispersion.

    Example:
        >>> m = HierarchicalPoissonRegression(x_dim=1)
        >>> m.likelihood
        'poisson'
    """

    def __init__(self, x_dim: int, bias: bool = True, *, offset: bool = False,
                 negative_binomial: bool = False) -> None:
        super().__init__(x_dim, bias, likelihood="negative-binomial" if negative_binomial else "poisson",
                         offset=offset)
        self.config = {"x_dim": x_dim, "bias": bias, "offset": offset, "negative_binomial": negative_binomial}
