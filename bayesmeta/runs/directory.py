"""Run directories that are never left half-written: a lock per run, and undo of a failed command.

* :class:`RunLock`: ``run.lock`` in the run directory, created exclusively (``O_CREAT | O_EXCL``)
  and holding the owner's pid (and, where ``fcntl`` exists, an ``flock`` that the kernel drops
  when the owner dies). Two fits can never write one run; the lock of a killed process is
  detected (its pid is not running) and taken over with a warning.
* :class:`Undo`: records which of a command's files and directories exist (and their bytes)
  before it writes, and puts everything back if it fails.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

from ..io import atomic_write_bytes, file_error

fcntl: ModuleType | None
try:  # POSIX: the kernel releases an flock when its process dies
    import fcntl as _fcntl

    fcntl = _fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "RunInUseError", "RunLock", "Undo", "pid_alive"]

LOCK_NAME = "run.lock"


class RunInUseError(RuntimeError):
    """Another live process holds the run directory's lock."""


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid runs (on this machine)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _flock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class RunLock:
    """Exclusive lock on a run directory (``run.lock`` holding the owner's pid).

    Use as a context manager or call :meth:`acquire` / :meth:`release`. ``warn`` reports the
    take-over of a stale lock (default: ``warnings.warn``).

    Raises:
        RunInUseError: a live process holds the lock.
        OSError: the lock file cannot be created (e.g. a read-only directory); names the file.
    """

    def __init__(self, directory, *, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None
        self._warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _in_use(self, pid) -> RunInUseError:
        who = f"process {pid}" if pid else "another process"
        return RunInUseError(f"{self.path.parent} is in use by {who} (lock file {self.path}); wait for it to "
                             f"finish, or delete {self.path} if no bayesmeta command is running on it")

    def acquire(self) -> RunLock:
        for _ in range(5):  # a lock released or replaced meanwhile: look again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                if self._take_over():
                    return self
                continue
            except OSError as err:
                raise file_error(err, self.path, "create the lock file") from err
            if not _flock(fd):  # another process opened our new file first and holds it
                os.close(fd)
                raise self._in_use(None)
            self._own(fd)
            return self
        raise self._in_use(None)

    def _take_over(self) -> bool:
        """The lock file exists: refuse if its owner runs, else take it over. False: look again."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise file_error(err, self.path, "open the lock file") from err
        try:
            owner = _read_pid(fd)
            if pid_alive(owner) or not _flock(fd):
                raise self._in_use(owner)
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:  # released and re-created meanwhile
                os.close(fd)
                return False
        except FileNotFoundError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._warn(f"{self.path}: taking over the lock of process {owner or '?'}, which is not running "
                   f"(it was killed or crashed)")
        self._own(fd)
        return True

    def _own(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise file_error(err, self.path, "write the lock file") from err
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


class Undo:
    """Put a command's files and directories back as they were if it fails.

    Create it before the command makes any directory: it records which of ``root`` and its
    parents do not exist yet. :meth:`snapshot` (taken while holding the run's lock) records which
    of ``dirs`` (relative to ``root``) do not exist, and for each file name that it does not
    exist, or keeps its content under a hidden second name (a hard link: no copy, so putting it
    back needs no free space even on a full disk; its bytes in memory where links are not
    supported). End with :meth:`restore_files` (failure) or :meth:`discard` (success);
    :meth:`remove_new_dirs` removes the recorded directories that are empty again (nothing else).
    """

    def __init__(self, root) -> None:
        self.root = Path(root)
        missing, p = [], self.root
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        self.new_dirs = missing[::-1]
        self.before: dict[Path, Path | bytes | None] = {}

    def snapshot(self, names: Iterable[str], *, dirs: Iterable[str] = ()) -> Undo:
        self.new_dirs += [self.root / d for d in dirs if not (self.root / d).exists()]
        for name in names:
            p = self.root / name
            if not p.is_file():
                self.before[p] = None
                continue
            keep = p.with_name(f".{p.name}.undo-{os.getpid()}")
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(keep)
                os.link(p, keep)
                self.before[p] = keep
            except OSError:
                try:
                    self.before[p] = p.read_bytes()
                except OSError as err:
                    raise file_error(err, p, "read") from err
        return self

    def changed(self, name: str) -> bool:
        """Whether file ``name`` (snapshotted) is no longer the file it was."""
        p, was = self.root / name, self.before.get(self.root / name)
        try:
            if was is None or not p.is_file():
                return was is not None or p.is_file()
            if isinstance(was, Path):
                return not os.path.samefile(p, was)
            return p.read_bytes() != was
        except OSError:
            return True

    def restore_files(self) -> None:
        """Best effort, never raises (the command's own error is the one to report)."""
        for p, was in self.before.items():
            with contextlib.suppress(OSError):
                if was is None:
                    p.unlink(missing_ok=True)
                elif isinstance(was, Path):
                    if p.is_file() and os.path.samefile(p, was):  # untouched (rename would do nothing)
                        os.unlink(was)
                    else:
                        os.replace(was, p)  # a rename: needs no free space
                elif not p.is_file() or p.read_bytes() != was:
                    atomic_write_bytes(was, p)
        self.before = {}

    def discard(self) -> None:
        """The command succeeded: drop the kept copies."""
        for was in self.before.values():
            if isinstance(was, Path):
                with contextlib.suppress(OSError):
                    os.unlink(was)
        self.before = {}

    def remove_new_dirs(self) -> None:
        for d in sorted(self.new_dirs, key=lambda q: len(q.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty: files this command did not write stay


def process_start(pid) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot, from ``/proc``), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError, TypeError):
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22: starttime
