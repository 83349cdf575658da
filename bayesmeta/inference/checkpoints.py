"""Training checkpoints: written atomically, with every random-number state, read back safely."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from ..io import atomic_torch_save, read_torch_file
from .options import History, TrainConfig

if TYPE_CHECKING:
    from .stream import TaskStream

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]


CHECKPOINT_FORMAT = "bayesmeta.checkpoint/1"


def _rng_states(stream) -> dict:
    states = {"torch": torch.get_rng_state(), "stream": stream.gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path, step: int, modules: dict, optim, history: History, cfg: TrainConfig, *,
                    elapsed: float | None = None, stream: TaskStream | None = None, on_checkpoint=None,
                    extra: dict | None = None) -> None:
    """Write a training checkpoint atomically: each module's ``state_dict`` under its name, the
    optimiser, history, config and random states. ``optim`` and ``stream`` may be ``None`` (a fit
    without them, e.g. exact type-II ML)."""
    rng = _rng_states(stream) if stream is not None else {"torch": torch.get_rng_state()}
    state = {"format": CHECKPOINT_FORMAT, "step": step,
             "elapsed": elapsed if elapsed is not None else (history.time[-1] if history.time else 0.0),
             "config": asdict(cfg), "optimizer": None if optim is None else optim.state_dict(),
             "history": history.as_dict(), "rng": rng, "modules": sorted(modules),
             **{name: None if m is None else m.state_dict() for name, m in modules.items()}, **(extra or {})}
    atomic_torch_save(state, path)
    if on_checkpoint is not None:
        on_checkpoint(step, history)


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a training checkpoint written by :func:`train_loop` (``weights_only`` loading).

    Raises:
        FileNotFoundError: no file at ``path``.
        OSError: the file cannot be read (permissions, I/O).
        ValueError: not a bayesmeta checkpoint, or a corrupt or truncated one (naming ``path``).
    """
    state = read_torch_file(path, missing="no checkpoint to resume from", map_location=map_location,
                            damaged=lambda err: ValueError(f"{path}: corrupt or truncated checkpoint "
                                                           f"({type(err).__name__}); it cannot be resumed"))
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a bayesmeta training checkpoint ({CHECKPOINT_FORMAT})")
    return state
