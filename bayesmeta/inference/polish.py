"""Type-II maximum likelihood of a model's parameters on a finite pool: a deterministic polish after SVI.

Stochastic meta-training moves a model's parameters (its fixed effects, prior scales, a noise sd:
empirical Bayes) by at most about ``lr`` per step, and slowly along directions the data barely
tell apart (a fixed intercept against the mean of the random intercepts). For a model with few
parameters and low-dimensional task sites -- a mixed model, a mechanistic formula -- on a finite
pool, the marginal likelihood ``sum_i log p(D_i | phi)`` can be maximised directly, as mixed-model
software does:

1. **Laplace**: for the current ``phi``, each task's posterior mode ``u_i`` (flat unconstrained
   coordinates, damped Newton, batched over tasks) and curvature ``H_i``; maximise
   ``sum_i log p(u_i, D_i | phi) + P/2 log 2 pi - 1/2 log det(-H_i)`` over ``phi`` (L-BFGS), re-finding the modes at
   every evaluation.
2. **Adaptive quadrature**: with each task's Laplace Gaussian as a fixed proposal -- a Gauss-Hermite
   product grid for up to three task parameters (adaptive Gauss-Hermite quadrature), fixed
   importance draws (common random numbers) beyond -- maximise ``sum_i log mean_k p(u_ik, D_i | phi) / q_i(u_ik)`` (smooth in ``phi``,
   consistent as the draws grow); re-centre the proposals and repeat.

Everything comes from the Pyro program's own log joint (:meth:`ModelProgram.log_joint`); nothing
is written twice.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyro
import torch

__all__ = ["MAX_POLISH_SCALARS", "MAX_POLISH_SITE_DIM", "can_polish", "polish_marginal_likelihood"]

MAX_POLISH_SCALARS = 64
"""Models with at most this many learned scalars are polished (mixed models, mechanistic formulas)."""
MAX_POLISH_SITE_DIM = 8
"""... and at most this many task parameters (flat coordinates): Hessians are ``P x P`` per task."""
_CHUNK = 256  # tasks per block of the objective (memory stays bounded for large pools)
_MC_TOLERANCE = 0.5  # nats: the polish is kept unless its estimate is clearly below the start's (Monte Carlo noise)


def _params(program) -> list[torch.Tensor]:
    return [p for p in program.model.parameters() if p.requires_grad]


def can_polish(program) -> bool:
    """Whether :func:`polish_marginal_likelihood` applies: few learned scalars, low-dimensional task sites, no
    global latent sites (their posterior is fitted by the guide)."""
    if getattr(program, "has_globals", False):
        return False
    params = _params(program)
    n = sum(p.numel() for p in params)
    return 0 < n <= MAX_POLISH_SCALARS and program.param_dim <= MAX_POLISH_SITE_DIM


def _grad_hess(program, x, y, mask, u: torch.Tensor):
    """Log joint ``[T]``, its gradient ``[T, P]`` and Hessian ``[T, P, P]`` in ``u`` (the tasks are independent)."""
    u = u.detach().requires_grad_(True)
    lj = program.log_joint(x, y, mask, u)  # [T]
    (g,) = torch.autograd.grad(lj.sum(), u, create_graph=True)
    rows = [torch.autograd.grad(g[:, j].sum(), u, retain_graph=True)[0] for j in range(u.shape[-1])]
    return lj.detach(), g.detach(), torch.stack(rows, -2).detach()


def _modes(program, x, y, mask, u: torch.Tensor, steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Each task's posterior mode (damped Newton with step halving, batched) and ``-H`` there (positive definite)."""
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    # gradients in u only (torch.autograd.grad): the parameters' .grad stay untouched
    lj, g, h = _grad_hess(program, x, y, mask, u)
    for _ in range(steps):
        neg = _positive(-h, eye)
        step = torch.linalg.solve(neg, g[..., None])[..., 0]  # [T, P]
        scale = torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)
        for _ in range(20):  # per task: halve the step until the log joint does not fall
            trial = u + scale * step
            with torch.no_grad():
                lt = program.log_joint(x, y, mask, trial)
            worse = ~(lt >= lj - 1e-9 * (1 + lj.abs()))  # NaN counts as worse
            if not bool(worse.any()):
                break
            scale = torch.where(worse[:, None], scale / 2, scale)
        u = torch.where((~worse)[:, None], trial, u)  # a task whose step never stopped falling keeps its point
        done = bool((step.abs() * scale).max() < 1e-7 * (1 + float(u.abs().max())))
        lj, g, h = _grad_hess(program, x, y, mask, u)
        if done:
            break
    return u.detach(), _positive(-h, eye)


