"""Run directories for your own grouped data: ``bayesmeta fit``, ``evaluate`` and ``predict``.

A run directory holds::

    config.toml            the resolved configuration (read back by evaluate / predict / --resume)
    model.pt               the fitted learner (BayesLearner.save)
    checkpoints/last.pt    the latest training checkpoint (model, guide, optimiser, RNG states)
    metrics.jsonl          one line per logged step: step, loss (negative ELBO per task), time, lr
    standardisation.json   x / y means and sds fitted on the training tasks
    split.json             which task ids were used for training and validation
    run.json               what was trained, for how long
    eval.json, eval.csv    from ``bayesmeta evaluate``
    plots/, report.html    from ``bayesmeta report``

Nothing is overwritten unless asked: an existing run needs ``--resume`` or ``--force``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path

import torch

from ..baselines import BASELINES
from ..config import FitConfig, apply_overrides, config_from_dict, load_config, to_toml
from ..evaluation import Evaluation, evaluate
from ..io import atomic_write_text
from ..learners import BayesLearner
from ..models import BayesianHeadRegression, HierarchicalLinearRegression, LatentCodeRegression
from ..tasks import Standardization, TaskDataset

__all__ = ["cmd_evaluate", "cmd_fit", "cmd_predict", "load_run_config"]

CHECKPOINT = "checkpoints/last.pt"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_learner(model_cfg, x_dim: int, y_dim: int) -> BayesLearner:
    """The learner a config describes (linear-Gaussian kinds are fitted exactly)."""
    if model_cfg.kind == "latent":
        model = LatentCodeRegression(x_dim=x_dim, y_dim=y_dim, latent_dim=model_cfg.latent_dim,
                                     hidden=model_cfg.hidden, heteroscedastic=model_cfg.heteroscedastic)
        return BayesLearner(model, guide=model_cfg.guide, objective=model_cfg.objective,
                            num_particles=model_cfg.num_particles)
    if y_dim != 1:
        raise ValueError(f"config: model.kind={model_cfg.kind!r} supports one y column; got {y_dim}")
    if model_cfg.kind == "linear":
        return BayesLearner(HierarchicalLinearRegression(x_dim=x_dim), conjugate=True)
    return BayesLearner(BayesianHeadRegression(x_dim=x_dim, hidden=model_cfg.hidden), conjugate=True)


def _resolve_fit_config(args) -> FitConfig:
    cfg = load_config(args.config) if args.config else FitConfig()
    flags = {"data": {"path": args.data, "task": args.task, "x": args.x, "y": args.y},
             "model": {"kind": args.model}, "train": {"steps": args.steps, "max_time": args.max_time,
                                                       "seed": args.seed, "device": args.device}}
    cfg = config_from_dict({s: {k: v for k, v in d.items() if v is not None} for s, d in flags.items()}, cfg)
    cfg = apply_overrides(cfg, args.set)
    cfg.data.check_complete()
    return cfg


def load_run_config(run: Path) -> FitConfig:
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no config.toml)")
    return load_config(run / "config.toml")


def _prepare_out(out: Path, *, resume: bool, force: bool) -> None:
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"{out}: --resume but there is no checkpoint ({CHECKPOINT})")
        return
    if out.exists() and any(out.iterdir()) and not force:
        what = "an existing run" if (out / "config.toml").exists() else "a non-empty directory"
        raise ValueError(f"{out} is {what}; use --resume to continue it or --force to overwrite its files")
    out.mkdir(parents=True, exist_ok=True)


def _write_metrics(out: Path, history) -> None:
    h = history.as_dict()
    lines = [json.dumps({"step": s, "loss": lo, "time": t, "lr": lr})
             for s, lo, t, lr in zip(h["step"], h["loss"], h["time"], h["lr"], strict=True)]
    atomic_write_text("\n".join(lines) + ("\n" if lines else ""), out / "metrics.jsonl")


def _launch() -> tuple[bool, bool]:
    """``(distributed, main process)`` from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")) == 0


