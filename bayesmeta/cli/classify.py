"""The command line's few-shot classification runs: ``fit --task-kind classification``, ``evaluate``, ``predict``.

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

import torch

from ..fewshot import CLASSIFIERS, TemperatureScaled
from ..io import atomic_torch_save, atomic_write_text, file_error, read_json, read_torch_file
from ..tasks import Episodes, LabelledPool
from ..tasks.episodes import is_number
from .rundir import Undo

__all__ = ["cmd_fit_classifier", "cmd_evaluate_classifier", "cmd_predict_classifier", "is_classification_run"]

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


def cmd_fit_classifier(args) -> Path:
    """Train a few-shot classifier on the meta-train classes of a table or image folder."""
    if bool(args.data) == bool(args.images):
        raise ValueError("fit --task-kind classification: give exactly one of --data CSV (with --label) or --images DIR")
    if args.data and not args.label:
        raise ValueError("fit --task-kind classification: --label COLUMN is required with --data")
    if args.method not in CLASSIFIERS:
        raise ValueError(f"--method: {args.method!r} is not a classifier; choose from {sorted(CLASSIFIERS)}")
    ignored = [f for f, v in (("--task", args.task), ("--x", args.x), ("--y", args.y), ("--model", args.model),
                              ("--likelihood", args.likelihood), ("--trials", args.trials), ("--offset", args.offset),
                              ("--config", args.config), ("--set", args.set), ("--resume", args.resume)) if v]
    if ignored:
        raise ValueError(f"{', '.join(ignored)}: not used by --task-kind classification")
    if args.images and args.image_size < 1:
        raise ValueError(f"--image-size must be an int >= 1 (pixels per side); got {args.image_size}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"--out: {out} is not empty; use --force to write the run there")
    source = ({"kind": "csv", "path": str(Path(args.data).resolve()), "label": args.label,
               "features": list(args.features or [])} if args.data else
              {"kind": "images", "path": str(Path(args.images).resolve()), "size": args.image_size,
               "rotations": args.rotations})
    seed = 0 if args.seed is None else args.seed
    pool = _pool(source)
    train, val, test = pool.split(_SPLIT, seed=seed)
    ways = args.ways
    for name, part in (("meta-train", train), ("validation", val), ("test", test)):
        part.check_episodes(ways, 2, what=f"{name} classes")
    clf = _build(args.method, pool.x_dim, ways)
    val_shots = tuple(k for k in (1, 5) if k < int(val.counts.min()))
    clf.fit(Episodes(train, ways), steps=args.steps or 2000, max_time=args.max_time, seed=seed,
            device=args.device or "cpu", progress=not args.no_progress,
            max_points=min(20, int(train.counts.min())), validation=Episodes(val, ways), val_shots=val_shots)
    temperature = 1.0
    if args.method != "bayes-proto":  # point estimates: temperature-scaled on validation episodes
        shots = min(5, int(val.counts.min()) - 1)
        episodes = Episodes(val, ways).sample(200, shots=shots, num_query=1, generator=torch.Generator().manual_seed(seed))
        temperature = TemperatureScaled(clf).calibrate(episodes).temperature
    if source["kind"] == "csv" and not source["features"]:  # the resolved columns, for predict
        with open(source["path"], newline="", encoding="utf-8-sig") as f:
            source["features"] = [c for c in next(csv.reader(f)) if c != args.label]
    info = {"format": _FORMAT, "task_kind": "classification", "source": source, "method": args.method,
            "ways": ways, "x_dim": pool.x_dim, "seed": seed, "temperature": temperature,
            "classes": {"train": train.classes, "validation": val.classes, "test": test.classes},
            "train_steps": clf.history.step[-1] if clf.history.step else 0, "best_step": clf.history.best_step}
    _write_run(out, {"state": clf.net.state_dict(), "history": clf.history.as_dict()}, info)
    print(f"trained {args.method} ({info['train_steps']} steps) on {train.num_classes} classes; wrote {out}",
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


def cmd_evaluate_classifier(args):
    """Score N-way K-shot episodes of the run's test classes; writes ``eval.json``."""
    from ..evaluation import evaluate

    run = Path(args.run_dir)
    info, _, model = _load(run)
    ways = args.ways or info["ways"]
    if ways != info["ways"] and info["method"] not in ("bayes-proto", "protonet", "siamese"):
        raise ValueError(f"--ways: {info['method']} has a {info['ways']}-way head; it cannot score {ways}-way episodes")
    if min(args.shots) < 1:
        raise ValueError(f"--shots: every shot count must be >= 1 for classification; got {args.shots}")
    if args.episodes < 1:
        raise ValueError(f"--episodes must be an int >= 1 (test episodes per shot count); got {args.episodes}")
    test = _pool(info["source"]).subset(info["classes"]["test"])
    per_class = int(test.counts.min())
    query = min(15, per_class - max(args.shots))
    if query < 1:
        raise ValueError(f"--shots: a test class has {per_class} examples, too few for {max(args.shots)} shots and "
                         "a query example")
    fam = Episodes(test, ways)
    sets = {k: fam.sample(args.episodes, shots=k, num_query=query, generator=torch.Generator().manual_seed(args.seed + k))
            for k in args.shots}
    ev = evaluate(model, sets, name=info["method"], oracle=False, seed=args.seed, progress=not args.no_progress)
    ev.to_json(run / "eval.json")
    print(ev.table())
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


