"""Tuning studies on Optuna: workers, kill-safe trials and the one-call :func:`tune`.

The study directory's layout and :func:`~bayesmeta.tuning.storage.open_study` are in
:mod:`bayesmeta.tuning.storage`. Workers share the study through its storage; a worker killed
mid-trial leaves that trial ``RUNNING`` in the journal: the next worker to start marks it failed and
queues its parameters again, so no finished trial is lost and no unfinished one is forgotten.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

from ..runs.directory import pid_alive, process_start
from .storage import _optuna, check_data_unchanged, open_study

__all__ = ["open_study", "recover_stale_trials", "run_worker", "tune"]


def recover_stale_trials(study, out: Path) -> list[int]:
    """Trials left RUNNING by a dead worker on this machine: mark them failed, queue their parameters again."""
    optuna = _optuna()
    recovered = []
    with _study_lock(out):
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("host") != socket.gethostname() or _owner_alive(t.user_attrs):
                continue
            # Optuna's storage API (no public call marks another process's trial failed)
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            retries = int(t.user_attrs.get("retries", 0))
            if retries < MAX_RETRIES:  # a trial that kills its worker (e.g. out of memory) is not retried forever
                attrs = {k: v for k, v in t.user_attrs.items() if k == "defaults"}
                study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.user_attrs.get("retry_of", t.number),
                                                          "retries": retries + 1}, skip_if_exists=False)
            recovered.append(t.number)
    return recovered


MAX_RETRIES = 1


def _owner_alive(attrs: dict) -> bool:
    """Whether the worker that ran a trial still runs (same pid, same start time, not this very process)."""
    pid = attrs.get("pid")
    if pid is None or pid == os.getpid() or not pid_alive(pid):
        return False
    started = attrs.get("pid_start")
    return started is None or process_start(pid) in (None, started)


@contextlib.contextmanager
def _study_lock(out: Path):
    """An exclusive lock on the study directory for short bookkeeping (POSIX ``flock``; none elsewhere)."""
    path = out / "study.lock"
    with open(path, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows
            pass
        yield


def run_worker(out, *, trials: int | None = None, timeout: float | None = None, storage: str | None = None,
               progress: bool = False, worker: int = 0) -> None:
    """One worker: run trials of the study in ``out`` until the study has ``trials`` finished ones or
    ``timeout`` seconds have passed (a trial started before then runs to its end)."""
    from .objective import trial_objective

    optuna = _optuna()
    out = Path(out)
    _check_budget(trials, timeout)
    check_data_unchanged(out)  # before the study is opened: a refused worker leaves its journal as it was
    # each worker process samples from its own random stream (two workers with one seed propose the same trials)
    study, base, space = open_study(out, storage=storage, seed_offset=worker + 1 + 7919 * os.getpid())
    trials = space.options.trials if trials is None else trials
    timeout = space.options.timeout if timeout is None else timeout
    if not trials and not timeout:
        raise ValueError("tune: give a number of trials or a timeout (or set study.trials / study.timeout), "
                         "or the study never ends")
    recover_stale_trials(study, out)
    callbacks: list = [_StopAfterFailures(3)]
    if trials:
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        if sum(t.state in done for t in study.get_trials(deepcopy=False)) >= trials:
            return
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=done))
    study.optimize(trial_objective(base, space, out, progress=progress), timeout=timeout or None,
                   callbacks=callbacks, catch=(ValueError, FloatingPointError, RuntimeError), gc_after_trial=True)


def _check_budget(trials, timeout, workers: int = 1, threads=None) -> None:
    """The flags / arguments that bound a study, checked before any worker starts (naming the flag)."""
    checks = [("--trials", trials, trials is None or (isinstance(trials, int) and not isinstance(trials, bool)
                                                      and trials >= 0), "an int >= 0"),
              ("--timeout", timeout, timeout is None or (isinstance(timeout, int | float) and not isinstance(timeout, bool)
                                                         and timeout >= 0), "seconds >= 0"),
              ("--workers", workers, isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1,
               "an int >= 1"),
              ("--threads", threads, threads is None or (isinstance(threads, int) and threads >= 1), "an int >= 1")]
    for flag, value, ok, allowed in checks:
        if not ok:
            raise ValueError(f"tune: {flag} must be {allowed}; got {value!r}")


class _StopAfterFailures:
    """Stop a worker after ``n`` failed trials in a row (a setting that fails every trial would loop forever)."""

    def __init__(self, n: int) -> None:
        self.n, self.failed = n, 0

    def __call__(self, study, trial) -> None:
        self.failed = self.failed + 1 if trial.state.name == "FAIL" else 0
        if self.failed >= self.n:
            reason = trial.system_attrs.get("fail_reason", "see the log above")
            warnings.warn(f"tune: {self.n} trials in a row failed (last: trial {trial.number}: {reason}); this "
                          "worker stops", stacklevel=2)
            study.stop()


def _spawn(out: Path, i: int, args: list[str], threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bayesmeta", "tune", "--out", str(out), "--worker-index", str(i),
           "--threads", str(threads), "--no-progress", *args]
    with open(out / f"worker-{i}.log", "ab") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def tune(config, space, out, *, trials: int | None = None, timeout: float | None = None, workers: int = 1,
         storage: str | None = None, progress: bool = True, threads: int | None = None, report: bool = True):
    """Tune a fit config's settings and architecture on its validation groups; returns a :class:`TuneResult`.

    Args:
        config: the fit config every trial starts from (a ``FitConfig`` or a TOML path); its
            ``data`` section names the training CSV, whose held-out groups (``data.val_fraction``)
            score each trial; ``train.max_time`` (or ``steps``) is each trial's budget.
        space: the search space file (a path) or the same as a dict; see :mod:`.space`.
        out: the study directory (created; an existing one is continued).
        trials: finished trials in the whole study (default: ``study.trials`` of the space).
        timeout: seconds for each worker (default: ``study.timeout``).
        workers: processes on this machine sharing the study (the others are started here).
        storage: an Optuna storage URL (a database server, for many machines); default: the
            journal file in ``out``.
        progress: progress bars and Optuna's per-trial log lines.
        threads: torch CPU threads per worker (default: this machine's cores / workers).
        report: write the tables, plots and ``report.html`` at the end.
    """
    from .report import TuneResult, write_report

    optuna = _optuna()
    _check_budget(trials, timeout, workers, threads)
    out = Path(out)
    check_data_unchanged(out)  # a study continued: before it is opened and any helper worker starts
    _, _, space_obj = open_study(out, config=config, space=space, storage=storage)  # create or check
    if not (space_obj.options.trials if trials is None else trials) and \
            not (space_obj.options.timeout if timeout is None else timeout):
        raise ValueError("tune: give a number of trials or a timeout (or set study.trials / study.timeout), "
                         "or the study never ends")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.INFO if progress else optuna.logging.WARNING)
    flags = [*(["--trials", str(trials)] if trials is not None else []),
             *(["--timeout", str(timeout)] if timeout is not None else []),
             *(["--storage", storage] if storage else [])]
    children = [_spawn(out, i, flags, threads) for i in range(1, workers)]
    try:
        run_worker(out, trials=trials, timeout=timeout, storage=storage, progress=progress, worker=0)
        for i, child in enumerate(children, 1):
            if child.wait() != 0:
                warnings.warn(f"tune: helper worker {i} ended with exit code {child.returncode}; see "
                              f"{out / f'worker-{i}.log'}", stacklevel=2)
    except BaseException:
        for child in children:  # Ctrl-C: the helpers end their trials as failed and stop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGINT)
        raise
    result = TuneResult.load(out, storage=storage)
    if report:
        write_report(result)
    return result
