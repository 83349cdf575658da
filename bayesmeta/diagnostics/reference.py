"""NUTS reference posteriors and how far an amortized posterior is from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._compat import arviz
from ..inference.nuts import run_nuts
from ..inference.program import ModelError, program_of

if TYPE_CHECKING:
    import arviz as az

__all__ = ["compare_posteriors", "reference_diagnostics", "reference_posterior"]


def reference_posterior(model, x, y, mask=None, *, num_samples: int = 1000, num_warmup: int = 1000,
                        num_chains: int = 4, seed: int = 0, task_ids=None, progress: bool = False,
                        **nuts_options) -> az.InferenceData:
    """NUTS on a few tasks under the model's *learned* prior (its parameters held fixed).

    Args:
        model: a hierarchical model (any model ``BayesLearner`` takes; task sites come back with
            dims ``(chain, draw, task, {site}_dim_0, ...)`` like :func:`to_inference_data`;
            continuous task sites only), or any other Pyro model ``model(x, y, mask)`` (sites keep
            ``az.from_pyro``'s default dims).
        x, y, mask: the tasks' observed points ``[T, N, D]``, ``[T, N, E]``, ``[T, N]``; keep
            ``T`` small: NUTS costs milliseconds per step.
        num_samples, num_warmup, num_chains: per chain; R-hat needs ``num_chains >= 2``.
        nuts_options: ``target_accept_prob``, ``max_tree_depth``.

    Returns:
        ``InferenceData`` (``az.from_pyro`` per chain, joined along ``chain``) with groups
        posterior and sample_stats (``diverging``). Check it with :func:`reference_diagnostics`.
    """
    try:
        program = program_of(model)
    except ModelError:  # any other Pyro program model(x, y, mask): NUTS on it as it is
        program = None
    runs = run_nuts(model if program is None else program, x, y, mask, num_samples=num_samples,
                    num_warmup=num_warmup, num_chains=num_chains, seed=seed, progress=progress, **nuts_options)
    az = arviz()
    if program is None:
        return az.concat([az.from_pyro(m, log_likelihood=False) for m in runs], dim="chain")
    t = x.shape[0]
    ids = np.arange(t) if task_ids is None else np.asarray(task_ids)
    dims = {s.name: ["task", f"{s.name}_point"] + [f"{s.name}_dim_{i}" for i in range(len(s.shape))]
            for s in program.sites}
    parts = [az.from_pyro(m, log_likelihood=False, coords={"task": ids}, dims=dims) for m in runs]
    idata = az.concat(parts, dim="chain")
    idata.posterior = idata.posterior.squeeze([f"{s.name}_point" for s in program.sites], drop=True)
    return idata


def reference_diagnostics(idata: az.InferenceData) -> dict:
    """Convergence of a NUTS run: worst R-hat, smallest bulk / tail ESS, divergences, per site."""
    az = arviz()
    rhat, ess_bulk = az.rhat(idata), az.ess(idata, method="bulk")
    ess_tail = az.ess(idata, method="tail")
    sites = {name: {"max_rhat": float(rhat[name].max()), "min_ess_bulk": float(ess_bulk[name].min()),
                    "min_ess_tail": float(ess_tail[name].min())} for name in idata["posterior"].data_vars}
    div = int(idata["sample_stats"]["diverging"].sum()) if "sample_stats" in idata.groups() else 0
    return {"max_rhat": max(s["max_rhat"] for s in sites.values()),
            "min_ess_bulk": min(s["min_ess_bulk"] for s in sites.values()),
            "min_ess_tail": min(s["min_ess_tail"] for s in sites.values()),
            "divergences": div, "sites": sites}


def _draws(idata, name) -> np.ndarray:
    da = idata.posterior[name]
    return da.stack(sample=("chain", "draw")).transpose("sample", ...).values  # [S, ...]


def compare_posteriors(amortized: az.InferenceData, reference: az.InferenceData, *, var_names=None,
                       quantiles: int = 200) -> list[dict]:
    """Per-coordinate distance of an amortized posterior from a reference one (e.g. NUTS).

    For every site, task and element of the task parameters (both posteriors must share the
    variable names and dims, as :func:`to_inference_data` and :func:`reference_posterior` give):

    * ``mean_error_sd``: ``(mean - mean_ref) / sd_ref``;
    * ``sd_ratio``: ``sd / sd_ref`` (below 1: overconfident);
    * ``wasserstein_sd``: the 1-Wasserstein distance between the two marginals (from
      ``quantiles`` matched quantiles) in units of ``sd_ref``; 0 for identical marginals.

    Returns:
        One dict per (site, element) with the coordinates and these numbers.
    """
    names = list(reference["posterior"].data_vars) if var_names is None else list(var_names)
    rows = []
    for name in names:
        if name not in amortized["posterior"]:
            raise ValueError(f"var_names: site {name!r} is not in the amortized posterior "
                             f"(has {list(amortized['posterior'].data_vars)})")
        a, r = _draws(amortized, name), _draws(reference, name)
        if a.shape[1:] != r.shape[1:]:
            raise ValueError(f"site {name!r}: shapes {a.shape[1:]} (amortized) and {r.shape[1:]} (reference) differ")
        u = (np.arange(quantiles) + 0.5) / quantiles
        qa, qr = np.quantile(a, u, axis=0), np.quantile(r, u, axis=0)
        sd_r = r.std(0, ddof=1)
        stats = {"mean": a.mean(0), "sd": a.std(0, ddof=1), "mean_ref": r.mean(0), "sd_ref": sd_r,
                 "mean_error_sd": (a.mean(0) - r.mean(0)) / sd_r, "sd_ratio": a.std(0, ddof=1) / sd_r,
                 "wasserstein_sd": np.abs(qa - qr).mean(0) / sd_r}
        dims = [d for d in reference["posterior"][name].dims if d not in ("chain", "draw")]
        coords = [reference["posterior"][d].values for d in dims]
        for idx in np.ndindex(*a.shape[1:]):
            row = {"site": name, **{d: c[i].item() for d, c, i in zip(dims, coords, idx, strict=True)}}
            row.update({key: float(v[idx]) for key, v in stats.items()})
            rows.append(row)
    return rows
