"""``bayesmeta bench compare``: the Bayesian learner and the baselines on the same tasks, same budget.

For each task family every method meta-trains for the same wall-clock budget, then all are scored
by :func:`bayesmeta.evaluate` on the same fixed test tasks (shots 1, 5, 10) next to the Bayes
oracle. Baselines first get a small learning-rate sweep (short runs, scored on separate
validation tasks; the sweep's time is not part of the budget and is reported) -- or, with
``tune_seconds``, every method (the Bayesian learner too) gets an Optuna study of that many seconds
over its learning rate, tasks per step and inner step size, with trials of ``sweep_seconds``. Two side studies:
the classic noise-free MAML sinusoid (K=10, MSE after 1 and 10 inner steps, squared-error net, the
MAML paper's settings) and the speed of the vectorised MAML step against a per-task loop.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..baselines import BASELINES, MAML, Ensemble
from ..diagnostics import plot_calibration_curve, plot_method_comparison
from ..evaluation import Evaluation, evaluate, make_test_sets
from ..evaluation.results import markdown_table, plus_minus
from ..inference import TrainConfig
from ..io import atomic_write_text
from ..learners import BayesLearner, MetaLearner
from ..tasks import HierarchicalLinear, Sinusoid
from .sinusoid import amortized_learner

__all__ = ["COMPARE_FAMILIES", "COMPARE_METHODS", "run_compare", "maml_classic", "vectorisation_speed"]

COMPARE_FAMILIES: dict[str, Callable[[], Sinusoid | HierarchicalLinear]] = {"sinusoid": lambda: Sinusoid(noise_std=0.1), "linear": lambda: HierarchicalLinear(dim=1)}
COMPARE_METHODS = ("bayes", *BASELINES, "ensemble")
# (inner_lr, outer lr): the published setting first (MAML: 0.01 / 1e-3; Reptile here: 0.02 / 1e-3)
SWEEP = {"maml": [(0.01, 1e-3), (0.001, 1e-3), (0.001, 3e-3)],
         "reptile": [(0.02, 1e-3), (0.005, 1e-3), (0.005, 3e-3)]}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _baseline(name: str, family, inner_lr: float):
    return BASELINES[name](x_dim=family.x_dim, y_dim=family.y_dim, hidden=(40, 40), inner_lr=inner_lr)


def _sweep(name: str, family, *, seconds: float, seed: int, device) -> tuple[dict, list[dict]]:
    """Pick (inner_lr, lr) by validation NLL at K=5 after a short run; returns the choice and the trials."""
    val = {5: family.sample(200, shots=5, num_query=50, generator=torch.Generator().manual_seed(seed + 777))}
    trials = []
    for inner_lr, lr in SWEEP["reptile" if name == "reptile" else "maml"]:
        learner = _baseline(name, family, inner_lr).fit(family, 10**9, max_time=seconds, lr=lr, seed=seed,
                                                         device=device, progress=False)
        nll = evaluate(learner, val, name=name, metrics=("nll",), oracle=False).summary[0]["nll"]
        trials.append({"inner_lr": inner_lr, "lr": lr, "val_nll": nll if nll == nll else float("inf")})
        _log(f"  sweep {name}: inner_lr={inner_lr} lr={lr} -> validation NLL {nll:.3f}")
    best = min(trials, key=lambda t: t["val_nll"])
    return {"inner_lr": best["inner_lr"], "lr": best["lr"]}, trials


def _tune(name: str, family, *, seconds: float, trial_seconds: float, seed: int, device) -> tuple[dict, list[dict]]:
    """An Optuna study (Gaussian-process sampler) of ``seconds`` over the learning rate, tasks per step and,
    for the MAML family, the inner step size; each trial trains ``trial_seconds`` and is scored by the
    validation NLL at K=5 (the tasks the fixed sweep uses). The first trial runs the method's defaults."""
    import optuna

    from ..tuning.space import Param

    val = {5: family.sample(200, shots=5, num_query=50, generator=torch.Generator().manual_seed(seed + 777))}
    params = [Param("train", "lr", 1e-4, 1e-2, log=True), Param("train", "tasks_per_step", choices=(8, 16, 32, 64))]
    default_lr = BayesLearner.default_lr if name == "bayes" else MetaLearner.default_lr  # what lr=None trains at
    defaults: dict[str, Any] = {"train.lr": default_lr, "train.tasks_per_step": TrainConfig().tasks_per_step}
    if name != "bayes":
        params.append(Param("model", "inner_lr", 1e-3, 1e-1, log=True))
        defaults["model.inner_lr"] = SWEEP["reptile" if name == "reptile" else "maml"][0][0]

    def objective(trial) -> float:
        v = {p.key: p.suggest(trial) for p in params}
        learner = amortized_learner(family.x_dim, family.y_dim) if name == "bayes" else \
            _baseline(name, family, v["model.inner_lr"])
        learner.fit(family, 10**9, max_time=trial_seconds, lr=v["train.lr"], tasks_per_step=v["train.tasks_per_step"],
                    seed=seed, device=device, progress=False)
        nll = evaluate(learner, val, name=name, metrics=("nll",), oracle=False).summary[0]["nll"]
        _log(f"  tune {name}: {v} -> validation NLL {nll:.3f}")
        return nll  # nan: Optuna records a failed trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notices
        study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=seed))
    study.enqueue_trial(defaults)
    study.optimize(objective, timeout=seconds, catch=(FloatingPointError, ValueError, RuntimeError))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"tuning {name}: no trial finished in {seconds} s (trials of {trial_seconds} s)")
    best = min(done, key=lambda t: float(t.value or 0.0)).params
    trials = [{**t.params, "val_nll": t.value, "state": t.state.name} for t in study.trials]
    chosen = {"lr": best["train.lr"], "tasks_per_step": best["train.tasks_per_step"]}
    if name != "bayes":
        chosen["inner_lr"] = best["model.inner_lr"]
    return chosen, trials