def cmd_fit(args) -> Path:
    """Fit a learner on a grouped CSV and write the run directory.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every rank trains on its own shard of the training
    groups and only rank 0 writes the run directory.
    """
    out = Path(args.out)
    distributed, main = _launch()
    if args.resume:
        if args.config or args.set or any(v is not None for v in (args.data, args.task, args.x, args.y, args.model)):
            raise ValueError("--resume continues the run as configured in its config.toml; drop the other "
                             "data/model/config options (--steps and --max-time may change)")
        cfg = load_run_config(out)
        cfg = apply_overrides(cfg, [f"train.steps={args.steps}"] if args.steps else [])
        cfg = apply_overrides(cfg, [f"train.max_time={args.max_time}"] if args.max_time else [])
    else:
        cfg = _resolve_fit_config(args)
    if main:
        _prepare_out(out, resume=args.resume, force=args.force)
    d = cfg.data
    data = TaskDataset.from_csv(d.path, task=d.task, x=list(d.x), y=list(d.y))
    if len(data) < 2:
        raise ValueError(f"{d.path}: only {len(data)} task ({d.task}={data.task_ids}); meta-learning needs at least 2")
    if args.resume:
        split = json.loads((out / "split.json").read_text())
        train, std = data.subset(split["train"]), Standardization.from_dict(json.loads((out / "standardisation.json").read_text()))
    else:
        train, val = data.split((1 - d.val_fraction, d.val_fraction), seed=d.split_seed) if d.val_fraction else (data, None)
        if len(train) < 2:
            raise ValueError(f"{d.path}: {len(train)} training task(s) after the validation split; need at least 2")
        std = train.fit_standardization() if d.standardize else Standardization.identity(data.x_dim, data.y_dim)
        if main:
            atomic_write_text(to_toml(cfg), out / "config.toml")
            atomic_write_text(json.dumps(std.to_dict(), indent=1), out / "standardisation.json")
            atomic_write_text(json.dumps({"train": train.task_ids, "validation": [] if val is None else val.task_ids},
                                         indent=1, default=str), out / "split.json")
    t = cfg.train
    torch.manual_seed(t.seed)  # the initial weights too: the same config gives the same run
    learner = build_learner(cfg.model, data.x_dim, data.y_dim)
    if main:
        _say(f"fitting {cfg.model.kind} model on {len(train)} tasks ({sum(train.sizes)} rows) from {d.path} ...")
    learner.fit(train.to_batch(std), t.steps, max_time=t.max_time or None, tasks_per_step=t.tasks_per_step,
                lr=t.lr, seed=t.seed, device=t.device, progress=not args.no_progress,
                checkpoint=out / CHECKPOINT, resume=args.resume, checkpoint_every=t.checkpoint_every,
                on_checkpoint=lambda step, history: _write_metrics(out, history), distributed=distributed)
    if not main:
        return out
    learner.save(out / "model.pt")
    _write_metrics(out, learner.history)
    h = learner.history
    info = {"data": d.path, "tasks_train": len(train), "rows_train": sum(train.sizes), "model": cfg.model.kind,
            "train_steps": h.step[-1], "train_seconds": round(h.time[-1], 1), "final_loss": round(h.loss[-1], 4)}
    atomic_write_text(json.dumps(info, indent=1), out / "run.json")
    _say(f"wrote {out}/ (model.pt, config.toml, metrics.jsonl, checkpoints/); {h.step[-1]} steps in {h.time[-1]:.0f} s")
    return out


def _load_fitted(run: Path):
    cfg = load_run_config(run)
    if not (run / "model.pt").is_file():
        raise FileNotFoundError(f"{run}: no model.pt (did `bayesmeta fit` finish? `--resume` continues it)")
    std = Standardization.from_dict(json.loads((run / "standardisation.json").read_text()))
    return cfg, BayesLearner.load(run / "model.pt"), std


def standardised_predictor(learner, std: Standardization, **predict_options):
    """``(x_s, y_s, mask_s, x_q) -> predictive`` in original units around a learner fitted on standardised data.

    Works for every learner with ``adapt(x, y, mask).predict(x, **options)`` (Bayesian or baseline).
    """
    def predict(xs, ys, ms, xq):
        post = learner.adapt(std.x(xs), std.y(ys), ms)
        return std.predictive(post.predict(std.x(xq), **predict_options))
    return predict


