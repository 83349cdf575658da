"""Sinusoid benchmark: amortized Bayesian learners against the Bayes oracle.

Every variant meta-trains ``LatentCodeRegression`` on ``Sinusoid(noise_std=0.1)`` for the same
wall-clock budget, then predicts on the same fixed test tasks (shots 1, 5, 10; 100 query points
each). The table reports NLL, the oracle's NLL, the gap (mean ± s.e. over tasks), MSE, 90 %
coverage, calibration error, adaptation and prediction time per task, and ESS / Pareto-k for
importance-corrected rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..evaluation import coverages, mean_se, task_mse, task_nll
from ..learners import BayesLearner
from ..models import LatentCodeRegression
from ..tasks import Sinusoid

__all__ = ["SINUSOID_VARIANTS", "evaluate_on_family", "make_test_sets", "run_sinusoid", "format_table"]

# name -> (learner options, prediction methods evaluated)
SINUSOID_VARIANTS = {
    "default": ({}, ("guide", "importance")),  # BayesLearner(model) as a user gets it
    "elbo-diagonal": ({"objective": "elbo", "guide": "diagonal"}, ("guide", "importance")),
    "iwae-diagonal": ({"objective": "iwae", "guide": "diagonal"}, ("guide", "importance")),
    "iwae-flow": ({"objective": "iwae", "guide": "flow"}, ("guide", "importance")),
    "dreg-diagonal": ({"objective": "iwae-dreg", "guide": "diagonal"}, ("guide", "importance")),
    "dreg-flow": ({"objective": "iwae-dreg", "guide": "flow"}, ("guide", "importance")),
}


def _concat_predictions(chunks: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def make_test_sets(family, *, shots=(1, 5, 10), num_tasks=1000, num_query=100, seed=1, chunk=100):
    """Fixed test tasks per shot count and the oracle's per-task NLL on them (if it has one)."""
    sets = {}
    for k in shots:
        test = family.sample(num_tasks, shots=k, num_query=num_query,
                             generator=torch.Generator().manual_seed(seed * 1000 + k))
        oracle = None
        if hasattr(family, "oracle_predict"):
            oracle = torch.cat([
                task_nll(family.oracle_predict(*test[i : i + chunk].support[:2], test[i : i + chunk].x_query),
                         test.y_query[i : i + chunk])
                for i in range(0, num_tasks, chunk)
            ])
        sets[k] = (test, oracle)
    return sets


@torch.no_grad()
def _score(learner, test, method, *, seed, chunk, device, progress=False) -> tuple[dict, float, float]:
    parts, t_adapt, t_pred = [], 0.0, 0.0
    starts = range(0, len(test), chunk)
    for i in tqdm(starts, desc=f"evaluating ({method})", disable=not progress, leave=False):
        b = test[i : i + chunk].to(device)
        t0 = time.perf_counter()
        post = learner.adapt(b)
        t1 = time.perf_counter()
        pred = post.predict(b.x_query, method=method, seed=seed)
        t2 = time.perf_counter()
        t_adapt, t_pred = t_adapt + t1 - t0, t_pred + t2 - t1
        cov = coverages(pred, b.y_query)
        part = {"nll": task_nll(pred, b.y_query).cpu(), "mse": task_mse(pred, b.y_query).cpu(),
                "cov90": torch.tensor([cov[0.9] * len(b)]),
                "cal": torch.tensor([sum(abs(c - lv) for lv, c in cov.items()) / len(cov) * len(b)])}
        if pred.ess is not None:
            part["ess"], part["pareto_k"] = pred.ess.cpu(), pred.pareto_k.cpu()
        parts.append(part)
    return _concat_predictions(parts), t_adapt, t_pred


