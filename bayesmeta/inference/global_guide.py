"""The guide of a model's global latent sites: one full-rank Gaussian over their flat unconstrained coordinates.

A model's global sites (hyperpriors: a population mean, a between-task scale, a shared noise) are
few and shared by every task, so their guide is not amortized: ``q(g) = N(loc, L L^T)`` over the
flat unconstrained draws ``g [G]`` (``log tau`` for a positive ``tau``), as Pyro's
``AutoMultivariateNormal`` does for a model's global sites.

**Units.** The guide's parameters are in units of a ``center`` and a ``spread`` per coordinate
(``g = center + spread * v``): an optimiser's step moves ``q(g)``'s mean by about ``lr * spread``. On
construction these are the prior's (the median of its draws and their spread), and ``q(g)`` starts at
the prior's median with a scale of 0.1 of its spread (capped at 1). A vague prior (``mu ~ N(0,
1000)``) then makes every step a thousand times too long for a posterior of sd 0.03: training jitters
across it and converges only as the learning rate decays, if at all (measured: 16 posterior sds off
after 1500 steps on 400 groups; a diverged fit on 100). So the training objective
(:class:`~bayesmeta.inference.GlobalObjective`) calls :meth:`GlobalGuide.initialise_` on its first
training batch, before the optimiser's first step: ``q(g)`` starts at a Laplace approximation of the
hyperposterior given that batch (:func:`laplace_globals`), widened by the data-free start above, and its
sds become the guide's units, so steps are in the posterior's units whatever the prior's. This is done
once (the ``initialised`` buffer, saved with the guide): a resumed or refitted guide keeps its units.
``q(g)``'s log-scales step at three times the rate of its mean (from the wide start to the posterior's
scale in about a hundred steps).

The guide's features (``(g - prior_center) / prior_spread``, in the prior's units whatever the guide's)
are what the amortized local guide reads of a global draw.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["GlobalGuide", "laplace_globals"]

_PRIOR_DRAWS = 4096
LR_SCALE = 10.0  # q(g) steps at 10x the learning rate: few parameters, in their own units, one per pool
_LAPLACE_ELEMENTS = 2**21  # likelihood terms (draws x tasks x points) per evaluation of the Laplace objective


class GlobalGuide(nn.Module):
    """``q(g)``: a full-rank Gaussian over a model program's flat unconstrained global coordinates.

    Args:
        program: the model's :class:`~bayesmeta.inference.program.ModelProgram` (with global sites).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.nn import PyroModule
        >>> from bayesmeta.inference.program import ModelProgram
        >>> class M(PyroModule):
        ...     x_dim = 1
        ...     def forward(self, x, y=None, mask=None):
        ...         mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        ...         with pyro.plate("tasks", x.shape[0], dim=-2):
        ...             w = pyro.sample("w", dist.Normal(mu, 1.0))
        ...             with pyro.plate("points", x.shape[1], dim=-1):
        ...                 return pyro.sample("y", dist.Normal(w, 1.0).mask(mask), obs=y)
        >>> GlobalGuide(ModelProgram(M())).distribution().event_shape
        torch.Size([1])
    """

    center: torch.Tensor
    spread: torch.Tensor
    prior_center: torch.Tensor
    prior_spread: torch.Tensor
    initialised: torch.Tensor

    def __init__(self, program) -> None:
        super().__init__()
        g = program.global_dim
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            draws = program.sample_globals(_PRIOR_DRAWS).double()  # [n, G]
        center = draws.median(0).values
        q = torch.quantile(draws, torch.tensor([0.25, 0.75], dtype=draws.dtype, device=draws.device), dim=0)
        spread = ((q[1] - q[0]) / 1.349).clamp(1e-3, 1e3)  # the IQR of a standard Normal is 1.349
        dtype = program.probe_inputs().dtype
        self.register_buffer("center", center.to(dtype))
        self.register_buffer("spread", spread.to(dtype))
        # what the local guide reads of a global draw is standardised by the prior's median and spread, always
        self.register_buffer("prior_center", center.to(dtype))
        self.register_buffer("prior_spread", spread.to(dtype))
        # whether initialise_ has set the units from data (once, before training; saved with the guide)
        self.register_buffer("initialised", torch.tensor(False, device=center.device))
        # parameters in units of `spread` (g = center + spread * v): the prior's until initialise_
        self.loc = nn.Parameter(torch.zeros(g, dtype=dtype, device=center.device))
        self.log_diag = nn.Parameter(torch.minimum(torch.full_like(spread, 0.1), 1.0 / spread).log().to(dtype))
        self.off_diag = nn.Parameter(torch.zeros(g * (g - 1) // 2, dtype=dtype, device=center.device))
        for p in (self.loc, self.log_diag, self.off_diag):
            p.lr_scale = LR_SCALE  # type: ignore[attr-defined]  # read by the training loop's optimiser
        self.log_diag.lr_scale = 3 * LR_SCALE  # type: ignore[attr-defined]  # q(g)'s log-scales: e-fold in ~11 steps
        self.global_dim = g

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a guide saved before the `initialised` buffer existed was trained in its prior's units: keep them
        state_dict.setdefault(prefix + "initialised", torch.tensor(True))
        for name in ("center", "spread"):  # ... and its features were standardised by those units
            if prefix + name in state_dict:
                state_dict.setdefault(prefix + "prior_" + name, state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def mean(self) -> torch.Tensor:
        """``q(g)``'s mean ``[G]``."""
        return self.center + self.spread * self.loc

    def scale_tril(self) -> torch.Tensor:
        """The Cholesky factor ``L [G, G]`` of ``q(g)``'s covariance."""
        g = self.global_dim
        tril = torch.diag_embed(self.log_diag.exp())
        if g > 1:
            rows, cols = torch.tril_indices(g, g, -1, device=tril.device)
            tril = tril.index_put((rows, cols), self.off_diag)
        return self.spread[:, None] * tril

    def distribution(self) -> dist.MultivariateNormal:
        """``q(g)``: event ``[G]``."""
        return dist.MultivariateNormal(self.mean(), scale_tril=self.scale_tril())

    def features(self, g: torch.Tensor) -> torch.Tensor:
        """What the local guide reads of global draws ``g [..., G]``: ``(g - prior_center) / prior_spread`` (the
        prior's median and spread: the same whatever the guide's units)."""
        return (g - self.prior_center) / self.prior_spread

    @torch.no_grad()
    def initialise_(self, mean: torch.Tensor, cov: torch.Tensor, unit: torch.Tensor | None = None) -> None:
        """Start ``q(g)`` at ``N(mean, cov)`` (``[G]``, ``[G, G]``) in units ``unit [G]`` (default: ``cov``'s sds).

        Call it before training: an optimiser's state is in the units it was built with. Each unit is kept
        within ``[1e-6, 1]`` times the prior's spread. Sets ``initialised``. (The local guide's
        :meth:`features` stay in the prior's units.)
        """
        g = self.global_dim
        cov = 0.5 * (cov + cov.T).to(self.spread)
        mean = mean.to(self.center)
        unit = cov.diagonal().clamp_min(0).sqrt() if unit is None else unit.to(self.spread)
        unit = torch.minimum(torch.maximum(unit, 1e-6 * self.prior_spread), self.prior_spread)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:  # not positive definite in this dtype: its diagonal
            chol = torch.diag(cov.diagonal().clamp_min(0).sqrt().clamp_min(1e-6 * unit))
        tril = chol / unit[:, None]  # q's factor in the new units
        self.center.copy_(mean)
        self.spread.copy_(unit)
        self.loc.zero_()
        self.log_diag.copy_(tril.diagonal().log())
        if g > 1:
            rows, cols = torch.tril_indices(g, g, -1, device=tril.device)
            self.off_diag.copy_(tril[rows, cols])
        self.initialised.fill_(True)