def _train(method: str, family, *, budget: float, seed: int, device, settings: dict):
    """``(learner meta-trained for budget seconds, its tasks per step)``, with the swept or tuned settings."""
    learner: MetaLearner | Ensemble
    s = settings.get("maml" if method == "ensemble" else method, {})
    tasks_per_step = s.get("tasks_per_step", TrainConfig().tasks_per_step)  # untuned: the one default
    if method == "bayes":
        learner, options = amortized_learner(family.x_dim, family.y_dim), {k: s[k] for k in ("lr",) if k in s}
    else:
        options = {"lr": s["lr"]}
        if method == "ensemble":
            learner = Ensemble(lambda: _baseline("maml", family, s["inner_lr"]), n=5)
        else:
            learner = _baseline(method, family, s["inner_lr"])
    learner.fit(family, 10**9, max_time=budget, tasks_per_step=tasks_per_step, seed=seed, device=device, progress=False,
                **options)
    return learner, tasks_per_step


def _throughput(learner, tasks_per_step: int) -> float:
    histories = learner.history.values() if isinstance(learner.history, dict) else [learner.history]
    return sum(h.step[-1] * tasks_per_step for h in histories) / sum(h.time[-1] for h in histories)


def compare_family(family_name: str, *, methods, budget: float, sweep_seconds: float, num_tasks: int, seed: int,
                   device, tune_seconds: float = 0.0) -> tuple[Evaluation, dict]:
    family = COMPARE_FAMILIES[family_name]()
    tests = make_test_sets(family, (1, 5, 10), num_tasks=num_tasks, num_query=100, seed=1)
    settings: dict[str, dict] = {}
    meta: dict[str, Any] = {"family": repr(family), "budget_seconds": budget, "methods": {}}
    tuned = {"maml" if m == "ensemble" else m for m in methods}
    for name in sorted(tuned if tune_seconds else tuned & set(BASELINES)):
        t0 = time.perf_counter()
        if tune_seconds:  # every method, the Bayesian learner too, gets the same tuning budget
            settings[name], trials = _tune(name, family, seconds=tune_seconds, trial_seconds=sweep_seconds, seed=seed,
                                           device=device)
        else:
            settings[name], trials = _sweep(name, family, seconds=sweep_seconds, seed=seed, device=device)
        meta["methods"].setdefault(name, {})["tune" if tune_seconds else "sweep"] = {
            "trials": trials, "chosen": settings[name], "seconds": time.perf_counter() - t0}
    evals = [evaluate(family.oracle_predict, tests, name="oracle",
                      oracle=False, seed=seed)]  # its own gap is zero; no need to compute the oracle twice
    for method in methods:
        _log(f"{family_name}: training {method} for {budget:.0f} s ...")
        learner, tasks_per_step = _train(method, family, budget=budget, seed=seed, device=device, settings=settings)
        info = meta["methods"].setdefault(method, {})
        info.update(tasks_per_second=_throughput(learner, tasks_per_step), tasks_per_step=tasks_per_step,
                    settings=settings.get("maml" if method == "ensemble" else method, {}))
        _log(f"{family_name}: evaluating {method} ...")
        evals.append(evaluate(learner, tests, name=method, oracle=family, seed=seed, device=device))
    return Evaluation.concat(evals), meta


