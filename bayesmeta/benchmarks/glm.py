"""Binary and count outcomes: hierarchical GLMs with the library's defaults against their Bayes oracles.

Each case meta-trains the shipped GLM (``HierarchicalLogisticRegression`` or
``HierarchicalPoissonRegression``, default ``BayesLearner``: diagonal guide, mean-field ELBO,
importance-corrected prediction) on the matching task family (an endless stream of fresh tasks)
for ``max_time`` seconds, then scores it on fresh tasks (shots 1, 5, 10; 100 query points each)
against the grid-integration oracle: NLL gap, ECE and accuracy (binary), coverage by the
randomised PIT (counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..evaluation import Evaluation, evaluate, make_test_sets
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models import HierarchicalLogisticRegression, HierarchicalPoissonRegression
from ..tasks import HierarchicalLogistic, HierarchicalPoisson

__all__ = ["GLM_CASES", "run_glm"]

# name -> (family factory, model factory)
GLM_CASES = {
    "logistic": (HierarchicalLogistic, lambda: HierarchicalLogisticRegression(x_dim=1)),
    "poisson": (HierarchicalPoisson, lambda: HierarchicalPoissonRegression(x_dim=1)),
}


def _prior(model) -> dict:
    prior = model.prior_distribution()  # the data's units
    return {"loc": prior.loc.tolist(), "sd": prior.covariance_matrix.diagonal().sqrt().tolist()}


def run_glm(*, cases=None, max_time: float = 300.0, num_tasks: int = 1000, out_dir="bench_out/glm", seed: int = 0,
            progress: bool = True, device="cpu") -> dict:
    """Train each case for ``max_time`` seconds with the defaults and score it; writes ``results.json``."""
    cases = list(GLM_CASES) if cases is None else list(cases)
    unknown = sorted(set(cases) - set(GLM_CASES))
    if unknown or not cases:
        raise ValueError(f"unknown GLM case(s) {unknown or cases}; choose from {list(GLM_CASES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluations: list[Evaluation] = []
    meta: dict = {}
    for name in cases:  # results.json is rewritten after each case
        make_family, make_model = GLM_CASES[name]
        family = make_family()
        torch.manual_seed(seed)
        learner = BayesLearner(make_model())
        learner.fit(family, steps=10**9, max_time=max_time, seed=seed, device=device, progress=progress)
        h = learner.history
        with torch.no_grad():
            meta[name] = {"steps": h.step[-1], "train_seconds": h.time[-1], "learned_prior": _prior(learner.model),
                          "true_prior": {"loc": [family.slope[0], family.intercept[0]],
                                         "sd": [family.slope[1], family.intercept[1]]}}
        sets = make_test_sets(family, (1, 5, 10), num_tasks=num_tasks, seed=seed + 1)
        evaluations.append(evaluate(learner, sets, name=name, oracle=family, seed=seed + 1, device=learner.device,
                                    progress=progress))
        ev = Evaluation.concat(evaluations)
        result = {"cases": meta, "summary": ev.summary,
                  "options": {"max_time": max_time, "num_tasks": num_tasks, "seed": seed}}
        atomic_write_text(json.dumps(result, indent=1, default=str), out / "results.json")
    return {**result, "evaluation": ev}
