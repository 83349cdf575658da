"""The next point(s) to try on new task(s), from a fitted run directory (``bayesmeta suggest``).

Reads the CSV files and writes the answer; the proposal is :func:`bayesmeta.optimize.propose`
(Thompson sampling, EI, UCB, PI or greedy over the candidate rows). The output is written
atomically and replaces an existing file only with ``force``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..optimize import Candidates, propose
from ..tasks.batch import pad_ragged
from .data import read_tasks
from .layout import check_out_file, say, write_out_file
from .learner import load_fitted

__all__ = ["suggest_run"]


def _observed(cfg, path, d: int, e: int) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Task ids and padded ``x [T, S, D]``, ``y [T, S, E]``, ``mask`` of the observed rows (one task "new" if none)."""
    if path is None:
        return ["new"], torch.zeros(1, 0, d), torch.zeros(1, 0, e), torch.zeros(1, 0, dtype=torch.bool)
    ds = read_tasks(cfg.data, Path(path), task_optional=True, with_y=True)
    xs, mask = pad_ragged([torch.as_tensor(a, dtype=torch.float32) for a in ds.x])
    ys, _ = pad_ragged([torch.as_tensor(a, dtype=torch.float32) for a in ds.y])
    return list(ds.task_ids), xs, ys, mask


def _table(cfg, ids, prop, y_name: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    d = cfg.data
    w.writerow([d.task or "task", *d.x, *(c for c in (d.trials, d.offset) if c), "score", f"{y_name}_mean",
                f"{y_name}_sd"])
    for t, task in enumerate(ids):
        for j in range(prop.x.shape[1]):
            w.writerow([task, *(f"{v:.6g}" for v in prop.x[t, j].tolist()), f"{float(prop.score[t, j]):.6g}",
                        f"{float(prop.predicted_mean[t, j]):.6g}", f"{float(prop.predicted_std[t, j]):.6g}"])
    return buf.getvalue()


def suggest_run(run, candidates, out, *, observed=None, n: int = 1, acquisition: str = "ts", minimize: bool = False,
                objective: str | None = None, beta: float = 2.0, seed: int = 0, force: bool = False) -> Path:
    """Propose ``n`` points per new task from a fitted run's learner; writes the CSV ``out``.

    ``observed``: a CSV of the new task(s)' measured rows (``None``: nothing yet, the prior);
    ``candidates``: a CSV of the points that may be tried (the run's x columns). See
    :func:`bayesmeta.optimize.propose` for the acquisitions.
    """
    out = Path(out)
    parent = check_out_file(out, force=force)
    if n < 1:
        raise ValueError(f"--n must be >= 1; got {n}")
    cfg, learner = load_fitted(Path(run))
    y_names = list(cfg.data.y)
    objective = objective or y_names[0]
    if objective not in y_names:
        raise ValueError(f"--objective {objective!r}: not a y column of the run; choose from {y_names}")
    grid = read_tasks(cfg.data, Path(candidates), task_optional=True, with_y=False)
    points = np.concatenate(grid.x, 0)
    if points.shape[0] == 0:
        raise ValueError(f"{candidates}: no candidate rows (the candidate set is empty)")
    ids, xs, ys, mask = _observed(cfg, observed, points.shape[1], len(y_names))
    prop = propose(learner, xs, ys, Candidates(torch.as_tensor(points, dtype=torch.float32)), mask=mask,
                   acquisition=acquisition, q=n, maximize=not minimize, beta=beta,
                   output=y_names.index(objective), seed=seed)
    path = write_out_file(_table(cfg, ids, prop, objective), out, parent)
    say(f"wrote {path} ({len(ids)} task(s) x {n} point(s), acquisition {acquisition})")
    return path
