"""The layout of a run directory and the small helpers every run command shares.

A run directory holds::

    config.toml            the resolved configuration (read back by evaluate / predict / --resume)
    learner.pt             the fitted learner (BayesLearner.save); the same name as in ``demo``
    checkpoints/last.pt    the latest training checkpoint (model, guide, optimiser, RNG states)
    metrics.jsonl          one line per logged step: step, loss (negative ELBO per task), time, lr
    split.json             which task ids were used for training and validation
    run.json               what was trained, for how long (and the data file's SHA-256)
    eval.json, eval.csv    from ``bayesmeta evaluate``
    plots/, report.html    from ``bayesmeta report``
    run.lock               while a fit runs: the pid of the process that holds the run
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ..io import atomic_write_text, file_error, read_json
from .config import FitConfig, load_config
from .directory import Undo

__all__ = ["CHECKPOINT", "LEARNER_FILE", "check_out_file", "check_writable", "load_run_config", "read_split", "say",
           "write_out_file", "write_together"]

CHECKPOINT = "checkpoints/last.pt"
LEARNER_FILE = "learner.pt"  # the saved learner in every run directory (fit and demo)
LEGACY_LEARNER_FILE = "model.pt"  # read too: what run directories held before the rename
LEGACY_STANDARDISATION = "standardisation.json"  # written by earlier versions (the CLI standardised the data itself)


def say(msg: str) -> None:
    """A status line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def load_run_config(run) -> FitConfig:
    """A run directory's resolved configuration (its ``config.toml``)."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"{run}: not a run directory (a file)")
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no config.toml)")
    return load_config(run / "config.toml", run_file=True)


def read_split(run: Path, part: str = "train") -> list:
    """The task ids of one part (``"train"`` or ``"validation"``) of a run's split."""
    path = run / "split.json"
    split = read_json(path, "run's task split")
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        raise ValueError(f"{path}: not a task split (no 'train' list)")
    return split.get(part) or []


def y_column(d) -> str | None:
    """The name of a run's one y column (``None`` with several)."""
    return d.y[0] if len(d.y) == 1 else None


def check_writable(directory: Path) -> None:
    """Fail early (naming the directory and the cause) if files cannot be created in ``directory``."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".bayesmeta-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise file_error(err, directory, "write into the directory") from err


def write_together(directory: Path, writers: dict) -> None:
    """Call ``writers[name](directory / name)`` for each name; if one fails, every file is put back."""
    undo = Undo(directory).snapshot(writers)
    try:
        for name, write in writers.items():
            write(directory / name)
    except BaseException:
        undo.restore_files()
        raise
    undo.discard()


def check_out_file(out: Path, *, force: bool) -> Path:
    """An output file a command may write (checked before any work): not a directory, not an existing file
    without ``force``, under a writable directory (missing folders are created on writing). Returns the
    nearest existing parent, for :func:`write_out_file`."""
    if out.is_dir():
        raise IsADirectoryError(f"{out}: --out is a directory; give the name of the CSV file to write")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; use --force to replace it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{out}: {parent} is not a directory")
    check_writable(parent)
    return parent


def write_out_file(text: str, out: Path, parent: Path) -> Path:
    """Write ``text`` to ``out`` atomically; folders it created are removed again if the write fails."""
    undo = Undo(out.parent) if parent != out.parent else None
    try:
        return atomic_write_text(text, out)
    except BaseException:
        if undo is not None:
            undo.remove_new_dirs()
        raise