def _positive(a: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """``a`` made positive definite: eigenvalues floored at a small fraction of the largest."""
    a = 0.5 * (a + a.transpose(-1, -2))
    vals, vecs = torch.linalg.eigh(a)
    floor = 1e-6 * vals.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    vals = torch.maximum(vals, floor)
    return vecs @ torch.diag_embed(vals) @ vecs.transpose(-1, -2)


def _chunks(n: int):
    return [slice(s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)]


def _lbfgs(params, objective, max_iter: int, deadline: float) -> None:
    opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                            tolerance_change=1e-12)

    def closure():
        if time.perf_counter() > deadline:
            raise _OutOfTime
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)


def polish_marginal_likelihood(program, pool, *, u_init: torch.Tensor | None = None, num_draws: int = 512,
                               rounds: int = 6, max_iter: int = 200, max_seconds: float = 30.0,
                               seed: int = 0) -> dict:
    """Maximise the pool's marginal likelihood over the model's parameters (in place); returns a report.

    Args:
        program: the model's :class:`~bayesmeta.inference.program.ModelProgram`.
        pool: a :class:`~bayesmeta.TaskBatch` (every task's support and query points are its data).
        u_init: ``[T, P]`` starting points of the mode searches (e.g. the guide's posterior means);
            default: the prior's draws' mean.
        num_draws: importance draws per task in stage 2 (fixed: the objective is deterministic).
        rounds: re-centrings of stage 2.
        max_iter: L-BFGS iterations per stage and round.
        max_seconds: the polish gives up (and changes nothing) after this long: large tasks with
            several task parameters make every evaluation a batch of Newton solves.

    Returns:
        ``{"log_marginal", "log_marginal_before", "laplace", "rounds", "accepted"}`` (log marginals summed
        over the pool's tasks). The parameters are left as they were (``accepted=False``, with ``why``
        when it failed) unless the polish ends finite and no worse than the start by the same
        importance estimate (within Monte Carlo noise, 0.5 nats).
    """
    params = _params(program)
    start = [p.detach().clone() for p in params]
    try:  # in float64, as mixed-model software: the modes and the objective must be smooth to L-BFGS's tolerance
        for p in params:
            p.data = p.data.double()
        deadline = time.perf_counter() + max_seconds
        with pyro.validation_enabled(False):  # a trial point may leave the formula's domain: NaN, then rejected
            report = _polish(program, params, pool, u_init, num_draws, rounds, max_iter, seed, deadline)
    except _OutOfTime:
        report = {"accepted": False, "why": f"stopped after max_seconds={max_seconds:g} s"}
    except (RuntimeError, ValueError, torch.linalg.LinAlgError) as err:
        report = {"accepted": False, "why": f"{type(err).__name__}: {err}"[:300]}
    accepted = report.get("accepted", True) and all(bool(torch.isfinite(p).all()) for p in params)
    for p, old in zip(params, start, strict=True):
        p.data = p.data.to(old.dtype) if accepted else old
    return {**report, "accepted": accepted}


class _OutOfTime(Exception):
    pass


def _polish(program, params, pool, u_init, num_draws, rounds, max_iter, seed, deadline: float) -> dict:
    """The two stages; ``accepted`` is False when the result is not better than the start (the caller restores)."""
    x, y, mask = (t.to(params[0].device, torch.float64) if t.is_floating_point() else t.to(params[0].device)
                  for t in pool.all_points())
    t_count, p_dim = x.shape[0], program.param_dim
    if u_init is None:
        with torch.no_grad():
            u_init = program.sample_prior(x, 64).mean(0)
    u = u_init.detach().to(x.dtype)
    half_log_2pi = 0.5 * p_dim * math.log(2 * math.pi)

    def laplace() -> torch.Tensor:  # stage 1: modes re-found at every evaluation, differentiated implicitly
        nonlocal u
        total = x.new_zeros(())
        eye = torch.eye(p_dim, dtype=x.dtype, device=x.device)
        for c in _chunks(t_count):
            u_c, _ = _modes(program, x[c], y[c], mask[c], u[c])
            u = u.clone()
            u[c] = u_c
            # one Newton step from the mode, in the graph: its value is the mode (the gradient is ~0 there) and its
            # derivative in the parameters is the mode's own (-H^-1 dg/dphi), so L-BFGS sees the total derivative
            lj, g, h = _derivatives(program, x[c], y[c], mask[c], u_c.requires_grad_(True))
            u_1 = u_c - torch.linalg.solve(h, g[..., None])[..., 0]
            lj, _, h = _derivatives(program, x[c], y[c], mask[c], u_1)
            total = total - (lj + half_log_2pi - 0.5 * torch.logdet(_positive(-h, eye))).sum()
        return total

    before = _importance_value(program, x, y, mask, u, num_draws, seed)  # the start's own estimate
    _lbfgs(params, laplace, max_iter, deadline)
    laplace_value = -float(laplace().detach())
    eps, log_w = _nodes(p_dim, t_count, num_draws, seed, x)
    for _ in range(rounds):  # stage 2: adaptive importance sampling from each task's Laplace Gaussian
        modes, neg_h = [], []
        for c in _chunks(t_count):
            m_c, n_c = _modes(program, x[c], y[c], mask[c], u[c])
            modes.append(m_c)
            neg_h.append(n_c)
        u, prec = torch.cat(modes), torch.cat(neg_h)
        q = torch.distributions.MultivariateNormal(u, precision_matrix=prec)
        draws = u + (q.scale_tril @ eps[..., None])[..., 0]  # [K, T, P]
        log_q = q.log_prob(draws).detach()  # [K, T]

        def importance(draws=draws, log_q=log_q) -> torch.Tensor:
            total = x.new_zeros(())
            for c in _chunks(t_count):
                lw = program.log_joint(x[c], y[c], mask[c], draws[:, c]) - log_q[:, c]  # [K, T_c]
                total = total - torch.logsumexp(lw + log_w, 0).sum()
            return total

        _lbfgs(params, importance, max_iter, deadline)
    after = _importance_value(program, x, y, mask, u, num_draws, seed)  # the same estimator as the start's
    better = math.isfinite(after) and after >= before - _MC_TOLERANCE
    return {"log_marginal": after, "log_marginal_before": before, "laplace": laplace_value, "rounds": rounds,
            "accepted": better}


