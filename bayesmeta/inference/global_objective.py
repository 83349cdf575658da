"""Training objectives for a model with global latent sites: the globals' terms once per pool, the tasks' scaled.

The model's joint over a pool of ``M`` tasks is ``p(g) prod_i p(theta_i | g) p(D_i | theta_i, g)``; the
guide is ``q(g) prod_i q(theta_i | D_i, g)``. With ``K`` draws ``g_k ~ q(g)`` (reparameterised) and, for
each, ``L`` local draws per task ``theta_ikl ~ q(theta_i | D_i, g_k)``, a mini-batch of ``B`` tasks gives
the bound

    ``(1/K) sum_k [ log p(g_k) - log q(g_k) + (M / B) sum_i log (1/L) sum_l w_ikl ]``,
    ``w_ikl = p(theta_ikl, D_i | g_k) / q(theta_ikl | D_i, g_k)``,

an unbiased estimate (over the task subsample) of a lower bound of ``log p(D_1..M)``: the globals'
prior and entropy are counted once per pool, each task's term ``M / B`` times.

* ``"rws"`` (and ``"rws-wake"``, ``"rws-sleep"``), the default: reweighted wake-sleep for the tasks,
  reparameterised for the globals. The local draws are constants; ``sum_l w_ikl log p(theta_ikl, D_i |
  g_k)`` with self-normalised weights is the importance-sampling estimate of ``log p(D_i | g_k)``'s
  gradient (Fisher's identity), for the model's parameters and, through ``g_k``, for ``q(g)``. The local
  guide ascends ``sum_l w_ikl log q(theta_ikl | D_i, g_k)`` (wake) and the sleep phase: tasks simulated
  from the model given a draw of ``q(g)`` (:func:`~bayesmeta.inference.objectives.sleep_log_q`).
* ``"iwae"``: the bound above with every draw reparameterised (one gradient for everything);
  ``"elbo"``: the same with ``log (1/L) sum_l w`` replaced by ``(1/L) sum_l log w``; ``"elbo+sleep"``:
  that and the sleep phase for the local guide.

On an endless task family (no pool) there is no finite ``M``: a step's tasks count as a pool of
``B`` tasks, so ``q(g)`` is the posterior given one batch's worth of tasks; a model with globals is meant
for a finite pool (a ``TaskBatch``).

**The first training batch** starts ``q(g)`` where the data put it, in the posterior's units (see
:mod:`~bayesmeta.inference.global_guide`): before the optimiser's first step, a Laplace approximation of
``p(g | pool)`` from that batch (:func:`~bayesmeta.inference.global_guide.laplace_globals`), its covariance
widened ``M / B`` times (a batch's estimate of the pool's posterior is off by about ``sqrt(M / B)`` of its
sds) and by the variance of ``q(g)``'s data-free start (0.1 of the prior's spread, at most 1), becomes
``q(g)`` and its sds the guide's units. The second widening keeps the first steps stable: the local guide
starts at the prior, and against a ``q(g)`` already as sharp as the posterior its first steps diverged in
3 of 16 fits of 50 tasks x 50 points at lr 3e-3 (0 of 24 with it; 0 of 22 with the prior's start).
Once per guide; not in a distributed run (each rank has its own first batch, and the units must be the
same on every rank), nor in a call without gradients (an evaluation).
"""

from __future__ import annotations

import math
import weakref

import torch
from pyro.infer import ELBO

from .global_guide import laplace_globals
from .objectives import sleep_log_q

__all__ = ["GlobalObjective", "GLOBAL_OBJECTIVES"]

GLOBAL_OBJECTIVES = ("rws", "rws-wake", "rws-sleep", "iwae", "elbo", "elbo+sleep")


