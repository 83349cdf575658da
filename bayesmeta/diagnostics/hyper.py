"""The posterior of a model's global sites (hyperpriors) in ArviZ, and side by side with NUTS on the whole model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._compat import arviz
from .reference import reference_posterior

if TYPE_CHECKING:
    import arviz as az

__all__ = ["hyperposterior_inference_data", "compare_global_posteriors"]


def _check(learner) -> None:
    program = getattr(learner, "program", None)
    if program is None or not program.has_globals:
        raise ValueError("the learner's model has no global latent sites (hyperpriors sampled outside every plate)")


@torch.no_grad()
def hyperposterior_inference_data(learner, *, num_samples: int = 4000, seed: int | None = 0) -> az.InferenceData:
    """The fitted hyperposterior ``p(g | pool)`` as ``InferenceData``: a ``posterior`` group with every global site,
    dims ``(chain, draw, {site}_dim_0, ...)`` (no task dim), in the model's units; ``az.summary`` and
    ``az.plot_forest`` work on it. The draws are the importance-corrected ones where the fit kept them
    (resampled to ``num_samples``), else draws of the global guide ``q(g)``.

    Example:
        >>> idata = bm.diagnostics.hyperposterior_inference_data(learner)  # doctest: +SKIP
        >>> az.summary(idata)  # doctest: +SKIP
    """
    _check(learner)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")
    devices = [learner.device] if learner.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        g = learner.hyperposterior()(num_samples, 1)[:, 0]  # [n, G]
    values = learner.program.split_globals(g)
    post, dims = {}, {}
    for name, v in values.items():
        post[name] = v.detach().to("cpu", torch.float64).numpy()[None]  # (chain, draw, *event)
        dims[name] = [f"{name}_dim_{i}" for i in range(v.dim() - 1)]
    return arviz().from_dict(posterior=post, dims=dims)


def compare_global_posteriors(learner, pool, *, reference: az.InferenceData | None = None, num_samples: int = 4000,
                              seed: int = 0, **nuts_options) -> list[dict]:
    """The amortized hyperposterior against NUTS on the whole model (globals and task sites) for ``pool``.

    Args:
        learner: a fitted ``BayesLearner`` whose model has global sites.
        pool: the ``TaskBatch`` it was fitted to (keep it small: NUTS costs milliseconds per step).
        reference: a NUTS run of the model on the pool (``reference_posterior``), else one is made with
            ``nuts_options`` (``num_samples``, ``num_warmup``, ``num_chains``, ...).

    Returns:
        One row per global coordinate: ``site``, ``mean`` / ``sd`` (amortized), ``nuts_mean`` / ``nuts_sd``,
        ``z`` (the mean's difference in NUTS sds) and ``sd_ratio``.
    """
    _check(learner)
    if reference is None:
        x, y, mask = pool.all_points()
        nuts_options.setdefault("num_chains", 2)
        reference = reference_posterior(learner.program, x.to(learner.device), y.to(learner.device),
                                        mask.to(learner.device), seed=seed, **nuts_options)
    ours: Any = hyperposterior_inference_data(learner, num_samples=num_samples, seed=seed)
    ref: Any = reference
    rows = []
    for site in learner.program.global_sites:
        a = ours.posterior[site.name].values.reshape(-1, max(1, site.shape.numel()))
        b = ref.posterior[site.name].values.reshape(-1, max(1, site.shape.numel()))
        for j in range(a.shape[1]):
            label = site.name if a.shape[1] == 1 else f"{site.name}[{j}]"
            m, s, rm, rs = float(a[:, j].mean()), float(a[:, j].std()), float(b[:, j].mean()), float(b[:, j].std())
            rows.append({"site": label, "mean": m, "sd": s, "nuts_mean": rm, "nuts_sd": rs,
                         "z": (m - rm) / rs if rs > 0 else float("nan"), "sd_ratio": s / rs if rs > 0 else np.nan})
    return rows
