"""``bayesmeta bench exact-fit``: exact type-II ML (linear mixed model) in natural units, against scipy.

``bayesmeta bench exact-fit [--repeats 5] [--seed 0] [--out bench_out/exact-fit]``

A pool like a reaction-time study (18 groups x 10 points, outcomes in the hundreds, a random
intercept and slope) is fitted with the library's defaults,
``BayesLearner(HierarchicalLinearRegression(x_dim=1), conjugate=True).fit(pool)``, and by an
independent maximum-likelihood fit (scipy BFGS on the marginal likelihood written from its
formula). Prints a Markdown table and writes ``results.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .._checks import check_ints
from ..evaluation.results import markdown_table
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models.linear import HierarchicalLinearRegression
from ..tasks.batch import TaskBatch

__all__ = ["format_exact_fit", "run_exact_fit"]


def _data(seed: int, groups: int = 18, points: int = 10):
    rng = np.random.default_rng(seed)
    cov = np.array([[24.7**2, 0.07 * 24.7 * 5.9], [0.07 * 24.7 * 5.9, 5.9**2]])
    b = rng.multivariate_normal([251.4, 10.5], cov, size=groups)
    x = np.tile(np.arange(points, dtype=float), (groups, 1))
    return x, b[:, :1] + b[:, 1:] * x + rng.normal(0, 25.6, size=x.shape)


def _scipy_fit(x, y):
    from scipy.optimize import minimize  # dev dependency: the independent reference

    design = np.stack([x, np.ones_like(x)], -1)

    def nll(p):
        tril = np.array([[np.exp(p[2]), 0.0], [p[3], np.exp(p[4])]])
        sigma, s2, total = tril @ tril.T, np.exp(2 * p[5]), 0.0
        for xi, yi in zip(design, y, strict=True):
            cov = xi @ sigma @ xi.T + s2 * np.eye(len(yi))
            r = yi - xi @ p[:2]
            total += 0.5 * (np.linalg.slogdet(cov)[1] + r @ np.linalg.solve(cov, r) + len(yi) * np.log(2 * np.pi))
        return total

    res = minimize(nll, np.array([10.0, 250.0, np.log(5.0), 0.0, np.log(20.0), np.log(30.0)]), method="BFGS",
                   options={"gtol": 1e-6, "maxiter": 10_000})
    return {"slope": res.x[0], "intercept": res.x[1], "noise_std": float(np.exp(res.x[5])), "loglik": -res.fun}


def run_exact_fit(*, repeats: int = 5, seed: int = 0, out_dir="bench_out/exact-fit") -> dict:
    """Fit ``repeats`` times (timed) and once with scipy; writes ``results.json``, returns it and a table."""
    check_ints(repeats=(repeats, 1))
    x, y = _data(seed)
    pool = TaskBatch.from_arrays(x_support=[xi[:, None] for xi in x], y_support=[yi[:, None] for yi in y])
    times = []
    for _ in range(repeats):
        model = HierarchicalLinearRegression(x_dim=1, bias=True)
        start = time.perf_counter()
        learner = BayesLearner(model, conjugate=True).fit(pool, progress=False)
        times.append(time.perf_counter() - start)
    slope, intercept = model.prior["loc"].tolist()
    xt, yt, mt = pool.all_points()
    with torch.no_grad():
        loglik = float(model.double().log_marginal_likelihood(xt.double(), yt.double(), mt).sum())
    ours = {"slope": slope, "intercept": intercept, "noise_std": float(model.noise_std.detach()), "loglik": loglik}
    ref = _scipy_fit(x, y)
    rel = {k: abs(ours[k] - ref[k]) / abs(ref[k]) for k in ("slope", "intercept", "noise_std")}
    result = {"benchmark": "exact-fit", "seconds_median": float(np.median(times)), "seconds": times,
              "evaluations": len(learner.history.step), "ours": ours, "scipy": ref, "relative_error": rel,
              "torch_threads": torch.get_num_threads()}
    atomic_write_text(json.dumps(result, indent=2), Path(out_dir) / "results.json")
    return {**result, "table": format_exact_fit(result)}


def format_exact_fit(result: dict) -> str:
    """Markdown: both fits' estimates, then the median time and the largest relative error."""
    rows = [[name, f"{r['slope']:.4f}", f"{r['intercept']:.3f}", f"{r['noise_std']:.4f}", f"{r['loglik']:.4f}"]
            for name, r in ((n, result[n]) for n in ("ours", "scipy"))]
    return (markdown_table(["", "slope", "intercept", "noise sd", "log-lik"], rows)
            + f"\n\nmedian fit time {result['seconds_median']:.3f} s over {len(result['seconds'])} fits "
            f"({result['evaluations']} likelihood evaluations); largest relative error "
            f"{max(result['relative_error'].values()):.2e}")


if __name__ == "__main__":  # the module's former entry point
    raise SystemExit("`python -m bayesmeta.benchmarks.exact_fit` is now `bayesmeta bench exact-fit` (see its --help)")
