"""Run directories for your own grouped data: ``bayesmeta fit``, ``evaluate`` and ``predict``.

A run directory holds::

    config.toml            the resolved configuration (read back by evaluate / predict / --resume)
    learner.pt             the fitted learner (BayesLearner.save); the same name as in ``demo``
    checkpoints/last.pt    the latest training checkpoint (model, guide, optimiser, RNG states)
    metrics.jsonl          one line per logged step: step, loss (negative ELBO per task), time, lr
    split.json             which task ids were used for training and validation
    run.json               what was trained, for how long
    eval.json, eval.csv    from ``bayesmeta evaluate``
    plots/, report.html    from ``bayesmeta report``
    run.lock               while a fit runs: the pid of the process that holds the run

Nothing is overwritten unless asked: an existing run needs ``--resume`` or ``--force``. Every input
is checked before a run directory is created, and a fit that fails removes what it created.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..baselines import BASELINES
from ..config import FitConfig, apply_overrides, config_from_dict, load_config, to_toml
from ..evaluation import Evaluation, evaluate
from ..inference.trainer import load_checkpoint, resolve_device
from ..io import atomic_write_text, file_error, read_json
from ..learners import BayesLearner
from ..legacy import absorb_standardization
from ..models import (
    BayesianHeadRegression,
    HierarchicalLinearRegression,
    HierarchicalRegression,
    LatentCodeRegression,
)
from ..tasks import Standardization, TaskDataset
from .rundata import (
    check_in_support,
    check_unchanged,
    check_val_shots,
    data_fingerprint,
    read_tasks,
    run_data_path,
    split_groups,
)
from .rundir import LOCK_NAME, RunLock, Undo

__all__ = ["cmd_evaluate", "cmd_fit", "fit_run", "load_run_config", "read_tasks", "run_data_path", "predictor"]

CHECKPOINT = "checkpoints/last.pt"
LEARNER_FILE = "learner.pt"  # the saved learner in every run directory (fit and demo)
LEGACY_LEARNER_FILE = "model.pt"  # read too: what run directories held before the rename
LEGACY_STANDARDISATION = "standardisation.json"  # written by earlier versions (the CLI standardised the data itself)
FIT_FILES = ("config.toml", LEGACY_STANDARDISATION, "split.json", "metrics.jsonl", LEARNER_FILE, "run.json", CHECKPOINT)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_learner(model_cfg, x_dim: int, y_dim: int, data_cfg=None) -> BayesLearner:
    """The learner a config describes (linear-Gaussian kinds are fitted exactly; another likelihood
    is a hierarchical GLM with an amortized guide)."""
    extra = int(bool(data_cfg is not None and (data_cfg.trials or data_cfg.offset)))
    if model_cfg.likelihood != "gaussian":
        if y_dim != 1:
            raise ValueError(f"config: model.likelihood={model_cfg.likelihood!r} takes one y column; got {y_dim}")
        glm = HierarchicalRegression(x_dim=x_dim - extra, likelihood=model_cfg.likelihood,
                                     offset=bool(data_cfg is not None and data_cfg.offset))
        return BayesLearner(glm, guide=model_cfg.guide, objective=model_cfg.objective,
                            num_particles=model_cfg.num_particles, guide_options={"hidden": model_cfg.encoder_hidden})
    if model_cfg.kind == "latent":
        model = LatentCodeRegression(x_dim=x_dim, y_dim=y_dim, latent_dim=model_cfg.latent_dim,
                                     hidden=model_cfg.hidden, heteroscedastic=model_cfg.heteroscedastic)
        return BayesLearner(model, guide=model_cfg.guide, objective=model_cfg.objective,
                            num_particles=model_cfg.num_particles, guide_options={"hidden": model_cfg.encoder_hidden})
    if y_dim != 1:
        raise ValueError(f"config: model.kind={model_cfg.kind!r} supports one y column; got {y_dim}")
    if model_cfg.kind == "linear":
        return BayesLearner(HierarchicalLinearRegression(x_dim=x_dim), conjugate=True)
    return BayesLearner(BayesianHeadRegression(x_dim=x_dim, hidden=model_cfg.hidden), conjugate=True)


def _resolve_fit_config(args) -> FitConfig:
    cfg = load_config(args.config) if args.config else FitConfig()
    flags = {"data": {"path": args.data, "task": args.task, "x": args.x, "y": args.y, "trials": getattr(args, "trials", None),
                      "offset": getattr(args, "offset", None)},
             "model": {"kind": args.model, "likelihood": getattr(args, "likelihood", None)}, "train": {"steps": args.steps, "max_time": args.max_time,
                                                       "seed": args.seed, "device": args.device}}
    cfg = config_from_dict({s: {k: v for k, v in d.items() if v is not None} for s, d in flags.items()}, cfg)
    cfg = apply_overrides(cfg, args.set)
    cfg.data.check_complete()
    cfg.check_consistent()
    return cfg


def load_run_config(run: Path) -> FitConfig:
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"{run}: not a run directory (a file)")
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no config.toml)")
    return load_config(run / "config.toml", run_file=True)


def _check_new_out(out: Path, *, force: bool, ignore: tuple[str, ...] = ()) -> None:
    """Refuse an existing run or a non-empty directory as ``--out`` (unless ``force``); writes nothing."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out is a file, not a directory")
    if out.is_dir() and not force and any(p.name not in ignore for p in out.iterdir()):
        what = "an existing run" if (out / "config.toml").exists() else "a non-empty directory"
        raise ValueError(f"{out} is {what}; use --resume to continue it or --force to overwrite its files")


