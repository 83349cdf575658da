"""Few-shot classification runs (``bayesmeta fit --task-kind classification``, ``evaluate``, ``predict``).

A classification run directory holds ``run.json`` (the source -- a CSV table or an image folder --
the method, its settings and the class split), ``classifier.pt`` (weights) and, after
``evaluate``, ``eval.json``. Classes are split 60/20/20 into meta-train, validation and test
classes (by group for ``root/<group>/<class>`` image trees); ``evaluate`` scores N-way K-shot
episodes of the test classes, ``predict`` writes class probabilities for each query row.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..fewshot import CLASSIFIERS, TemperatureScaled
from ..io import atomic_torch_save, atomic_write_text, file_error, read_json, read_torch_file
from ..tasks import Episodes, LabelledPool
from ..tasks.episodes import is_number
from .directory import Undo

__all__ = ["evaluate_classifier_run", "fit_classifier_run", "is_classification_run", "predict_classifier_run"]

_FORMAT = "bayesmeta.ClassificationRun/1"
_SPLIT = (0.6, 0.2, 0.2)


def _pool(source: dict) -> LabelledPool:
    if source["kind"] == "csv":
        return LabelledPool.from_csv(source["path"], label=source["label"], features=source["features"] or None)
    return LabelledPool.from_images(source["path"], size=source["size"], rotations=source["rotations"])


def _build(method: str, x_dim: int, ways: int):
    cls = CLASSIFIERS[method]
    return cls(x_dim) if method in ("bayes-proto", "protonet", "siamese") else cls(x_dim, ways)


def is_classification_run(run: Path) -> bool:
    """A classification run directory: its ``run.json`` says so (a regression run has a ``config.toml``)."""
    run = Path(run)
    path = run / "run.json"
    if (run / "config.toml").is_file() or not path.is_file():
        return False
    info = read_json(path, "classification run's record")
    return isinstance(info, dict) and info.get("format") == _FORMAT


def fit_classifier_run(out, *, data=None, label=None, features=None, images=None, image_size: int = 28,
                       rotations: bool = False, method: str = "bayes-proto", ways: int = 5, steps: int | None = None,
                       max_time: float | None = None, seed: int | None = None, device: str | None = None,
                       progress: bool = True, force: bool = False) -> Path:
    """Train a few-shot classifier on the meta-train classes of a table (``data`` CSV with a ``label``
    column) or an image folder (``images``) into the run directory ``out``."""
    if bool(data) == bool(images):
        raise ValueError("fit --task-kind classification: give exactly one of --data CSV (with --label) or --images DIR")
    if data and not label:
        raise ValueError("fit --task-kind classification: --label COLUMN is required with --data")
    if method not in CLASSIFIERS:
        raise ValueError(f"--method: {method!r} is not a classifier; choose from {sorted(CLASSIFIERS)}")
    if images and image_size < 1:
        raise ValueError(f"--image-size must be an int >= 1 (pixels per side); got {image_size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"--out: {out} is not empty; use --force to write the run there")
    source: dict[str, Any] = ({"kind": "csv", "path": str(Path(data).resolve()), "label": label,
               "features": list(features or [])} if data else
              {"kind": "images", "path": str(Path(images).resolve()), "size": image_size,
               "rotations": rotations})
    seed = 0 if seed is None else seed
    pool = _pool(source)
    train, val, test = pool.split(_SPLIT, seed=seed)
    for name, part in (("meta-train", train), ("validation", val), ("test", test)):
        part.check_episodes(ways, 2, what=f"{name} classes")
    clf = _build(method, pool.x_dim, ways)
    val_shots = tuple(k for k in (1, 5) if k < int(val.counts.min()))
    clf.fit(Episodes(train, ways), steps=steps or 2000, max_time=max_time, seed=seed,
            device=device or "cpu", progress=progress,
            max_points=min(20, int(train.counts.min())), validation=Episodes(val, ways), val_shots=val_shots)
    temperature = 1.0
    if method != "bayes-proto":  # point estimates: temperature-scaled on validation episodes
        shots = min(5, int(val.counts.min()) - 1)
        episodes = Episodes(val, ways).sample(200, shots=shots, num_query=1, generator=torch.Generator().manual_seed(seed))
        temperature = TemperatureScaled(clf).calibrate(episodes).temperature
    if source["kind"] == "csv" and not source["features"]:  # the resolved columns, for predict
        with open(source["path"], newline="", encoding="utf-8-sig") as f:
            source["features"] = [c for c in next(csv.reader(f)) if c != label]
    info = {"format": _FORMAT, "task_kind": "classification", "source": source, "method": method,
            "ways": ways, "x_dim": pool.x_dim, "seed": seed, "temperature": temperature,
            "classes": {"train": train.classes, "validation": val.classes, "test": test.classes},
            "train_steps": clf.history.step[-1] if clf.history.step else 0, "best_step": clf.history.best_step}
    _write_run(out, {"state": clf.net.state_dict(), "history": clf.history.as_dict()}, info)
    print(f"trained {method} ({info['train_steps']} steps) on {train.num_classes} classes; wrote {out}",
          file=sys.stderr)
    return out


def _write_run(out: Path, weights: dict, info: dict) -> None:
    """``classifier.pt`` and ``run.json`` in ``out``: both or neither (a failed write leaves what was there)."""
    undo = Undo(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise file_error(err, out, "create the directory") from err
    undo.snapshot(["classifier.pt", "run.json"])
    try:
        atomic_torch_save(weights, out / "classifier.pt")
        atomic_write_text(json.dumps(info, indent=1, default=str), out / "run.json")
    except BaseException:
        undo.restore_files()
        undo.remove_new_dirs()
        raise
    undo.discard()


def _load(run: Path):
    """``(info, classifier, model)`` of a classification run; a damaged file is an error naming it."""
    path = run / "run.json"
    info = read_json(path, "classification run's record")
    try:
        clf = _build(info["method"], info["x_dim"], info["ways"])
        temperature = float(info["temperature"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a classification run's record ({type(err).__name__}: {err})") from None
    weights = run / "classifier.pt"
    state = read_torch_file(weights, damaged=lambda err: _damaged(weights, err),
                            missing="no such file (did `bayesmeta fit` finish?)")
    try:
        clf.net.load_state_dict(state["state"])
    except (KeyError, TypeError, IndexError, RuntimeError) as err:
        raise _damaged(weights, err) from err
    model = clf if temperature == 1.0 else TemperatureScaled(clf, temperature)
    return info, clf, model


def _damaged(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: not this run's saved classifier, or a corrupt or truncated file ({type(err).__name__} "
                      "while loading it)")


def evaluate_classifier_run(run, *, shots=(1, 5), ways: int | None = None, episodes: int = 1000, seed: int = 0,
                            progress: bool = True):
    """Score N-way K-shot episodes of the run's test classes; writes ``eval.json`` and returns the evaluation."""
    from ..evaluation import evaluate

    run = Path(run)
    shots = list(shots)
    info, _, model = _load(run)
    ways = ways or info["ways"]
    if ways != info["ways"] and info["method"] not in ("bayes-proto", "protonet", "siamese"):
        raise ValueError(f"--ways: {info['method']} has a {info['ways']}-way head; it cannot score {ways}-way episodes")
    if min(shots) < 1:
        raise ValueError(f"--shots: every shot count must be >= 1 for classification; got {shots}")
    if episodes < 1:
        raise ValueError(f"--episodes must be an int >= 1 (test episodes per shot count); got {episodes}")
    test = _pool(info["source"]).subset(info["classes"]["test"])
    per_class = int(test.counts.min())
    query = min(15, per_class - max(shots))
    if query < 1:
        raise ValueError(f"--shots: a test class has {per_class} examples, too few for {max(shots)} shots and "
                         "a query example")
    fam = Episodes(test, ways)
    sets = {k: fam.sample(episodes, shots=k, num_query=query, generator=torch.Generator().manual_seed(seed + k))
            for k in shots}
    ev = evaluate(model, sets, name=info["method"], oracle=False, seed=seed, progress=progress)
    ev.to_json(run / "eval.json")
    return ev


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _features(rows: list[dict], columns: list[str], path, all_rows: list[dict]) -> torch.Tensor:
    """``[n, D]`` features of ``rows``; a cell that is not a number is an error naming file, line and column."""
    out = []
    for r in rows:
        try:
            out.append([float(r[c]) for c in columns])
        except (TypeError, ValueError):
            bad = next(c for c in columns if not is_number(r[c]))
            raise ValueError(f"{Path(path).name}, line {all_rows.index(r) + 2}: column {bad!r} is not a number: "
                             f"{r[bad]!r}") from None
    x = torch.tensor(out)
    if not torch.isfinite(x).all():
        raise ValueError(f"{Path(path).name}: a feature is not finite")
    return x


