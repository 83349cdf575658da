"""Atomic file writing (no half-written files, ever) and file errors that name the file and the cause.

Every writer serialises to bytes in memory first, then writes a temporary file in the target's
directory, ``fsync`` s it and renames it over the target (``os.replace``, atomic on POSIX). A
failure at any point (a full disk, a read-only directory) removes the temporary file and raises an
``OSError`` of the same kind whose message names the target file and the cause, e.g.
``runs/a/learner.pt: cannot write (no space left on device)``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "file_error", "read_json"]


def file_error(err: OSError, path, action: str) -> OSError:
    """An ``OSError`` of the same type and ``errno`` as ``err`` saying ``"{path}: cannot {action} ({cause})"``.

    The cause is the operating system's own words in lower case ("no space left on device",
    "permission denied", "read-only file system"), never a library's follow-up error.
    """
    cause = (err.strerror or str(err) or type(err).__name__).lower()
    message = f"{path}: cannot {action} ({cause})"
    return OSError(err.errno, message) if err.errno else OSError(message)  # errno picks the subclass


def read_torch_file(path, *, damaged, missing: str = "no such file", map_location="cpu"):
    """``torch.load`` of a file of our own (``weights_only=True``, onto ``map_location``), read as bytes first: an
    OS error is then the file's (``FileNotFoundError`` with ``missing``, else :func:`file_error`), and any failure
    of ``torch.load`` on the bytes (it raises ``OSError(EINVAL)`` on some truncations) is ``damaged(err)``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {missing}") from None
    except OSError as err:
        raise file_error(err, path, "read") from err
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load fails in many ways on damaged bytes (never pass weights_only=False)
        raise damaged(err) from err


def _write_file(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` and ``fsync`` it (a short write is retried, an error raised)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _atomic(path, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise file_error(err, path, "write") from err
    try:
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file gets the usual mode
            _write_file(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise file_error(err, path, "write") from err
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` to memory, then to a temporary file in the same directory, ``fsync``, ``os.replace``.

    Serialising to memory first means a write error surfaces as itself (e.g. "no space left on
    device") instead of torch's follow-up error about the stream position.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return _atomic(path, buf.getvalue())


def atomic_write_text(text: str, path) -> Path:
    """Write text atomically as UTF-8 (same protocol as :func:`atomic_torch_save`)."""
    return _atomic(path, text.encode())


def atomic_write_bytes(data: bytes, path) -> Path:
    """Write bytes atomically (same protocol as :func:`atomic_torch_save`)."""
    return _atomic(path, bytes(data))


def read_json(path, what: str = "JSON file"):
    """Read a JSON file; a missing, unreadable or malformed file is an error naming it.

    Raises:
        FileNotFoundError: no such file (the message says what was expected there).
        OSError: the file cannot be read.
        ValueError: not valid JSON.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (the {what})") from None
    except OSError as err:
        raise file_error(err, path, "read") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file (the {what}): {err.reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (the {what}): {err.msg} at line {err.lineno}") from None


@contextlib.contextmanager
def open_csv(path):
    """A ``csv.reader`` over a UTF-8 file (a byte-order mark, as Excel writes, is skipped).

    Every way reading can fail becomes one error naming the file: a directory or a missing
    file, bytes that are not UTF-8, malformed CSV, or an OS error (with its real cause).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            yield csv.reader(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    except OSError as err:
        raise file_error(err, path, "read") from err