def _importance_value(program, x, y, mask, u, num_draws: int, seed: int) -> float:
    """The adaptive importance estimate of ``sum_i log p(D_i | phi)`` at the current parameters (no gradients)."""
    modes, neg_h = zip(*(_modes(program, x[c], y[c], mask[c], u[c]) for c in _chunks(x.shape[0])), strict=True)
    m, prec = torch.cat(modes), torch.cat(neg_h)
    q = torch.distributions.MultivariateNormal(m, precision_matrix=prec)
    eps, log_w = _nodes(m.shape[-1], m.shape[0], num_draws, seed + 1, x)
    draws = m + (q.scale_tril @ eps[..., None])[..., 0]
    with torch.no_grad():
        total = 0.0
        for c in _chunks(x.shape[0]):
            lw = program.log_joint(x[c], y[c], mask[c], draws[:, c]) - q.log_prob(draws)[:, c]
            total += float(torch.logsumexp(lw + log_w, 0).sum())
    return total


_GH_NODES = {1: 32, 2: 16, 3: 8}  # Gauss-Hermite nodes per dimension: a product grid for up to 3 task parameters


def _nodes(p_dim: int, t_count: int, num_draws: int, seed: int, like: torch.Tensor):
    """Standard-normal points ``[K, T or 1, P]`` and log weights ``[K, 1]`` of an expectation under ``N(0, I)``.

    Up to three task parameters: a Gauss-Hermite product grid (adaptive Gauss-Hermite quadrature once
    centred and shaped at each task's mode: exact for polynomials of high degree, no Monte Carlo error).
    More: ``num_draws`` fixed Gaussian draws per task, equally weighted.
    """
    if p_dim in _GH_NODES:
        nodes, weights = np.polynomial.hermite.hermgauss(_GH_NODES[p_dim])
        z = torch.tensor(nodes * math.sqrt(2), dtype=torch.float64)
        lw = torch.tensor(np.log(weights / math.sqrt(math.pi)), dtype=torch.float64)
        grid = torch.cartesian_prod(*[z] * p_dim).reshape(-1, p_dim)  # [K, P]
        log_w = torch.cartesian_prod(*[lw] * p_dim).reshape(-1, p_dim).sum(-1)  # [K]
        return grid[:, None, :].to(like), log_w[:, None].to(like)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn(num_draws, t_count, p_dim, generator=gen, dtype=torch.float64).to(like)
    return eps, torch.full((num_draws, 1), -math.log(num_draws), dtype=like.dtype, device=like.device)


def _derivatives(program, x, y, mask, u: torch.Tensor):
    """Log joint ``[T]``, gradient ``[T, P]`` and Hessian ``[T, P, P]`` at ``u`` (which requires grad), all in the
    graph: differentiable in the model's parameters and through ``u``."""
    lj = program.log_joint(x, y, mask, u)  # [T]
    (g,) = torch.autograd.grad(lj.sum(), u, create_graph=True)
    rows = [torch.autograd.grad(g[:, j].sum(), u, create_graph=True)[0] for j in range(u.shape[-1])]
    return lj, g, torch.stack(rows, -2)
