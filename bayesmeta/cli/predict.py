"""``bayesmeta predict``: predictions for new tasks from their support rows, in the run's original units.

Every input (the output path, the levels, both CSV files and their values on the run's
standardised scale) is checked before the model is run; the output is written atomically, and an
existing file is replaced only with ``--force``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import FitConfig
from ..io import atomic_write_text, open_csv
from ..tasks import Standardization, TaskDataset
from ..tasks.dataset import _parse_float
from .rundir import Undo
from .runs import _load_fitted, _say, check_writable, standardised_predictor

__all__ = ["cmd_predict"]


def _check_out(out: Path, *, force: bool) -> Path:
    """Refuse a directory, or an existing file without ``force``; returns the nearest existing parent."""
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


def _query_rows(path: Path, cfg: FitConfig) -> tuple[list, bool, list]:
    """``(header, has task column, [(file row number, fields)])`` of the query CSV."""
    with open_csv(path) as reader:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (no header row)")
        header = [h.strip() for h in header]
        missing = [c for c in cfg.data.x if c not in header]
        if missing:
            raise ValueError(f"{path}: missing x column(s) {missing}; the file has {header}")
        rows = [(i, r) for i, r in enumerate(reader, start=2) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return header, cfg.data.task in header, rows


def _read_query(path: Path, cfg: FitConfig, std: Standardization) -> tuple[list, torch.Tensor]:
    """Query rows: the x columns and, if present, the task column (else one task).

    Errors name the file's own row numbers and the column; values must also be usable on the
    run's standardised scale.
    """
    header, has_task, rows = _query_rows(path, cfg)
    xs, tasks = [], []
    for i, r in rows:
        vals = []
        for c in cfg.data.x:
            j = header.index(c)
            if j >= len(r):
                raise ValueError(f"{path}: row {i}, column {c!r}: not a number: '' (the row has {len(r)} fields)")
            vals.append(_parse_float(r[j], str(path), i, c))
        xs.append(vals)
        tasks.append(r[header.index(cfg.data.task)].strip() if has_task else "new")
    y_dim = len(cfg.data.y)
    as_data = TaskDataset.from_arrays(tasks, xs, np.zeros((len(xs), y_dim)), x_names=list(cfg.data.x),
                                      y_names=list(cfg.data.y), source=str(path), row_numbers=[i for i, _ in rows])
    as_data.check_standardized(replace(std, y_mean=(0.0,) * y_dim, y_std=(1.0,) * y_dim),
                               what="with the run's standardisation")
    return tasks, torch.tensor(xs, dtype=torch.float32)


def _read_support(path: Path, cfg: FitConfig, std: Standardization):
    """Support rows of new tasks: with the task column, several tasks; without it, one task "new"."""
    d = cfg.data
    try:
        with open_csv(path) as reader:
            header = [h.strip() for h in (next(reader, None) or [])]
    except ValueError:  # not UTF-8 or not CSV: from_csv reports it with the row
        header = []
    ds = TaskDataset.from_csv(path, task=d.task if d.task in header else None, x=list(d.x), y=list(d.y))
    ds.check_standardized(std, what="with the run's standardisation")
    return ds.task_ids, ds


def _support_batch(support: TaskDataset, order: list):
    """``x, y, mask`` ``[T, S, *]`` for the tasks in ``order`` (tasks without rows get an empty set)."""
    t = len(order)
    s = max([support.sizes[support.task_ids.index(k)] for k in order if k in support.task_ids] or [1])
    x = torch.zeros(t, s, support.x_dim)
    y = torch.zeros(t, s, support.y_dim)
    m = torch.zeros(t, s, dtype=torch.bool)
    for i, k in enumerate(order):
        if k in support.task_ids:
            j = support.task_ids.index(k)
            n = support.sizes[j]
            x[i, :n] = torch.as_tensor(support.x[j], dtype=torch.float32)
            y[i, :n] = torch.as_tensor(support.y[j], dtype=torch.float32)
            m[i, :n] = True
    return x, y, m


def _table(cfg: FitConfig, order, rows_of, xq, pred, levels) -> str:
    """The output CSV: task, x, then per y column mean, sd and each level's lower / upper end."""
    d = cfg.data
    mean, sd = pred.mean, pred.std
    bands = {lv: pred.interval(lv) for lv in levels}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [d.task, *d.x]
    for yn in d.y:
        cols += [f"{yn}_mean", f"{yn}_sd"] + [f"{yn}_{s}{int(round(100 * lv))}" for lv in levels for s in ("lower", "upper")]
    w.writerow(cols)
    for ti, t in enumerate(order):
        for j, qi in enumerate(rows_of[t]):
            row = [t, *(f"{v:.6g}" for v in xq[qi].tolist())]
            for e in range(len(d.y)):
                row += [f"{float(mean[ti, j, e]):.6g}", f"{float(sd[ti, j, e]):.6g}"]
                for lv in levels:
                    lo, hi = bands[lv]
                    row += [f"{float(lo[ti, j, e]):.6g}", f"{float(hi[ti, j, e]):.6g}"]
            w.writerow(row)
    return buf.getvalue()


def cmd_predict(args) -> Path:
    """Predict for new tasks from their support rows: mean, sd and central intervals per query row."""
    out = Path(args.out)
    parent = _check_out(out, force=getattr(args, "force", False))
    bad = [lv for lv in args.levels if not 0 < lv < 1]
    if bad:
        raise ValueError(f"--levels must be in (0, 1); got {bad}")
    cfg, learner, std = _load_fitted(Path(args.run_dir))
    support_tasks, support = _read_support(Path(args.support), cfg, std)
    q_tasks, xq = _read_query(Path(args.query), cfg, std)
    order = list(dict.fromkeys(support_tasks + q_tasks))
    batch = _support_batch(support, order)
    rows_of = {t: [i for i, qt in enumerate(q_tasks) if qt == t] for t in order}
    width = max(len(r) for r in rows_of.values()) or 1
    x_query = torch.zeros(len(order), width, support.x_dim)
    for ti, t in enumerate(order):
        if rows_of[t]:
            x_query[ti, : len(rows_of[t])] = xq[rows_of[t]]
    xs, ys, ms = batch
    pred = standardised_predictor(learner, std, seed=args.seed)(xs, ys, x_query, ms)
    text = _table(cfg, order, rows_of, xq, pred, args.levels)
    undo = Undo(out.parent) if parent != out.parent else None
    try:
        path = atomic_write_text(text, out)
    except BaseException:
        if undo is not None:
            undo.remove_new_dirs()
        raise
    no_support = [t for t in order if t not in support.task_ids]
    if no_support:
        _say(f"task(s) {no_support[:10]} have no support rows: their predictions are the prior predictive")
    _say(f"wrote {path} ({len(q_tasks)} rows)")
    return path