def cmd_predict_classifier(args) -> Path:
    """Class probabilities for each query row, given each task's labelled support rows."""
    run = Path(args.run_dir)
    info, _, model = _load(run)
    src = info["source"]
    if src["kind"] != "csv":
        raise ValueError("predict: a classification run on images predicts from the Python API (fewshot.adapt)")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"--out: {out} exists; use --force to replace it")
    features = src["features"]
    support, query = _rows(Path(args.support)), _rows(Path(args.query))
    task_col = args.task
    for name, rows, need in (("--support", support, [task_col, src["label"], *features]),
                             ("--query", query, [task_col, *features])):
        missing = [c for c in need if rows and c not in rows[0]]
        if not rows or missing:
            raise ValueError(f"{name}: {'no rows' if not rows else f'missing column(s) {missing}'}")
    results = []
    for task in dict.fromkeys(r[task_col] for r in query):
        s = [r for r in support if r[task_col] == task]
        names = sorted({r[src["label"]] for r in s})
        if len(names) < 2:
            raise ValueError(f"--support: task {task!r} has {len(names)} class(es); a classifier needs 2 or more")
        if len(names) > info["ways"] and info["method"] not in ("bayes-proto", "protonet", "siamese"):
            raise ValueError(f"--support: task {task!r} has {len(names)} classes; {info['method']} was trained "
                             f"{info['ways']}-way")
        xs = _features(s, features, args.support, support)[None]
        ys = torch.tensor([float(names.index(r[src["label"]])) for r in s])[None]
        q = [r for r in query if r[task_col] == task]
        xq = _features(q, features, args.query, query)[None]
        probs = model.adapt(xs, ys).predict(xq).probs[0][:, :len(names)]  # [N, C]: the task's classes
        probs = probs / probs.sum(-1, keepdim=True)  # a fixed-size head's unused classes are dropped
        for r, p in zip(q, probs.tolist(), strict=True):
            best = max(range(len(names)), key=lambda i: p[i])
            results.append({task_col: task, **{c: r[c] for c in features}, "predicted": names[best],
                            **{f"p_{n}": f"{p[i]:.6g}" for i, n in enumerate(names)}})
    header = list(dict.fromkeys(k for r in results for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="")
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(buf.getvalue(), out)
    print(f"wrote {out} ({len(results)} rows)", file=sys.stderr)
    return out