def cmd_evaluate(args) -> Evaluation:
    """Score a fitted run (and optional baselines) on a test CSV at several shot counts."""
    run = Path(args.run_dir)
    cfg, learner, std = _load_fitted(run)
    d = cfg.data
    test = TaskDataset.from_csv(args.data, task=d.task, x=list(d.x), y=list(d.y))
    sets, ids = {}, {}
    for k in args.shots:
        batch, kept, skipped = test.kshot(k, seed=args.seed)
        if skipped:
            _say(f"shots={k}: {len(skipped)} task(s) with at most {k} rows skipped: {skipped[:20]}"
                 f"{' ...' if len(skipped) > 20 else ''}")
        sets[k], ids[k] = batch, kept
    methods = [("bayes", standardised_predictor(learner, std))]
    for name in args.baseline or ():
        split = json.loads((run / "split.json").read_text())
        data = TaskDataset.from_csv(d.path, task=d.task, x=list(d.x), y=list(d.y)).subset(split["train"])
        base = BASELINES[name](x_dim=data.x_dim, y_dim=data.y_dim)
        _say(f"training baseline {name} for {args.baseline_steps} steps on the run's training tasks ...")
        base.fit(data.to_batch(std), args.baseline_steps, seed=cfg.train.seed, progress=not args.no_progress)
        methods.append((name, standardised_predictor(base, std)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skipped tasks were reported above
        ev = Evaluation.concat([evaluate(fn, sets, name=name, seed=args.seed, oracle=False) for name, fn in methods])
    for row in ev.rows:  # positions in the K-shot batch -> the data's task ids
        row["task"] = ids[row["shots"]][row["task"]]
    print(ev.table())
    ev.to_json(run / "eval.json")
    ev.to_csv(run / "eval.csv")
    _say(f"wrote {run}/eval.json and {run}/eval.csv")
    return ev


def _read_query(path: Path, cfg: FitConfig) -> tuple[list, torch.Tensor]:
    """Query rows: the x columns and, if present, the task column (else one task)."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (no header row)")
        header = [h.strip() for h in header]
        missing = [c for c in cfg.data.x if c not in header]
        if missing:
            raise ValueError(f"{path}: missing x column(s) {missing}; the file has {header}")
        has_task = cfg.data.task in header
        rows = [(i, r) for i, r in enumerate(reader, start=2) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    xs, tasks = [], []
    for i, r in rows:
        vals = []
        for c in cfg.data.x:
            try:
                vals.append(float(r[header.index(c)]))
            except (ValueError, IndexError):
                raise ValueError(f"{path}: row {i}, column {c!r}: not a number") from None
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"{path}: row {i}: non-finite x value")
        xs.append(vals)
        tasks.append(r[header.index(cfg.data.task)].strip() if has_task else "new")
    return tasks, torch.tensor(xs, dtype=torch.float32)


def cmd_predict(args) -> Path:
    """Predict for new tasks from their support rows: mean, sd and central intervals per query row."""
    run = Path(args.run_dir)
    cfg, learner, std = _load_fitted(run)
    d = cfg.data
    support_tasks, support = _read_support(Path(args.support), cfg)
    q_tasks, xq = _read_query(Path(args.query), cfg)
    order = list(dict.fromkeys(support_tasks + q_tasks))
    batch = _support_batch(support, order)
    rows_of = {t: [i for i, qt in enumerate(q_tasks) if qt == t] for t in order}
    width = max(len(r) for r in rows_of.values()) or 1
    x_query = torch.zeros(len(order), width, support.x_dim)
    for ti, t in enumerate(order):
        if rows_of[t]:
            x_query[ti, : len(rows_of[t])] = xq[rows_of[t]]
    pred = standardised_predictor(learner, std, seed=args.seed)(*batch, x_query)
    mean, sd = pred.mean, pred.std
    bands = {lv: pred.interval(lv) for lv in args.levels}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [d.task, *d.x]
    for yn in d.y:
        cols += [f"{yn}_mean", f"{yn}_sd"] + [f"{yn}_{s}{int(round(100 * lv))}" for lv in args.levels for s in ("lower", "upper")]
    w.writerow(cols)
    for ti, t in enumerate(order):
        for j, qi in enumerate(rows_of[t]):
            row = [t, *(f"{v:.6g}" for v in xq[qi].tolist())]
            for e in range(len(d.y)):
                row += [f"{float(mean[ti, j, e]):.6g}", f"{float(sd[ti, j, e]):.6g}"]
                for lv in args.levels:
                    lo, hi = bands[lv]
                    row += [f"{float(lo[ti, j, e]):.6g}", f"{float(hi[ti, j, e]):.6g}"]
            w.writerow(row)
    path = atomic_write_text(buf.getvalue(), Path(args.out))
    no_support = [t for t in order if t not in support.task_ids]
    if no_support:
        _say(f"task(s) {no_support[:10]} have no support rows: their predictions are the prior predictive")
    _say(f"wrote {path} ({len(q_tasks)} rows)")
    return path


def _read_support(path: Path, cfg: FitConfig):
    """Support rows of new tasks: with the task column, several tasks; without it, one task "new"."""
    d = cfg.data
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(newline="") as f:
        header = [h.strip() for h in (next(csv.reader(f), None) or [])]
    ds = TaskDataset.from_csv(path, task=d.task if d.task in header else None, x=list(d.x), y=list(d.y))
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
