"""Decisions on new tasks (``bayesmeta bench optimize``): meta-learned BO and bandits against the oracle and from scratch.

Three cases, every method on the same new tasks, side by side:

* ``sinusoid``: maximise a new ``Sinusoid(noise_std=0.1)`` task on ``[-5, 5]`` from noisy
  evaluations. Methods: Thompson sampling, EI and UCB with the library's default amortized
  learner (``LatentCodeRegression``, trained ``max_time`` seconds on the family), Thompson
  sampling with the true prior (the oracle: the limit), GP-BO from scratch (scikit-learn),
  random search and greedy MAML (adapt, take the predicted argmax).
* ``logistic``: maximise the success probability of a new ``HierarchicalLogistic`` task on
  ``[-2, 2]`` from 0/1 outcomes (the learner: ``HierarchicalLogisticRegression``).
* ``bandit``: ``BernoulliBandit(10)``; meta Thompson sampling (a learned correlated prior over
  the arms' logits), oracle-prior Thompson sampling and independent Thompson sampling with a
  flat Beta(1, 1) prior per arm; cumulative regret over ``horizon`` pulls.

Simple regret after ``t`` evaluations: ``f* - max_{i <= t} f(x_i)`` on the noise-free function
(``f*`` its maximum over the space, from a dense grid). Mean and standard error over tasks.
``size="quick"`` runs in under a minute; ``size="full"`` is the issue's protocol (200 tasks, 20
evaluations, 100 pulls, 5 min training).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..baselines import MAML
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models import HierarchicalLogisticRegression
from ..optimize import (
    AcquisitionPolicy,
    BernoulliBandit,
    Box,
    GPBayesOpt,
    IndependentArms,
    RandomSearch,
    optimize_tasks,
    run_bandits,
)
from ..tasks import HierarchicalLogistic, Sinusoid
from .sinusoid import amortized_learner

__all__ = ["OPTIMIZE_CASES", "OPTIMIZE_SIZES", "run_optimize"]

OPTIMIZE_CASES = ("sinusoid", "logistic", "bandit")
OPTIMIZE_SIZES = {
    # seconds of training per learner, new tasks, evaluations per task, bandit pulls
    "quick": {"max_time": 8.0, "num_tasks": 10, "budget": 8, "horizon": 30},
    "full": {"max_time": 300.0, "num_tasks": 200, "budget": 20, "horizon": 100},
}
METHOD_ORDER = ("meta-ts", "meta-ei", "meta-ucb", "oracle-ts", "gp-bo", "random", "greedy-maml", "flat-ts")
REPORT_AT = (1, 2, 3, 5, 10, 20, 50, 100)  # table columns (evaluations), those within the budget
# EI / UCB with a neural learner: a smaller pool and candidate set than propose's defaults (one proposal per
# task per round for hundreds of tasks); Thompson sampling evaluates one draw and keeps the defaults
_FAST: dict[str, Any] = {"num_samples": 64, "num_candidates": 128, "num_starts": 2, "refine_steps": 20}


def _fit(learner, family, max_time: float, seed: int, device, progress: bool):
    torch.manual_seed(seed)
    learner.fit(family, steps=10**9, max_time=max_time, seed=seed, device=device, progress=progress)
    h = learner.history
    return {"steps": int(h.step[-1]) if h.step else 0, "seconds": float(h.time[-1]) if h.time else 0.0}


def _normal_sim(f, noise: float, g: torch.Generator) -> torch.Tensor:
    return f + noise * torch.randn(f.shape, generator=g)


def _sinusoid(family: Sinusoid, max_time, seed, device, progress):
    learner, maml = amortized_learner(), MAML(x_dim=1, y_dim=1)
    train = {"bayes": _fit(learner, family, max_time, seed, device, progress),
             "maml": _fit(maml, family, max_time, seed, device, progress)}
    methods = {
        "meta-ts": AcquisitionPolicy(learner, "ts"),
        "meta-ei": AcquisitionPolicy(learner, "ei", **_FAST),
        "meta-ucb": AcquisitionPolicy(learner, "ucb", **_FAST),
        "oracle-ts": AcquisitionPolicy(family, "ts"),
        "gp-bo": GPBayesOpt(num_candidates=256, refine_steps=10),
        "random": RandomSearch(),
        "greedy-maml": AcquisitionPolicy(maml, "greedy", num_candidates=256),
    }

    def function(params, x):
        return family.mean_function(params, x)[..., 0]
    return methods, train, Box(*family.x_range), function, lambda f, g: _normal_sim(f, family.noise_std, g)


def _logistic(family: HierarchicalLogistic, max_time, seed, device, progress):
    learner = BayesLearner(HierarchicalLogisticRegression(x_dim=1))
    train = {"bayes": _fit(learner, family, max_time, seed, device, progress)}
    methods = {
        "meta-ts": AcquisitionPolicy(learner, "ts"),
        "meta-ucb": AcquisitionPolicy(learner, "ucb", **_FAST),
        "oracle-ts": AcquisitionPolicy(family, "ts"),
        "gp-bo": GPBayesOpt(num_candidates=256, refine_steps=10),
        "random": RandomSearch(),
    }

    def function(params, x):
        return torch.sigmoid(family.linear_predictor(params, x))[..., 0]
    return methods, train, Box(*family.x_range), function, lambda f, g: (torch.rand(f.shape, generator=g) < f).to(f)


def _curve(values: torch.Tensor) -> dict:
    """Mean and standard error over tasks of ``values [T, n]``, per evaluation."""
    n = values.shape[0]
    se = values.std(0) / math.sqrt(n) if n > 1 else torch.zeros(values.shape[1])
    return {"mean": values.mean(0).tolist(), "se": se.tolist()}


def _bo_case(name: str, family, *, max_time, num_tasks, budget, seed, device, progress, methods=None) -> dict:
    build = _sinusoid if name == "sinusoid" else _logistic
    policies, train, box, function, noisy = build(family, max_time, seed, device, progress)
    if methods is not None:
        policies = {k: v for k, v in policies.items() if k in methods}
    params = family.sample_params(num_tasks, torch.Generator().manual_seed(seed + 1))
    dense = torch.linspace(0, 1, 4001)[:, None]
    grid = box.from_unit(dense).expand(num_tasks, -1, -1)  # [T, G, 1]
    f_star = function(params, grid).amax(-1)  # [T]
    out: dict = {"train": train, "methods": {}}
    for method, policy in policies.items():
        g = torch.Generator().manual_seed(seed + 2)

        def simulate(x: torch.Tensor, g: torch.Generator = g) -> torch.Tensor:  # noisy outcomes [T, q, 1]
            return noisy(function(params, x), g)[..., None]
        t0 = time.perf_counter()
        run = optimize_tasks(policy, simulate, box, num_tasks=num_tasks, budget=budget, seed=seed, progress=progress)
        f = function(params, run["x"])  # [T, budget] noise-free values at the evaluated points
        regret = (torch.maximum(f_star, f.amax(-1))[:, None] - torch.cummax(f, -1).values).clamp_min(0)
        out["methods"][method] = {"simple_regret": _curve(regret), "seconds": time.perf_counter() - t0}
    return out


def _bandit_case(family: BernoulliBandit, *, max_time, num_tasks, horizon, seed, device, progress,
                 methods=None) -> dict:
    learner = BayesLearner(HierarchicalLogisticRegression(x_dim=family.num_arms, bias=False))
    train = {"bayes": _fit(learner, family, max_time, seed, device, progress)}
    policies = {"meta-ts": learner, "oracle-ts": family, "flat-ts": IndependentArms(family.num_arms),
                "random": RandomSearch()}
    if methods is not None:
        policies = {k: v for k, v in policies.items() if k in methods}
    out: dict = {"train": train, "methods": {}}
    for method, model in policies.items():
        t0 = time.perf_counter()
        r = run_bandits(model, family, num_tasks=num_tasks, horizon=horizon, seed=seed + 1, progress=progress)
        out["methods"][method] = {"cumulative_regret": _curve(r["cumulative_regret"]),
                                  "seconds": time.perf_counter() - t0}
    return out


def _table(results: dict) -> str:
    """One block per case: methods by rows, regret (mean ± s.e.) after selected evaluations by columns."""
    blocks = []
    for case, res in results.items():
        key = "cumulative_regret" if case == "bandit" else "simple_regret"
        n = len(next(iter(res["methods"].values()))[key]["mean"])
        cols = [t for t in REPORT_AT if t <= n] + ([n] if n not in REPORT_AT else [])
        head = f"{case}: {key.replace('_', ' ')} after t evaluations (mean ± s.e. over tasks)"
        lines = [head, f"{'method':<12}" + "".join(f"{f't={t}':>20}" for t in cols) + f"{'seconds':>10}"]
        for m, r in res["methods"].items():
            cells = "".join(f"{r[key]['mean'][t - 1]:.3g} ± {r[key]['se'][t - 1]:.2g}".rjust(20) for t in cols)
            lines.append(f"{m:<12}{cells}{r['seconds']:>10.1f}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot_regret(results: dict, path) -> Path:
    """Regret curves of every method, one panel per case (PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(METHOD_ORDER)}  # one colour per method in every panel
    for ax, (case, res) in zip(axes[0], results.items(), strict=True):
        key = "cumulative_regret" if case == "bandit" else "simple_regret"
        for m, r in res["methods"].items():
            mean, se = torch.tensor(r[key]["mean"]), torch.tensor(r[key]["se"])
            t = torch.arange(1, len(mean) + 1)
            ax.plot(t, mean, label=m, lw=1.5, color=colors.get(m), ls="--" if m.startswith("oracle") else "-")
            ax.fill_between(t, mean - se, mean + se, alpha=0.2, color=colors.get(m))
        ax.set(title=case, xlabel="evaluations" if case != "bandit" else "pulls", ylabel=key.replace("_", " "))
        if case != "bandit":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_optimize(*, cases=None, size: str = "full", max_time: float | None = None, num_tasks: int | None = None,
                 budget: int | None = None, horizon: int | None = None, methods=None, out_dir="bench_out/optimize",
                 seed: int = 0, device="cpu", progress: bool = True, plot: bool = True) -> dict:
    """Run the cases and write ``results.json`` (and ``regret.png``); returns the results and the table.

    Args:
        cases: a subset of :data:`OPTIMIZE_CASES` (default all).
        size: ``"quick"`` (< 1 min) or ``"full"``; ``max_time``, ``num_tasks``, ``budget``,
            ``horizon`` override its settings.
        methods: run only these methods (names as in the table).
    """
    if size not in OPTIMIZE_SIZES:
        raise ValueError(f"size must be one of {list(OPTIMIZE_SIZES)}; got {size!r}")
    cases = list(OPTIMIZE_CASES) if cases is None else list(cases)
    unknown = sorted(set(cases) - set(OPTIMIZE_CASES))
    if unknown or not cases:
        raise ValueError(f"unknown optimize case(s) {unknown or cases}; choose from {list(OPTIMIZE_CASES)}")
    cfg = dict(OPTIMIZE_SIZES[size])
    cfg.update({k: v for k, v in (("max_time", max_time), ("num_tasks", num_tasks), ("budget", budget),
                                  ("horizon", horizon)) if v is not None})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    common = {"max_time": cfg["max_time"], "num_tasks": cfg["num_tasks"], "seed": seed, "device": device,
              "progress": progress, "methods": methods}
    for case in cases:
        if case == "bandit":
            results[case] = _bandit_case(BernoulliBandit(10), horizon=cfg["horizon"], **common)
        else:
            family = Sinusoid(noise_std=0.1) if case == "sinusoid" else HierarchicalLogistic()
            results[case] = _bo_case(case, family, budget=cfg["budget"], **common)
        doc = {"benchmark": "optimize", "size": size, "options": {**cfg, "seed": seed},
               "torch_threads": torch.get_num_threads(), "cases": results}
        atomic_write_text(json.dumps(doc, indent=1), out / "results.json")
    table = _table(results)
    if plot:
        plot_regret(results, out / "regret.png")
    return {**doc, "table": table}
