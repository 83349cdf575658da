"""The data of a run directory: its CSV's columns as tasks, checked, and the file's fingerprint.

* :func:`read_tasks` reads the columns a run's ``[data]`` section names (a Binomial trials column
  and a log-exposure column travel as the last x columns) and refuses a missing trials / offset
  column by its role, a number of trials that is not a whole number >= 0, and an offset column that
  holds raw exposures instead of their logs.
* :func:`data_fingerprint` is the SHA-256 of the data file's bytes: ``run.json`` and a tuning
  study's ``study.json`` keep it, and :func:`check_unchanged` refuses to continue a run or a study
  whose data file changed since it started (its results would mix two data sets).
* :func:`check_in_support` checks every row against the model's observation (its support at that
  row, the parameters it gets there) before any training or scoring, naming the row and its group.
* :func:`check_val_shots` refuses validation shot counts that no held-out group can serve.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from .._support import format_value
from ..io import file_error, open_csv
from ..tasks import TaskDataset
from ..tasks.dataset import FLOAT32_MAX

__all__ = ["OFFSET_MAX", "check_in_support", "check_offset", "check_trials", "check_unchanged", "check_val_shots", "data_fingerprint", "read_tasks",
           "run_data_path", "split_groups"]

# A log exposure above 30 is an exposure above e^30 ~ 1e13 units on one row: no count data set has that
# much exposure in a row, while raw exposures (days, persons, person-years: 50, 1000, ...) exceed it at once.
# (exp(offset) overflows float32 from 88.7 on: the models' means would be infinite.)
OFFSET_MAX = 30.0


def run_data_path(cfg, run: Path) -> Path:
    """The training CSV of a run: ``data.path`` of its config.toml (absolute since this version).

    A relative path (written by an older version, relative to where that fit ran) is looked up
    from the current directory, then from the run directory's parent.
    """
    path = Path(cfg.data.path)
    if path.is_absolute():
        if not path.exists():
            raise FileNotFoundError(f"{run / 'config.toml'}: data.path {str(path)!r}: no such file")
        return path
    tried = [Path.cwd() / path, run.resolve().parent / path]
    for candidate in tried:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{run / 'config.toml'}: data.path {str(path)!r} is relative and found neither from the "
                            f"current directory nor from the run directory's parent ({', '.join(map(str, tried))}); "
                            f"make it absolute in the config")


def _check_role_columns(d, path) -> None:
    """A trials or offset column the file lacks is named as such (not as a missing x column)."""
    roles = [(role, flag, col) for role, flag, col in (("trials", "--trials", d.trials), ("offset", "--offset", d.offset))
             if col]
    for role, flag, col in roles:
        if col in d.x:
            raise ValueError(f"{flag} / data.{role}: column {col!r} is also an x column ({list(d.x)}); it is read as "
                             f"the {role} column on its own: drop it from --x / data.x")
    if not roles or not Path(path).is_file():
        return  # no such columns, or no such file (reading it says so)
    with open_csv(path) as reader:
        header = [h.strip() for h in next(reader, None) or []]
    for role, flag, col in roles:
        if header and col not in header:
            what = "number-of-trials" if role == "trials" else "log-exposure"
            raise ValueError(f"{path}: missing {what} column {col!r} ({flag} / data.{role}); the file has {header}")


def check_offset(data: TaskDataset, column: str) -> None:
    """Refuse an offset column whose values cannot be log exposures (raw exposures such as 50..1000).

    The offset of a count model is ``log(exposure)``; a value above :data:`OFFSET_MAX` (30, an
    exposure of ``e^30 ~ 1e13``) is implausible as a log and is what raw exposures look like.
    """
    j = data.x_names.index(column)
    for x, rows in zip(data.x, data.rows, strict=True):
        big = np.flatnonzero(x[:, j] > OFFSET_MAX)
        if len(big):
            value = float(x[big[0], j])
            raise ValueError(
                f"{data.source}: row {rows[big[0]]}, column {column!r} (--offset / data.offset): {value:g} is not a log "
                f"exposure (e^{value:g} = {_exp_text(value)}; above {OFFSET_MAX:g} none is plausible); it looks like a "
                f"raw exposure: pass its log instead, e.g. a column log_{column} = log({column})")


def check_trials(data: TaskDataset, column: str) -> None:
    """Refuse a number of trials that is not a whole number >= 0 (naming the file, row, group and value)."""
    j = data.x_names.index(column)
    for x, rows, task in zip(data.x, data.rows, data.task_ids, strict=True):
        bad = np.flatnonzero((x[:, j] < 0) | (x[:, j] != np.floor(x[:, j])))
        if len(bad):
            raise ValueError(f"{data.source}: row {rows[bad[0]]} (group {task!r}), column {column!r} (--trials / "
                             f"data.trials): {format_value(float(x[bad[0], j]))} is not a number of trials (a whole "
                             "number >= 0)")


def check_in_support(program, data: TaskDataset, *, y_column: str | None = None) -> None:
    """Every row of ``data`` (x and y) is one the model's observation can take, checked before any training or
    scoring; an error names the file, the CSV row and the group (not a position in a shuffled split)."""
    batch = data.to_batch(dtype=program.dtype)
    x, y, mask = batch.support

    def where(t: int, j: int) -> str:
        return f"row {data.rows[t][j]} (group {data.task_ids[t]!r})"

    name = "value" if y_column is None else f"{y_column} ="
    program.check_y(x, y, mask, what=data.source, where=where, y_name=name)


def _exp_text(v: float) -> str:
    return "inf, beyond float32" if v > math.log(FLOAT32_MAX) else f"{math.exp(v):.2g}"


def read_tasks(d, path, *, task_optional: bool = False, with_y: bool = True) -> TaskDataset:
    """The columns a run's config names (``d``: its ``[data]`` section) from a CSV, as tasks.

    ``task_optional``: a file without the task column is one task (``"new"``); ``with_y=False``
    reads the x columns only (query points). Trials / log exposure are the last x column; a
    missing one is named by its role, and an offset that is not a log exposure is refused.
    """
    _check_role_columns(d, path)
    x = list(d.x) + [c for c in (d.trials, d.offset) if c]  # trials / log exposure: the last x column
    data = TaskDataset.from_csv(path, task=d.task, x=x, y=list(d.y) if with_y else [], task_optional=task_optional)
    if d.offset:
        check_offset(data, d.offset)
    if d.trials:
        check_trials(data, d.trials)
    return data


def split_groups(data: TaskDataset, d) -> tuple[TaskDataset, TaskDataset | None]:
    """``(training groups, held-out validation groups or None)`` as a new run splits them (``[data]``'s
    ``val_fraction`` and ``split_seed``)."""
    if not d.val_fraction:
        return data, None
    train, val = data.split((1 - d.val_fraction, d.val_fraction), seed=d.split_seed)
    return train, val


def data_fingerprint(path) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks; a read error names the file."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise file_error(err, path, "read") from err
    return h.hexdigest()


def check_unchanged(path, recorded: str | None, *, what: str, record: Path, anew: str) -> None:
    """Refuse when the data file's fingerprint differs from the one ``record`` holds (``None``: an
    older record without one, nothing to compare). ``what`` names what continues, ``anew`` how to
    start over instead."""
    if not recorded:
        return
    now = data_fingerprint(path)
    if now != recorded:
        raise ValueError(f"{path}: the data file changed since {what} started (sha256 {recorded[:12]}... in {record}, "
                         f"{now[:12]}... now), so continuing would mix results on two data sets; restore the file, "
                         f"or {anew}")


def check_val_shots(val: TaskDataset | None, shots, key: str) -> None:
    """Refuse a validation shot count that no held-out group can split into support and query rows."""
    if val is None or not len(val) or not shots:
        return
    largest = max(val.sizes)
    too_many = [k for k in shots if k >= largest]
    if too_many:
        raise ValueError(f"{key}: shots={too_many[0]} needs a validation group with more than {too_many[0]} rows "
                         f"(support and a query row), but the largest of the {len(val)} held-out groups of "
                         f"{val.source} has {largest} rows; use shots below {largest}")
