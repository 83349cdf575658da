"""Sinusoid benchmark: amortized Bayesian learners against the Bayes oracle.

Every variant meta-trains ``LatentCodeRegression`` on ``Sinusoid(noise_std=0.1)`` for the same
wall-clock budget, then predicts on the same fixed test tasks (shots 1, 5, 10; 100 query points
each). The table reports NLL, the oracle's NLL, the gap (mean ± s.e. over tasks), MSE, 90 %
coverage, calibration error, adaptation and prediction time per task, and ESS / Pareto-k for
importance-corrected rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..evaluation import Evaluation, evaluate, make_test_sets
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models import LatentCodeRegression
from ..tasks import Sinusoid

__all__ = ["SINUSOID_VARIANTS", "amortized_learner", "evaluate_on_family", "make_test_sets", "run_sinusoid"]

# name -> (learner options, prediction methods evaluated)
SINUSOID_VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "default": ({}, ("guide", "importance")),  # BayesLearner(model) as a user gets it (rws, diagonal)
    "rws-flow": ({"objective": "rws", "guide": "flow"}, ("guide", "importance")),
    "rws-wake-diagonal": ({"objective": "rws-wake", "guide": "diagonal"}, ("guide", "importance")),
    "rws-sleep-diagonal": ({"objective": "rws-sleep", "guide": "diagonal"}, ("guide", "importance")),
    "elbo+sleep-diagonal": ({"objective": "elbo+sleep", "guide": "diagonal"}, ("guide", "importance")),
    "elbo-diagonal": ({"objective": "elbo", "guide": "diagonal"}, ("guide", "importance")),
    "iwae-diagonal": ({"objective": "iwae", "guide": "diagonal"}, ("guide", "importance")),
    "iwae-flow": ({"objective": "iwae", "guide": "flow"}, ("guide", "importance")),
    "dreg-diagonal": ({"objective": "iwae-dreg", "guide": "diagonal"}, ("guide", "importance")),
    "dreg-flow": ({"objective": "iwae-dreg", "guide": "flow"}, ("guide", "importance")),
}


def amortized_learner(x_dim: int = 1, y_dim: int = 1, **options) -> BayesLearner:
    """The amortized learner of the benchmarks and the demo: ``LatentCodeRegression`` with an
    8-dimensional task code and the library's defaults (``options`` go to :class:`BayesLearner`)."""
    return BayesLearner(LatentCodeRegression(x_dim=x_dim, y_dim=y_dim, latent_dim=8), **options)


def evaluate_on_family(learner, family, *, name: str = "default", shots=(1, 5, 10), num_tasks=1000,
                       num_query=100, methods=("importance",), seed=1, chunk=100, device="cpu", test_sets=None,
                       progress=False) -> Evaluation:
    """Score ``learner`` with each prediction method on fixed test tasks, with the family's oracle.

    Rows are named ``"{name}/{method}"``.
    """
    if test_sets is None:
        test_sets = make_test_sets(family, shots, num_tasks=num_tasks, num_query=num_query, seed=seed)
    return Evaluation.concat([
        evaluate(learner, test_sets, name=f"{name}/{method}", oracle=family, seed=seed, chunk=chunk, device=device,
                 predict_options={"method": method, "seed": seed}, progress=progress)
        for method in methods
    ])


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
    results, meta = [], {}
    test_sets = make_test_sets(family, shots, num_tasks=num_tasks)
    for name in variants:
        options, methods = SINUSOID_VARIANTS[name]
        learner = amortized_learner(**options)
        learner.fit(family, steps=steps, max_time=max_time, device=device, seed=seed, progress=progress)
        h = learner.history
        meta[name] = {"train_steps": h.step[-1], "train_seconds": h.time[-1], "final_loss": h.loss[-1],
                      "options": options}
        results.append(evaluate_on_family(learner, family, name=name, methods=methods, device=device,
                                          test_sets=test_sets, progress=progress))
        learner.save(out / f"{name}.pt")
    ev = Evaluation.concat(results)
    ev.to_csv(out / "eval.csv")
    result = {"benchmark": "sinusoid", "family": repr(family), "max_time": max_time, "num_tasks": num_tasks,
              "variants": meta, "summary": ev.summary, "torch_threads": torch.get_num_threads()}
    atomic_write_text(json.dumps(result, indent=1), out / "results.json")
    return {**result, "evaluation": ev}
