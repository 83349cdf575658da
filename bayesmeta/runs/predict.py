"""``bayesmeta predict``: predictions for new tasks from their support rows, in the run's original units.

Every input (the output path, the levels, both CSV files and their values) is checked before the model is run; the output is written atomically, and an
existing file is replaced only with ``--force``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..tasks import Standardization, TaskDataset
from ..tasks.batch import pad_ragged
from .config import FitConfig
from .data import check_in_support, read_tasks
from .layout import check_out_file, say, write_out_file
from .learner import load_fitted, predictor

__all__ = ["predict_run"]


def _read_rows(path: Path, cfg: FitConfig, *, with_y: bool) -> TaskDataset:
    """New tasks' rows (support: x and y; query: x), checked to be values the models can square.

    With the run's task column, several tasks; without it, one task ``"new"``. Errors name the
    file's own row numbers and the column.
    """
    ds = read_tasks(cfg.data, path, task_optional=True, with_y=with_y)
    ds.check_standardized(Standardization.identity(ds.x_dim, len(ds.y_names)))
    return ds


def _padded(ds: TaskDataset, order: list, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``ds.x`` or ``ds.y`` (``part``) of the tasks in ``order`` as ``[T, N, F]`` and mask ``[T, N]``.

    Tasks without rows in ``ds`` get an empty set; ``N >= 1``.
    """
    index = {t: i for i, t in enumerate(ds.task_ids)}
    width = ds.x_dim if part == "x" else ds.y_dim
    arrays = [getattr(ds, part)[index[t]] if t in index else np.zeros((0, width)) for t in order]
    return pad_ragged([torch.as_tensor(a, dtype=torch.float32) for a in arrays], min_size=1)


def _table(cfg: FitConfig, order, x_query, mask_query, pred, levels) -> str:
    """The output CSV: task, x, then per y column mean, sd and each level's lower / upper end."""
    d = cfg.data
    mean, sd = pred.mean, pred.std
    bands = {lv: pred.interval(lv) for lv in levels}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [d.task, *d.x, *(c for c in (d.trials, d.offset) if c)]  # the x columns as read_tasks reads them
    for yn in d.y:
        cols += [f"{yn}_mean", f"{yn}_sd"] + [f"{yn}_{s}{int(round(100 * lv))}" for lv in levels for s in ("lower", "upper")]
    w.writerow(cols)
    for ti, t in enumerate(order):
        for j in range(int(mask_query[ti].sum())):
            row = [t, *(f"{v:.6g}" for v in x_query[ti, j].tolist())]
            for e in range(len(d.y)):
                row += [f"{float(mean[ti, j, e]):.6g}", f"{float(sd[ti, j, e]):.6g}"]
                for lv in levels:
                    lo, hi = bands[lv]
                    row += [f"{float(lo[ti, j, e]):.6g}", f"{float(hi[ti, j, e]):.6g}"]
            w.writerow(row)
    return buf.getvalue()


def _warn_unreliable(pred, order: list) -> None:
    """Name the tasks whose importance weights PSIS calls unreliable (Pareto k > 0.7): their support rows are
    far from what the fitted model expects (an outlier, a unit mistake), so their predictions may be off."""
    k, ess = pred.pareto_k, pred.ess
    if k is None:
        return
    bad = [i for i in range(len(order)) if not float(k[i]) <= 0.7]  # NaN or inf counts as unreliable
    if bad:
        shown = ", ".join(f"{order[i]!r} (k={float(k[i]):.2f}, ESS {float(ess[i]):.0f})" for i in bad[:10])
        say(f"warning: the importance weights of {len(bad)} task(s) are unreliable (Pareto k > 0.7): {shown}"
            f"{' ...' if len(bad) > 10 else ''}; their support rows are far from what the model expects (an outlier "
            "or a unit mistake?): check them before trusting these predictions")


def predict_run(run, support, query, out, *, levels=(0.5, 0.9), seed: int = 0, force: bool = False) -> Path:
    """Predict for new tasks from their ``support`` rows at the ``query`` rows (CSV files with the run's
    columns): mean, sd and central intervals at ``levels`` per query row, written to the CSV ``out``."""
    out = Path(out)
    levels = list(levels)
    parent = check_out_file(out, force=force)
    bad = [lv for lv in levels if not 0 < lv < 1]
    if bad:
        raise ValueError(f"--levels must be in (0, 1); got {bad}")
    cfg, learner = load_fitted(Path(run))
    support_set = _read_rows(Path(support), cfg, with_y=True)
    check_in_support(learner.program, support_set, y_column=cfg.data.y[0] if len(cfg.data.y) == 1 else None)
    query_set = _read_rows(Path(query), cfg, with_y=False)
    order = list(dict.fromkeys(support_set.task_ids + query_set.task_ids))
    (xs, ms), (ys, _) = _padded(support_set, order, "x"), _padded(support_set, order, "y")
    x_query, mask_query = _padded(query_set, order, "x")
    pred = predictor(learner, seed=seed)(xs, ys, x_query, ms)
    text = _table(cfg, order, x_query, mask_query, pred, levels)
    path = write_out_file(text, out, parent)
    _warn_unreliable(pred, order)
    no_support = [t for t in order if t not in support_set.task_ids]
    if no_support:
        say(f"task(s) {no_support[:10]} have no support rows: their predictions are the prior predictive")
    say(f"wrote {path} ({sum(query_set.sizes)} rows)")
    return path
