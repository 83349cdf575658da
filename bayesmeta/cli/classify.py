"""``bayesmeta fit --task-kind classification``, ``evaluate`` and ``predict`` on a classification run:
flags to :mod:`bayesmeta.runs.classify`, its table to stdout."""

from __future__ import annotations

from pathlib import Path

from ..runs.classify import evaluate_classifier_run, fit_classifier_run, predict_classifier_run

__all__ = ["cmd_evaluate_classifier", "cmd_fit_classifier", "cmd_predict_classifier"]


def cmd_fit_classifier(args) -> Path:
    ignored = [f for f, v in (("--task", args.task), ("--x", args.x), ("--y", args.y), ("--model", args.model),
                              ("--likelihood", args.likelihood), ("--trials", args.trials), ("--offset", args.offset),
                              ("--config", args.config), ("--set", args.set), ("--resume", args.resume)) if v]
    if ignored:
        raise ValueError(f"{', '.join(ignored)}: not used by --task-kind classification")
    return fit_classifier_run(args.out, data=args.data, label=args.label, features=args.features, images=args.images,
                              image_size=args.image_size, rotations=args.rotations, method=args.method, ways=args.ways,
                              steps=args.steps, max_time=args.max_time, seed=args.seed, device=args.device,
                              progress=not args.no_progress, force=args.force)


def cmd_evaluate_classifier(args):
    ev = evaluate_classifier_run(args.run_dir, shots=args.shots, ways=args.ways, episodes=args.episodes, seed=args.seed,
                                 progress=not args.no_progress)
    print(ev.table())
    return ev


def cmd_predict_classifier(args) -> Path:
    return predict_classifier_run(args.run_dir, args.support, args.query, args.out, task=args.task, force=args.force)