def evaluate_on_family(learner, family, *, shots=(1, 5, 10), num_tasks=1000, num_query=100,
                       methods=("importance",), seed=1, chunk=100, device="cpu", test_sets=None,
                       progress=False) -> list[dict]:
    """Score ``learner`` (and the family's oracle) on fixed test tasks; one row per shots x method."""
    if test_sets is None:
        test_sets = make_test_sets(family, shots=shots, num_tasks=num_tasks, num_query=num_query, seed=seed)
    rows = []
    for k, (test, oracle_nll) in test_sets.items():
        n = len(test)
        for method in methods:
            res, t_adapt, t_pred = _score(learner, test, method, seed=seed, chunk=chunk, device=device,
                                          progress=progress)
            row = {"shots": k, "method": method, "nll": mean_se(res["nll"]), "mse": mean_se(res["mse"]),
                   "coverage90": float(res["cov90"].sum()) / n, "calibration_error": float(res["cal"].sum()) / n,
                   "adapt_us_per_task": 1e6 * t_adapt / n, "predict_us_per_task": 1e6 * t_pred / n}
            if oracle_nll is not None:
                row.update(oracle_nll=mean_se(oracle_nll), gap=mean_se(res["nll"] - oracle_nll))
            if "ess" in res:
                k_ = res["pareto_k"]
                row.update(ess_median=float(res["ess"].median()), pareto_k_median=float(k_.median()),
                           pareto_k_frac_above_0_7=float((k_ > 0.7).double().mean()))
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows."""
    head = ("| variant | K | predict | NLL | oracle | gap ± s.e. | MSE | cov90 | cal.err | adapt µs | "
            "predict µs | ESS med | k>0.7 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ess = f"{r['ess_median']:.0f}" if "ess_median" in r else "-"
        kk = f"{r['pareto_k_frac_above_0_7']:.2f}" if "pareto_k_median" in r else "-"
        lines.append(
            f"| {r.get('variant', '')} | {r['shots']} | {r['method']} | {r['nll'][0]:.3f} | "
            f"{r['oracle_nll'][0]:.3f} | {r['gap'][0]:.3f} ± {r['gap'][1]:.3f} | {r['mse'][0]:.3f} | "
            f"{r['coverage90']:.3f} | {r['calibration_error']:.3f} | {r['adapt_us_per_task']:.0f} | "
            f"{r['predict_us_per_task']:.0f} | {ess} | {kk} |"
        )
    return "\n".join(lines)


def run_sinusoid(*, variants=None, max_time: float = 540.0, steps: int = 1_000_000, shots=(1, 5, 10),
                 num_tasks: int = 1000, out_dir="bench_out/sinusoid", seed: int = 0,
                 progress: bool = True, device="cpu") -> dict:
    """Train each variant for ``max_time`` seconds and evaluate it; writes ``results.json``."""
    variants = list(SINUSOID_VARIANTS) if variants is None else list(variants)
    unknown = set(variants) - set(SINUSOID_VARIANTS)
    if unknown:
        raise ValueError(f"unknown sinusoid variant(s) {sorted(unknown)}; choose from {list(SINUSOID_VARIANTS)}")
    family = Sinusoid(noise_std=0.1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, meta = [], {}
    test_sets = make_test_sets(family, shots=shots, num_tasks=num_tasks)
    for name in variants:
        options, methods = SINUSOID_VARIANTS[name]
        learner = BayesLearner(LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=8), **options)
        learner.fit(family, steps=steps, max_time=max_time, device=device, seed=seed, progress=progress)
        h = learner.history
        meta[name] = {"train_steps": h.step[-1], "train_seconds": h.time[-1], "final_loss": h.loss[-1],
                      "options": options}
        for r in evaluate_on_family(learner, family, methods=methods, device=device, test_sets=test_sets,
                                    progress=progress):
            rows.append({"variant": name, **r})
        learner.save(out / f"{name}.pt")
    result = {"benchmark": "sinusoid", "family": repr(family), "max_time": max_time, "num_tasks": num_tasks,
              "variants": meta, "rows": rows, "torch_threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result
