"""Policies that learn nothing from earlier tasks: random search and Bayesian optimisation from scratch.

* :class:`RandomSearch`: uniform points in the box (or candidates drawn without replacement).
* :class:`GPBayesOpt`: a Gaussian process per task, fitted from scratch on that task's
  observations only, with scikit-learn's ``GaussianProcessRegressor`` (Matern-5/2 with a
  learned amplitude, one length scale per input and a learned noise level; inputs mapped to the
  unit cube, outputs normalised; hyperparameters by maximum marginal likelihood with restarts)
  and expected improvement. scikit-learn is an optional dependency, imported when a GP is fitted.

The greedy MAML baseline is ``AcquisitionPolicy(maml, "greedy")`` and the oracle-prior Thompson
sampling ``AcquisitionPolicy(family, "ts")`` (see :mod:`.loop`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .acquisition import gaussian_ei
from .propose import Proposal, _maximize, _points
from .space import Box, Candidates, check_observations

__all__ = ["GPBayesOpt", "RandomSearch"]


def _nan_proposal(x: torch.Tensor, name: str) -> Proposal:
    nan = torch.full(x.shape[:2], float("nan"))
    return Proposal(x, nan, nan, nan.clone(), name, "y")


class RandomSearch:
    """Uniform random points: in a :class:`~.space.Box`, or candidates drawn without replacement (per round)."""

    name = "random"

    def __call__(self, x, y, mask, space, *, q: int = 1, seed: int | None = None) -> Proposal:
        x, y, mask = check_observations(x, y, mask, space, x_dim=None)
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else seed)
        t = x.shape[0]
        if isinstance(space, Box):
            return _nan_proposal(space.uniform((t, q), g).to(x), "random")
        pts = space.for_tasks(t, x)  # [T, N, D]
        n = pts.shape[1]
        idx = torch.rand(t, n, generator=g).argsort(-1)[:, :q] if q <= n else torch.randint(n, (t, q), generator=g)
        return _nan_proposal(torch.gather(pts, 1, idx[..., None].expand(-1, -1, pts.shape[-1])), "random")


class GPBayesOpt:
    """Bayesian optimisation from scratch: a scikit-learn GP per task and expected improvement.

    Args:
        maximize: ``False`` to minimise.
        n_restarts: restarts of the GP's hyperparameter optimiser.
        num_candidates, num_starts, refine_steps: how EI is maximised in a box (as in
            :func:`~.propose.propose`; the refinement is a derivative-free local search).
        output: the objective's output column.

    With fewer than 2 observations on a task the point is uniform at random (a GP from scratch
    knows nothing yet). ``q > 1``: the kriging believer (the GP refitted with its own mean at
    the earlier points, hyperparameters kept).

    Raises:
        ImportError: scikit-learn is not installed (``pip install scikit-learn``).
    """

    name = "gp-bo"

    def __init__(self, *, maximize: bool = True, n_restarts: int = 2, num_candidates: int | None = None,
                 num_starts: int = 4, refine_steps: int = 20, output: int = 0) -> None:
        self.maximize, self.n_restarts, self.output = maximize, n_restarts, output
        self.num_candidates, self.num_starts, self.refine_steps = num_candidates, num_starts, refine_steps

    def _gp(self, dim: int, seed: int):
        try:
            from sklearn.gaussian_process import GaussianProcessRegressor  # type: ignore[import-untyped]
            from sklearn.gaussian_process.kernels import (  # type: ignore[import-untyped]
                ConstantKernel,
                Matern,
                WhiteKernel,
            )
        except ImportError as err:
            raise ImportError("GPBayesOpt needs scikit-learn: pip install scikit-learn") from err
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.full(dim, 0.2), (1e-2, 1e1), nu=2.5)
                  + WhiteKernel(1e-2, (1e-6, 1.0)))
        return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=self.n_restarts,
                                        random_state=seed)

    @staticmethod
    def _fit(gp, u: np.ndarray, v: np.ndarray):
        from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]

        with warnings.catch_warnings():  # hyperparameters at their bounds with a handful of points: expected
            warnings.simplefilter("ignore", ConvergenceWarning)
            return gp.fit(u, v)

    def __call__(self, x, y, mask, space, *, q: int = 1, seed: int | None = None) -> Proposal:
        x, y, mask = check_observations(x, y, mask, space, x_dim=None)
        seed = int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else int(seed)
        g = torch.Generator().manual_seed(seed)
        t = x.shape[0]
        points = _points(space, t, self.num_candidates, seed, x)  # [T, N, D]
        if isinstance(space, Box):
            box = space
        else:  # the candidates' bounding box (a constant coordinate gets width 1) maps inputs to the unit cube
            lo, hi = points.amin((0, 1)), points.amax((0, 1))
            box = Box(lo, torch.where(hi > lo, hi, lo + 1.0))
        out = torch.empty(t, q, space.dim, dtype=x.dtype)
        stats = torch.full((3, t, q), float("nan"))
        for i in range(t):
            xi, yi = x[i][mask[i]], y[i][mask[i]][:, self.output] * (1.0 if self.maximize else -1.0)
            for j in range(q):
                xs, st = self._one(xi, yi, points[i:i + 1], space, box, seed + 7919 * i + j, g)
                out[i, j], stats[:, i, j] = xs, st
                if j < q - 1:
                    xi = torch.cat([xi, xs[None]])
                    yi = torch.cat([yi, st[1:2].to(yi) if math.isfinite(float(st[1])) else yi.new_zeros(1)])
        sign = 1.0 if self.maximize else -1.0
        return Proposal(out, stats[0], sign * stats[1], stats[2], "ei", "y")

    def _one(self, xi, yi, points, space, box: Box, seed: int, g) -> tuple[torch.Tensor, torch.Tensor]:
        """One point for one task (maximising ``yi``): ``x [D]`` and (EI, predicted mean, sd)."""
        if xi.shape[0] < 2:
            idx = int(torch.randint(points.shape[1], (1,), generator=g))
            x = box.uniform((1,), g)[0].to(xi) if isinstance(space, Box) else points[0, idx]
            return x, torch.tensor([float("nan")] * 3)
        gp = self._fit(self._gp(space.dim, seed), box.to_unit(xi).double().numpy(), yi.double().numpy())
        best = torch.tensor(float(yi.max()), dtype=torch.float64)

        def predict(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = box.to_unit(p.detach()).reshape(-1, p.shape[-1]).double().numpy()
            mu, sd = gp.predict(flat, return_std=True)
            return (torch.as_tensor(mu).reshape(p.shape[:-1]), torch.as_tensor(sd).reshape(p.shape[:-1]))

        def ei(p: torch.Tensor) -> torch.Tensor:
            mu, sd = predict(p)
            return gaussian_ei(mu, sd.clamp_min(1e-12), best).to(p.dtype)
        x, v = _maximize(ei, points, space if isinstance(space, Candidates) else box, num_starts=self.num_starts,
                         refine_steps=self.refine_steps, chunk=4096, generator=g)
        mu, sd = predict(x[:, None])
        return x[0], torch.tensor([float(v[0]), float(mu[0, 0]), float(sd[0, 0])])
