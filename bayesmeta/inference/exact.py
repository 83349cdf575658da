"""Exact type-II maximum likelihood for linear-Gaussian models on a finite pool of tasks.

With fixed features (``HierarchicalLinearRegression``) the learned prior and noise are the
maximum-likelihood fit of a linear mixed model: a small, smooth, deterministic problem. It is
solved full-batch by L-BFGS with a strong-Wolfe line search on the exact log marginal likelihood,
in float64, started from the data's own scale (:meth:`LinearGaussianModel.init_from_data`), so
data in natural units (outcomes in the hundreds, say) converge in a few dozen iterations.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from ..tasks.batch import TaskBatch
from .options import History
from .stream import pool_points

__all__ = ["fit_type2_ml", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """An optimiser stopped before its convergence test was met."""


def fit_type2_ml(model, pool: TaskBatch, *, max_iter: int = 500, grad_tol: float = 1e-7,
                 init: bool = True) -> History:
    """Maximise ``sum_i log p(y_i | x_i)`` over a linear-Gaussian model's prior and noise.

    Args:
        model: a :class:`~bayesmeta.models.LinearGaussianModel` with fixed features.
        pool: the tasks (support and query points together are the data).
        max_iter: most L-BFGS iterations.
        grad_tol: converged when the largest gradient entry of the per-point objective is below this.
        init: start from :meth:`init_from_data` (otherwise from the model's current values).

    Returns:
        The :class:`~bayesmeta.inference.History` (one entry per objective evaluation, line-search
        trials included; loss per task). The model holds the best point evaluated.

    Raises:
        ValueError: a task with no observed point, or dimensions the model does not have.
        FloatingPointError: the objective became non-finite (the model is left as it was).

    Warns:
        ConvergenceWarning: the gradient test was not met within ``max_iter`` iterations.
    """
    if not getattr(model, "fixed_features", False):
        raise ValueError(f"fit_type2_ml needs a linear-Gaussian model with fixed features; got {type(model).__name__}")
    x, y, mask = pool_points(pool, model.x_dim, model.y_dim)
    dtype = next(model.parameters()).dtype
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.double()
    try:
        history = _lbfgs(model, x, y, mask, max_iter=max_iter, grad_tol=grad_tol, init=init)
    except Exception:
        model.to(dtype).load_state_dict(before)  # a failed fit leaves the model as it was
        raise
    model.to(dtype)
    if not all(torch.isfinite(v).all() for v in model.state_dict().values()):
        model.load_state_dict(before)
        raise FloatingPointError("type-II ML: the parameters became non-finite; the model is left as it was")
    return history


def _lbfgs(model, x, y, mask, *, max_iter: int, grad_tol: float, init: bool) -> History:
    dev = next(model.parameters()).device
    x, y, mask = x.to(dev, torch.float64), y.to(dev, torch.float64), mask.to(dev)
    if init:
        model.init_from_data(x, y, mask)
    params = list(model.parameters())
    points, tasks = float(mask.sum()), x.shape[0]
    optim = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                              tolerance_grad=grad_tol, tolerance_change=1e-14)
    history, start = History(), time.perf_counter()
    best: dict[str, Any] = {"loss": float("inf"), "state": None, "grad": float("inf")}

    def closure():
        optim.zero_grad(set_to_none=True)
        try:
            loss = -model.log_marginal_likelihood(x, y, mask, validate=False).sum() / points  # per point
        except torch.linalg.LinAlgError as err:  # a step to the boundary (e.g. noise -> 0): stop there
            raise _Boundary from err
        if not torch.isfinite(loss):
            raise _Boundary
        loss.backward()
        value = float(loss.detach())
        history.step.append(len(history.step) + 1)
        history.loss.append(value * points / tasks)
        history.time.append(time.perf_counter() - start)
        history.lr.append(1.0)
        if value < best["loss"]:  # the best point evaluated so far (not a rejected line-search trial)
            best.update(loss=value, state={k: v.detach().clone() for k, v in model.state_dict().items()},
                        grad=max(float(p.grad.abs().max()) for p in params if p.grad is not None))
        return loss

    boundary = False
    try:
        optim.step(closure)
    except _Boundary:
        boundary = True
    if best["state"] is None:
        raise FloatingPointError("type-II ML: the objective is not finite at the starting point")
    model.load_state_dict(best["state"])
    if boundary or not best["grad"] <= grad_tol * 10:
        why = ("a step towards the boundary of the parameter space failed (e.g. the noise going to zero: "
               "the data may not identify it)" if boundary else
               f"the largest gradient is {best['grad']:.2e} > {grad_tol * 10:.1e}; try max_iter > {max_iter}")
        warnings.warn(f"type-II ML (L-BFGS) not converged after {len(history.step)} evaluations: {why}; the "
                      f"model holds the best point found", ConvergenceWarning, stacklevel=3)
    return history


class _Boundary(Exception):
    """The objective could not be evaluated at a trial point (non-finite, or a failed Cholesky)."""
