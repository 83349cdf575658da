"""``bayesmeta bench glmm``: a user's random-intercept Poisson GLMM, fitted in its own units, against maximum likelihood.

``bayesmeta bench glmm [--seeds 10] [--groups 40] [--steps 2000 8000] [--out bench_out/glmm]``

The model is written in plain Pyro from ``docs/custom-model.md`` as a user would: five fixed effects
(intercept and four covariates) and the random-intercept sd as module parameters, a random
intercept per group as the task site, Poisson counts (means near 20, up to ~100; 3-6 visits per
group). Each seed simulates a pool and fits it twice or more with ``BayesLearner(model).fit(pool)``
(the library's defaults, and the same without the marginal-likelihood polish) and once by maximum
marginal likelihood
(the marginal likelihood by the trapezoid rule on a dense grid of each group's random intercept,
8001 points over +-12 prior sds, maximised by L-BFGS in float64). Reported per fit: the largest fixed-effect error against the ML fit, the learned
and ML random-intercept sd, the new-group predictive's NLL per point minus the ML fit's
empirical-Bayes predictive (200 new groups, 3 support and 3 query visits), divergence and the
warnings ``fit`` raised. Prints a Markdown table and writes ``results.json``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from .._checks import check_ints
from ..evaluation.results import markdown_table
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..tasks.batch import TaskBatch

__all__ = ["PoissonGLMM", "format_glmm", "ml_fit_glmm", "run_glmm", "simulate_glmm"]

BETA = (3.0, 0.3, -0.2, 0.1, 0.25)  # intercept, four covariate effects: counts near exp(3) = 20, up to ~100
TAU = 0.5


class PoissonGLMM(PyroModule):
    """``y_ij ~ Poisson(exp(beta_0 + x_ij . beta + b_i))``, ``b_i ~ N(0, tau^2)``: fixed effects and ``tau`` learned."""

    def __init__(self, num_covariates: int = 4) -> None:
        super().__init__()
        self.x_dim, self.y_dim = num_covariates, 1
        self.beta = nn.Parameter(torch.zeros(num_covariates + 1))
        self.log_tau = nn.Parameter(torch.tensor(0.0))
        self.config = {"num_covariates": num_covariates}

    def forward(self, x, y=None, mask=None):
        eta = self.beta[0] + (x * self.beta[1:]).sum(-1)  # [T, N]
        with pyro.plate("tasks", x.shape[0], dim=-2):
            b = pyro.sample("b", dist.Normal(0.0, self.log_tau.exp()))  # [..., T, 1]
            with pyro.plate("points", x.shape[1], dim=-1):
                d = dist.Poisson((eta + b).exp())
                return pyro.sample("y", d.mask(mask) if mask is not None else d, obs=y)


def simulate_glmm(groups: int, seed: int, *, points: tuple[int, int] = (3, 6)) -> TaskBatch:
    """A pool of ``groups`` groups with ``points`` (inclusive range) visits each, from the true parameters."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(points[0], points[1] + 1, (groups,), generator=g)
    width = int(n.max())
    x = torch.randn(groups, width, len(BETA) - 1, generator=g)
    b = TAU * torch.randn(groups, 1, generator=g)
    rate = (BETA[0] + (x * torch.tensor(BETA[1:])).sum(-1) + b).exp()
    y = torch.poisson(rate, generator=g)
    mask = torch.arange(width)[None] < n[:, None]
    return TaskBatch(x * mask[..., None], (y * mask)[..., None], mask)


def _log_joint(p: torch.Tensor, x, y, m, b: torch.Tensor) -> torch.Tensor:
    """``log p(y_i, b)`` at ``b [K, T]`` for parameters ``p = (beta, log tau)``."""
    lam = p[0] + (x * p[1:-1]).sum(-1) + b[..., None]  # [K, T, N]
    lik = ((y * lam - lam.exp() - torch.lgamma(y + 1)) * m).sum(-1)
    return dist.Normal(0.0, p[-1].exp()).log_prob(b) + lik


def grid_log_marginal(p: torch.Tensor, pool: TaskBatch, *, points: int = 8001) -> torch.Tensor:
    """``sum_i log p(D_i | p)`` by the trapezoid rule on a dense grid of the random intercept (float64; exact to
    quadrature error for a one-dimensional random effect), differentiable in ``p``."""
    x, y, m = pool.all_points()
    x, y, m = x.double(), y.double()[..., 0], m.double()
    unit = torch.linspace(-12, 12, points, dtype=torch.float64)[:, None]  # [K, 1] in prior sds
    b = unit * p[-1].exp()
    lj = _log_joint(p, x, y, m, b.expand(-1, x.shape[0]))  # [K, T]
    step = 24 / (points - 1) * p[-1].exp()
    return (torch.logsumexp(lj, 0) + torch.log(step)).sum()


