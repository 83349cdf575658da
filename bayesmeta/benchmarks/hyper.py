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

__all__ = ["EmpiricalBayesIntercepts", "run_hyper", "run_hyper_nuts", "format_hyper", "HYPERPRIORS"]

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
        for method, model in (("full Bayes", VaryingIntercepts(slopes=False, mu_scale=HYPERPRIORS["mu_scale"],
                                                             tau_scale=HYPERPRIORS["tau_scale"],
                                                             sigma_scale=HYPERPRIORS["sigma_scale"])),
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


def _nuts_predictive(draws: dict, x_sup, y_sup, x_q, y_q) -> torch.Tensor:
    """``log p(y_q | D_new, pool)`` per point ``[Q]`` for one new group under NUTS draws of the globals from
    ``p(g | pool)``: each draw reweighted by ``p(D_new | g)`` and the intercept integrated out exactly."""
    mu, tau, sigma = (draws[k].double().reshape(-1, 1) for k in ("mu", "tau", "sigma"))  # [S, 1]
    beta = draws["beta"].double().reshape(mu.shape[0], -1)  # [S, D]
    r = y_sup.double()[None, :] - (x_sup.double()[None] * beta[:, None, :]).sum(-1)  # [S, K]: y minus the slope
    k = r.shape[1]
    prec = 1 / tau**2 + k / sigma**2  # the intercept's posterior given g
    mean = (mu / tau**2 + r.sum(-1, keepdim=True) / sigma**2) / prec
    if k:  # log p(D_new | g): r ~ N(mu 1, sigma^2 I + tau^2 1 1^T)
        cov = sigma[:, :, None] ** 2 * torch.eye(k, dtype=torch.float64) + tau[:, :, None] ** 2
        log_w = torch.distributions.MultivariateNormal(mu.expand(-1, k), cov).log_prob(r)
    else:
        log_w = torch.zeros(mu.shape[0], dtype=torch.float64)
    loc = mean + (x_q.double()[None] * beta[:, None, :]).sum(-1)  # [S, Q]
    sd = (1 / prec + sigma**2).sqrt()
    lp = torch.distributions.Normal(loc, sd).log_prob(y_q.double()[None])  # [S, Q]
    return torch.logsumexp(lp + torch.log_softmax(log_w, 0)[:, None], 0)


def run_hyper_nuts(*, groups=(10, 30, 100), points: int = 5, new_groups: int = 20, steps: int = 2000,
                   seed: int = 0, num_samples: int = 1000, num_warmup: int = 500, out_dir=None,
                   progress: bool = True) -> dict:
    """The varying-intercept model with a shared slope and global ``mu``, ``tau``, ``sigma``, ``beta`` on pools
    of ``groups`` groups: the amortized new-group predictive against NUTS on the whole model, NLL per point
    at ``K`` = 0, 1, 3 (the NUTS reference: globals from NUTS on the pool, each reweighted by the new group's
    support, the intercept integrated exactly)."""
    from ..inference.nuts import run_nuts

    rows, start = [], time.perf_counter()
    for g_count in groups:
        gen = torch.Generator().manual_seed(seed * 1009 + g_count)
        n = max(points, 3 + _QUERY)
        x = torch.rand(g_count + new_groups, n, 1, generator=gen) * 4 - 2
        alpha = 1.5 + 0.8 * torch.randn(g_count + new_groups, 1, generator=gen)
        y = alpha + 0.7 * x[..., 0] + 0.5 * torch.randn(g_count + new_groups, n, generator=gen)
        pool = TaskBatch.from_arrays(list(x[:g_count, :points]), list(y[:g_count, :points, None]))
        model = VaryingIntercepts(x_dim=1, mu_scale=5.0, tau_scale=2.0, sigma_scale=2.0, slope_scale=2.0)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learner = BayesLearner(model).fit(pool, steps, progress=False, seed=seed)
        fit_seconds = time.perf_counter() - t0
        xp, yp, mp = pool.all_points()
        runs = run_nuts(learner.program, xp, yp, mp, num_samples=num_samples, num_warmup=num_warmup, num_chains=2,
                        seed=seed)
        draws = {k: torch.cat([torch.as_tensor(r.get_samples()[k]) for r in runs]) for k in ("mu", "tau", "sigma", "beta")}
        xn, yn = x[g_count:], y[g_count:, :, None]
        for k in (0, 1, 3):
            post = learner.adapt(xn[:, :k], yn[:, :k])
            pred = post.predict(xn[:, 3 : 3 + _QUERY], seed=0)
            ours = pred.log_prob(yn[:, 3 : 3 + _QUERY]).double()  # [new, Q]
            ref = torch.stack([_nuts_predictive(draws, xn[i, :k], yn[i, :k, 0], xn[i, 3 : 3 + _QUERY],
                                                yn[i, 3 : 3 + _QUERY, 0]) for i in range(new_groups)])
            gap = (ref - ours).mean(-1)  # [new]: nats per point the amortized predictive loses to NUTS
            rows.append({"groups": g_count, "shots": k, "nll": float(-ours.mean()), "nuts_nll": float(-ref.mean()),
                         "gap": float(gap.mean()), "gap_se": float(gap.std() / math.sqrt(len(gap))),
                         "fit_seconds": fit_seconds, "hyper": learner.history.hyper})
        if progress:
            print(f"{g_count} groups  {time.perf_counter() - start:.0f} s", flush=True)
    header = ["groups", "K", "NLL / point", "NUTS NLL / point", "gap (nats / point)"]
    body = [[r["groups"], r["shots"], f"{r['nll']:.4f}", f"{r['nuts_nll']:.4f}", f"{r['gap']:+.4f} ± {r['gap_se']:.4f}"]
            for r in rows]
    result = {"rows": rows, "table": markdown_table(header, body),
              "settings": {"groups": list(groups), "points": points, "new_groups": new_groups, "steps": steps,
                           "seed": seed, "nuts": {"num_samples": num_samples, "num_warmup": num_warmup, "chains": 2}}}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps({k: v for k, v in result.items()}, indent=2), out / "results_nuts.json")
    return result
