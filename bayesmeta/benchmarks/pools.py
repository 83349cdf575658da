"""Finite pools benchmark: does a learner trained on a few dozen to a few hundred tasks stay calibrated?

Each case draws a fixed pool of tasks from a family (``M`` tasks x ``N`` points, every point
observed), meta-trains the default amortized learner on it with the library's defaults --
20 % of the pool held out for validation, early stopping, best weights kept -- and scores it on
fresh tasks of the family (shots 1, 5, 10; 100 query points each) against the Bayes oracle.
The last step's weights (from the training checkpoint) are scored on the first ``last_tasks``
of the same test tasks, to show what stopping at the best validation step avoided.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..evaluation import Evaluation, evaluate, make_test_sets
from ..inference.checkpoints import load_checkpoint
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models import LatentCodeRegression
from ..tasks import HierarchicalLinear, Sinusoid
from .sinusoid import amortized_learner

__all__ = ["POOL_CASES", "run_pools"]

# name -> (family factory, pool size M, points per task N)
POOL_CASES = {
    "sinusoid-50": (lambda: Sinusoid(noise_std=0.1), 50, 15),
    "sinusoid-400": (lambda: Sinusoid(noise_std=0.1), 400, 15),
    "linear-100": (lambda: HierarchicalLinear(dim=1), 100, 15),
}


def _subset(sets: dict, n: int) -> dict:
    return {k: b[: min(n, len(b))] for k, b in sets.items()}


def _case(name: str, *, steps: int, num_tasks: int, last_tasks: int, out: Path, seed: int, progress: bool,
          device, model: dict, options: dict) -> tuple[list[Evaluation], dict]:
    make_family, m, n = POOL_CASES[name]
    family = make_family()
    pool = family.sample(m, shots=n, num_query=0, generator=torch.Generator().manual_seed(seed + 123))
    torch.manual_seed(seed)
    learner = amortized_learner(family.x_dim, family.y_dim) if not model else BayesLearner(
        LatentCodeRegression(family.x_dim, family.y_dim, **{"latent_dim": 8, **model}))
    ckpt = out / f"{name}.ckpt.pt"
    learner.fit(pool, steps, seed=seed, device=device, progress=progress, checkpoint=ckpt, **options)
    h = learner.history
    sets = make_test_sets(family, (1, 5, 10), num_tasks=num_tasks, seed=seed + 1)
    kw: dict[str, Any] = {"oracle": family, "seed": seed + 1, "device": learner.device, "progress": progress}
    evs = [evaluate(learner, sets, name=f"{name}/best-validation", **kw)]
    state = load_checkpoint(ckpt, map_location=learner.device)  # the last step's weights
    if last_tasks and h.best_step is not None and h.best_step != state["step"]:
        learner.model.load_state_dict(state["model"])
        assert learner.guide is not None  # the amortized learner has one
        learner.guide.load_state_dict(state["guide"])
        evs.append(evaluate(learner, _subset(sets, last_tasks), name=f"{name}/last-step", **kw))
    meta = {"pool_tasks": m, "points": n, "steps": h.step[-1], "train_seconds": h.time[-1], "best_step": h.best_step,
            "validations": len(h.validation), "notes": h.notes,
            "validation": h.validation}
    return evs, meta


def run_pools(*, cases=None, steps: int = 20_000, num_tasks: int = 1000, last_tasks: int = 200,
              out_dir="bench_out/pools", seed: int = 0, progress: bool = True, device="cpu", model: dict | None = None,
              **options) -> dict:
    """Meta-train on each finite pool with the library's defaults and score on fresh tasks; writes ``results.json``.

    Args:
        cases: names from :data:`POOL_CASES` (default: all).
        steps: training steps (the default learner stops earlier when validation says so).
        num_tasks: fresh test tasks per shot count for the final model.
        last_tasks: test tasks per shot count for the last step's weights (0: skip).
        model: ``LatentCodeRegression`` options instead of the default learner's (e.g.
            ``{"hidden": (64, 64), "latent_dim": 4}``).
        options: further ``fit`` options (e.g. ``weight_decay``), recorded in the results.
    """
    cases = list(POOL_CASES) if cases is None else list(cases)
    unknown = sorted(set(cases) - set(POOL_CASES))
    if unknown or not cases:
        raise ValueError(f"unknown pool case(s) {unknown or cases}; choose from {list(POOL_CASES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluations: list[Evaluation] = []
    meta: dict = {}
    for name in cases:  # results.json is rewritten after each case: a long run keeps what it finished
        evs, meta[name] = _case(name, steps=steps, num_tasks=num_tasks, last_tasks=last_tasks, out=out, seed=seed,
                                progress=progress, device=device, model=dict(model or {}), options=options)
        evaluations += evs
        ev = Evaluation.concat(evaluations)
        result = {"cases": meta, "summary": ev.summary,
                  "options": {"steps": steps, "seed": seed, "model": dict(model or {}), **options}}
        atomic_write_text(json.dumps(result, indent=1, default=str), out / "results.json")
    return {**result, "evaluation": ev}