def maml_classic(*, budget: float = 150.0, seed: int = 0, device="cpu", num_tasks: int = 1000) -> dict:
    """The MAML paper's sinusoid: noise-free, K=10, 2x40 ReLU net, MSE loss, meta-batch 25, Adam 1e-3."""
    family = Sinusoid(noise_std=0.0)
    maml = MAML(x_dim=1, y_dim=1, hidden=(40, 40), inner_steps=1, inner_lr=0.01, noise="mse")
    maml.fit(family, 10**9, max_time=budget, tasks_per_step=25, lr=1e-3, seed=seed, device=device, progress=False,
             max_points=20, min_shots=10, max_shots=10)
    test = family.sample(num_tasks, shots=10, num_query=100, generator=torch.Generator().manual_seed(2024))
    out = {"budget_seconds": budget, "train_steps": maml.history.step[-1]}
    for steps in (0, 1, 10):
        x_query, y_query, _ = test.query
        pred = maml.adapt(test, steps=steps).predict(x_query.to(maml.device))
        out[f"mse_after_{steps}_steps"] = float(((pred.mean.cpu() - y_query) ** 2).mean())
    return out


def vectorisation_speed(*, tasks_per_step: int = 25, repeats: int = 20, seed: int = 0, device="cpu") -> dict:
    """Tasks/s of the MAML training step: ``vmap`` over tasks vs a per-task loop of the same math."""
    torch.manual_seed(seed)
    family = Sinusoid(noise_std=0.1)
    maml = MAML(x_dim=1, y_dim=1, hidden=(40, 40)).to(device)
    b = family.sample(tasks_per_step, shots=10, num_query=10, generator=torch.Generator().manual_seed(seed)).to(device)
    x_query, y_query, _ = b.query
    x, y = torch.cat([b.x_support, x_query], 1), torch.cat([b.y_support, y_query], 1)
    support = torch.zeros(x.shape[:2], dtype=torch.bool, device=device)
    support[:, :10] = True
    out = {}
    for name, fn in (("vectorised", maml.meta_loss), ("loop", maml.meta_loss_loop)):
        fn(x, y, support, ~support).backward()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            maml.net.zero_grad()
            fn(x, y, support, ~support).backward()
        if device != "cpu" and torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_tasks_per_second"] = repeats * tasks_per_step / (time.perf_counter() - t0)
    out["speedup"] = out["vectorised_tasks_per_second"] / out["loop_tasks_per_second"]
    return out


def format_compare(ev: Evaluation) -> str:
    """Markdown: NLL ± s.e., gap, MSE, CRPS, coverage, calibration error, adaptation time."""
    header = ["method", "K", "NLL", "gap to oracle", "MSE", "CRPS", "cov90", "cal.err", "adapt µs/task"]
    return markdown_table(header, [
        [r["method"], r["shots"], plus_minus(r, "nll"), plus_minus(r, "gap"), f"{r['mse']:.3f}", f"{r['crps']:.3f}",
         f"{r['coverage_90']:.3f}", f"{r['calibration_error']:.3f}",
         f"{r['adapt_us_per_task'] + r['predict_us_per_task']:.0f}"] for r in ev.summary])


def run_compare(*, families=("sinusoid", "linear"), methods=COMPARE_METHODS, budget: float = 300.0,
                sweep_seconds: float = 45.0, classic_budget: float = 150.0, num_tasks: int = 1000,
                out_dir="bench_out/compare", seed: int = 0, device="cpu", tune_seconds: float = 0.0) -> dict:
    """Run the comparison; writes ``results.json``, ``eval_{family}.csv`` and comparison plots."""
    unknown = sorted(set(families) - set(COMPARE_FAMILIES)) + sorted(set(methods) - set(COMPARE_METHODS))
    if unknown:
        raise ValueError(f"unknown family or method {unknown}; families: {list(COMPARE_FAMILIES)}, "
                         f"methods: {list(COMPARE_METHODS)}")
    if tune_seconds < 0:
        raise ValueError(f"tune_seconds must be >= 0 (0: the fixed learning-rate sweep); got {tune_seconds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "compare", "budget_seconds": budget, "sweep_seconds": sweep_seconds,
                              "tune_seconds": tune_seconds,
              "torch_threads": torch.get_num_threads(), "families": {}}
    tables = []
    for fam in families:
        ev, meta = compare_family(fam, methods=list(methods), budget=budget, sweep_seconds=sweep_seconds,
                                  num_tasks=num_tasks, seed=seed, device=device, tune_seconds=tune_seconds)
        ev.to_csv(out / f"eval_{fam}.csv")
        plot_method_comparison(ev).savefig(out / f"comparison_{fam}.png", dpi=100)
        plot_calibration_curve(ev, shots=[1, 5]).savefig(out / f"calibration_{fam}.png", dpi=100)
        result["families"][fam] = {**meta, "summary": ev.summary}
        tables.append(f"### {fam} ({meta['family']}), {budget:.0f} s of training per method\n\n{format_compare(ev)}")
    if classic_budget:
        _log("classic noise-free MAML sinusoid ...")
        result["maml_classic"] = maml_classic(budget=classic_budget, seed=seed, device=device, num_tasks=num_tasks)
    result["vectorisation"] = vectorisation_speed(seed=seed, device=device)
    atomic_write_text(json.dumps(result, indent=1), out / "results.json")
    result["tables"] = tables
    return result