def _check_checkpoint(out: Path) -> None:
    """The checkpoint ``--resume`` continues from must exist and load (a clear error otherwise)."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{out}: --resume but there is no checkpoint ({CHECKPOINT})")
    try:
        load_checkpoint(path)
    except OSError as err:
        raise file_error(err, path, "read") from err
    except ValueError as err:  # load_checkpoint names the file in every ValueError
        if str(path) in str(err):
            raise
        raise _corrupt(path, err) from err


def _corrupt(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}); it cannot be resumed "
                      f"(start the run over with --force)")


def legacy_standardisation(run: Path) -> Standardization | None:
    """The ``standardisation.json`` of a run fitted by an earlier version (which standardised the data
    itself), or ``None``: runs now hold none (the model owns its scaling)."""
    path = run / LEGACY_STANDARDISATION
    if not path.is_file():
        return None
    try:
        std = Standardization.from_dict(read_json(path, "run's standardisation"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from None
    return None if std.is_identity() else std


def _read_split(run: Path, part: str = "train") -> list:
    """The task ids of one part (``"train"`` or ``"validation"``) of a run's split."""
    path = run / "split.json"
    split = read_json(path, "run's task split")
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        raise ValueError(f"{path}: not a task split (no 'train' list)")
    return split.get(part) or []


def _write_metrics(out: Path, history) -> None:
    """One JSON line per logged step; validation scores (``val_nll``, ...) on their steps' lines."""
    h = history.as_dict()
    val = {v["step"]: v for v in h.get("validation", [])}
    lines = [json.dumps({"step": s, "loss": lo, "time": t, "lr": lr, **_val_fields(val.pop(s, None))})
             for s, lo, t, lr in zip(h["step"], h["loss"], h["time"], h["lr"], strict=True)]
    lines += [json.dumps({"step": s, **_val_fields(v)}) for s, v in sorted(val.items())]  # between log steps
    atomic_write_text("\n".join(lines) + ("\n" if lines else ""), out / "metrics.jsonl")


def _val_fields(v: dict | None) -> dict:
    if v is None:
        return {}
    return {"val_nll": v["nll"], "val_coverage_90": v["coverage_90"],
            **{f"val_nll_K{s['shots']}": s["nll"] for s in v["per_shot"]}}


