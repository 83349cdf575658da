"""Binary and count task families (hierarchical logistic and Poisson) with Bayes oracles by grid integration."""

from __future__ import annotations

import torch

from ..predictive import FamilyMixture, heaviest, pad_components
from .batch import check_query_1d, check_support
from .family import TaskFamily

__all__ = ["HierarchicalLogistic", "HierarchicalPoisson"]

_GRID_ELEMENTS = 2**24  # grid points x tasks x points of one group's likelihood (128 MB in float64)


class _GLMFamily(TaskFamily):
    """``eta = b_i + w_i^T x``, ``(w_i, b_i)`` from a fixed Gaussian prior, ``x ~ U[x_range]^dim``."""

    y_dim = 1
    likelihood = ""

    def __init__(self, dim: int = 1, *, slope: tuple[float, float], intercept: tuple[float, float],
                 x_range: tuple[float, float]) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int; got {dim!r}")
        for name, (_, sd) in (("slope", slope), ("intercept", intercept)):
            if not sd > 0:
                raise ValueError(f"{name} must be (mean, sd) with sd > 0; got {(_, sd)}")
        if not x_range[0] < x_range[1]:
            raise ValueError(f"x_range must be (low, high) with low < high; got {x_range}")
        self.x_dim = dim
        self.slope, self.intercept = tuple(map(float, slope)), tuple(map(float, intercept))
        self.x_range = tuple(map(float, x_range))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dim={self.x_dim}, slope={self.slope}, intercept={self.intercept}, "
                f"x_range={self.x_range})")

    def sample_params(self, num_tasks, generator):
        w = self.slope[0] + self.slope[1] * torch.randn(num_tasks, self.x_dim, generator=generator)
        b = self.intercept[0] + self.intercept[1] * torch.randn(num_tasks, generator=generator)
        return {"slope": w, "intercept": b}

    def sample_inputs(self, num_tasks, num_points, generator):
        lo, hi = self.x_range
        return lo + (hi - lo) * torch.rand(num_tasks, num_points, self.x_dim, generator=generator)

    def linear_predictor(self, params, x: torch.Tensor) -> torch.Tensor:
        w, b = params["slope"].to(x), params["intercept"].to(x)
        return (x * w[:, None]).sum(-1, keepdim=True) + b[:, None, None]  # [T, N, 1]

    def distribution(self, eta: torch.Tensor):
        raise NotImplementedError

    def simulate(self, params, x, generator):
        return self.distribution(self.linear_predictor(params, x)).sample()  # global RNG: see sample()

    def sample(self, num_tasks, shots, num_query=0, generator=None):
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        with torch.random.fork_rng():  # outcomes drawn from the generator's stream, reproducibly
            torch.manual_seed(seed)
            return super().sample(num_tasks, shots, num_query, generator=g)

    # ------------------------------------------------------------------ Bayes oracle
    def _grid(self, grid: int, like: torch.Tensor):
        """Uniform grid over +-6 prior sd of (slope, intercept), with the prior's log mass per cell."""
        def axis(mean, sd):
            step = 12 * sd / grid
            return mean - 6 * sd + step * (torch.arange(grid, dtype=like.dtype, device=like.device) + 0.5)
        w, b = torch.meshgrid(axis(*self.slope), axis(*self.intercept), indexing="ij")
        w, b = w.reshape(-1), b.reshape(-1)
        log_prior = -0.5 * (((w - self.slope[0]) / self.slope[1]) ** 2 + ((b - self.intercept[0]) / self.intercept[1]) ** 2)
        return w, b, log_prior

    def oracle_predict(self, x_support, y_support, x_query, mask=None, *, grid: int = 200,
                       mass: float = 1 - 1e-7) -> FamilyMixture:
        """Exact Bayes posterior predictive (up to grid resolution) at ``x_query [T, N, 1]``.

        Integrates slope and intercept over a ``grid x grid`` uniform grid spanning +-6 prior
        standard deviations, weighting each point by prior x likelihood; grid points holding less
        than ``1 - mass`` of the posterior in total are dropped. Only for ``dim=1``.
        """
        if self.x_dim != 1:
            raise ValueError(f"the oracle integrates over a 2-d grid: dim=1 only; this family has dim={self.x_dim}")
        x, y, mask = check_support(x_support, y_support, mask, x_dim=1, y_dim=1, prefix="support ")
        xq, out_dtype = check_query_1d(x_query, x.shape[0])
        x64, y64 = x.double()[..., 0], y.double()[..., 0]  # [T, S]
        w, b, log_prior = self._grid(grid, x64)
        per_group = max(1, _GRID_ELEMENTS // (grid**2 * max(1, x64.shape[1])))
        params, logws = [], []
        for start in range(0, x64.shape[0], per_group):
            sl = slice(start, start + per_group)
            eta = w[:, None, None] * x64[None, sl] + b[:, None, None]  # [G, T_g, S]
            lp = self.distribution(eta).log_prob(y64[None, sl]) * mask[None, sl].double()
            logw = log_prior[:, None] + lp.sum(-1)  # [G, T_g]
            logw = logw - torch.logsumexp(logw, 0, keepdim=True)
            idx = heaviest(logw, mass)  # [m, T_g]
            params.append(torch.stack([w[idx], b[idx]], -1))  # [m, T_g, 2]
            logws.append(torch.gather(logw, 0, idx))
        m = max(p.shape[0] for p in params)
        padded = [pad_components(p, lw, m) for p, lw in zip(params, logws, strict=True)]
        theta = torch.cat([p for p, _ in padded], 1)  # [m, T, 2]
        logw = torch.cat([lw for _, lw in padded], 1)
        xq64 = xq.to(theta)[..., 0]  # [T, N]

        def components(p: torch.Tensor, tasks: slice):
            return self.distribution(p[..., 0, None] * xq64[tasks] + p[..., 1, None])  # [m_b, T_b, N]
        return FamilyMixture(theta, logw.to(out_dtype), components, shape=(*xq.shape[:2], 1), dtype=out_dtype)


class HierarchicalLogistic(_GLMFamily):
    """Binary tasks: ``y ~ Bernoulli(sigmoid(b_i + w_i^T x))``, ``w ~ N(slope)``, ``b ~ N(intercept)``.

    Args:
        dim: input dimension (the oracle needs ``dim=1``).
        slope, intercept: ``(mean, sd)`` of the Gaussian priors.
        x_range: ``(low, high)`` of each input coordinate.

    Example:
        >>> fam = HierarchicalLogistic()
        >>> b = fam.sample(3, shots=5, num_query=4)
        >>> sorted(set(b.y_support.unique().tolist())) <= [0.0, 1.0]
        True
    """

    likelihood = "bernoulli"

    def __init__(self, dim: int = 1, *, slope: tuple[float, float] = (0.0, 2.0),
                 intercept: tuple[float, float] = (0.0, 1.0), x_range: tuple[float, float] = (-2.0, 2.0)) -> None:
        super().__init__(dim, slope=slope, intercept=intercept, x_range=x_range)

    def distribution(self, eta):
        return torch.distributions.Bernoulli(logits=eta)


class HierarchicalPoisson(_GLMFamily):
    """Count tasks: ``y ~ Poisson(exp(b_i + w_i^T x))``, ``w ~ N(slope)``, ``b ~ N(intercept)``.

    Args:
        dim: input dimension (the oracle needs ``dim=1``).
        slope, intercept: ``(mean, sd)`` of the Gaussian priors.
        x_range: ``(low, high)`` of each input coordinate.

    Example:
        >>> fam = HierarchicalPoisson()
        >>> b = fam.sample(3, shots=5)
        >>> bool((b.y_support >= 0).all() and (b.y_support == b.y_support.round()).all())
        True
    """

    likelihood = "poisson"

    def __init__(self, dim: int = 1, *, slope: tuple[float, float] = (0.0, 0.5),
                 intercept: tuple[float, float] = (1.0, 0.5), x_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__(dim, slope=slope, intercept=intercept, x_range=x_range)

    def distribution(self, eta):
        return torch.distributions.Poisson(eta.clamp(max=30.0).exp())
