"""``bayesmeta bench hyper``: full Bayes (hyperpriors) against empirical Bayes on small pools, calibration over the prior.

``bayesmeta bench hyper [--pools 200] [--groups 8] [--points 5] [--steps 500] [--out bench_out/hyper]``

Each pool is simulated from a hierarchical Normal model *with hyperpriors*: ``mu ~ N(0, 5)``,
``tau ~ HalfNormal(2)``, ``sigma ~ HalfNormal(2)``, then ``groups`` intercepts ``alpha_i ~ N(mu, tau)``
and ``points`` outcomes ``y_ij ~ N(alpha_i, sigma)`` each. Two models are fitted to it with the
library's defaults (``BayesLearner(model).fit(pool, steps)``):

* **full Bayes**: :class:`~bayesmeta.models.VaryingIntercepts` with those same hyperpriors (``mu``,
  ``tau``, ``sigma`` global latent sites): the model the data came from, so its new-group intervals
  are calibrated when averaged over pools drawn from the prior;
* **empirical Bayes**: the same model with ``mu``, ``tau``, ``sigma`` as module parameters (point
  estimates; the library's validation hold-out and marginal-likelihood polish as by default).

Each learner then predicts new groups of the same pool's population (``new_groups`` of them) from
``K`` = 1 and 3 support points, on 20 query points each. Reported per method and ``K``: the coverage
of central 90 % (and 50 %) intervals and the NLL per point, mean +- standard error over pools.
Prints a Markdown table and writes ``results.json``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from .._checks import check_ints
from ..evaluation.results import markdown_table
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models.hyper import VaryingIntercepts
from ..tasks.batch import TaskBatch

__all__ = ["EmpiricalBayesIntercepts", "run_hyper", "format_hyper", "HYPERPRIORS"]

HYPERPRIORS = {"mu_scale": 5.0, "tau_scale": 2.0, "sigma_scale": 2.0}
SHOTS = (1, 3)
_QUERY = 20


class EmpiricalBayesIntercepts(PyroModule):
    """``alpha_i ~ N(mu, tau)``, ``y_ij ~ N(alpha_i, sigma)`` with ``mu``, ``tau``, ``sigma`` module parameters."""

    x_dim, y_dim = 1, 1

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(0.0))
        self.log_tau = nn.Parameter(torch.tensor(0.0))
        self.log_sigma = nn.Parameter(torch.tensor(0.0))
        self.config: dict = {}

    def forward(self, x, y=None, mask=None):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            alpha = self.mu + self.log_tau.exp() * z
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(alpha, self.log_sigma.exp()).mask(mask), obs=y)


def _simulate(gen: torch.Generator, groups: int, points: int, new_groups: int):
    """A pool and new groups of one population drawn from the hyperpriors."""
    mu = HYPERPRIORS["mu_scale"] * torch.randn((), generator=gen)
    tau = HYPERPRIORS["tau_scale"] * torch.randn((), generator=gen).abs()
    sigma = HYPERPRIORS["sigma_scale"] * torch.randn((), generator=gen).abs()
    alpha = mu + tau * torch.randn(groups + new_groups, 1, generator=gen)
    n = max(points, max(SHOTS) + _QUERY)
    y = alpha + sigma * torch.randn(groups + new_groups, n, generator=gen)  # [G, n]
    x = torch.zeros(groups + new_groups, n, 1)
    pool = TaskBatch.from_arrays(list(x[:groups, :points]), list(y[:groups, :points, None]))
    return pool, x[groups:], y[groups:, :, None], {"mu": float(mu), "tau": float(tau), "sigma": float(sigma)}


def _score(learner, x_new, y_new) -> dict:
    out = {}
    for k in SHOTS:
        post = learner.adapt(x_new[:, :k], y_new[:, :k])
        pred = post.predict(x_new[:, k : k + _QUERY], seed=0)
        yq = y_new[:, k : k + _QUERY]
        row = {"nll": float(-pred.log_prob(yq).mean())}
        for level in (0.5, 0.9):
            lo, hi = pred.interval(level)
            row[f"coverage_{int(level * 100)}"] = float(((yq >= lo) & (yq <= hi)).double().mean())
        out[k] = row
    return out


def run_hyper(*, pools: int = 200, groups: int = 8, points: int = 5, new_groups: int = 10, steps: int = 500,
              seed: int = 0, out_dir=None, progress: bool = True) -> dict:
    """Run the benchmark (see the module docstring); returns ``{"rows", "aggregate", "settings"}``."""
    check_ints(pools=(pools, 1), groups=(groups, 2), points=(points, 1), new_groups=(new_groups, 1), steps=(steps, 1))
    rows, start = [], time.perf_counter()
    for p in range(pools):
        gen = torch.Generator().manual_seed(seed * 100_003 + p)
        pool, x_new, y_new, truth = _simulate(gen, groups, points, new_groups)
        for method, model in (("full Bayes", VaryingIntercepts(slopes=False, **HYPERPRIORS)),
                              ("empirical Bayes", EmpiricalBayesIntercepts())):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence notes are in the history; the table is the point
                learner = BayesLearner(model).fit(pool, steps, progress=False, seed=seed + p)
            scores = _score(learner, x_new, y_new)
            for k, row in scores.items():
                rows.append({"pool": p, "method": method, "shots": k, **row, "seconds": time.perf_counter() - t0,
                             **{f"true_{n}": v for n, v in truth.items()}})
        if progress:
            print(f"pool {p + 1}/{pools}  {time.perf_counter() - start:.0f} s", flush=True)
    result = {"rows": rows, "aggregate": _aggregate(rows), "seconds": time.perf_counter() - start,
              "settings": {"pools": pools, "groups": groups, "points": points, "new_groups": new_groups,
                           "steps": steps, "seed": seed, "hyperpriors": HYPERPRIORS, "query_points": _QUERY}}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(result, indent=2), out / "results.json")
    result["table"] = format_hyper(result)
    return result


def _aggregate(rows: list[dict]) -> list[dict]:
    agg = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for k in SHOTS:
            sel = [r for r in rows if r["method"] == method and r["shots"] == k]
            entry = {"method": method, "shots": k, "pools": len(sel)}
            for key in ("coverage_90", "coverage_50", "nll"):
                v = torch.tensor([r[key] for r in sel], dtype=torch.float64)
                entry[key] = float(v.mean())
                entry[f"{key}_se"] = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            agg.append(entry)
    return agg


def format_hyper(result: dict) -> str:
    """The aggregate as a Markdown table."""
    header = ["method", "K", "pools", "90 % coverage", "50 % coverage", "NLL / point"]
    body = [[a["method"], a["shots"], a["pools"], f"{a['coverage_90']:.3f} ± {a['coverage_90_se']:.3f}",
             f"{a['coverage_50']:.3f} ± {a['coverage_50_se']:.3f}", f"{a['nll']:.3f} ± {a['nll_se']:.3f}"]
            for a in result["aggregate"]]
    return markdown_table(header, body)
