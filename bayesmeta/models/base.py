"""The hierarchical model protocol shared by every bayesmeta model.

A model is a :class:`~pyro.nn.PyroModule` with

* a learned (empirical-Bayes) prior over task parameters, :meth:`site_priors`,
* task-level latent sites declared in ``task_sites`` (``{name: event_shape}``), sampled inside
  ``pyro.plate("tasks", dim=-2)``,
* a likelihood over points inside ``pyro.plate("points", dim=-1)``, masked by the batch mask,
  observed at site ``"y"``,
* ``forward(x, y=None, mask=None)``; ``y=None`` samples the predictive.

Learned parameters live in plain ``torch.nn`` submodules, never in Pyro's global parameter
store, so two models never share a parameter by name and ``state_dict`` holds everything.
Subclasses implement :meth:`site_priors` and :meth:`likelihood`; everything else (flattening
task parameters, log densities for importance sampling, the Pyro program) is shared here.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

__all__ = ["HierarchicalModel", "TASK_DIM", "POINT_DIM"]

TASK_DIM, POINT_DIM = -2, -1


class HierarchicalModel(PyroModule):
    """Base class: ``theta_i ~ p(theta | phi)``, ``y_ij ~ p(y | x_ij, theta_i)``."""

    task_sites: dict[str, torch.Size]
    x_dim: int
    y_dim: int

    def __init__(self, x_dim: int, y_dim: int) -> None:
        super().__init__()
        for name, v in (("x_dim", x_dim), ("y_dim", y_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        self.x_dim, self.y_dim = x_dim, y_dim
        self.config: dict = {"x_dim": x_dim, "y_dim": y_dim}

    # ------------------------------------------------------------------ to implement
    def site_priors(self) -> dict[str, dist.TorchDistribution]:
        """Prior of each task site, event shape ``task_sites[name]``, no batch shape."""
        raise NotImplementedError

    def likelihood(self, x: torch.Tensor, theta: dict[str, torch.Tensor]) -> dist.Normal:
        """Observation distribution given task parameters.

        Args:
            x: inputs ``[T, N, D]``.
            theta: each site ``[..., T, *event]`` (leading sample dims allowed).

        Returns:
            A ``Normal`` with batch shape ``[..., T, N, E]``.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ flat parameters
    @property
    def param_dim(self) -> int:
        """Total number of task-level parameters ``P`` (all sites flattened)."""
        return sum(math.prod(s) for s in self.task_sites.values())

    def coordinate_names(self) -> list[str]:
        """Names of the ``P`` flat coordinates, e.g. ``["w[0]", "w[1]", "z[0, 1]"]``."""
        names = []
        for name, shape in self.task_sites.items():
            if len(shape) == 0:
                names.append(name)
            else:
                idx = torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(-1, len(shape))
                names += [f"{name}[{', '.join(str(int(v)) for v in i)}]" for i in idx]
        return names

    def split(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat ``[..., P]`` -> ``{site: [..., *event]}``."""
        out, start = {}, 0
        for name, shape in self.task_sites.items():
            size = math.prod(shape)
            out[name] = theta[..., start : start + size].reshape(*theta.shape[:-1], *shape)
            start += size
        return out

    def flatten(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{site: [..., *event]}`` -> flat ``[..., P]``."""
        parts = []
        for name, shape in self.task_sites.items():
            v = theta[name]
            parts.append(v.reshape(*v.shape[: v.dim() - len(shape)], -1))
        return torch.cat(parts, -1)

    def prior_distribution(self) -> dist.TorchDistribution:
        """The learned prior over the flat task parameters ``[P]`` (a Gaussian)."""
        priors = self.site_priors()
        if len(priors) == 1:
            (p,) = priors.values()
            return p if p.event_shape == (self.param_dim,) else _flat_gaussian([p])
        return _flat_gaussian(list(priors.values()))

    # ------------------------------------------------------------------ log densities
    def log_likelihood(self, x, y, mask, theta: torch.Tensor) -> torch.Tensor:
        """``sum_j mask_ij log p(y_ij | x_ij, theta_i)`` for flat ``theta [..., T, P]`` -> ``[..., T]``."""
        lik = self.likelihood(x, self.split(theta))
        lp = lik.log_prob(y).sum(-1)  # [..., T, N]
        return (lp * mask.to(lp.dtype)).sum(-1)

    def log_joint(self, x, y, mask, theta: torch.Tensor) -> torch.Tensor:
        """``log p(theta) + log p(y | x, theta)`` per task, ``[..., T]``."""
        return self.prior_distribution().log_prob(theta) + self.log_likelihood(x, y, mask, theta)

    # ------------------------------------------------------------------ the Pyro program
    def forward(self, x, y=None, mask=None, *, num_tasks: int | None = None):
        """Run the generative program on ``x [T, N, D]``; observe ``y [T, N, E]`` where ``mask``.

        ``num_tasks`` is the size of the task population the batch was drawn from: the tasks
        plate then rescales the log density by ``num_tasks / T`` (task subsampling).
        Returns the sampled or observed ``y``.
        """
        scale = 1.0 if num_tasks is None else num_tasks / x.shape[0]
        with pyro.settings.context(module_local_params=True), poutine.scale(scale=scale):  # never the global store
            return self._program(x, y, mask)

    def _program(self, x, y, mask):
        t, n = x.shape[:2]
        if mask is None:
            mask = torch.ones(t, n, dtype=torch.bool, device=x.device)
        theta = {}
        with pyro.plate("tasks", t, dim=TASK_DIM):
            for name, prior in self.site_priors().items():
                v = pyro.sample(name, prior.expand([t, 1]))  # [..., T, 1, *event]
                theta[name] = _drop_point_dim(v, len(prior.event_shape))
            lik = self.likelihood(x, theta)  # batch [..., T, N, E]
            with pyro.plate("points", n, dim=POINT_DIM):
                return pyro.sample("y", lik.to_event(1).mask(mask), obs=y)


def _drop_point_dim(v: torch.Tensor, event_dims: int) -> torch.Tensor:
    """``[..., T, 1, *event]`` -> ``[..., T, *event]``."""
    return v.squeeze(-1 - event_dims)


def _flat_gaussian(priors: list[dist.TorchDistribution]) -> dist.TorchDistribution:
    """Concatenate independent Gaussian site priors into one flat Gaussian."""
    locs, trils, diag = [], [], True
    for p in priors:
        base = p
        while isinstance(base, dist.Independent):
            base = base.base_dist
        if isinstance(base, dist.Normal):
            locs.append(base.loc.reshape(-1))
            trils.append(torch.diag(base.scale.expand_as(base.loc).reshape(-1)))
        elif isinstance(base, dist.MultivariateNormal):
            diag = False
            locs.append(base.loc)
            trils.append(base.scale_tril)
        else:
            raise TypeError(f"flat priors need Normal or MultivariateNormal sites; got {type(p).__name__}")
    loc = torch.cat(locs)
    if diag:
        return dist.Normal(loc, torch.cat([t.diagonal() for t in trils])).to_event(1)
    return dist.MultivariateNormal(loc, scale_tril=torch.block_diag(*trils))