def _launch() -> tuple[bool, bool]:
    """``(distributed, main process)`` from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")) == 0


@dataclass
class _FitPlan:
    """Everything a fit needs, checked before anything is written."""

    cfg: FitConfig
    data_path: Path
    train: TaskDataset
    validation: list
    learner: BayesLearner
    val_data: TaskDataset | None = None
    data_sha256: str = ""


def _fit_config(args, out: Path) -> FitConfig:
    if not args.resume:
        return _resolve_fit_config(args)
    if args.config or args.set or any(getattr(args, k, None) is not None for k in (
            "data", "task", "x", "y", "model", "likelihood", "trials", "offset")):
        raise ValueError("--resume continues the run as configured in its config.toml; drop the other "
                         "data/model/config options (--steps and --max-time may change)")
    cfg = load_run_config(out)
    cfg = apply_overrides(cfg, [f"train.steps={args.steps}"] if args.steps else [])
    return apply_overrides(cfg, [f"train.max_time={args.max_time}"] if args.max_time else [])


def _plan_fit(args, out: Path) -> _FitPlan:
    """Read and check config, output directory, data, device and checkpoint; write nothing."""
    return _plan(_fit_config(args, out), out, resume=args.resume, force=args.force)


def _plan(cfg: FitConfig, out: Path, *, resume: bool, force: bool) -> _FitPlan:
    if not resume:
        _check_new_out(out, force=force)
    d = cfg.data
    path = run_data_path(cfg, out) if resume else Path(d.path)
    if resume:  # the data the run started on, or a refusal naming what changed
        check_unchanged(path, _recorded_fingerprint(out), what="this run", record=out / "run.json",
                        anew=f"start a new run (another --out, or --force to overwrite {out})")
    data = read_tasks(d, path)
    if len(data) < 2:
        raise ValueError(f"{path}: only {len(data)} task ({d.task}={data.task_ids}); meta-learning needs at least 2")
    if resume:
        if legacy_standardisation(out) is not None:
            raise ValueError(f"{out}: fitted by an older bayesmeta on standardised data (standardisation.json); "
                             "it can still predict and evaluate, but not be resumed: the model now sees your data as "
                             "given. Start a new run (or --force)")
        train = data.subset(_read_split(out))
        val_ids = _read_split(out, "validation")
        val = data.subset(val_ids) if val_ids else None
        _check_checkpoint(out)
    else:
        train, val = split_groups(data, d)
        if len(train) < 2:
            raise ValueError(f"{path}: {len(train)} training task(s) after the validation split; need at least 2")
    check_val_shots(val, cfg.train.val_shots, "train.val_shots")
    resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # the initial weights too: the same config gives the same run
    learner = build_learner(cfg.model, data.x_dim, data.y_dim, d)
    check_in_support(learner.program, data, y_column=_y_column(d))  # training and validation groups, by CSV row
    if not resume:
        cfg = replace(cfg, data=replace(d, path=str(path.resolve())))  # --resume works from any directory
    train.check_standardized(Standardization.identity(data.x_dim, data.y_dim))  # values the models can square
    return _FitPlan(cfg, path, train, [] if val is None else val.task_ids, learner,
                    val if val is not None and len(val) else None, data_fingerprint(path))


def _y_column(d) -> str | None:
    """The name of a run's one y column (``None`` with several)."""
    return d.y[0] if len(d.y) == 1 else None


def _recorded_fingerprint(out: Path) -> str | None:
    """The data file's SHA-256 that a run's ``run.json`` recorded when it started (``None``: none recorded)."""
    path = out / "run.json"
    if not path.is_file():
        return None  # a run from an older version, killed before it finished
    info = read_json(path, "run's record")
    return info.get("data_sha256") if isinstance(info, dict) else None


def _train(plan: _FitPlan, out: Path, *, resume: bool, progress: bool, distributed: bool, main: bool,
           on_checkpoint=None) -> None:
    t = plan.cfg.train
    if main:
        _say(f"fitting {plan.cfg.model.kind} model on {len(plan.train)} tasks ({sum(plan.train.sizes)} rows) "
             f"from {plan.data_path} ...")
    validation = False if plan.val_data is None else plan.val_data.to_batch()  # the held-out groups, in your units

    def checkpointed(step, history) -> None:
        _write_metrics(out, history)
        if on_checkpoint is not None:
            on_checkpoint(step, history)

    plan.learner.fit(plan.train.to_batch(), config=replace(t, progress=t.progress and progress),
                     validation=validation, checkpoint=out / CHECKPOINT, resume=resume, distributed=distributed,
                     on_checkpoint=checkpointed)


