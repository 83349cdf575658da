"""What one fit carries besides its options: one object from ``Learner.fit`` down to the training loop.

:class:`~bayesmeta.inference.TrainConfig` says *how* to train (steps, learning rate, batch size,
...); a :class:`FitContext` says what this particular fit is attached to: the checkpoint file and
the state it resumes from, the process group of a distributed launch, the held-out validation, a
replay buffer, and the callbacks a caller hooks in (``on_checkpoint`` after each checkpoint,
``on_validation`` after each validation, which may end the fit: a tuning study's pruner, a
caller's own stopping rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .distributed import DistributedContext, init_from_env

__all__ = ["FitContext"]


@dataclass
class FitContext:
    """The per-fit attachments of one training run (all optional).

    Attributes:
        checkpoint: the training checkpoint's path: written atomically every ``checkpoint_every``
            steps and at the end.
        resume: a loaded checkpoint (:func:`~bayesmeta.inference.load_checkpoint`) to continue from.
        distributed: train in the ``torch.distributed`` process group of a ``torchrun`` launch
            (joined on first use: :meth:`join`).
        validate: ``validate() -> scores`` of the held-out tasks (early stopping and the best weights).
        replay: a :class:`~bayesmeta.inference.replay.ReplayBuffer` mixed into every batch.
        standardize: the gradient-based baselines' own input/output standardisation (``None``: their default).
        on_checkpoint: ``on_checkpoint(step, history)`` after each checkpoint is written.
        on_validation: ``on_validation(step, scores) -> bool`` after each validation (``scores``:
            ``nll``, ``coverage_90``, ``per_shot``); a true value ends the fit there, as early
            stopping does (the best weights are kept; ``history.notes`` says why it stopped).
        extra_state: what the learner stores in every checkpoint beside its modules.
    """

    checkpoint: Path | None = None
    resume: dict | None = None
    distributed: bool = False
    validate: Callable[[], dict] | None = None
    replay: Any = None
    standardize: bool | None = None
    on_checkpoint: Callable[[int, Any], None] | None = None
    on_validation: Callable[[int, dict], bool | None] | None = None
    extra_state: dict | None = None
    group: DistributedContext | None = None

    def join(self, device: torch.device) -> DistributedContext | None:
        """The process group of a distributed fit (joined on the first call), else ``None``."""
        if self.distributed and self.group is None:
            self.group = init_from_env(device)
        return self.group