def laplace_globals(program, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, num_tasks: int | None = None,
                    start: torch.Tensor, unit: torch.Tensor, max_iter: int = 100,
                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A Laplace approximation of the hyperposterior ``p(g | pool)`` from a batch of the pool's tasks.

    The target is ``log p(g) + (M / B) sum_i log p^(D_i | g)`` over the batch's ``B`` tasks (``x [B, N, D]``,
    ``y``, ``mask``) of a pool of ``M = num_tasks``, each task's marginal likelihood by its own Laplace
    approximation in its flat unconstrained parameters: ``log p(u_i, D_i | g) + P/2 log 2 pi - 1/2 log det
    (-H_i)`` at the task's mode ``u_i`` given ``g`` (damped Newton, batched over tasks, re-found at every
    ``g``; exact for a task prior and likelihood Gaussian given ``g``), differentiated in ``g`` at the fixed
    mode (the envelope theorem). Its mode is found by L-BFGS in the coordinates ``(g - start) / unit``, its
    curvature by central differences of the gradient (twice: the second time one estimated sd apart).

    Cheap and rough -- a batch is not the pool -- it is a start for training, which refines it. Returns
    ``(mean [G], cov [G, G])``, or ``None`` where the target is not finite at ``start``, its optimisation
    fails, or the tasks have more than 32 parameters (their Hessians are too costly here).
    """
    t, p = x.shape[0], program.param_dim
    if p > 32 or t == 0:
        return None
    scale = (num_tasks or t) / t
    gdim = start.shape[-1]
    start, unit = start.detach(), unit.detach()
    half_log_2pi = 0.5 * p * math.log(2 * math.pi)
    state: dict[str, torch.Tensor] = {}

    def target(v: torch.Tensor) -> torch.Tensor:
        g = start + unit * v  # [G]
        gl = g.expand(1, 1, gdim)
        state["u"], _ = _task_modes(program, x, y, mask, state["u"], g.detach())  # warm-started at the last modes
        u = state["u"].detach().requires_grad_(True)
        lj = program.log_joint(x, y, mask, u[None], gl)[0]  # [B]
        (gr,) = torch.autograd.grad(lj.sum(), u, create_graph=True)  # the tasks are independent
        rows = [torch.autograd.grad(gr[:, j].sum(), u, create_graph=True)[0] for j in range(p)]
        neg_h = -torch.stack(rows, -2)  # [B, P, P], a function of g
        eig = torch.linalg.eigvalsh(0.5 * (neg_h + neg_h.transpose(-1, -2)))
        logdet = eig.clamp_min(1e-6 * float(eig.detach().abs().max().clamp_min(1e-12))).log().sum(-1)
        return -(program.log_global_prior(g) + scale * (lj + half_log_2pi - 0.5 * logdet).sum())

    def gradient(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = v.detach().requires_grad_(True)
        loss = target(v)
        (grad,) = torch.autograd.grad(loss, v)  # gradients in v only: the model's parameters stay untouched
        return loss.detach(), grad

    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(0)
            with torch.no_grad():  # each task's Newton starts at its prior's mean given the prior's median
                state["u"] = program.sample_prior(x, 16, g=start.expand(16, 1, gdim)).mean(0)  # [B, P]
            v = torch.zeros(gdim, dtype=start.dtype, device=start.device, requires_grad=True)
            first, _ = gradient(v)
            if not torch.isfinite(first):
                return None
            opt = torch.optim.LBFGS([v], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                    tolerance_grad=1e-9, tolerance_change=1e-12)

            def closure():
                loss, grad = gradient(v)
                v.grad = grad
                return loss

            opt.step(closure)
            v = v.detach()
            best, grad = gradient(v)
            if not (torch.isfinite(best) and torch.isfinite(grad).all() and best <= first):
                return None
            grad_fn = lambda z: gradient(z)[1]  # noqa: E731
            sd = _curvature_sd(grad_fn, v, torch.full_like(v, 1e-2))
            h = _curvature(grad_fn, v, torch.full_like(v, 1e-2) if sd is None else sd)
    except (RuntimeError, ValueError):  # a draw or a density the optimiser took outside the support
        return None
    if not torch.isfinite(h).all():
        return None
    h = h.double()
    chol_h, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        cov_v = torch.cholesky_inverse(chol_h)
    else:  # not positive definite: the coordinates it curves in, one by one; the others as wide as their prior
        d = h.diagonal()
        cov_v = torch.diag(torch.where(d > 0, 1.0 / d.clamp_min(1e-300), torch.ones_like(d)))
    unit64 = unit.double()
    cov = (unit64[:, None] * cov_v * unit64[None, :]).to(start.dtype)
    return start + unit * v, cov


def _curvature(grad, v: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The Hessian ``[G, G]`` at ``v`` by central differences of ``grad`` with a step per coordinate, symmetrised."""
    cols = []
    for j in range(v.shape[0]):
        e = torch.zeros_like(v)
        e[j] = step[j]
        cols.append((grad(v + e) - grad(v - e)) / (2 * step[j]))
    h = torch.stack(cols, -1)
    return 0.5 * (h + h.T)


