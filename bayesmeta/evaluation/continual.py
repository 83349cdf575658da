"""Forgetting in continual meta-learning: each phase's test NLL after every phase of training.

:func:`continual_evaluation` meta-trains a learner on a :class:`~bayesmeta.tasks.Phases` stream
(optionally with a :class:`~bayesmeta.ReplayBuffer`, or jointly on all phases at the same steps)
and, at the end of each phase, scores fixed test tasks of *every* phase. The result is a matrix
``nll[i, j]``: NLL on phase ``j``'s tasks after training through phase ``i``. Forgetting of phase
``j`` is how much its NLL rose after it ended: ``nll[-1, j] - nll[j, j]``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..tasks.phases import Phases
from .runner import evaluate, make_test_sets

__all__ = ["ContinualResult", "continual_evaluation", "forgetting_table"]


@dataclass
class ContinualResult:
    """Test NLL of one learner on each phase's tasks after each phase of training.

    Attributes:
        name: the arm's label (e.g. ``"replay"``, ``"no replay"``, ``"joint"``).
        nll: ``[phases trained, phase scored]`` mean NLL over test tasks and ``shots``.
        nll_se: standard errors over tasks of the same.
        steps: the training step at the end of each phase.
        shots: the shot counts averaged over.
        seconds: wall-clock training time (evaluations excluded).
    """

    name: str
    nll: np.ndarray
    nll_se: np.ndarray
    steps: list[int]
    shots: tuple[int, ...]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def forgetting(self) -> float:
        """Rise of phase 1's NLL from the end of phase 1 to the end of training."""
        return float(self.nll[-1, 0] - self.nll[0, 0])

    @property
    def final(self) -> float:
        """The last phase's NLL at the end of training."""
        return float(self.nll[-1, -1])

    def to_dict(self) -> dict:
        return {"name": self.name, "nll": self.nll.tolist(), "nll_se": self.nll_se.tolist(), "steps": self.steps,
                "shots": list(self.shots), "seconds": round(self.seconds, 1), "forgetting": self.forgetting,
                "final": self.final, "notes": self.notes}


def continual_evaluation(learner, stream: Phases, *, replay=None, joint: bool = False, shots=(5,),
                         num_tasks: int = 200, num_query: int = 50, test_seed: int = 1, name: str | None = None,
                         predict_options: dict | None = None, **fit_options) -> ContinualResult:
    """Meta-train ``learner`` through the phases of ``stream``, scoring every phase after each one.

    Args:
        learner: a fresh bayesmeta learner (it is trained here).
        stream: the :class:`~bayesmeta.tasks.Phases` stream; training runs ``stream.total_steps``.
        replay: a :class:`~bayesmeta.ReplayBuffer` (``None``: no replay).
        joint: train on all phases at once (``stream.joint()``) for the same steps instead: the
            upper bound a continual learner is compared with (scored at the same steps).
        shots: shot counts of the test tasks (their NLLs are averaged).
        num_tasks, num_query: test tasks per phase and shot count, query points per task.
        test_seed: seed of the test tasks (the training seed is ``fit_options["seed"]``, default 0).
        name: the arm's label (default from ``replay`` / ``joint``).
        predict_options: keyword arguments of ``posterior.predict`` when scoring.
        **fit_options: options of ``learner.fit`` (``tasks_per_step``, ``lr``, ``progress``, ...);
            ``steps``, ``max_time`` and ``checkpoint_every`` are set here.

    Returns:
        A :class:`ContinualResult`.
    """
    if not isinstance(stream, Phases):
        raise TypeError(f"continual_evaluation: stream must be a bayesmeta.tasks.Phases; got {type(stream).__name__}")
    if joint and replay is not None:
        raise ValueError("continual_evaluation: joint=True trains on every phase at once; replay does not apply")
    fixed = sorted({"steps", "max_time", "checkpoint_every", "checkpoint", "on_checkpoint", "config", "resume",
                    "validation"} & set(fit_options))
    if fixed:
        raise ValueError(f"continual_evaluation: {fixed} cannot be given here (the phases decide the steps and when "
                         "to score; give the other options as keywords)")
    tests = [make_test_sets(f, shots, num_tasks=num_tasks, num_query=num_query, seed=test_seed)
             for f in stream.families]
    rows: list[list[tuple[float, float]]] = []
    steps: list[int] = []
    scoring: list[float] = []
    device = getattr(learner, "device", torch.device("cpu"))
    devices = [device] if torch.device(device).type == "cuda" else []

    def score(step: int, history) -> None:
        start = time.perf_counter()
        with torch.random.fork_rng(devices=devices):  # scoring must not change the training run
            rows.append([_mean_nll(learner, sets, predict_options) for sets in tests])
        steps.append(step)
        scoring.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory(prefix="bayesmeta-continual-") as tmp:
        learner.fit(stream.joint() if joint else stream, stream.total_steps, replay=replay,
                    checkpoint=Path(tmp) / "ck.pt", checkpoint_every=stream.steps_per_phase, on_checkpoint=score,
                    **fit_options)
    if len(rows) != len(stream):  # pragma: no cover - a checkpoint at every phase end, and only there
        raise RuntimeError(f"continual_evaluation: scored {len(rows)} times for {len(stream)} phases")
    h = learner.history
    # the training time: the last step's clock ran through every scoring but the final one
    seconds = (h.time[-1] if h.time else 0.0) - sum(scoring[:-1])
    nll = np.array([[m for m, _ in r] for r in rows])
    se = np.array([[s for _, s in r] for r in rows])
    label = name or ("joint" if joint else "no replay" if replay is None else f"replay ({replay.strategy})")
    return ContinualResult(label, nll, se, steps, tuple(shots), seconds)


def _mean_nll(learner, sets: dict, predict_options: dict | None) -> tuple[float, float]:
    """Mean NLL over shot counts (each a mean over tasks) and its standard error."""
    ev = evaluate(learner, sets, metrics=("nll",), oracle=False, predict_options=predict_options)
    means = [r["nll"] for r in ev.summary]
    ses = [r["nll_se"] for r in ev.summary]
    return float(np.mean(means)), float(np.sqrt(np.sum(np.square(ses))) / len(ses))


def forgetting_table(results: list[ContinualResult]) -> str:
    """A Markdown table: per arm, each phase's NLL at its own end and at the end of training."""
    n = results[0].nll.shape[1]
    head = ("| arm | " + " | ".join(f"phase {j + 1}: end / last" for j in range(n))
            + " | forgetting (phase 1) | final phase |")
    lines = [head, "|---|" + "---:|" * (n + 2)]
    for r in results:
        cells = [f"{r.nll[j, j]:.3f} / {r.nll[-1, j]:.3f}" for j in range(n)]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {r.forgetting:+.3f} | {r.final:.3f} |")
    return "\n".join(lines)
