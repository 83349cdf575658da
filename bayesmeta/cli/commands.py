"""``bayesmeta fit``, ``evaluate`` and ``predict`` on grouped data: flags to :mod:`bayesmeta.runs`, tables to stdout."""

from __future__ import annotations

from pathlib import Path

from ..runs.config import FitConfig, apply_overrides, config_from_dict, load_config
from ..runs.evaluate import evaluate_run
from ..runs.fit import fit_run, resume_config
from ..runs.predict import predict_run

__all__ = ["cmd_evaluate", "cmd_fit", "cmd_predict"]

_DATA_MODEL_FLAGS = ("data", "task", "x", "y", "model", "likelihood", "trials", "offset")


def fit_config(args) -> FitConfig:
    """The config the flags describe: ``--config`` file, then flags, then ``--set`` overrides."""
    cfg = load_config(args.config) if args.config else FitConfig()
    flags = {"data": {"path": args.data, "task": args.task, "x": args.x, "y": args.y, "trials": args.trials,
                      "offset": args.offset},
             "model": {"kind": args.model, "likelihood": args.likelihood},
             "train": {"steps": args.steps, "max_time": args.max_time, "seed": args.seed, "device": args.device}}
    cfg = config_from_dict({s: {k: v for k, v in d.items() if v is not None} for s, d in flags.items()}, cfg)
    cfg = apply_overrides(cfg, args.set)
    cfg.data.check_complete()
    cfg.check_consistent()
    return cfg


def cmd_fit(args) -> Path:
    """Fit into ``--out`` (a new run, or ``--resume`` of the run there with its own config)."""
    out = Path(args.out)
    if args.resume:
        if args.config or args.set or any(getattr(args, k, None) is not None for k in _DATA_MODEL_FLAGS):
            raise ValueError("--resume continues the run as configured in its config.toml; drop the other "
                             "data/model/config options (--steps and --max-time may change)")
        cfg = resume_config(out, steps=args.steps, max_time=args.max_time)
    else:
        cfg = fit_config(args)
    fit_run(cfg, out, resume=args.resume, force=args.force, progress=not args.no_progress)
    return out


def cmd_evaluate(args):
    ev = evaluate_run(args.run_dir, args.data, shots=args.shots, baselines=args.baseline or (),
                      baseline_steps=args.baseline_steps, seed=args.seed, progress=not args.no_progress)
    print(ev.table())
    return ev


def cmd_predict(args) -> Path:
    return predict_run(args.run_dir, args.support, args.query, args.out, levels=args.levels, seed=args.seed,
                       force=args.force)