def _curvature_sd(grad, v: torch.Tensor, step: torch.Tensor) -> torch.Tensor | None:
    """Each coordinate's sd ``1 / sqrt(H_jj)`` (``None`` where the curvature is not finite or not positive)."""
    d = _curvature(grad, v, step).diagonal()
    if not (torch.isfinite(d).all() and (d > 0).all()):
        return None
    return d.rsqrt()


def _task_modes(program, x, y, mask, u: torch.Tensor, g: torch.Tensor, steps: int = 30):
    """Each task's mode of ``log p(u, D_i | g)`` (damped Newton with step halving, batched over tasks) from
    ``u [B, P]``, and the negative Hessian there made positive definite, ``[B, P, P]``."""
    gl = g.expand(1, 1, g.shape[-1])

    def joint(v: torch.Tensor) -> torch.Tensor:
        return program.log_joint(x, y, mask, v[None], gl)[0]  # [B]

    def grad_hess(v: torch.Tensor):
        v = v.detach().requires_grad_(True)
        lj = joint(v)
        (gr,) = torch.autograd.grad(lj.sum(), v, create_graph=True)  # the tasks are independent
        rows = [torch.autograd.grad(gr[:, j].sum(), v, retain_graph=True)[0] for j in range(v.shape[-1])]
        return lj.detach(), gr.detach(), _positive(-torch.stack(rows, -2).detach())

    lj, gr, prec = grad_hess(u)
    for _ in range(steps):
        step = torch.linalg.solve(prec, gr[..., None])[..., 0]  # [B, P]
        size = torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)
        for _ in range(20):  # halve a task's step until its log joint does not fall
            trial = u + size * step
            with torch.no_grad():
                lt = joint(trial)
            worse = ~(lt >= lj - 1e-6 * (1 + lj.abs()))  # NaN counts as worse
            if not bool(worse.any()):
                break
            size = torch.where(worse[:, None], size / 2, size)
        u = torch.where(worse[:, None], u, trial)
        done = bool((step.abs() * size).max() < 1e-5 * (1 + float(u.abs().max())))
        lj, gr, prec = grad_hess(u)
        if done:
            break
    return u.detach(), prec


def _positive(a: torch.Tensor) -> torch.Tensor:
    """Symmetric ``a [..., P, P]`` with its eigenvalues floored at ``1e-6`` of the largest (positive definite)."""
    a = 0.5 * (a + a.transpose(-1, -2))
    vals, vecs = torch.linalg.eigh(a)
    vals = torch.maximum(vals, 1e-6 * vals.abs().amax(-1, keepdim=True).clamp_min(1e-12))
    return vecs @ torch.diag_embed(vals) @ vecs.transpose(-1, -2)
