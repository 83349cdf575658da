"""Hierarchical models with hyperpriors: the population's parameters are global latent sites (full Bayes).

These are the canonical grouped-data models a Pyro, Stan or brms user writes first. Their population
parameters (a mean, a between-group scale, a noise scale) have priors of their own, sampled outside
every plate, so ``BayesLearner`` fits a posterior over them (not a point estimate, as for a module
parameter) and carries its uncertainty into predictions for a new group: what matters on the small
pools real users have (eight schools, a dozen herds). The priors are in the data's units: choose their
scales for your data.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

__all__ = ["VaryingIntercepts", "EightSchools", "eight_schools_data"]


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


class VaryingIntercepts(PyroModule):
    """Varying intercepts around a population mean, with an optional shared slope per input column::

        mu ~ Normal(0, mu_scale)        tau ~ HalfNormal(tau_scale)      sigma ~ HalfNormal(sigma_scale)
        beta ~ Normal(0, slope_scale)   (one per input column, with slopes=True)
        alpha_i = mu + tau * z_i,  z_i ~ Normal(0, 1)     (non-centred; centred=True: alpha_i ~ Normal(mu, tau))
        y_ij ~ Normal(alpha_i + x_ij . beta, sigma)

    ``mu``, ``tau``, ``sigma`` and ``beta`` are global latent sites; ``z`` (or ``alpha``) the task site.

    Args:
        x_dim: input columns (the slopes' covariates; with ``slopes=False`` they are not read).
        slopes: a shared slope per input column.
        centred: sample the intercepts ``alpha`` directly (centred) instead of ``z`` (non-centred).
        mu_scale, tau_scale, sigma_scale, slope_scale: the hyperpriors' scales, in the data's units.

    Example:
        >>> import bayesmeta as bm
        >>> model = bm.models.VaryingIntercepts(x_dim=1, mu_scale=10.0, tau_scale=5.0, sigma_scale=5.0)
        >>> [s.name for s in bm.BayesLearner(model).program.global_sites]
        ['mu', 'tau', 'sigma', 'beta']
    """

    def __init__(self, x_dim: int = 1, *, slopes: bool = True, centred: bool = False, mu_scale: float = 10.0,
                 tau_scale: float = 5.0, sigma_scale: float = 5.0, slope_scale: float = 5.0) -> None:
        super().__init__()
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be a positive int; got {x_dim!r}")
        self.x_dim, self.y_dim, self.slopes, self.centred = x_dim, 1, bool(slopes), bool(centred)
        self.scales = {k: _positive(v, k) for k, v in (("mu_scale", mu_scale), ("tau_scale", tau_scale),
                                                          ("sigma_scale", sigma_scale), ("slope_scale", slope_scale))}
        self.config = {"x_dim": x_dim, "slopes": slopes, "centred": centred, **self.scales}

    def forward(self, x, y=None, mask=None):
        s = self.scales
        mu = pyro.sample("mu", dist.Normal(0.0, s["mu_scale"]))
        tau = pyro.sample("tau", dist.HalfNormal(s["tau_scale"]))
        sigma = pyro.sample("sigma", dist.HalfNormal(s["sigma_scale"]))
        mean = 0.0
        if self.slopes:
            beta = pyro.sample("beta", dist.Normal(0.0, s["slope_scale"]).expand([self.x_dim]).to_event(1))
            mean = (x * beta).sum(-1)  # [..., T, N]: beta [..., T or 1, 1, D] against x [T, N, D]
        with pyro.plate("tasks", x.shape[0], dim=-2):
            if self.centred:
                alpha = pyro.sample("alpha", dist.Normal(mu, tau))  # [..., T, 1]
            else:
                alpha = mu + tau * pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(alpha + mean, sigma).mask(mask), obs=y)


class EightSchools(PyroModule):
    """Eight schools (Rubin 1981) as tasks: a school is a task whose points are estimates ``y`` with known
    standard errors (the input ``x[..., 0]``)::

        mu ~ Normal(0, 5)     tau ~ HalfCauchy(5)
        theta_j = mu + tau * eta_j,  eta_j ~ Normal(0, 1)     (centred=True: theta_j ~ Normal(mu, tau))
        y_j ~ Normal(theta_j, sigma_j)

    The priors are those of the posteriordb reference (ArviZ's ``non_centered_eight``).
    """

    x_dim, y_dim = 1, 1

    def __init__(self, centred: bool = False) -> None:
        super().__init__()
        self.centred = bool(centred)
        self.config = {"centred": self.centred}

    def forward(self, x, y=None, mask=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            if self.centred:
                theta = pyro.sample("theta", dist.Normal(mu, tau))
            else:
                theta = pyro.deterministic("theta", mu + tau * pyro.sample("eta", dist.Normal(0.0, 1.0)))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(theta, x[..., 0]).mask(mask), obs=y)


def eight_schools_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The eight schools' standard errors and estimated effects, ``x [8, 1, 1]`` and ``y [8, 1, 1]``."""
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    return sigma.reshape(8, 1, 1), y.reshape(8, 1, 1)
