"""``bayesmeta suggest RUN``: the next point(s) to try on new task(s), from a fitted run directory.

Parsing, reading the CSV files and writing the answer only; the proposal is
:func:`bayesmeta.optimize.propose` (Thompson sampling, EI, UCB, PI or greedy over the candidate
rows). The output is written atomically and replaces an existing file only with ``--force``.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write_text
from ..optimize import ACQUISITIONS, Candidates, propose
from ..tasks.batch import pad_ragged
from .runs import _load_fitted, check_writable, read_tasks

__all__ = ["SUGGEST_EPILOG", "add_suggest_parser", "cmd_suggest"]

SUGGEST_EPILOG = """examples:
  bayesmeta suggest runs/sleep --observed new_subject.csv --candidates grid.csv --out next.csv
  bayesmeta suggest runs/sleep --observed new_subject.csv --candidates grid.csv --n 3 --acquisition ei --minimize --out next.csv
  bayesmeta suggest runs/sleep --candidates grid.csv --out first.csv      # nothing measured yet: from the prior
observed.csv: the run's x and y columns of the rows measured so far (and its task column for several new
tasks); candidates.csv: the run's x columns, one row per point that may be tried (shared by every task).
Output: task, the x columns, score (the acquisition's value), and the predictive mean and sd of the objective there.
"""


def add_suggest_parser(sub) -> argparse.ArgumentParser:
    """``bayesmeta suggest`` under the command line's sub-parsers ``sub``."""
    p = sub.add_parser("suggest", help="propose the next point(s) to evaluate on a new task (Thompson sampling, EI, UCB)",
                       epilog=SUGGEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a fitted run directory (bayesmeta fit)")
    p.add_argument("--observed", help="CSV of the new task's measured rows (default: none, the prior)")
    p.add_argument("--candidates", required=True, help="CSV of the points that may be tried (the run's x columns)")
    p.add_argument("--n", type=int, default=1, help="points to propose per task (default: 1)")
    p.add_argument("--acquisition", choices=ACQUISITIONS, default="ts",
                   help="ts (Thompson sampling, default), ei, ucb, pi or greedy")
    p.add_argument("--minimize", action="store_true", help="lower outcomes are better (without it: higher)")
    p.add_argument("--objective", help="the y column to optimise (default: the run's first)")
    p.add_argument("--beta", type=float, default=2.0, help="UCB's width in predictive sd (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output CSV (an existing file is replaced only with --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def _check_out(out: Path, *, force: bool) -> None:
    if out.is_dir():
        raise IsADirectoryError(f"{out}: --out is a directory; give the name of the CSV file to write")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; use --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{out}: the directory {parent} does not exist")
    check_writable(parent)


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


def cmd_suggest(args) -> Path:
    """Propose ``--n`` points per new task from the run's learner; writes the CSV ``--out``."""
    out = Path(args.out)
    _check_out(out, force=args.force)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1; got {args.n}")
    cfg, learner = _load_fitted(Path(args.run_dir))
    y_names = list(cfg.data.y)
    objective = args.objective or y_names[0]
    if objective not in y_names:
        raise ValueError(f"--objective {objective!r}: not a y column of the run; choose from {y_names}")
    grid = read_tasks(cfg.data, Path(args.candidates), task_optional=True, with_y=False)
    points = np.concatenate(grid.x, 0)
    if points.shape[0] == 0:
        raise ValueError(f"{args.candidates}: no candidate rows (the candidate set is empty)")
    ids, xs, ys, mask = _observed(cfg, args.observed, points.shape[1], len(y_names))
    prop = propose(learner, xs, ys, Candidates(torch.as_tensor(points, dtype=torch.float32)), mask=mask,
                   acquisition=args.acquisition, q=args.n, maximize=not args.minimize, beta=args.beta,
                   output=y_names.index(objective), seed=args.seed)
    path = atomic_write_text(_table(cfg, ids, prop, objective), out)
    print(f"wrote {path} ({len(ids)} task(s) x {args.n} point(s), acquisition {args.acquisition})")
    return path
