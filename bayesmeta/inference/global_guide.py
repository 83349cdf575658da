"""The guide of a model's global latent sites: one full-rank Gaussian over their flat unconstrained coordinates.

A model's global sites (hyperpriors: a population mean, a between-task scale, a shared noise) are
few and shared by every task, so their guide is not amortized: ``q(g) = N(loc, L L^T)`` over the
flat unconstrained draws ``g [G]`` (``log tau`` for a positive ``tau``), as Pyro's
``AutoMultivariateNormal`` does for a model's global sites. It starts at the median of the prior's
draws, with a scale of 0.1 of their spread (capped at 1), and its features (``(g - center) / spread``
with the prior's median and spread) are what the amortized local guide reads of a global draw.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["GlobalGuide"]

_PRIOR_DRAWS = 4096
LR_SCALE = 10.0  # q(g) steps at 10x the learning rate: few parameters, in the prior's units, one per pool


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
        # parameters in the prior's own units (g = center + spread * v): an optimiser's step moves a
        # population mean of prior scale 100 as far, relative to that scale, as one of scale 1
        self.loc = nn.Parameter(torch.zeros(g, dtype=dtype, device=center.device))
        self.log_diag = nn.Parameter(torch.minimum(torch.full_like(spread, 0.1), 1.0 / spread).log().to(dtype))
        self.off_diag = nn.Parameter(torch.zeros(g * (g - 1) // 2, dtype=dtype, device=center.device))
        for p in (self.loc, self.log_diag, self.off_diag):
            p.lr_scale = LR_SCALE  # type: ignore[attr-defined]  # read by the training loop's optimiser
        self.global_dim = g

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
