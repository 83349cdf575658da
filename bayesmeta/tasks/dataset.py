"""Grouped tables -> tasks: each row is one observation of one group (subject, sensor, country...).

``TaskDataset`` holds the rows grouped by task id (in order of first appearance) and turns them
into :class:`TaskBatch` es: all points as a training pool, random support/query batches, or a
deterministic K-shot split per task for evaluation. ``Standardization`` (fitted on training
tasks, stored with a run) maps x and y to zero mean and unit variance and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .._checks import check_ints
from ..io import open_csv
from .batch import TaskBatch, pad_ragged

__all__ = ["FLOAT32_MAX", "SAFE_ABS", "Standardization", "TaskDataset"]


FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # ~3.4e38: the models compute in float32
SAFE_ABS = math.sqrt(FLOAT32_MAX)  # ~1.8e19: beyond this a (standardised) value's square overflows float32


def _affine(v: torch.Tensor, shift, scale) -> torch.Tensor:
    """``(v - shift) / scale`` per column, computed in float64 (except on MPS) and returned in ``v``'s dtype."""
    wide = torch.float32 if v.device.type == "mps" else torch.float64
    t = lambda vals: torch.tensor(vals, dtype=wide, device=v.device)  # noqa: E731
    return ((v.to(wide) - t(shift)) / t(scale)).to(v.dtype)