def ml_fit_glmm(pool: TaskBatch, *, points: int = 8001) -> torch.Tensor:
    """Maximum marginal likelihood ``(beta..., log tau)`` on the dense grid of :func:`grid_log_marginal` (L-BFGS)."""
    _, y, m = pool.all_points()
    p = torch.zeros(pool.x_dim + 2, dtype=torch.float64)
    p[0] = math.log(float(y[m].double().mean()))
    p[-1] = math.log(0.5)
    p.requires_grad_(True)
    opt = torch.optim.LBFGS([p], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                            tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = -grid_log_marginal(p, pool, points=points)
        loss.backward()
        return loss

    opt.step(closure)
    return p.detach()


def eb_predictive_nll(p: torch.Tensor, support, query) -> torch.Tensor:
    """The ML fit's empirical-Bayes predictive: ``-log p(y* | support)`` per query point, mean per group ``[T]``."""
    (xs, ys, ms), (xq, yq, mq) = support, query
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)[:, None] * p[-1].exp()  # [K, 1] over the prior
    log_post = _log_joint(p, xs.double(), ys.double()[..., 0], ms.double(), grid.expand(-1, xs.shape[0]))
    log_post = log_post - torch.logsumexp(log_post, 0)  # [K, T]
    lam = p[0] + (xq.double() * p[1:-1]).sum(-1) + grid[..., None]  # [K, T, Q]
    yq_ = yq.double()[..., 0]
    lp = torch.logsumexp(log_post[..., None] + yq_ * lam - lam.exp() - torch.lgamma(yq_ + 1), 0)  # [T, Q]
    m = mq.double()
    return -(lp * m).sum(-1) / m.sum(-1)


def _new_groups(seed: int, groups: int = 200, k: int = 3, q: int = 3):
    x, y, m = simulate_glmm(groups, seed, points=(k + q, k + q)).all_points()
    return (x[:, :k], y[:, :k], m[:, :k]), (x[:, k:], y[:, k:], m[:, k:])


def _fit_once(pool: TaskBatch, ref: torch.Tensor, support, query, seed: int, steps: int, polish: bool) -> dict:
    torch.manual_seed(seed)
    model = PoissonGLMM(len(BETA) - 1)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            learner = BayesLearner(model).fit(pool, steps=steps, progress=False, seed=seed, polish=polish)
        except FloatingPointError as err:
            return {"steps": steps, "polish": polish, "diverged": True, "error": str(err)[:200]}
    seconds = time.perf_counter() - start
    pred = learner.adapt(*support).predict(query[0], seed=0)
    with torch.no_grad():
        lp = pred.log_prob(query[1]).double()
        m = query[2].double()
        nll = -(lp * m).sum(-1) / m.sum(-1)
        beta = model.beta.double()
    return {"steps": steps, "polish": polish, "diverged": False, "steps_run": learner.history.step[-1],
            "polish_kept": bool(learner.history.polish and learner.history.polish["accepted"]),
            "best_step": learner.history.best_step, "seconds": round(seconds, 1),
            "fixed_effect_error": float((beta - ref[:-1]).abs().max()), "tau": float(model.log_tau.exp().detach()),
            "tau_ml": float(ref[-1].exp()), "nll_gap": float(nll.mean() - eb_predictive_nll(ref, support, query).mean()),
            "warnings": sorted({type(w.message).__name__ for w in caught})}


def run_glmm(*, seeds: int = 10, groups: int = 40, steps=(2000,), out_dir="bench_out/glmm",
             progress: bool = True) -> dict:
    """Fit ``seeds`` simulated pools at each step budget, with and without the polish, and by ML; writes
    ``results.json``, returns it and a table."""
    check_ints(seeds=(seeds, 1), groups=(groups, 4))
    steps = tuple(steps)
    for s in steps:
        check_ints(steps=(s, 1))
    rows = []
    for seed in range(seeds):
        pool = simulate_glmm(groups, seed)
        ref = ml_fit_glmm(pool)
        support, query = _new_groups(10_000 + seed)
        for s in steps:
            for polish in (True, False):
                row = {"seed": seed, **_fit_once(pool, ref, support, query, seed, s, polish)}
                rows.append(row)
            if progress:
                print(json.dumps(row), flush=True)
    result = {"benchmark": "glmm", "groups": groups, "seeds": seeds, "steps": list(steps), "truth": {"beta": BETA, "tau": TAU},
              "rows": rows, "torch_threads": torch.get_num_threads()}
    atomic_write_text(json.dumps(result, indent=2), Path(out_dir) / "results.json")
    return {**result, "table": format_glmm(result)}


def format_glmm(result: dict) -> str:
    """Markdown: per step budget, mean and worst fixed-effect error, tau, NLL gap, divergences and warnings."""
    out = []
    for s, polish in ((s, p) for s in result["steps"] for p in (True, False)):
        rs = [r for r in result["rows"] if r["steps"] == s and r["polish"] == polish]
        label = f"{s}{'' if polish else ', polish=False'}"
        ok = [r for r in rs if not r["diverged"]]
        if not ok:
            out.append([label, "-", "-", "-", "-", f"{len(rs)}/{len(rs)}", "-"])
            continue
        err = [r["fixed_effect_error"] for r in ok]
        gap = [r["nll_gap"] for r in ok]
        tau = [r["tau"] - r["tau_ml"] for r in ok]
        warned = sum(1 for r in ok if r["warnings"])
        out.append([label, f"{np.mean(err):.3f} / {max(err):.3f}", f"{sum(e <= 0.05 for e in err)}/{len(ok)}",
                    f"{np.mean(tau):+.3f}", f"{np.mean(gap):+.4f} / {max(gap):+.4f}",
                    f"{len(rs) - len(ok)}/{len(rs)}", f"{warned}/{len(ok)}"])
    head = ["steps", "fixed-effect error vs ML (mean / worst)", "within 0.05", "tau - tau_ML (mean)",
            "NLL gap to ML's EB predictive (mean / worst)", "diverged", "fits with warnings"]
    return markdown_table(head, out)
