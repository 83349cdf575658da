"""Continual meta-learning benchmark: forgetting on a drifting sinusoid, with and without replay.

A three-phase stream (:func:`~bayesmeta.tasks.drifting_sinusoid`: amplitudes and inputs move from
phase to phase) trains each learner three ways at the same number of steps: plainly through the
phases ("no replay"), through the phases with a :class:`~bayesmeta.ReplayBuffer` ("replay"), and
on all phases at once ("joint", the upper bound). After each phase every phase's test tasks are
scored (5-shot NLL). Forgetting = rise of phase 1's NLL from the end of phase 1 to the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..baselines import MAML
from ..diagnostics.html_report import report
from ..diagnostics.plots import plot_forgetting
from ..evaluation.continual import ContinualResult, continual_evaluation, forgetting_table
from ..inference.replay import ReplayBuffer
from ..io import atomic_write_text
from ..learners import MetaLearner
from ..tasks.phases import drifting_sinusoid
from .sinusoid import amortized_learner

__all__ = ["CONTINUAL_METHODS", "run_continual"]

CONTINUAL_METHODS: dict[str, Callable[[], MetaLearner]] = {"bayes": amortized_learner, "maml": lambda: MAML(x_dim=1, y_dim=1)}
ARMS = ("no replay", "replay", "joint")


def run_continual(*, methods=None, steps_per_phase: int = 1000, phases: int = 3, capacity: int = 1000,
                  fraction: float = 0.5, shots=(5,), num_tasks: int = 200, out_dir="bench_out/continual",
                  seed: int = 0, device="cpu", progress: bool = True) -> dict:
    """Run every method x arm; writes ``results.json`` (after each arm), ``plots/forgetting_<method>.png`` and
    ``report.html``."""
    methods = list(CONTINUAL_METHODS) if methods is None else list(methods)
    unknown = sorted(set(methods) - set(CONTINUAL_METHODS))
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or methods}; choose from {list(CONTINUAL_METHODS)}")
    ReplayBuffer(capacity, fraction)  # bad settings fail before any training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stream = drifting_sinusoid(phases, steps_per_phase)
    results: dict[str, list[ContinualResult]] = {}
    tables, figures = [], {}
    for method in methods:
        for arm in ARMS:
            torch.manual_seed(seed)  # the same initial weights in every arm
            learner = CONTINUAL_METHODS[method]()
            replay = ReplayBuffer(capacity, fraction) if arm == "replay" else None
            r = continual_evaluation(learner, stream, replay=replay, joint=arm == "joint", shots=shots,
                                     num_tasks=num_tasks, test_seed=seed + 1, name=arm, seed=seed, device=device,
                                     progress=progress)
            results.setdefault(method, []).append(r)
            _write(out, results, stream, capacity, fraction, shots, num_tasks, seed)
        tables.append(f"### {method}\n\n" + forgetting_table(results[method]))
        figures[f"forgetting_{method}"] = plot_forgetting(results[method],
                                                          title=f"{method}: forgetting on a drifting sinusoid")
    summary = {m: _summary(rs) for m, rs in results.items()}
    info = {f"{m}: forgetting without / with replay": f"{s['forgetting_no_replay']:+.3f} / {s['forgetting_replay']:+.3f}"
            for m, s in summary.items()}
    report(out, figures=figures, info={"stream": repr(stream), **info}, title="bayesmeta: continual meta-learning")
    return {"tables": tables, "summary": summary, "results": {m: [r.to_dict() for r in rs] for m, rs in results.items()}}


def _summary(rs: list[ContinualResult]) -> dict:
    by = {r.name: r for r in rs}
    plain, replay = by["no replay"], by["replay"]
    return {"forgetting_no_replay": plain.forgetting, "forgetting_replay": replay.forgetting,
            "forgetting_ratio": replay.forgetting / plain.forgetting if plain.forgetting > 0 else float("nan"),
            "final_no_replay": plain.final, "final_replay": replay.final, "final_joint": by["joint"].final,
            "final_difference": replay.final - plain.final}


def _write(out: Path, results, stream, capacity, fraction, shots, num_tasks, seed) -> None:
    payload = {"stream": repr(stream), "options": {"steps_per_phase": stream.steps_per_phase, "capacity": capacity,
                                                    "fraction": fraction, "shots": list(shots),
                                                    "num_tasks": num_tasks, "seed": seed},
               "results": {m: [r.to_dict() for r in rs] for m, rs in results.items()},
               "summary": {m: _summary(rs) for m, rs in results.items() if len(rs) == len(ARMS)}}
    atomic_write_text(json.dumps(payload, indent=1), out / "results.json")
