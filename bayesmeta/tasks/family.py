"""Base class of synthetic task families."""

from __future__ import annotations

import torch

from .batch import TaskBatch

__all__ = ["TaskFamily"]


class TaskFamily:
    """A distribution over tasks that can be sampled without end.

    Subclasses implement :meth:`sample_params` and :meth:`sample_inputs` and
    :meth:`simulate`; :meth:`sample` assembles a :class:`TaskBatch`.
    """

    x_dim: int = 1
    y_dim: int = 1
    episodic: bool = False  # classification episodes: ``max_points`` examples per class (see ``Episodes``)

    def family_at(self, step: int) -> TaskFamily:
        """The family training step ``step`` (from 1) draws from: this one (a changing stream moves on)."""
        return self

    def steps_note(self, steps: int) -> str | None:
        """A warning for a fit of ``steps`` steps on this family, or ``None`` (a changing stream that would
        not reach its last phase says so)."""
        return None

    def sample_params(self, num_tasks: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample_inputs(self, num_tasks: int, num_points: int, generator: torch.Generator):
        raise NotImplementedError

    def simulate(self, params, x, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def mean_function(self, params, x) -> torch.Tensor:
        """Noise-free function values ``[T, N, E]`` at ``x`` ``[T, N, D]``."""
        raise NotImplementedError

    def sample(
        self,
        num_tasks: int,
        shots: int,
        num_query: int = 0,
        generator: torch.Generator | None = None,
    ) -> TaskBatch:
        """Draw ``num_tasks`` tasks with ``shots`` support and ``num_query`` query points each.

        Reproducible from ``generator`` (a CPU ``torch.Generator``); the same generator state
        gives the same tasks on every machine.
        """
        for name, v, low in (("num_tasks", num_tasks, 1), ("shots", shots, 0), ("num_query", num_query, 0)):
            if not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}; got {v!r}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        params = self.sample_params(num_tasks, g)
        x = self.sample_inputs(num_tasks, shots + num_query, g)  # [T, S+Q, D]
        y = self.simulate(params, x, g)  # [T, S+Q, E]
        xs, xq = x[:, :shots], x[:, shots:]
        ys, yq = y[:, :shots], y[:, shots:]
        ones = lambda n: torch.ones(num_tasks, n, dtype=torch.bool)  # noqa: E731
        if num_query:
            return TaskBatch(xs, ys, ones(shots), xq, yq, ones(num_query), params=params)
        return TaskBatch(xs, ys, ones(shots), params=params)
