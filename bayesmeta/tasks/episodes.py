"""Few-shot classification episodes: a labelled pool of examples becomes N-way K-shot tasks.

A :class:`LabelledPool` holds examples (feature rows or flattened images) with their class, and
optionally a *group* per class (Omniglot's alphabets; the digit a rotated digit class came from).
:meth:`LabelledPool.split` divides the **classes** (by group when there are groups) into
meta-train, meta-validation and meta-test pools, so test classes are never seen in training.
:class:`Episodes` samples N-way K-shot tasks from a pool: each task picks ``ways`` classes,
relabels them ``0..ways-1`` in random order, and draws ``shots`` support and ``num_query`` query
examples per class without replacement. Labels are stored as ``y [T, S, 1]`` floats holding whole
numbers (``TaskBatch.labels`` gives them as ``long [T, S]``).

Sources: arrays (:meth:`LabelledPool.from_arrays`), a CSV table with a label column
(:meth:`~LabelledPool.from_csv`), an image tree ``root/<class>/*.png`` or
``root/<group>/<class>/*.png`` loaded with Pillow (:meth:`~LabelledPool.from_images`, with
rotations by 90, 180 and 270 degrees as new classes, the Omniglot convention), and scikit-learn's
bundled 8x8 digits (:meth:`~LabelledPool.digits`: 10 digits x 4 rotations = 40 classes).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._checks import check_ints
from .batch import TaskBatch
from .family import TaskFamily

__all__ = ["Episodes", "LabelledPool", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def _class_names(labels) -> tuple[list, np.ndarray]:
    """Sorted distinct labels and each example's index among them; floats must be whole numbers."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one label per example (1-d); got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"labels must be integers or names; example {i} has label {arr[i].item()!r}")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iuUSO":
        raise ValueError(f"labels must be integers or names; got dtype {arr.dtype}")
    names, index = np.unique(arr.astype(str) if arr.dtype.kind == "O" else arr, return_inverse=True)
    return names.tolist(), index