class GlobalObjective(ELBO):
    """The objectives of a model with global sites (see the module docstring).

    Args:
        objective: one of :data:`GLOBAL_OBJECTIVES`.
        num_particles: local draws ``L`` per task and global draw.
        global_particles: global draws ``K`` per step.
    """

    def __init__(self, objective: str = "rws", num_particles: int = 8, *, global_particles: int = 4) -> None:
        if objective not in GLOBAL_OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not available for a model with global latent sites; "
                             f"use one of {GLOBAL_OBJECTIVES}")
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=2)
        self.objective, self.global_particles = objective, global_particles
        self.wake = objective in ("rws", "rws-wake")
        self.sleep = objective in ("rws", "rws-sleep", "elbo+sleep")
        self._ready: weakref.WeakSet = weakref.WeakSet()  # global guides seen initialised (no per-step host sync)

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - traces are not used
        raise NotImplementedError("GlobalObjective evaluates the program's densities directly, without traces")

    def differentiable_loss(self, model, guide, x, y, mask=None, *, num_tasks=None,
                            sleep: bool | None = None) -> torch.Tensor:
        """``-(bound + surrogate - surrogate.detach())``: the value is the negative bound, the gradient the
        objective's. ``sleep=False`` leaves the sleep phase out of this call."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        scale = (num_tasks or x.shape[0]) / x.shape[0]
        if guide.globals not in self._ready and torch.is_grad_enabled():
            self.initialise(model, guide, x, y, mask, num_tasks=num_tasks)
        qg = guide.globals.distribution()
        g = qg.rsample((self.global_particles,))[:, None, :]  # [K, 1, G]
        global_terms = model.log_global_prior(g[:, 0]) - qg.log_prob(g[:, 0])  # [K]
        local = guide.encode(x, y, mask)
        if self.objective.startswith("rws"):
            bound, surrogate = self._wake(model, guide, x, y, mask, local, g)
        else:
            bound, surrogate = self._reparameterised(model, guide, x, y, mask, local, g)
        if self.sleep if sleep is None else sleep:
            surrogate = surrogate + sleep_log_q(model, guide, x, mask, g=g[:1].detach())[None]
        total = global_terms + scale * (bound + surrogate - surrogate.detach()).sum(-1)  # [K]
        return -total.mean()

    def initialise(self, model, guide, x, y, mask, *, num_tasks=None) -> bool:
        """Start ``guide.globals`` from a Laplace approximation of ``p(g | pool)`` on this batch (see the module
        docstring) unless it was started already; returns whether it was started now. Without a usable
        approximation (not finite, not improving on the prior's median) it keeps the prior's units."""
        globals_ = guide.globals
        if bool(globals_.initialised):
            self._ready.add(globals_)
            return False
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            return False
        self._ready.add(globals_)
        estimate = laplace_globals(model, x.detach(), y.detach(), mask, num_tasks=num_tasks,
                                   start=globals_.mean().detach(), unit=globals_.spread)
        if estimate is None:
            globals_.initialised.fill_(True)
            return False
        mean, cov = estimate
        cov = cov * max(1.0, (num_tasks or x.shape[0]) / x.shape[0])
        # widened by q(g)'s data-free start (0.1 of the prior's spread, at most 1): see the module docstring
        start = globals_.distribution().covariance_matrix.detach().diagonal()
        globals_.initialise_(mean, cov + torch.diag(start))
        return True

    def _wake(self, model, guide, x, y, mask, local, g):
        """``(bound [K, B], surrogate [K, B])`` of reweighted wake-sleep given global draws ``g [K, 1, G]``."""
        q = guide.build(local, g=g.detach(), detach_prior=True)  # batch [K, B]
        theta = q.sample((self.num_particles,)).clone()  # [L, K, B, P]; constants
        log_p = model.log_joint(x, y, mask, theta, g=g.expand(self.num_particles, *g.shape))  # [L, K, B]
        log_q = q.log_prob(theta)  # [L, K, B]; gradients: the local guide
        log_w = (log_p - log_q).detach()
        w = torch.softmax(log_w, 0)
        carries = w > 0  # a particle with no weight (log p = -inf) must not give 0 * inf
        surrogate = torch.where(carries, w * log_p, torch.zeros_like(w)).sum(0)  # [K, B]
        if self.wake:
            surrogate = surrogate + torch.where(carries, w * log_q, torch.zeros_like(w)).sum(0)
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        return bound, surrogate  # the bound (a constant here) is the value; the surrogate carries the gradient

    def _reparameterised(self, model, guide, x, y, mask, local, g):
        """``(bound [K, B], 0)``: every draw reparameterised, the bound's own gradient."""
        q = guide.build(local, g=g)  # batch [K, B]
        theta = q.rsample((self.num_particles,))  # [L, K, B, P]
        log_w = model.log_joint(x, y, mask, theta, g=g.expand(self.num_particles, *g.shape)) - q.log_prob(theta)
        if self.objective == "iwae":
            bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)
        else:
            bound = log_w.mean(0)
        # the bound carries its own gradient: the surrogate adds nothing but keeps one return shape
        return bound.detach(), bound - bound.detach()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))
