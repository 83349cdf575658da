"""The guide of a model's global latent sites: one full-rank Gaussian over their flat unconstrained coordinates.

A model's global sites (hyperpriors: a population mean, a between-task scale, a shared noise) are
few and shared by every task, so their guide is not amortized: ``q(g) = N(loc, L L^T)`` over the
flat unconstrained draws ``g [G]`` (``log tau`` for a positive ``tau``), as Pyro's
``AutoMultivariateNormal`` does for a model's global sites.

**Units.** The guide's parameters are in units of a ``center`` and a ``spread`` per coordinate
(``g = center + spread * v``): an optimiser's step moves ``q(g)`` by about ``lr * spread``. On
construction these are the prior's (the median of its draws and their spread), and ``q(g)`` starts
at the prior's median with a scale of 0.1 of its spread (capped at 1). A vague prior (``mu ~ N(0,
1000)``) then makes every step a thousand times too long for a posterior of sd 0.03: training
jitters across it and converges only as the learning rate decays, if at all. So the training
objective (:class:`~bayesmeta.inference.GlobalObjective`) calls :meth:`GlobalGuide.initialise_` on
its first training batch, before the optimiser's first step: a Laplace approximation of the
hyperposterior given that batch (:func:`laplace_globals`) becomes ``q(g)``'s start, and its scale
the guide's units, so steps are in units of the posterior's scale whatever the prior's. This is done
once (the ``initialised`` buffer, saved with the guide): a resumed or refitted guide keeps its units.

The guide's features (``(g - center) / spread``) are what the amortized local guide reads of a
global draw: of order one across ``q(g)`` in either units.
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
        # whether initialise_ has set the units from data (once, before training; saved with the guide)
        self.register_buffer("initialised", torch.tensor(False, device=center.device))
        # parameters in units of `spread` (g = center + spread * v): the prior's until initialise_
        self.loc = nn.Parameter(torch.zeros(g, dtype=dtype, device=center.device))
        self.log_diag = nn.Parameter(torch.minimum(torch.full_like(spread, 0.1), 1.0 / spread).log().to(dtype))
        self.off_diag = nn.Parameter(torch.zeros(g * (g - 1) // 2, dtype=dtype, device=center.device))
        for p in (self.loc, self.log_diag, self.off_diag):
            p.lr_scale = LR_SCALE  # type: ignore[attr-defined]  # read by the training loop's optimiser
        self.global_dim = g

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a guide saved before the `initialised` buffer existed was trained in its prior's units: keep them
        state_dict.setdefault(prefix + "initialised", torch.tensor(True))
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
        """What the local guide reads of global draws ``g [..., G]``: ``(g - center) / spread``."""
        return (g - self.center) / self.spread

    @torch.no_grad()
    def initialise_(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        """Start ``q(g)`` at ``N(mean, cov)`` (``[G]``, ``[G, G]``) and make its sds the guide's units.

        Call it before training (an optimiser's state is in the units it was built with) and before the
        local guide has learnt to read :meth:`features` (they are in the same units). Each unit is kept
        within ``[1e-6, 1]`` times the prior's spread. Sets ``initialised``.
        """
        g = self.global_dim
        cov = 0.5 * (cov + cov.T).to(self.spread)
        mean = mean.to(self.center)
        sd = cov.diagonal().clamp_min(0).sqrt()
        unit = torch.minimum(torch.maximum(sd, 1e-6 * self.spread), self.spread)
        tril = torch.linalg.cholesky(cov) / unit[:, None]  # q's factor in the new units
        self.center.copy_(mean)
        self.spread.copy_(unit)
        self.loc.zero_()
        self.log_diag.copy_(tril.diagonal().log())
        if g > 1:
            rows, cols = torch.tril_indices(g, g, -1, device=tril.device)
            self.off_diag.copy_(tril[rows, cols])
        self.initialised.fill_(True)


def laplace_globals(program, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, num_tasks: int | None = None,
                    start: torch.Tensor, unit: torch.Tensor, num_local: int | None = None, max_iter: int = 100,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A Laplace approximation of the hyperposterior ``p(g | pool)`` from a batch of the pool's tasks.

    The target is ``log p(g) + (M / B) sum_i log p^(D_i | g)`` over the batch's ``B`` tasks (``x [B, N, D]``,
    ``y``, ``mask``) of a pool of ``M = num_tasks``, each task's marginal likelihood estimated by importance
    sampling with ``num_local`` draws of its prior ``p(theta | g)`` -- reparameterised, with the same random
    numbers at every ``g`` (so the target is a smooth function of ``g``: common random numbers). Its mode is
    found by L-BFGS in the coordinates ``(g - start) / unit``, its curvature by central differences of the
    gradient (twice: the second time one estimated sd apart).

    Cheap and rough: draws of the prior are a poor proposal for a task with many points, and a batch is
    not the pool; it is a start for training, which refines it. Returns ``(mean [G], cov [G, G])``, or
    ``None`` where the target is not finite at ``start`` or its optimisation fails.
    """
    t, n = x.shape[0], max(1, x.shape[1])
    scale = (num_tasks or t) / t
    if num_local is None:
        num_local = int(min(128, max(16, _LAPLACE_ELEMENTS // (t * n))))
    gdim = start.shape[-1]
    start, unit = start.detach(), unit.detach()

    def objective(v: torch.Tensor) -> torch.Tensor:
        g = start + unit * v  # [G]
        torch.manual_seed(seed)  # common random numbers: the same prior draws at every g
        gl = g.expand(num_local, 1, gdim)
        u = program.sample_prior(x, num_local, g=gl)  # [L, B, P]
        ll = program.log_likelihood(x, y, mask, u, gl)  # [L, B]
        log_marginal = (torch.logsumexp(ll, 0) - math.log(num_local)).sum()
        return -(program.log_global_prior(g) + scale * log_marginal)

    def gradient(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = v.detach().requires_grad_(True)
        loss = objective(v)
        (grad,) = torch.autograd.grad(loss, v)  # gradients in v only: the model's parameters stay untouched
        return loss.detach(), grad

    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
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
            step = torch.full_like(v, 1e-2)
            for _ in range(2):  # curvature by central differences, then again one estimated sd apart
                cols = []
                for j in range(gdim):
                    e = torch.zeros_like(v)
                    e[j] = step[j]
                    cols.append((gradient(v + e)[1] - gradient(v - e)[1]) / (2 * step[j]))
                h = torch.stack(cols, -1)
                h = 0.5 * (h + h.T)
                if not torch.isfinite(h).all():
                    return None
                diag = h.diagonal()
                step = torch.where(diag > 0, diag.clamp_min(1e-30).rsqrt(), torch.full_like(v, 1e-2))
    except (RuntimeError, ValueError):  # a draw or a density the optimiser took outside the support
        return None
    h = h.double()
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        cov_v = torch.cholesky_inverse(chol)
    else:  # not positive definite: the coordinates it curves in, one by one; the others as wide as their prior
        d = h.diagonal()
        cov_v = torch.diag(torch.where(d > 0, 1.0 / d.clamp_min(1e-300), torch.ones_like(d)))
    unit64 = unit.double()
    cov = (unit64[:, None] * cov_v * unit64[None, :]).to(start.dtype)
    return start + unit * v, cov
