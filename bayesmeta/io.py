"""Atomic file writing (no half-written files, ever)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text"]


def _atomic(path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` to a temporary file in the same directory, ``fsync``, then ``os.replace``."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path) -> Path:
    """Write text atomically (same protocol as :func:`atomic_torch_save`)."""
    return _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(data: bytes, path) -> Path:
    """Write bytes atomically (same protocol as :func:`atomic_torch_save`)."""
    return _atomic(path, lambda f: f.write(data))