@dataclass(frozen=True)
class Standardization:
    """Per-column affine maps ``(v - mean) / std`` for inputs and outputs (fitted on training tasks).

    The maps are computed in float64 and returned in the input's dtype. Every mean must be finite
    and every std finite and positive (checked on construction).
    """

    x_mean: tuple[float, ...]
    x_std: tuple[float, ...]
    y_mean: tuple[float, ...]
    y_std: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            mean, sd = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
            if len(mean) != len(sd):
                raise ValueError(f"standardisation: {name}_mean has {len(mean)} entries, {name}_std {len(sd)}")
            if not all(math.isfinite(m) for m in mean):
                raise ValueError(f"standardisation: {name}_mean must be finite; got {list(mean)}")
            if not all(math.isfinite(s) and s > 0 for s in sd):
                raise ValueError(f"standardisation: {name}_std must be finite and > 0; got {list(sd)}")

    @classmethod
    def identity(cls, x_dim: int, y_dim: int) -> Standardization:
        return cls((0.0,) * x_dim, (1.0,) * x_dim, (0.0,) * y_dim, (1.0,) * y_dim)

    def _t(self, values, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def x(self, x: torch.Tensor) -> torch.Tensor:
        return _affine(x, self.x_mean, self.x_std)

    def y(self, y: torch.Tensor) -> torch.Tensor:
        return _affine(y, self.y_mean, self.y_std)

    def x_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._t(self.x_std, x) + self._t(self.x_mean, x)

    def y_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._t(self.y_std, y) + self._t(self.y_mean, y)

    def batch(self, b: TaskBatch) -> TaskBatch:
        """Standardise every x and y of a batch (padding stays masked and zero-filled)."""
        return replace(b, x_support=self.x(b.x_support), y_support=self.y(b.y_support),
                       x_query=None if b.x_query is None else self.x(b.x_query),
                       y_query=None if b.y_query is None else self.y(b.y_query))

    def predictive(self, pred):
        """A predictive on the standardised scale -> the original units (mixture loc and scale)."""
        if all(m == 0 for m in self.y_mean) and all(s == 1 for s in self.y_std):
            return pred  # outputs not standardised (counts, labels)
        t = lambda vals: torch.tensor(vals, dtype=pred.dtype, device=pred.device)  # noqa: E731
        return pred.affine(t(self.y_std), t(self.y_mean))

    @classmethod
    def from_batch(cls, batch: TaskBatch, *, outputs: bool = True, keep_x: tuple[int, ...] = ()) -> Standardization:
        """Mean and std of every column over a pool's observed points (support and query), in
        float64; a constant column gets std 1. ``outputs=False`` leaves the outputs as they are (counts,
        labels, binary outcomes); ``keep_x`` lists input columns left as they are (a number of
        trials, a log exposure)."""
        x, y, mask = batch.all_points()
        m = mask.reshape(-1)
        xs, ys = x.reshape(-1, x.shape[-1])[m].double(), y.reshape(-1, y.shape[-1])[m].double()

        def sd(v):
            s = v.std(0, unbiased=False)
            return torch.where(s > 1e-12 * (1 + v.mean(0).abs()), s, torch.ones_like(s))

        x_mean, x_std = xs.mean(0), sd(xs)
        for c in keep_x:
            x_mean[c], x_std[c] = 0.0, 1.0
        y_mean, y_std = (ys.mean(0), sd(ys)) if outputs else (torch.zeros(ys.shape[-1]), torch.ones(ys.shape[-1]))
        return cls(tuple(x_mean.tolist()), tuple(x_std.tolist()), tuple(y_mean.tolist()), tuple(y_std.tolist()))

    def is_identity(self, tol: float = 1e-6) -> bool:
        return all(abs(v) < tol for v in self.x_mean + self.y_mean) and all(
            abs(v - 1) < tol for v in self.x_std + self.y_std)

    def to_dict(self) -> dict:
        return {k: list(getattr(self, k)) for k in ("x_mean", "x_std", "y_mean", "y_std")}

    @classmethod
    def from_dict(cls, d: dict) -> Standardization:
        try:
            return cls(*(tuple(float(v) for v in d[k]) for k in ("x_mean", "x_std", "y_mean", "y_std")))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a standardisation record: {err}") from err


def _names(columns: list[str] | str) -> list[str]:
    """One column name or several -> a list of names."""
    return [columns] if isinstance(columns, str) else list(columns)


def _check_columns(header: list[str], wanted: dict[str, list[str]], source: str, *,
                   may_be_empty: tuple[str, ...] = ()) -> dict[str, list[int]]:
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise ValueError(f"{source}: duplicate column name(s) {dup}")
    out = {}
    for role, cols in wanted.items():
        if not cols and role not in may_be_empty:
            raise ValueError(f"{source}: no {role} column given")
        twice = sorted({c for c in cols if cols.count(c) > 1})
        if twice:
            raise ValueError(f"{source}: {role} column(s) {twice} listed more than once ({role}={cols})")
        missing = [c for c in cols if c not in header]
        if missing:
            raise ValueError(f"{source}: missing {role} column(s) {missing}; the file has {header}")
        out[role] = [header.index(c) for c in cols]
    overlap = set(wanted.get("task", [])) & (set(wanted.get("x", [])) | set(wanted.get("y", [])))
    if overlap or set(wanted.get("x", [])) & set(wanted.get("y", [])):
        raise ValueError(f"{source}: a column is used twice among task, x and y: {wanted}")
    return out


def _range_error(source: str, row, column: str, value: float, shown: str | None = None) -> str | None:
    """Why a raw value cannot be used (non-finite, or beyond the float32 range), or ``None``.

    ``shown`` is how the value is quoted (default: its ``repr``; the file's own text for a CSV).
    """
    where, shown = f"{source}: row {row}, column {column!r}", shown or repr(value)
    if not math.isfinite(value):
        return f"{where}: non-finite value {shown}"
    if abs(value) > FLOAT32_MAX:
        return (f"{where}: value {shown} is out of range (|value| > {FLOAT32_MAX:.3g}, the float32 range "
                f"the models compute in)")
    return None


def _parse_float(text: str, source: str, row: int, column: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{source}: row {row}, column {column!r}: not a number: {text!r}") from None
    problem = _range_error(source, row, column, v, repr(text.strip()))
    if problem:
        raise ValueError(problem)
    return v


def _first_bad(values: np.ndarray, bad: np.ndarray, rows: np.ndarray, names: list[str]) -> tuple:
    """``(row number, column name, value)`` of the first flagged entry of ``values [n, F]`` in row order."""
    i, j = (int(v[0]) for v in np.nonzero(bad))
    return rows[i].item(), names[j], float(values[i, j])


def _read_rows(reader, wanted: dict[str, list[str]], source: str, single_task: str,
               task_optional: bool = False) -> tuple:
    """``(task ids, x rows, y rows, file row numbers)`` of a CSV reader (errors name the row and column).

    ``wanted`` names the ``task`` (optional), ``x`` and ``y`` (may be empty) columns; without a task
    column (or, with ``task_optional``, when the file has none) every row belongs to ``single_task``.
    """
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
        raise ValueError(f"{source}: empty file (no header row)")
    header = [h.strip() for h in header]
    if task_optional and "task" in wanted and wanted["task"][0] not in header:
        wanted = {role: cols for role, cols in wanted.items() if role != "task"}
    cols = _check_columns(header, wanted, source, may_be_empty=("y",))
    ids, xs, ys, rows = [], [], [], []
    for row_no, row in enumerate(reader, start=2):  # row 1 is the header
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{source}: row {row_no} has {len(row)} fields; the header has {len(header)}")
        task = single_task if "task" not in cols else row[cols["task"][0]].strip()
        if not task:
            raise ValueError(f"{source}: row {row_no}, column {header[cols['task'][0]]!r}: empty group id (a missing "
                             "value?); give every row its group")
        ids.append(task)
        xs.append([_parse_float(row[j], source, row_no, header[j]) for j in cols["x"]])
        ys.append([_parse_float(row[j], source, row_no, header[j]) for j in cols["y"]])
        rows.append(row_no)
    if not ids:
        raise ValueError(f"{source}: no data rows")
    return ids, xs, ys, rows


def standardize_pool(source, standardize: bool | None, *, default: bool, y: bool = True,
                     keep_x: tuple[int, ...] = ()):
    """``(source, standardization)``: a ``TaskBatch`` pool standardised column by column, or as it was.

    ``standardize=None`` means ``default`` for a ``TaskBatch`` and off for anything else (a task
    family sets its own scale); ``True`` for anything but a ``TaskBatch`` is an error.
    """
    if standardize is None:
        standardize = default and isinstance(source, TaskBatch)
    if not standardize:
        return source, None
    if not isinstance(source, TaskBatch):
        raise ValueError("standardize=True needs a TaskBatch pool (a task family sets its own scale)")
    std = Standardization.from_batch(source.validate(min_support=0), outputs=y, keep_x=keep_x)
    return std.batch(source), std


class TaskDataset:
    """Rows of a grouped table, grouped into tasks.

    Build with :meth:`from_csv`, :meth:`from_frame` or :meth:`from_arrays`. ``task_ids`` keeps the
    order of first appearance; ``x[i]`` is ``[n_i, D]`` and ``y[i]`` ``[n_i, E]`` (float64 numpy);
    ``rows[i]`` holds the rows' numbers in the source (a CSV's own row numbers, the header being
    row 1), which error messages name.

    Example:
        >>> ds = TaskDataset.from_arrays(["a", "a", "b", "b"], [[0.], [1.], [0.], [2.]], [[1.], [2.], [0.], [4.]])
        >>> ds.task_ids, ds.sizes
        (['a', 'b'], [2, 2])
    """

    def __init__(self, task_ids: list, x: list[np.ndarray], y: list[np.ndarray], *, x_names: list[str],
                 y_names: list[str], source: str = "data", rows: list[np.ndarray] | None = None) -> None:
        self.task_ids, self.x, self.y = list(task_ids), list(x), list(y)
        self.x_names, self.y_names, self.source = list(x_names), list(y_names), source
        if rows is None:  # row numbers in the source, for error messages (default: 0-based positions)
            starts = np.cumsum([0] + [len(v) for v in self.x])
            rows = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.task_ids)

    def __repr__(self) -> str:
        return (f"TaskDataset({len(self)} tasks, {sum(self.sizes)} rows, x={self.x_names}, y={self.y_names}, "
                f"source={self.source!r})")

    @property
    def sizes(self) -> list[int]:
        return [len(v) for v in self.x]

    @property
    def x_dim(self) -> int:
        return len(self.x_names)

    @property
    def y_dim(self) -> int:
        return len(self.y_names)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, task_ids, x, y, *, x_names=None, y_names=None, source: str = "arrays",
                    row_numbers=None) -> TaskDataset:
        """Group rows by ``task_ids`` (``[n]``); ``x [n, D]`` (or ``[n]``), ``y [n, E]`` (or ``[n]``).

        ``row_numbers`` (``[n]``, default ``0..n-1``) are the rows' numbers in the source, used in
        error messages. Every value must be finite and within the float32 range (``|v| <=``
        :data:`FLOAT32_MAX`); an error names the row, the column and the value.
        """
        ids = list(task_ids)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        y = y[:, None] if y.ndim == 1 else y
        if x.ndim != 2 or y.ndim != 2 or not len(ids) == len(x) == len(y):
            raise ValueError(f"{source}: task_ids ({len(ids)}), x {x.shape} and y {y.shape} must have one row each")
        if len(ids) == 0:
            raise ValueError(f"{source}: no rows")
        rows = np.arange(len(ids)) if row_numbers is None else np.asarray(row_numbers)
        x_names = list(x_names or [f"x{j}" for j in range(x.shape[1])])
        y_names = list(y_names or [f"y{j}" for j in range(y.shape[1])])
        for v, names in ((x, x_names), (y, y_names)):
            with np.errstate(invalid="ignore"):
                bad = ~(np.abs(v) <= FLOAT32_MAX)  # NaN, inf and out-of-range values
            if bad.any():
                raise ValueError(_range_error(source, *_first_bad(v, bad, rows, names)))
        groups: dict = {}
        for i, t in enumerate(ids):
            groups.setdefault(t, []).append(i)
        return cls(list(groups), [x[r] for r in groups.values()], [y[r] for r in groups.values()],
                   x_names=x_names, y_names=y_names, source=source, rows=[rows[r] for r in groups.values()])

    @classmethod
    def from_csv(cls, path, *, task: str | None, x: list[str] | str, y: list[str] | str,
                 single_task: str = "new", task_optional: bool = False) -> TaskDataset:
        """Read a CSV with a header row (no pandas needed). Errors name the file, row and column.

        The file is read as UTF-8; a byte-order mark (as Excel writes) is ignored. ``task=None``
        reads every row as one task named ``single_task``; so does ``task_optional=True`` when the
        file has no ``task`` column. ``y`` may be empty (``[]``: inputs only, e.g. query points;
        ``y[i]`` is then ``[n_i, 0]``). Row numbers in errors are the file's own (the header is
        row 1).

        Raises:
            FileNotFoundError: no such file. IsADirectoryError: ``path`` is a directory.
            OSError: the file cannot be read. ValueError: a problem with the content.
        """
        path = Path(path)
        x, y = _names(x), _names(y)
        wanted = {"x": x, "y": y} if task is None else {"task": [task], "x": x, "y": y}
        with open_csv(path) as reader:
            ids, xs, ys, rows = _read_rows(reader, wanted, str(path), single_task, task_optional)
        return cls.from_arrays(ids, np.asarray(xs, dtype=np.float64).reshape(len(ids), len(x)),
                               np.asarray(ys, dtype=np.float64).reshape(len(ids), len(y)), x_names=x, y_names=y,
                               source=str(path), row_numbers=rows)

    @classmethod
    def from_frame(cls, df, *, task: str, x: list[str] | str, y: list[str] | str) -> TaskDataset:
        """From a data frame (pandas or anything with ``columns`` and ``df[col].to_numpy()``)."""
        x, y = _names(x), _names(y)
        _check_columns([str(c) for c in df.columns], {"task": [task], "x": x, "y": y}, "data frame")
        numeric = {}
        for c in x + y:
            try:
                numeric[c] = np.asarray(df[c].to_numpy(), dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(f"data frame: column {c!r} is not numeric ({err})") from None
        ids = list(df[task].to_numpy())
        return cls.from_arrays(ids, np.stack([numeric[c] for c in x], 1), np.stack([numeric[c] for c in y], 1),
                               x_names=x, y_names=y, source="data frame")

    # ------------------------------------------------------------------ splits and standardisation
    def subset(self, ids) -> TaskDataset:
        index = {t: i for i, t in enumerate(self.task_ids)}
        missing = [t for t in ids if t not in index]
        if missing:
            raise ValueError(f"{self.source}: unknown task id(s) {missing[:10]}")
        sel = [index[t] for t in ids]
        return TaskDataset([self.task_ids[i] for i in sel], [self.x[i] for i in sel], [self.y[i] for i in sel],
                           x_names=self.x_names, y_names=self.y_names, source=self.source,
                           rows=[self.rows[i] for i in sel])

    def split(self, fractions=(0.8, 0.1, 0.1), *, seed: int = 0) -> tuple[TaskDataset, ...]:
        """Split *tasks* (not rows) at random into parts of the given fractions (e.g. train/val/test)."""
        if abs(sum(fractions) - 1) > 1e-9 or any(f < 0 for f in fractions):
            raise ValueError(f"fractions must be >= 0 and sum to 1; got {fractions}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        bounds = np.round(np.cumsum([0, *fractions]) * len(self)).astype(int)
        return tuple(self.subset([self.task_ids[i] for i in order[lo:hi]]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))

    def fit_standardization(self, *, outputs: bool = True, keep_x: tuple[int, ...] = ()) -> Standardization:
        """Mean and standard deviation of every column over all rows (a constant column gets std 1).

        ``outputs=False`` leaves y as it is (counts, labels); ``keep_x`` lists x columns left as they
        are (trials, a log exposure). Computed in float64: values within the float32 range (checked
        on construction) cannot overflow it. Check the result with :meth:`check_standardized`.
        """
        x, y = np.concatenate(self.x), np.concatenate(self.y)

        def sd(v):
            s = v.std(0)
            return np.where(s > 1e-12 * (1 + np.abs(v.mean(0))), s, 1.0)

        x_mean, x_sd = x.mean(0), sd(x)
        for c in keep_x:
            x_mean[c], x_sd[c] = 0.0, 1.0
        y_mean, y_sd = (y.mean(0), sd(y)) if outputs else (np.zeros(y.shape[1]), np.ones(y.shape[1]))
        return Standardization(tuple(x_mean.tolist()), tuple(x_sd.tolist()), tuple(y_mean.tolist()),
                               tuple(y_sd.tolist()))

    def check_standardized(self, standardization: Standardization, *, what: str = "") -> None:
        """Raise if a value is unusable after ``standardization``: non-finite, or beyond :data:`SAFE_ABS`.

        Beyond ``SAFE_ABS`` (~1.8e19) a value's square overflows float32, so the models' Gaussian
        log-densities would be infinite. The error names the source, its row number and the column.
        ``what`` (e.g. ``"with the run's standardisation"``) is added to the message.
        """
        for part, names, mean, sd in (("x", self.x_names, standardization.x_mean, standardization.x_std),
                                      ("y", self.y_names, standardization.y_mean, standardization.y_std)):
            values = getattr(self, part)
            if len(mean) != len(names):
                raise ValueError(f"{self.source}: {len(names)} {part} column(s) but the standardisation has "
                                 f"{len(mean)}")
            for task, v in enumerate(values):
                with np.errstate(over="ignore", invalid="ignore"):
                    z = (v - np.asarray(mean)) / np.asarray(sd)  # [n_i, F], float64
                    bad = ~(np.abs(z) <= SAFE_ABS)
                if bad.any():
                    row, col, value = _first_bad(v, bad, self.rows[task], names)
                    j = names.index(col)
                    where = f"{self.source}: row {row}, column {col!r}: value {value!r}"
                    if mean[j] == 0 and sd[j] == 1:
                        raise ValueError(f"{where} is beyond ±{SAFE_ABS:.2g}, where its square overflows float32 "
                                         "(the models compute in float32): rescale the column")
                    raise ValueError(
                        f"{where} is {z[bad][0]:.3g} after standardisation{' ' + what if what else ''} (mean "
                        f"{mean[j]:.6g}, sd {sd[j]:.6g}); beyond ±{SAFE_ABS:.2g} its square overflows float32")

    # ------------------------------------------------------------------ to TaskBatch
    def to_batch(self, standardization: Standardization | None = None, *, dtype=torch.float32) -> TaskBatch:
        """Every task's points as a support set (a training pool); optionally standardised (in float64)."""
        s = standardization or Standardization.identity(self.x_dim, self.y_dim)

        def std(v, mean, sd):
            return torch.as_tensor((v - np.asarray(mean)) / np.asarray(sd), dtype=dtype)

        return TaskBatch.from_arrays([std(v, s.x_mean, s.x_std) for v in self.x],
                                     [std(v, s.y_mean, s.y_std) for v in self.y])

    def sample_batch(self, num_tasks: int, shots: int, num_query: int, generator: torch.Generator,
                     *, dtype=torch.float32) -> TaskBatch:
        """``num_tasks`` random tasks (with replacement) with a random ``shots``/``num_query`` split each.

        Tasks with fewer than ``shots + 1`` points are never drawn; query sets are capped at
        what a task has left (the rest is masked).
        """
        eligible = [i for i, n in enumerate(self.sizes) if n > shots]
        if not eligible:
            raise ValueError(f"{self.source}: no task has more than {shots} rows")
        pick = torch.randint(len(eligible), (num_tasks,), generator=generator).tolist()
        xs_s, ys_s, xs_q, ys_q = [], [], [], []
        for j in pick:
            i = eligible[j]
            perm = torch.randperm(self.sizes[i], generator=generator).numpy()
            s, q = perm[:shots], perm[shots : shots + num_query]
            xs_s.append(self.x[i][s])
            ys_s.append(self.y[i][s])
            xs_q.append(self.x[i][q])
            ys_q.append(self.y[i][q])
        return _ragged_batch(xs_s, ys_s, xs_q, ys_q, self.x_dim, self.y_dim, dtype)

    def kshot(self, shots: int, *, seed: int = 0, dtype=torch.float32) -> tuple[TaskBatch, list, list]:
        """Deterministic evaluation split: per task, ``shots`` support rows and every other row as query.

        Rows are permuted per task from ``seed`` (the same split on every machine). Tasks with at
        most ``shots`` rows are left out and returned as the third element (report them).

        Returns:
            ``(TaskBatch, kept task ids, skipped task ids)``.
        """
        check_ints(shots=(shots, 0))
        kept, skipped = [], []
        parts: tuple[list, list, list, list] = ([], [], [], [])  # x, y of support; x, y of query
        for i, t in enumerate(self.task_ids):
            n = self.sizes[i]
            if n <= shots:
                skipped.append(t)
                continue
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + i)).numpy()
            for part, v in zip(parts, (self.x[i][perm[:shots]], self.y[i][perm[:shots]], self.x[i][perm[shots:]],
                                       self.y[i][perm[shots:]]), strict=True):
                part.append(v)
            kept.append(t)
        if not kept:
            raise ValueError(f"{self.source}: no task has more than {shots} rows (needed for {shots} shots and a query)")
        return _ragged_batch(*parts, self.x_dim, self.y_dim, dtype), kept, skipped


def _ragged_batch(xs_s, ys_s, xs_q, ys_q, x_dim: int, y_dim: int, dtype) -> TaskBatch:
    """Pad per-task arrays (support sets may be empty) into a TaskBatch."""
    def pad(arrays, width):
        return pad_ragged([torch.as_tensor(a, dtype=dtype).reshape(len(a), width) for a in arrays])

    (xs, ms), (ys, _), (xq, mq), (yq, _) = pad(xs_s, x_dim), pad(ys_s, y_dim), pad(xs_q, x_dim), pad(ys_q, y_dim)
    return TaskBatch(xs, ys, ms, xq, yq, mq)