def _write_run(plan: _FitPlan, out: Path) -> None:
    atomic_write_text(to_toml(plan.cfg), out / "config.toml")
    atomic_write_text(json.dumps({"train": plan.train.task_ids, "validation": plan.validation}, indent=1,
                                 default=str), out / "split.json")
    atomic_write_text(json.dumps(_run_info(plan), indent=1), out / "run.json")  # the data's fingerprint from the start


def _run_info(plan: _FitPlan) -> dict:
    return {"data": str(plan.data_path.resolve()), "data_sha256": plan.data_sha256}


def _write_results(plan: _FitPlan, out: Path) -> None:
    learner, h = plan.learner, plan.learner.history
    learner.save(out / LEARNER_FILE)
    _write_metrics(out, h)
    info = {**_run_info(plan), "tasks_train": len(plan.train), "rows_train": sum(plan.train.sizes),
            "model": plan.cfg.model.kind, "train_steps": h.step[-1], "train_seconds": round(h.time[-1], 1),
            "final_loss": round(h.loss[-1], 4), "best_validation_step": h.best_step,
            "validation_groups": len(plan.validation), "notes": h.notes}
    atomic_write_text(json.dumps(info, indent=1), out / "run.json")
    _say(f"wrote {out}/ (learner.pt, config.toml, metrics.jsonl, checkpoints/); {h.step[-1]} steps in {h.time[-1]:.0f} s")


def cmd_fit(args) -> Path:
    """Fit a learner on a grouped CSV and write the run directory.

    Everything (config, data, device, output directory, checkpoint) is checked before anything is
    written. The run directory is locked while the fit runs (``run.lock``). If a new fit fails,
    every file and directory it created is removed and every file it replaced is restored
    (interrupted with Ctrl-C after a checkpoint, the run is kept for ``--resume``). Under
    ``torchrun`` (``WORLD_SIZE > 1``) every rank trains on its own shard of the training groups
    and only rank 0 writes the run directory.
    """
    out = Path(args.out)
    distributed, main = _launch()
    plan = _plan_fit(args, out)
    if not main:
        _train(plan, out, resume=args.resume, progress=not args.no_progress, distributed=distributed, main=False)
        return out
    _run_fit(plan, out, resume=args.resume, force=args.force, progress=not args.no_progress, distributed=distributed)
    return out


def fit_run(cfg: FitConfig, out, *, force: bool = False, progress: bool = True, on_checkpoint=None) -> BayesLearner:
    """Fit what ``cfg`` describes into a new run directory ``out``, as ``bayesmeta fit --config`` does.

    ``on_checkpoint(step, history)`` is called after each checkpoint (after ``metrics.jsonl`` is
    written); an exception it raises ends the fit, and the run directory is removed as for any
    failed fit. Returns the fitted learner.
    """
    cfg.data.check_complete()
    cfg.check_consistent()
    out = Path(out)
    plan = _plan(cfg, out, resume=False, force=force)
    _run_fit(plan, out, resume=False, force=force, progress=progress, distributed=False, on_checkpoint=on_checkpoint)
    return plan.learner


def _run_fit(plan: _FitPlan, out: Path, *, resume: bool, force: bool, progress: bool, distributed: bool,
             on_checkpoint=None) -> None:
    """The main process's fit: lock, snapshot for undo, write, train, write results (undo on failure)."""
    undo = None if resume else Undo(out)
    lock = RunLock(out, warn=_say)
    failed = True
    try:
        if not resume:
            _make_dir(out)
        lock.acquire()
        if not resume:
            _check_new_out(out, force=force, ignore=(LOCK_NAME,))  # again, now that the run is ours
            assert undo is not None  # made above for every new run
            undo.snapshot(FIT_FILES, dirs=["checkpoints"])
            _write_run(plan, out)
        _train(plan, out, resume=resume, progress=progress, distributed=distributed, main=True,
               on_checkpoint=on_checkpoint)
        _write_results(plan, out)
        failed = False
    except KeyboardInterrupt:
        if undo is not None and undo.changed(CHECKPOINT) and (out / CHECKPOINT).is_file():
            _say(f"interrupted: {out} keeps its last checkpoint; continue with `bayesmeta fit --out {out} --resume`")
            failed = False  # keep the run
        raise
    finally:
        if undo is not None and failed:
            undo.restore_files()  # under the lock: nobody else's files
        elif undo is not None:
            undo.discard()
        lock.release()
        if undo is not None and failed:
            undo.remove_new_dirs()


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise file_error(err, path, "create the directory") from err


