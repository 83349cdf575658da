"""Task distributions that change during training: phases of families, and their joint mixture.

A continual meta-learner sees a *stream* of tasks whose distribution moves: first tasks of one
kind, then another. :class:`Phases` is such a stream for the one training loop: at training step
``s`` the loop draws its tasks from :meth:`Phases.family_at` ``(s)``. :class:`TaskMixture` draws
every task from a randomly chosen family: the joint distribution of all phases (what joint
training, the upper bound of continual learning, trains on).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .batch import TaskBatch
from .family import TaskFamily

__all__ = ["Phases", "TaskMixture", "drifting_sinusoid"]


def _check_families(families: Sequence, name: str) -> list[TaskFamily]:
    families = list(families)
    if not families:
        raise ValueError(f"{name}: need at least one task family")
    for i, f in enumerate(families):
        if not isinstance(f, TaskFamily):
            raise TypeError(f"{name}: families[{i}] must be a TaskFamily; got {type(f).__name__}")
    first = families[0]
    for i, f in enumerate(families[1:], 1):
        if (f.x_dim, f.y_dim) != (first.x_dim, first.y_dim):
            raise ValueError(f"{name}: families[{i}] has x_dim={f.x_dim}, y_dim={f.y_dim}; families[0] has "
                             f"x_dim={first.x_dim}, y_dim={first.y_dim} (every family must have the same shapes)")
        if getattr(f, "episodic", False) != getattr(first, "episodic", False):
            raise ValueError(f"{name}: families[{i}] and families[0] disagree on being episodic (classification)")
        if getattr(f, "ways", None) != getattr(first, "ways", None):
            raise ValueError(f"{name}: families[{i}] has ways={getattr(f, 'ways', None)}; families[0] has "
                             f"ways={getattr(first, 'ways', None)} (episodes of every phase need the same classes)")
    return families


def _copy_shape(target, families: list[TaskFamily]) -> None:
    """Shapes a learner reads from its source: sizes, episodic and classes per episode."""
    first = families[0]
    target.x_dim, target.y_dim = first.x_dim, first.y_dim
    target.episodic = getattr(first, "episodic", False)
    if hasattr(first, "ways"):
        target.ways = first.ways


class TaskMixture(TaskFamily):
    """Each task from one of ``families``, chosen at random with probabilities ``weights``.

    ``sample`` returns the tasks in random order; ``params["family"]`` holds each task's family
    index (and any per-task parameter every family has, e.g. a sinusoid's ``amplitude``).

    Example:
        >>> import bayesmeta as bm
        >>> mix = bm.tasks.TaskMixture([bm.tasks.Sinusoid(amplitude=(0.1, 1.0)), bm.tasks.Sinusoid(amplitude=(4, 5))])
        >>> mix.sample(6, shots=3, generator=torch.Generator().manual_seed(0)).params["family"].shape
        torch.Size([6])
    """

    def __init__(self, families: Sequence[TaskFamily], weights: Sequence[float] | None = None) -> None:
        self.families = _check_families(families, "TaskMixture")
        w = torch.ones(len(self.families)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(self.families),) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
                or float(w.sum()) <= 0:
            raise ValueError(f"TaskMixture: weights must be {len(self.families)} finite numbers >= 0 with a "
                             f"positive sum; got {weights!r}")
        self.weights = (w / w.sum()).double()
        _copy_shape(self, self.families)

    def __repr__(self) -> str:
        return f"TaskMixture({self.families!r}, weights={[round(float(w), 4) for w in self.weights]})"

    def sample(self, num_tasks: int, shots: int, num_query: int = 0,
               generator: torch.Generator | None = None) -> TaskBatch:
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1; got {num_tasks!r}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        which = torch.multinomial(self.weights, num_tasks, replacement=True, generator=g)  # [T]
        parts, ids = [], []
        for k, family in enumerate(self.families):
            n = int((which == k).sum())
            if n:
                parts.append(family.sample(n, shots, num_query, generator=g))
                ids.append(torch.full((n,), k))
        order = torch.randperm(num_tasks, generator=g)
        fields = {name: torch.cat([getattr(b, name) for b in parts])[order]
                  for name in ("x_support", "y_support", "mask_support", "x_query", "y_query", "mask_query")
                  if getattr(parts[0], name) is not None}  # no query set when num_query = 0
        params = {"family": torch.cat(ids)[order]}
        for key in set.intersection(*(set(b.params) for b in parts)):
            values = [b.params[key] for b in parts]
            if all(isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[1:] == values[0].shape[1:]
                   for v in values):
                params[key] = torch.cat(values)[order]
            elif not any(isinstance(v, torch.Tensor) for v in values) and all(v == values[0] for v in values):
                params[key] = values[0]  # a setting every family shares
        return TaskBatch(**fields, params=params)


class Phases(TaskFamily):
    """A task distribution that changes in phases: ``families[k]`` for ``steps_per_phase`` steps each.

    Given to ``learner.fit`` (with ``steps = len(families) * steps_per_phase``), training step ``s``
    (from 1) draws its tasks from phase ``(s - 1) // steps_per_phase``; after the last phase the
    stream stays in it. Sampled directly (``phases.sample(...)``, e.g. to evaluate), it is the joint
    distribution :meth:`joint` (each task from a random phase).

    Args:
        families: one task family per phase (same ``x_dim`` / ``y_dim``).
        steps_per_phase: training steps spent in each phase (an int >= 1).

    Example:
        >>> import bayesmeta as bm
        >>> stream = bm.tasks.Phases([bm.tasks.Sinusoid(amplitude=(0.1, 1)), bm.tasks.Sinusoid(amplitude=(2, 3))], 100)
        >>> stream.phase_at(1), stream.phase_at(100), stream.phase_at(101), stream.total_steps
        (0, 0, 1, 200)
    """

    def __init__(self, families: Sequence[TaskFamily], steps_per_phase: int) -> None:
        self.families = _check_families(families, "Phases")
        if not isinstance(steps_per_phase, int) or isinstance(steps_per_phase, bool) or steps_per_phase < 1:
            raise ValueError(f"Phases: steps_per_phase must be an int >= 1; got {steps_per_phase!r}")
        self.steps_per_phase = steps_per_phase
        _copy_shape(self, self.families)

    def __repr__(self) -> str:
        return f"Phases({self.families!r}, steps_per_phase={self.steps_per_phase})"

    def __len__(self) -> int:
        return len(self.families)

    @property
    def total_steps(self) -> int:
        """Steps until the end of the last phase."""
        return len(self.families) * self.steps_per_phase

    def phase_at(self, step: int) -> int:
        """The phase (from 0) of training step ``step`` (from 1)."""
        return min(max(step - 1, 0) // self.steps_per_phase, len(self.families) - 1)

    def family_at(self, step: int) -> TaskFamily:
        """The family training step ``step`` (from 1) draws its tasks from."""
        return self.families[self.phase_at(step)]

    def steps_note(self, steps: int) -> str | None:
        if steps >= self.total_steps:
            return None
        return (f"steps={steps} ends in phase {self.phase_at(steps) + 1} of the {len(self)} phases of this stream "
                f"({self.total_steps} steps); give steps=stream.total_steps to see them all")

    def joint(self) -> TaskMixture:
        """Every phase at once (each task from a uniformly random phase): joint training's stream."""
        return TaskMixture(self.families)

    def sample(self, num_tasks: int, shots: int, num_query: int = 0,
               generator: torch.Generator | None = None) -> TaskBatch:
        return self.joint().sample(num_tasks, shots, num_query, generator=generator)


def drifting_sinusoid(num_phases: int = 3, steps_per_phase: int = 1000, *, noise_std: float = 0.1) -> Phases:
    """Sinusoid tasks whose amplitude and input ranges move phase by phase (a standard continual stream).

    Phase ``k`` of ``n`` draws amplitudes from the ``k``-th of ``n`` equal slices of ``[0.1, 5]`` and
    inputs from a window that slides from ``[-5, -1]`` to ``[1, 5]``: later phases show functions
    (and regions of the input) that earlier ones did not.
    """
    from .sinusoid import Sinusoid

    if not isinstance(num_phases, int) or isinstance(num_phases, bool) or num_phases < 1:
        raise ValueError(f"drifting_sinusoid: num_phases must be an int >= 1; got {num_phases!r}")
    edges = [round(0.1 + 4.9 * k / num_phases, 6) for k in range(num_phases + 1)]
    starts = [round(-5.0 + 6.0 * k / (num_phases - 1), 6) for k in range(num_phases)] if num_phases > 1 else [-5.0]
    width = 4.0 if num_phases > 1 else 10.0
    families = [Sinusoid(noise_std=noise_std, amplitude=(edges[k], edges[k + 1]), x_range=(starts[k], starts[k] + width))
                for k in range(num_phases)]
    return Phases(families, steps_per_phase)
