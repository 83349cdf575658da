"""The pieces of a traced model program: site descriptions, flat unconstrained coordinates, helpers.

A *latent site* (a task site inside the tasks plate, or a global site outside every plate) is
described by its constrained event ``shape``, its ``support`` and the shape of its unconstrained
coordinates (``biject_to(support)``). A list of latent sites maps to and from one flat vector of
unconstrained reals: :func:`constrain` and :func:`flatten`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from torch.distributions import biject_to, constraints

__all__ = ["DRAWS_DIM", "TASK_DIM", "POINT_DIM", "ModelError", "TaskSite", "GlobalSite", "ObservationSite",
           "unwrap", "is_real", "constrain", "flatten", "coordinate_names", "flat_gaussian"]

DRAWS_DIM, TASK_DIM, POINT_DIM = -3, -2, -1


class ModelError(ValueError):
    """A model's Pyro program breaks one of the rules of :mod:`bayesmeta.inference.program`."""


@dataclass(frozen=True)
class TaskSite:
    """A latent site: constrained event ``shape``, ``support``, flat unconstrained ``size``."""

    name: str
    shape: torch.Size
    support: constraints.Constraint
    unconstrained_shape: torch.Size
    prior_family: str

    @property
    def size(self) -> int:
        return math.prod(self.unconstrained_shape)

    @property
    def transform(self):
        return biject_to(self.support)


@dataclass(frozen=True)
class GlobalSite(TaskSite):
    """A global latent site (a hyperprior's draw): sampled once, outside every plate."""


@dataclass(frozen=True)
class ObservationSite:
    """The observation site: its name, event shape (``()`` or ``(E,)``), support and family."""

    name: str
    event_shape: torch.Size
    support: constraints.Constraint
    family: str
    discrete: bool

    @property
    def real(self) -> bool:
        """Outcomes on the whole real line (what standardising may shift and scale)."""
        return is_real(self.support)

    @property
    def num_classes(self) -> int | None:
        """Classes of a categorical outcome (labels ``0..C-1``), else ``None``."""
        if self.family != "Categorical":
            return None
        return int(getattr(self.support, "upper_bound", 0)) + 1


def unwrap(fn) -> tuple[Any, int]:
    """The innermost distribution of ``fn`` (through masks, ``to_event`` and expansions) and how many
    batch dims ``to_event`` made event dims."""
    reinterpreted = 0
    while True:
        if isinstance(fn, dist.MaskedDistribution | dist.torch_distribution.ExpandedDistribution):
            fn = fn.base_dist
        elif isinstance(fn, torch.distributions.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        else:
            return fn, reinterpreted


def is_real(support) -> bool:
    """Whether ``support`` is the real line (or independent copies of it)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return type(support) is type(constraints.real)  # not identity: a deep copy of a model copies its constraints


def constrain(sites, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``({site: [..., *shape]}, {site: log|det J| [...]})`` of the map from flat ``u [..., P]`` to the supports."""
    values, ldjs, start = {}, {}, 0
    for s in sites:
        part = u[..., start : start + s.size].reshape(tuple(u.shape[:-1]) + tuple(s.unconstrained_shape))
        start += s.size
        t = s.transform
        if not is_real(s.support):  # exp/sigmoid of a wild draw must not reach a support's edge (0, 1)
            bound = math.log(torch.finfo(u.dtype).max) - 2.0
            part = part.clamp(-bound, bound)
        values[s.name] = t(part)
        if is_real(s.support):
            ldjs[s.name] = u.new_zeros(u.shape[:-1])
        else:
            ldjs[s.name] = sum_to(t.log_abs_det_jacobian(part, values[s.name]), u.dim() - 1)
    return values, ldjs


def flatten(sites, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Constrained ``{site: [..., *shape]}`` -> flat unconstrained ``[..., P]``."""
    parts = []
    for s in sites:
        u = s.transform.inv(values[s.name])
        parts.append(u.reshape(*u.shape[: u.dim() - len(s.unconstrained_shape)], -1))
    return torch.cat(parts, -1)


def coordinate_names(sites) -> list[str]:
    """Names of the flat coordinates, e.g. ``["w[0]", "w[1]", "log_sigma"]``: ``site[i]`` for real
    sites; an unconstrained coordinate of another support is named after the map (``log_`` for
    positive sites, ``logit_`` for unit-interval sites, ``u_`` otherwise)."""
    names = []
    for s in sites:
        prefix = _prefix(s.support)
        shape = s.unconstrained_shape
        if len(shape) == 0:
            names.append(f"{prefix}{s.name}")
            continue
        idx = torch.cartesian_prod(*[torch.arange(k) for k in shape]).reshape(-1, len(shape))
        names += [f"{prefix}{s.name}[{', '.join(str(int(v)) for v in i)}]" for i in idx]
    return names


def _prefix(support) -> str:
    base = support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base is constraints.real:
        return ""
    if base is constraints.positive or base is constraints.nonnegative:
        return "log_"
    if base is constraints.unit_interval:
        return "logit_"
    return "u_"


def sum_to(ldj: torch.Tensor, target_dims: int) -> torch.Tensor:
    """A log-Jacobian summed down to ``target_dims`` batch dims."""
    while ldj.dim() > target_dims:
        ldj = ldj.sum(-1)
    return ldj


def masked(lp: torch.Tensor, site) -> torch.Tensor:
    return scale_and_mask(lp, 1.0, site["mask"]) if site["mask"] is not None else lp


def plates(site) -> dict[int, Any]:
    return {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}


def flat_gaussian(fns) -> dist.TorchDistribution:
    """One flat Gaussian from Gaussian site priors of batch ``[1, 1]`` (one task, one point dim)."""
    locs, trils, diag = [], [], True
    for fn in fns:
        base, _ = unwrap(fn)
        if isinstance(base, dist.MultivariateNormal):
            diag = False
            locs.append(base.loc.expand(*base.batch_shape, -1).reshape(-1, base.loc.shape[-1])[0])
            tril = base.scale_tril.expand(*base.batch_shape, *base.scale_tril.shape[-2:])
            trils.append(tril.reshape(-1, *tril.shape[-2:])[0])
        else:
            shape = fn.batch_shape + fn.event_shape
            loc = base.loc.expand(shape).reshape(fn.batch_shape.numel(), -1)[0]
            locs.append(loc)
            trils.append(torch.diag(base.scale.expand(shape).reshape(fn.batch_shape.numel(), -1)[0]))
    loc = torch.cat(locs)
    if diag:
        return dist.Normal(loc, torch.cat([t.diagonal() for t in trils])).to_event(1)
    return dist.MultivariateNormal(loc, scale_tril=torch.block_diag(*trils))