class LabelledPool:
    """Examples with class labels (and optional class groups), ready to be cut into episodes.

    Args:
        x: ``[M, D]`` features (images flattened), finite.
        labels: ``[M]`` class of each example: integers or names.
        groups: optional ``{class: group}``; :meth:`split` then keeps each group's classes together.
        shape: the image shape ``(H, W)`` when rows are flattened images (for plots).

    Example:
        >>> pool = LabelledPool.from_arrays(torch.randn(40, 3), [i % 4 for i in range(40)])
        >>> pool.num_classes, pool.counts.tolist()
        (4, [10, 10, 10, 10])
    """

    def __init__(self, x, labels, *, groups: dict | None = None, shape: tuple[int, ...] | None = None) -> None:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if x.dim() != 2:
            raise ValueError(f"x must have shape [examples, features]; got {tuple(x.shape)}")
        names, index = _class_names(labels)
        if len(index) != x.shape[0]:
            raise ValueError(f"labels: {len(index)} labels for {x.shape[0]} examples")
        bad = ~torch.isfinite(x).all(1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"x: example {i} (class {names[index[i]]!r}) has a non-finite feature")
        self.x, self.classes, self.shape = x, list(names), shape
        self.label = torch.as_tensor(index, dtype=torch.long)  # [M] index into classes
        self.groups = None if groups is None else {c: groups[c] for c in self.classes}
        self.counts = torch.bincount(self.label, minlength=len(self.classes))  # [C]
        order = torch.argsort(self.label, stable=True)
        width = int(self.counts.max()) if len(self.classes) else 0
        self._table = torch.full((len(self.classes), width), -1, dtype=torch.long)  # [C, max count] example ids
        pos = torch.arange(len(order)) - torch.repeat_interleave(torch.cumsum(self.counts, 0) - self.counts, self.counts)
        self._table[self.label[order], pos] = order

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_arrays(cls, x, labels, *, groups: dict | None = None) -> LabelledPool:
        """A pool from a feature matrix ``[M, D]`` and a label per row."""
        return cls(x, labels, groups=groups)

    @classmethod
    def from_csv(cls, path, *, label: str, features: Sequence[str] | None = None) -> LabelledPool:
        """A pool from a CSV table with a header: the ``label`` column and numeric ``features`` (default: all others)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"data: no such file {str(path)!r}")
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if label not in header:
                raise ValueError(f"label: no column {label!r} in {path.name} (columns: {header})")
            cols = [c for c in header if c != label] if features is None else list(features)
            missing = [c for c in cols if c not in header]
            if missing or not cols:
                raise ValueError(f"features: {missing or 'none'} not in {path.name} (columns: {header})")
            if label in cols:
                raise ValueError(f"features: the label column {label!r} cannot also be a feature")
            rows, labels = [], []
            for line, row in enumerate(reader, start=2):
                try:
                    values = [float(row[c]) for c in cols]
                except (TypeError, ValueError):
                    bad = next(c for c in cols if not is_number(row[c]))
                    raise ValueError(f"{path.name}, line {line}: column {bad!r} is not a number: {row[bad]!r}") from None
                if not all(math.isfinite(v) for v in values):
                    raise ValueError(f"{path.name}, line {line}: a feature is not finite: {values}")
                if row[label] is None or not row[label].strip():
                    raise ValueError(f"{path.name}, line {line}: no label in column {label!r}")
                rows.append(values)
                labels.append(row[label].strip())
        if not rows:
            raise ValueError(f"{path.name}: no data rows")
        return cls(rows, _maybe_int(labels))

    @classmethod
    def from_images(cls, root, *, size: int | tuple[int, int] = 28, rotations: bool = False,
                    mode: str = "L") -> LabelledPool:
        """A pool from an image tree: ``root/<class>/*.png`` or ``root/<group>/<class>/*.png``.

        Images are loaded with Pillow, converted to ``mode`` (grayscale by default), resized to
        ``size`` and scaled to [0, 1] (16-bit images by their full 0..65535 range). With
        ``rotations`` each class also appears rotated by 90, 180 and 270 degrees as three new
        classes of the same group. Unreadable files, empty class folders and files beside the class
        folders are errors naming them.
        """
        from PIL import UnidentifiedImageError

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"images: no such directory {str(root)!r}")
        hw = _image_size(size)
        class_dirs = _check_class_dirs(_class_dirs(root), root)
        xs, labels, groups = [], [], {}
        for group, name, folder in class_dirs:
            files = sorted(p for p in folder.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
            if not files:
                raise ValueError(f"images: class folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for p in files:
                try:
                    arr = _load_image(p, mode, hw)
                except (UnidentifiedImageError, OSError) as err:
                    raise ValueError(f"images: cannot read {str(p)!r}: {err}") from None
                for r in range(4 if rotations else 1):
                    key = name if not rotations else f"{name}/rot{90 * r}"
                    xs.append(np.rot90(arr, r, axes=(0, 1)).reshape(-1))
                    labels.append(key)
                    groups[key] = group
        square = hw[0] == hw[1] or not rotations  # rotated non-square images do not share one shape
        return cls(np.stack(xs), labels, groups=groups, shape=(hw[0], hw[1]) if mode == "L" and square else None)

    @classmethod
    def digits(cls, *, rotations: bool = True) -> LabelledPool:
        """scikit-learn's bundled 8x8 digits (1797 images; no download), pixels scaled to [0, 1].

        With ``rotations`` (default) each digit also appears rotated by 90, 180 and 270 degrees as
        new classes: 40 classes grouped by digit, so a split keeps a digit's rotations together.
        """
        try:
            from sklearn.datasets import load_digits  # type: ignore[import-untyped]
        except ImportError as err:
            raise ImportError("LabelledPool.digits needs scikit-learn (pip install scikit-learn); its digits "
                              "ship inside the package") from err
        d = load_digits()
        images = d.images.astype(np.float32) / 16.0  # [M, 8, 8]
        xs, labels, groups = [], [], {}
        for r in range(4 if rotations else 1):
            xs.append(np.rot90(images, r, axes=(1, 2)).reshape(len(images), -1))
            for t in d.target:
                key = f"{t}/rot{90 * r}" if rotations else str(t)
                labels.append(key)
                groups[key] = str(t)
        return cls(np.concatenate(xs), labels, groups=groups, shape=(8, 8))

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def x_dim(self) -> int:
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return f"LabelledPool(examples={len(self)}, classes={self.num_classes}, features={self.x_dim})"

    def subset(self, classes: Sequence) -> LabelledPool:
        """The pool restricted to ``classes`` (names as in :attr:`classes`)."""
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise ValueError(f"classes: {unknown[:5]} not in the pool")
        ids = torch.as_tensor([self.classes.index(c) for c in classes], dtype=torch.long)
        keep = torch.isin(self.label, ids)
        names = [self.classes[int(i)] for i in self.label[keep]]
        return LabelledPool(self.x[keep], np.asarray(names), groups=self.groups, shape=self.shape)

    def split(self, fractions: Sequence[float] = (0.6, 0.2, 0.2), *, seed: int = 0) -> tuple[LabelledPool, ...]:
        """Disjoint class sets (whole groups when the pool has groups), e.g. meta-train / validation / test.

        Groups (or classes) are shuffled with ``seed`` and cut in order at the cumulative
        ``fractions`` (which must sum to 1): each part gets at least one group.
        """
        fr = [float(f) for f in fractions]
        if len(fr) < 2 or any(not f > 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise ValueError(f"fractions must be >= 2 numbers > 0 that sum to 1; got {list(fractions)}")
        units = sorted(set(self.groups.values())) if self.groups else list(self.classes)
        if len(units) < len(fr):
            kind = "groups" if self.groups else "classes"
            raise ValueError(f"split: {len(units)} {kind} cannot be cut into {len(fr)} parts")
        order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
        cuts = [int(c) for c in np.round(np.cumsum([0.0, *fr]) * len(units))]
        cuts[-1] = len(units)
        for i in range(1, len(fr)):  # every part gets at least one unit, and leaves one for each part after it
            cuts[i] = min(max(cuts[i], cuts[i - 1] + 1), len(units) - (len(fr) - i))
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            chosen = {units[i] for i in order[a:b]}
            classes = [c for c in self.classes if (self.groups[c] if self.groups else c) in chosen]
            parts.append(self.subset(classes))
        return tuple(parts)

    # ------------------------------------------------------------------ sampling
    def check_episodes(self, ways: int, per_class: int, *, what: str = "pool") -> None:
        """Raise naming the class when the pool cannot give ``ways`` classes with ``per_class`` examples."""
        if self.num_classes < ways:
            raise ValueError(f"{what}: {self.num_classes} classes, fewer than ways={ways}")
        short = (self.counts < per_class).nonzero()[:, 0].tolist()
        if short:
            names = [f"{self.classes[i]!r} ({int(self.counts[i])})" for i in short[:5]]
            raise ValueError(f"{what}: class {', '.join(names)}{' ...' if len(short) > 5 else ''} has fewer than "
                             f"shots + num_query = {per_class} examples")

    def episode_indices(self, num_tasks: int, ways: int, per_class: int, generator: torch.Generator) -> torch.Tensor:
        """Example ids ``[T, ways, per_class]``: random classes, random distinct examples of each."""
        classes = torch.rand(num_tasks, self.num_classes, generator=generator).argsort(-1)[:, :ways]  # [T, W]
        counts = self.counts[classes]  # [T, W]
        width = self._table.shape[1]
        keys = torch.rand(num_tasks, ways, width, generator=generator)
        keys = keys.masked_fill(torch.arange(width) >= counts[..., None], 2.0)  # padding sorts last
        pick = keys.argsort(-1)[..., :per_class]  # [T, W, n] positions within each class
        return self._table[classes[..., None], pick]


def is_number(value) -> bool:
    """Whether ``float(value)`` works (a CSV cell that is a number)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _maybe_int(labels: list[str]) -> list:
    """CSV labels as ints when every one is a whole number (``"3"``), else as names."""
    try:
        return [int(v) for v in labels]
    except ValueError:
        return labels


def _image_size(size) -> tuple[int, int]:
    """``(height, width)`` from ``size`` (an int or a pair), each an int >= 1."""
    hw = (size, size) if isinstance(size, int | np.integer) else size
    if not isinstance(hw, tuple | list) or len(hw) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in hw):
        raise ValueError(f"images: size must be an int >= 1 or a pair (height, width) of them; got {size!r}")
    return int(hw[0]), int(hw[1])


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _load_image(path: Path, mode: str, hw: tuple[int, int]) -> np.ndarray:
    """One image as a float32 array in [0, 1], converted to ``mode`` and resized to ``hw``.

    Pillow's ``convert`` clips 16-bit grey levels (0..65535) at 255; they are scaled to 8 bits first.
    """
    from PIL import Image

    with Image.open(path) as im:
        lo, hi = _grey_range(im) if im.mode in (*_SIXTEEN_BIT, "I") else (0.0, 255.0)
        if im.mode in _SIXTEEN_BIT or hi > 255:
            if lo < 0 or hi > 65535:
                raise OSError(f"32-bit grey levels {lo}..{hi} outside 0..65535")
            grey = np.asarray(im, dtype=np.float64) / 65535.0  # [H, W] in [0, 1]
            im8 = Image.fromarray(np.round(grey * 255).astype(np.uint8))
            return np.asarray(im8.convert(mode).resize(hw[::-1]), dtype=np.float32) / 255.0
        return np.asarray(im.convert(mode).resize(hw[::-1]), dtype=np.float32) / 255.0


def _grey_range(im) -> tuple[float, float]:
    """``(min, max)`` grey level of a one-band image."""
    lo, hi = im.getextrema()
    return float(lo), float(hi)


def _visible(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(folders, files)`` in ``folder``, hidden ones (``.DS_Store``, ``.ipynb_checkpoints``) left out."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return [p for p in entries if p.is_dir()], [p for p in entries if not p.is_dir()]


def _no_stray_files(folder: Path, files: list[Path]) -> None:
    if files:
        raise ValueError(f"images: {str(files[0])!r} is a file beside the class folders of {str(folder)!r}; an image "
                         f"tree holds only folders there (root/<class>/*.png or root/<group>/<class>/*.png): move or "
                         f"delete it{f' (and {len(files) - 1} more)' if len(files) > 1 else ''}")


def _class_dirs(root: Path) -> list[tuple[str, str, Path]]:
    """``(group, class name, folder)``: ``root/<class>/`` files, or ``root/<group>/<class>/`` files."""
    subdirs, files = _visible(root)
    if not subdirs:
        raise ValueError(f"images: {str(root)!r} has no class folders (expected root/<class>/*.png or "
                         "root/<group>/<class>/*.png)")
    _no_stray_files(root, files)
    inner = {d: _visible(d) for d in subdirs}
    nested = [d for d in subdirs if inner[d][0]]
    if nested and len(nested) != len(subdirs):
        flat = sorted(set(subdirs) - set(nested))
        raise ValueError(f"images: mixed layout under {str(root)!r}: {flat[0].name!r} holds files but "
                         f"{nested[0].name!r} holds folders")
    if not nested:
        return [(d.name, d.name, d) for d in subdirs]
    for g in subdirs:
        _no_stray_files(g, inner[g][1])
    return [(g.name, f"{g.name}/{c.name}", c) for g in subdirs for c in inner[g][0]]


def _check_class_dirs(found: list, root: Path) -> list:
    if not found:
        raise ValueError(f"images: no class folders under {str(root)!r}")
    return found


class Episodes(TaskFamily):
    """N-way K-shot classification tasks from a :class:`LabelledPool`.

    ``sample(num_tasks, shots, num_query)`` draws ``shots`` support and ``num_query`` query
    examples **per class**; support and query are each ordered class by class, labels ``0..ways-1``
    are assigned to the chosen classes in random order. Meta-training draws whole episodes
    (``episodic = True``) and the learner splits each class's examples into support and query.

    Args:
        pool: the examples (typically one part of :meth:`LabelledPool.split`).
        ways: classes per task (N).

    Example:
        >>> pool = LabelledPool.from_arrays(torch.randn(60, 2), [i % 6 for i in range(60)])
        >>> b = Episodes(pool, ways=3).sample(4, shots=1, num_query=2)
        >>> tuple(b.x_support.shape), b.labels[0].tolist()
        ((4, 3, 2), [0, 1, 2])
    """

    episodic = True
    y_dim = 1

    def __init__(self, pool: LabelledPool, ways: int = 5) -> None:
        if not isinstance(pool, LabelledPool):
            raise TypeError(f"pool must be a LabelledPool; got {type(pool).__name__}")
        check_ints(ways=(ways, 2))
        pool.check_episodes(ways, 1)
        self.pool, self.ways, self.x_dim = pool, ways, pool.x_dim

    def __repr__(self) -> str:
        return f"Episodes({self.pool!r}, ways={self.ways})"

    def sample(self, num_tasks: int, shots: int, num_query: int = 0,
               generator: torch.Generator | None = None) -> TaskBatch:
        check_ints(num_tasks=(num_tasks, 1), shots=(shots, 0), num_query=(num_query, 0))
        per_class = shots + num_query
        if per_class < 1:
            raise ValueError("shots + num_query must be >= 1")
        self.pool.check_episodes(self.ways, per_class)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        ids = self.pool.episode_indices(num_tasks, self.ways, per_class, g)  # [T, W, n]
        x = self.pool.x[ids]  # [T, W, n, D]
        y = torch.arange(self.ways, dtype=x.dtype)[None, :, None, None].expand(num_tasks, -1, per_class, 1)
        return episode_batch(x, y.contiguous(), shots)


def episode_batch(x: torch.Tensor, y: torch.Tensor, shots: int) -> TaskBatch:
    """``x [T, W, n, D]``, labels ``y [T, W, n, 1]`` -> a TaskBatch with the first ``shots`` per class as support."""
    t, w, n, d = x.shape
    flat = lambda v, a, b: v[:, :, a:b].reshape(t, w * (b - a), v.shape[-1])  # noqa: E731
    ones = lambda k: torch.ones(t, w * k, dtype=torch.bool)  # noqa: E731
    params = {"ways": torch.full((t,), w, dtype=torch.long)}  # marks an episode: shots count per class
    if n > shots:
        return TaskBatch(flat(x, 0, shots), flat(y, 0, shots), ones(shots), flat(x, shots, n), flat(y, shots, n),
                         ones(n - shots), params=params)
    return TaskBatch(flat(x, 0, shots), flat(y, 0, shots), ones(shots), params=params)
