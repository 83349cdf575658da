"""ArviZ ``InferenceData`` from a bayesmeta posterior (and its predictive on query points)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .._compat import arviz
from ..inference.program import unwrap
from ..learners.posterior import Posterior
from ..tasks.batch import TaskBatch

if TYPE_CHECKING:
    import arviz as az

__all__ = ["to_inference_data"]

_BLOCK_ELEMENTS = 2**18  # draws x query points per likelihood call (decoder activations)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _query_data(tasks, x_query, y_query, mask_query, num_tasks: int):
    if tasks is not None:
        if not isinstance(tasks, TaskBatch):
            raise TypeError(f"tasks must be a TaskBatch; got {type(tasks).__name__}")
        if not tasks.has_query:
            raise ValueError("tasks: the TaskBatch has no query set")
        x_query, y_query, mask_query = tasks.query
    if y_query is None:
        return None
    if x_query is None:
        raise ValueError("x_query is required with y_query")
    y = torch.as_tensor(y_query)
    y = y.unsqueeze(-1) if y.dim() == 2 else y
    if y.dim() != 3 or y.shape[0] != num_tasks:
        raise ValueError(f"y_query must have shape [{num_tasks}, N, E]; got {tuple(y.shape)}")
    mask = torch.ones(y.shape[:2], dtype=torch.bool) if mask_query is None else torch.as_tensor(mask_query)
    if mask.shape != y.shape[:2]:
        raise ValueError(f"mask_query must have shape {tuple(y.shape[:2])}; got {tuple(mask.shape)}")
    bad = (~torch.isfinite(y)).any(-1) & mask
    if bad.any():
        t, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"y_query: non-finite value at task {t}, point {j}")
    return torch.as_tensor(x_query), y, mask


def to_inference_data(posterior: Posterior, predictive=None, tasks: TaskBatch | None = None, *,
                      x_query=None, y_query=None, mask_query=None, num_samples: int = 1000,
                      method: str | None = None, task_ids=None, seed: int | None = 0) -> az.InferenceData:
    """Convert a posterior over task parameters (and predictions on query points) to ArviZ.

    Every group is in the data's units, as the model has them (task parameters included).

    Groups (one chain; the draws are independent, equally weighted):

    * ``posterior``: every task site, dims ``(chain, draw, task, {site}_dim_0, ...)``, with the
      task ids as coordinates. Draws come from ``posterior.sample(num_samples, method=method)``
      (importance-resampled for approximate posteriors unless ``method="guide"``).
    * with query data (``tasks`` or ``x_query``/``y_query``/``mask_query``): the observed query
      points flattened over tasks into one ``obs`` dim (coordinates ``obs_task``, ``obs_point``),
      ``observed_data`` ``y``, ``constant_data`` ``x``, ``posterior_predictive`` ``y`` (one draw of
      ``y`` per posterior draw) and ``log_likelihood`` ``y`` = ``log p(y_obs | x, theta_draw)``.
      With one output ``y`` is ``(obs,)``; with ``E`` outputs ``(obs, y_dim)``, each output its own
      pointwise term (the likelihood is diagonal). ``az.loo`` / ``az.plot_loo_pit`` work on it; for
      held-out query points the log predictive density is ``elpd_loo + p_loo`` (the lppd).
    * ``predictive``: a :class:`~bayesmeta.PosteriorPredictive` on the same query points to take the
      predictive components from (resampled to ``num_samples`` equal-weight components)
      instead of recomputing them from the posterior draws.

    Example:
        >>> idata = bm.to_inference_data(learner.adapt(test), tasks=test)  # doctest: +SKIP
        >>> az.loo(idata)  # doctest: +SKIP
    """
    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior must be a bayesmeta Posterior; got {type(posterior).__name__}")
    t = posterior.num_tasks
    ids = np.arange(t) if task_ids is None else np.asarray(task_ids)
    if ids.shape != (t,):
        raise ValueError(f"task_ids must hold one id per task ({t}); got shape {ids.shape}")
    draws = posterior.sample(num_samples, method=method, seed=seed)  # {site: [n, T, *event]}
    post, dims = {}, {}
    for name, v in draws.items():
        post[name] = _np(v)[None]  # (chain, draw, task, *event)
        dims[name] = ["task"] + [f"{name}_dim_{i}" for i in range(v.dim() - 2)]
    groups = {"posterior": post}
    coords = {"task": ids}
    query = _query_data(tasks, x_query, y_query, mask_query, t)
    if query is not None:
        groups, obs_coords = _add_query_groups(posterior, predictive, draws, query, groups, num_samples, dims, seed)
        coords.update(obs_coords)
    idata = arviz().from_dict(**groups, coords=coords, dims=dims)
    if query is not None:
        task_of, point_of = query[2].to("cpu").nonzero(as_tuple=True)
        for g in ("observed_data", "constant_data", "posterior_predictive", "log_likelihood"):
            ds = getattr(idata, g)
            setattr(idata, g, ds.assign_coords(obs_task=("obs", ids[task_of.numpy()]), obs_point=("obs", point_of.numpy())))
    return idata


def _query_components(posterior, predictive, draws, x, n: int):
    """``(tasks, loc, scale)`` of ``n`` equally weighted draws ``[n, T_b, N, E]``, task block by block."""
    if predictive is not None:
        yield from predictive.iter_resampled(n)
        return
    for tasks, d in _observation_blocks(posterior, draws, x, n):
        base, _ = unwrap(d)  # Normal [n, T_b, N(, E)]
        loc, scale = base.loc, base.scale.expand_as(base.loc)
        if loc.dim() == 3:
            loc, scale = loc[..., None], scale[..., None]
        yield tasks, loc, scale


def _observation_blocks(posterior, draws, x, n: int):
    """``(tasks, observation distribution [n, T_b, N(, E)])``, block by block."""
    program = posterior.program
    x = posterior._query(x)
    flat = program.flatten(draws)  # [n, T, P]
    per_block = max(1, _BLOCK_ELEMENTS // max(1, n * x.shape[1]))
    for start in range(0, x.shape[0], per_block):
        tasks = slice(start, min(start + per_block, x.shape[0]))
        with torch.no_grad():
            yield tasks, program.observation_distribution(x[tasks], flat[:, tasks])


def _query_blocks(posterior, predictive, draws, x, y, n: int, gen):
    """``(tasks, replicated y, log-likelihood)``, each ``[n, T_b, N, E]``, block by block."""
    if posterior.program.observation.family == "Normal":
        for tasks, loc, scale in _query_components(posterior, predictive, draws, x, n):
            noise = torch.randn(loc.shape, generator=gen, dtype=loc.dtype, device=loc.device)
            yield tasks, loc + scale * noise, torch.distributions.Normal(loc, scale).log_prob(y[tasks].to(loc))
        return
    program = posterior.program
    scalar = len(program.observation.event_shape) == 0
    for tasks, d in _observation_blocks(posterior, draws, x, n):
        rep, lp = d.sample(), d.log_prob(program.model_y(y[tasks].to(x.dtype), None))
        yield tasks, rep[..., None] if scalar else rep, lp[..., None] if scalar else lp


def _add_query_groups(posterior, predictive, draws, query, groups, n, dims, seed):
    x, y, mask = (v.to(posterior.device) for v in query)
    if predictive is not None and tuple(predictive.shape) != tuple(y.shape):
        raise ValueError(f"predictive: shape {tuple(predictive.shape)} does not match y_query {tuple(y.shape)}")
    gen = None if seed is None else torch.Generator(device=posterior.device).manual_seed(seed + 1)
    m = mask.to(posterior.device)
    total, e = int(m.sum()), y.shape[-1]
    y_rep, loglik = np.empty((n, total, e)), np.empty((n, total, e))
    start = 0
    for tasks, rep, lp in _query_blocks(posterior, predictive, draws, x, y, n, gen):  # bounded memory
        mb = m[tasks]
        stop = start + int(mb.sum())
        y_rep[:, start:stop] = _np(rep[:, mb])
        loglik[:, start:stop] = _np(lp[:, mb])
        start = stop
    squeeze = (lambda a: a[..., 0]) if e == 1 else (lambda a: a)  # noqa: E731
    obs_dims = ["obs"] if e == 1 else ["obs", "y_dim"]
    groups = dict(groups)
    groups["observed_data"] = {"y": squeeze(_np(y[m]))}
    groups["constant_data"] = {"x": _np(x.to(m.device)[m])}
    groups["posterior_predictive"] = {"y": squeeze(y_rep)[None]}
    groups["log_likelihood"] = {"y": squeeze(loglik)[None]}
    dims["y"] = obs_dims
    dims["x"] = ["obs", "x_dim"]
    return groups, {"obs": np.arange(total)}
