"""Fitting a run directory on your own grouped data (``bayesmeta fit``); the layout is in :mod:`.layout`.

Nothing is overwritten unless asked: an existing run needs ``--resume`` or ``--force``. Every input
is checked before a run directory is created, and a fit that fails removes what it created.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .._user_code import absolute_spec
from ..inference.checkpoints import load_checkpoint
from ..inference.options import resolve_device
from ..io import atomic_write_text, file_error, read_json
from ..learners import BayesLearner
from ..tasks import Standardization, TaskDataset
from .config import FitConfig, apply_overrides, to_toml
from .data import (
    check_in_support,
    check_unchanged,
    check_val_shots,
    data_fingerprint,
    read_tasks,
    run_data_path,
    split_groups,
)
from .directory import LOCK_NAME, RunLock, Undo
from .layout import (
    CHECKPOINT,
    LEARNER_FILE,
    LEGACY_STANDARDISATION,
    load_run_config,
    read_split,
    say,
    y_column,
)
from .learner import build_learner, legacy_standardisation

__all__ = ["fit_run", "load_run_config", "resume_config", "say"]

FIT_FILES = ("config.toml", LEGACY_STANDARDISATION, "split.json", "metrics.jsonl", LEARNER_FILE, "run.json", CHECKPOINT)


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


def resume_config(out, *, steps: int | None = None, max_time: float | None = None) -> FitConfig:
    """The config of the run in ``out`` (its ``config.toml``), to continue it; ``steps`` and ``max_time`` may change."""
    out = Path(out)
    cfg = load_run_config(out)
    cfg = apply_overrides(cfg, [f"train.steps={steps}"] if steps else [])
    return apply_overrides(cfg, [f"train.max_time={max_time}"] if max_time else [])


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
        train = data.subset(read_split(out))
        val_ids = read_split(out, "validation")
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
    check_in_support(learner.program, data, y_column=y_column(d))  # training and validation groups, by CSV row
    if not resume:
        cfg = replace(cfg, data=replace(d, path=str(path.resolve())),  # --resume works from any directory
                      model=replace(cfg.model, kind=absolute_spec(cfg.model.kind)) if cfg.model.custom else cfg.model)
    train.check_standardized(Standardization.identity(data.x_dim, data.y_dim))  # values the models can square
    return _FitPlan(cfg, path, train, [] if val is None else val.task_ids, learner,
                    val if val is not None and len(val) else None, data_fingerprint(path))


def _recorded_fingerprint(out: Path) -> str | None:
    """The data file's SHA-256 that a run's ``run.json`` recorded when it started (``None``: none recorded)."""
    path = out / "run.json"
    if not path.is_file():
        return None  # a run from an older version, killed before it finished
    info = read_json(path, "run's record")
    return info.get("data_sha256") if isinstance(info, dict) else None


def _train(plan: _FitPlan, out: Path, *, resume: bool, progress: bool, distributed: bool, main: bool,
           on_checkpoint=None, on_validation=None) -> None:
    t = plan.cfg.train
    if main:
        say(f"fitting {plan.cfg.model.kind} model on {len(plan.train)} tasks ({sum(plan.train.sizes)} rows) "
             f"from {plan.data_path} ...")
    validation = False if plan.val_data is None else plan.val_data.to_batch()  # the held-out groups, in your units

    def checkpointed(step, history) -> None:
        _write_metrics(out, history)
        if on_checkpoint is not None:
            on_checkpoint(step, history)

    plan.learner.fit(plan.train.to_batch(), config=replace(t, progress=t.progress and progress),
                     validation=validation, checkpoint=out / CHECKPOINT, resume=resume, distributed=distributed,
                     on_checkpoint=checkpointed, on_validation=on_validation)


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
    say(f"wrote {out}/ (learner.pt, config.toml, metrics.jsonl, checkpoints/); {h.step[-1]} steps in {h.time[-1]:.0f} s")


def fit_run(cfg: FitConfig, out, *, resume: bool = False, force: bool = False, progress: bool = True,
            on_checkpoint=None, on_validation=None) -> BayesLearner:
    """Fit what ``cfg`` describes into the run directory ``out`` (``bayesmeta fit``); returns the learner.

    Everything (config, data, device, output directory, checkpoint) is checked before anything is
    written; an existing run needs ``resume`` (continue from its last checkpoint, ``cfg`` from
    :func:`resume_config`) or ``force``. The run directory is locked while the fit runs
    (``run.lock``). If a new fit fails, every file and directory it created is removed and every
    file it replaced is restored (interrupted with Ctrl-C after a checkpoint, the run is kept for
    ``resume``). ``on_checkpoint(step, history)`` is called after each checkpoint (after
    ``metrics.jsonl`` is written); an exception it raises ends the fit like any failure.
    ``on_validation(step, scores)`` after each validation on the held-out groups: a true value
    ends the fit there (kept as a finished run; ``history.notes`` says so). Under
    ``torchrun`` (``WORLD_SIZE > 1``) every rank trains on its own shard of the training groups and
    only rank 0 writes the run directory.
    """
    cfg.data.check_complete()
    cfg.check_consistent()
    out = Path(out)
    distributed, main = _launch()
    plan = _plan(cfg, out, resume=resume, force=force)
    if not main:
        _train(plan, out, resume=resume, progress=progress, distributed=distributed, main=False)
    else:
        _run_fit(plan, out, resume=resume, force=force, progress=progress, distributed=distributed,
                 on_checkpoint=on_checkpoint, on_validation=on_validation)
    return plan.learner


def _run_fit(plan: _FitPlan, out: Path, *, resume: bool, force: bool, progress: bool, distributed: bool,
             on_checkpoint=None, on_validation=None) -> None:
    """The main process's fit: lock, snapshot for undo, write, train, write results (undo on failure)."""
    undo = None if resume else Undo(out)
    lock = RunLock(out, warn=say)
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
               on_checkpoint=on_checkpoint, on_validation=on_validation)
        _write_results(plan, out)
        failed = False
    except KeyboardInterrupt:
        if undo is not None and undo.changed(CHECKPOINT) and (out / CHECKPOINT).is_file():
            say(f"interrupted: {out} keeps its last checkpoint; continue with `bayesmeta fit --out {out} --resume`")
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