def _load_fitted(run: Path):
    cfg = load_run_config(run)
    path = run / LEARNER_FILE
    if not path.is_file() and (run / LEGACY_LEARNER_FILE).is_file():
        path = run / LEGACY_LEARNER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no {LEARNER_FILE} (did `bayesmeta fit` finish? `--resume` continues it)")
    learner = BayesLearner.load(path)
    std = legacy_standardisation(run)
    if std is not None:  # an earlier version's run: the model takes the maps into its own scaling
        absorb_standardization(learner, std, str(run))
    return cfg, learner


def predictor(learner, **predict_options):
    """``(x_support, y_support, x_query, mask_support) -> predictive`` of a fitted learner, in the data's units.

    Works for every learner with ``adapt(x, y, mask).predict(x, **options)`` (Bayesian or baseline).
    """
    def predict(xs, ys, xq, ms):
        return learner.adapt(xs, ys, ms).predict(xq, **predict_options)
    return predict


def check_writable(directory: Path) -> None:
    """Fail early (naming the directory and the cause) if files cannot be created in ``directory``."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".bayesmeta-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise file_error(err, directory, "write into the directory") from err


def write_together(directory: Path, writers: dict) -> None:
    """Call ``writers[name](directory / name)`` for each name; if one fails, every file is put back."""
    undo = Undo(directory).snapshot(writers)
    try:
        for name, write in writers.items():
            write(directory / name)
    except BaseException:
        undo.restore_files()
        raise
    undo.discard()


def _kshot_sets(test: TaskDataset, shots, seed: int) -> tuple[dict, dict]:
    if any(k < 0 for k in shots) or len(set(shots)) != len(shots):
        raise ValueError(f"--shots must be distinct ints >= 0; got {list(shots)}")
    sets, ids = {}, {}
    for k in shots:
        batch, kept, skipped = test.kshot(k, seed=seed)
        if skipped:
            _say(f"shots={k}: {len(skipped)} task(s) with at most {k} rows skipped: {skipped[:20]}"
                 f"{' ...' if len(skipped) > 20 else ''}")
        sets[k], ids[k] = batch, kept
    return sets, ids


def cmd_evaluate(args) -> Evaluation:
    """Score a fitted run (and optional baselines) on a test CSV at several shot counts.

    Data, shots and the run directory's writability are checked before anything is computed;
    ``eval.json`` and ``eval.csv`` are written together (both or neither).
    """
    run = Path(args.run_dir)
    if not args.data:
        raise ValueError("evaluate: --data TEST_CSV is required for a regression run")
    cfg, learner = _load_fitted(run)
    d = cfg.data
    test = read_tasks(d, args.data)
    test.check_standardized(Standardization.identity(test.x_dim, test.y_dim))
    check_in_support(learner.program, test, y_column=_y_column(d))  # every row any shot count scores
    sets, ids = _kshot_sets(test, args.shots, args.seed)
    base_data = None
    if args.baseline:
        base_data = read_tasks(d, run_data_path(cfg, run)).subset(_read_split(run))
    check_writable(run)
    methods = [("bayes", predictor(learner))]
    for name in args.baseline or ():
        assert base_data is not None  # read above whenever a baseline is asked for
        base = BASELINES[name](x_dim=base_data.x_dim, y_dim=base_data.y_dim)
        _say(f"training baseline {name} for {args.baseline_steps} steps on the run's training tasks ...")
        base.fit(base_data.to_batch(), args.baseline_steps, seed=cfg.train.seed, progress=not args.no_progress)
        methods.append((name, predictor(base)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skipped tasks were reported above
        ev = Evaluation.concat([evaluate(fn, sets, name=name, seed=args.seed, oracle=False) for name, fn in methods])
    for row in ev.rows:  # positions in the K-shot batch -> the data's task ids
        row["task"] = ids[row["shots"]][row["task"]]
    print(ev.table())
    write_together(run, {"eval.json": ev.to_json, "eval.csv": ev.to_csv})
    _say(f"wrote {run}/eval.json and {run}/eval.csv")
    return ev
