"""A new task under the hyperposterior: a model with global sites seen as one with joint draws ``(g, theta)``.

For a new task with support ``D``, the posterior predictive of a model with global sites integrates
over both: ``p(y* | D, pool) = E[p(y* | theta, g)]`` under ``p(theta, g | D, pool) ∝ p(g | pool)
p(theta | g) p(D | theta, g)``. :class:`HyperProgram` presents this to the posterior machinery as an
ordinary program whose draws are ``[g, u]`` (``G + P`` flat coordinates per task): each new task gets
its own global draws from the hyperposterior ``p(g | pool)`` (the fitted global guide ``q(g)``, or its
importance-corrected draws), and local draws given each.

Every density here is *given* ``g``: the hyperposterior's own density is left out of the target and of
every proposal alike (the proposals draw ``g`` from it too), so it cancels from importance weights, and
a hyperposterior known only by its draws works as well as one with a density.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["HyperProgram", "ConditionalJoint", "WeightedDraws", "correct_globals"]


class WeightedDraws:
    """A hyperposterior known by weighted draws ``g [m, G]`` with log weights ``[m]``: ``sample(n, t)``
    resamples ``[n, t, G]`` (multinomially, independently per task)."""

    def __init__(self, g: torch.Tensor, log_w: torch.Tensor) -> None:
        self.g, self.log_w = g, log_w

    def __call__(self, n: int, t: int) -> torch.Tensor:
        idx = torch.multinomial(torch.softmax(self.log_w, 0), n * t, replacement=True)
        return self.g[idx].reshape(n, t, -1)


class HyperProgram:
    """A model program with global sites and a hyperposterior sampler, as a program over ``[g, u]``.

    Args:
        program: the model's :class:`~bayesmeta.inference.program.ModelProgram` (with global sites).
        hyper: ``(n, T) -> g [n, T, G]``, draws of the hyperposterior.
    """

    def __init__(self, program, hyper: Callable[[int, int], torch.Tensor]) -> None:
        self.program, self.hyper = program, hyper
        self.model, self.observation = program.model, program.observation
        self.x_dim, self.y_dim = program.x_dim, program.y_dim
        self.global_dim = program.global_dim
        self.param_dim = program.global_dim + program.param_dim
        self.sites = program.sites
        self.has_globals = True

    def parts(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., T, G + P]`` -> ``(u [..., T, P], g [..., T, G])``."""
        return v[..., self.global_dim:], v[..., : self.global_dim]

    def split(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Constrained values of the global and the task sites, ``{site: [..., *shape]}``."""
        u, g = self.parts(v)
        return {**self.program.split_globals(g), **self.program.split(u)}

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained ``{site: [..., *shape]}`` (global and task sites) -> flat ``[..., G + P]``."""
        return torch.cat([self.program.flatten_globals(values), self.program.flatten(values)], -1)

    def coordinate_names(self) -> list[str]:
        return self.program.global_coordinate_names() + self.program.coordinate_names()

    def log_joint(self, x, y, mask, v: torch.Tensor) -> torch.Tensor:
        u, g = self.parts(v)
        return self.program.log_joint(x, y, mask, u, g)

    def log_likelihood(self, x, y, mask, v: torch.Tensor) -> torch.Tensor:
        u, g = self.parts(v)
        return self.program.log_likelihood(x, y, mask, u, g)

    def log_prior(self, x, v: torch.Tensor) -> torch.Tensor:
        u, g = self.parts(v)
        return self.program.log_prior(x, u, g)

    def sample_prior(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Draws of a new task's parameters before its support: ``g`` from the hyperposterior, ``u`` from
        ``p(theta | g)``; ``[n, T, G + P]``."""
        g = self.hyper(num_samples, x.shape[0])
        return torch.cat([g, self.program.sample_prior(x, num_samples, g=g)], -1)

    def observation_distribution(self, x: torch.Tensor, v: torch.Tensor):
        u, g = self.parts(v)
        return self.program.observation_distribution(x, u, g)

    def gaussian_prior(self, like=None):
        return None  # the prior of a new task is a mixture over the hyperposterior

    def check_y(self, *args, **kwargs) -> None:
        self.program.check_y(*args, **kwargs)


class ConditionalJoint:
    """``q(theta | D, g)`` with ``g`` from the hyperposterior, as a distribution over ``[g, u]`` whose
    ``log_prob`` is the conditional's alone (see the module docstring): batch ``[T]``, event ``[G + P]``.

    Args:
        guide: the :class:`~bayesmeta.inference.AmortizedGuide` (with a global guide).
        local: its local parameters for ``T`` tasks (``guide.encode``).
        hyper: ``(n, T) -> g [n, T, G]``.
        widen: the conditional's scale factor.
    """

    def __init__(self, guide, local: dict[str, torch.Tensor], hyper, *, widen: float = 1.0) -> None:
        self.guide, self.local, self.hyper, self.widen = guide, local, hyper, widen
        self.num_tasks = local["context"].shape[0]
        self.global_dim = guide.globals.global_dim
        self.batch_shape = torch.Size([self.num_tasks])
        self.event_shape = torch.Size([self.global_dim + guide.param_dim])

    def _conditional(self, g: torch.Tensor):
        return self.guide.build(self.local, widen=self.widen, g=g)

    def sample(self, shape=()) -> torch.Tensor:
        n = int(torch.Size(shape).numel())
        g = self.hyper(max(n, 1), self.num_tasks)  # [n, T, G]
        v = torch.cat([g, self._conditional(g).sample()], -1)  # [n, T, G + P]
        return v.reshape(*shape, self.num_tasks, -1)

    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """``log q(theta | D, g)`` of ``v [n, T, G + P]``, ``[n, T]``."""
        lead = v.shape[:-2]
        vf = v.reshape(-1, *v.shape[-2:])
        g, u = vf[..., : self.global_dim], vf[..., self.global_dim:]
        return self._conditional(g).log_prob(u).reshape(*lead, v.shape[-2])


@torch.no_grad()
def correct_globals(program, guide, x, y, mask, *, num_draws: int | None = None, num_local: int = 64,
                    max_elements: int = 2**22, max_work: int = 2**27) -> dict | None:
    """Importance-corrected draws of the hyperposterior ``p(g | pool)`` from the fitted guide.

    The target is ``p(g) prod_i p(D_i | g)`` over the pool's tasks (``x [T, N, D]``, ``y``, ``mask``),
    each ``p(D_i | g)`` estimated by importance sampling with ``num_local`` draws of ``q(theta_i | D_i,
    g)``; the proposal is the defensive mixture ``0.5 q(g) + 0.5 q_2(g)`` (``q_2``: ``q(g)`` with twice
    its scale). ``num_draws`` (default: as many as ``max_work`` point evaluations allow, 200 to 4000).
    Returns ``{"g": [m, G], "log_w": [m], "ess", "pareto_k"}``, or ``None`` when fewer than 200 draws fit
    the budget (a pool that large has a concentrated hyperposterior, which ``q(g)`` describes).
    """
    from .importance import effective_sample_size, pareto_k

    per_draw = num_local * x.shape[0] * max(1, x.shape[1])
    if num_draws is None:
        num_draws = min(4000, max_work // per_draw)
        if num_draws < 200:
            return None
    qg = guide.globals.distribution()
    wide = type(qg)(qg.loc, scale_tril=2.0 * qg.scale_tril)
    half = num_draws // 2
    g = torch.cat([qg.sample((half,)), wide.sample((num_draws - half,))])  # [m, G]
    log_r = torch.logsumexp(torch.stack([qg.log_prob(g), wide.log_prob(g)]), 0) - math.log(2.0)
    local = guide.encode(x, y, mask)
    chunk = max(1, max_elements // per_draw)
    log_lik = torch.cat([_pool_log_marginal(program, guide, x, y, mask, local, g[i : i + chunk], num_local)
                         for i in range(0, g.shape[0], chunk)])  # [m]
    log_w = program.log_global_prior(g) + log_lik - log_r
    log_w = torch.nan_to_num(log_w, nan=-math.inf)
    return {"g": g, "log_w": log_w, "ess": float(effective_sample_size(log_w[:, None])[0]),
            "pareto_k": float(pareto_k(log_w[:, None])[0])}


def _pool_log_marginal(program, guide, x, y, mask, local, g: torch.Tensor, num_local: int) -> torch.Tensor:
    """``sum_i log p^(D_i | g)`` for global draws ``g [c, G]``, ``[c]``: importance sampling with the defensive
    mixture of ``q(theta | D_i, g)`` (1/2), the same widened twofold (1/4) and the prior ``p(theta | g)`` (1/4),
    so that the estimate holds where the local guide is poor (global draws in the tails of ``q(g)``)."""
    c, t = g.shape[0], x.shape[0]
    g3 = g[:, None, :]  # [c, 1, G]
    q, wide = guide.build(local, g=g3), guide.build(local, g=g3, widen=2.0)  # batch [c, T]
    n_q, n_w = num_local // 2, num_local // 4
    n_p = num_local - n_q - n_w
    prior = program.sample_prior(x, n_p * c, g=g3.repeat(n_p, 1, 1)).reshape(n_p, c, t, -1)
    theta = torch.cat([q.sample((n_q,)), wide.sample((n_w,)), prior])  # [L, c, T, P]
    gl = g3.expand(num_local, *g3.shape)
    log_prior = program.log_prior(x, theta, gl)  # [L, c, T]
    log_r = torch.logsumexp(torch.stack([q.log_prob(theta) + math.log(0.5), wide.log_prob(theta) + math.log(0.25),
                                         log_prior + math.log(0.25)]), 0)
    log_w = program.log_joint(x, y, mask, theta, g=gl) - log_r
    return (torch.logsumexp(log_w, 0) - math.log(num_local)).sum(-1)