def predict_classifier_run(run, support, query, out, *, task: str = "task", force: bool = False) -> Path:
    """Class probabilities for each ``query`` CSV row, given each task's labelled ``support`` rows; writes ``out``."""
    run = Path(run)
    info, _, model = _load(run)
    src = info["source"]
    if src["kind"] != "csv":
        raise ValueError("predict: a classification run on images predicts from the Python API (fewshot.adapt)")
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"--out: {out} exists; use --force to replace it")
    features = src["features"]
    support_path, query_path = Path(support), Path(query)
    support, query = _rows(support_path), _rows(query_path)
    task_col = task
    for name, rows, need in (("--support", support, [task_col, src["label"], *features]),
                             ("--query", query, [task_col, *features])):
        missing = [c for c in need if rows and c not in rows[0]]
        if not rows or missing:
            raise ValueError(f"{name}: {'no rows' if not rows else f'missing column(s) {missing}'}")
    results = []
    for task_id in dict.fromkeys(r[task_col] for r in query):
        s = [r for r in support if r[task_col] == task_id]
        names = sorted({r[src["label"]] for r in s})
        if len(names) < 2:
            raise ValueError(f"--support: task {task_id!r} has {len(names)} class(es); a classifier needs 2 or more")
        if len(names) > info["ways"] and info["method"] not in ("bayes-proto", "protonet", "siamese"):
            raise ValueError(f"--support: task {task_id!r} has {len(names)} classes; {info['method']} was trained "
                             f"{info['ways']}-way")
        xs = _features(s, features, support_path, support)[None]
        ys = torch.tensor([float(names.index(r[src["label"]])) for r in s])[None]
        q = [r for r in query if r[task_col] == task_id]
        xq = _features(q, features, query_path, query)[None]
        probs = model.adapt(xs, ys).predict(xq).probs[0][:, :len(names)]  # [N, C]: the task's classes
        probs = probs / probs.sum(-1, keepdim=True)  # a fixed-size head's unused classes are dropped
        for r, p in zip(q, probs.tolist(), strict=True):
            best = max(range(len(names)), key=lambda i: p[i])
            results.append({task_col: task_id, **{c: r[c] for c in features}, "predicted": names[best],
                            **{f"p_{n}": f"{p[i]:.6g}" for i, n in enumerate(names)}})
    header = list(dict.fromkeys(k for r in results for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="")
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(buf.getvalue(), out)
    print(f"wrote {out} ({len(results)} rows)", file=sys.stderr)
    return out
