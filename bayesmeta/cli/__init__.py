"""Command line: ``bayesmeta demo | fit | evaluate | predict | report | tune | bench NAME``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..baselines import BASELINES
from ..models.glm import LIKELIHOODS
from .bench import add_bench_parser, run_bench
from .suggest import add_suggest_parser
from .tune import add_tune_parser

__all__ = ["cmd_demo", "main", "run_report"]

DEMO_EPILOG = """examples:
  bayesmeta demo                       # ~4 min training + evaluation, writes demo_out/
  bayesmeta demo --max-time 60 --num-tasks 200 --out /tmp/demo
  bayesmeta demo --reference-tasks 0   # skip the NUTS reference (about a minute)
"""
FIT_EPILOG = """examples:
  bayesmeta fit --data train.csv --task subject --x days --y reaction --steps 5000 --out runs/sleep
  bayesmeta fit --config fit.toml --set train.steps=2000 --set model.latent_dim=4 --out runs/sleep
  bayesmeta fit --out runs/sleep --resume            # continue from runs/sleep/checkpoints/last.pt
  bayesmeta fit --data train.csv --task herd --x period --y cases --model my_models.py:HerdModel --out runs/herds
config file (TOML; every key optional, flags override it, --set overrides both):
  [data]  path, task, x = [..], y = [..], val_fraction, split_seed
  [model] kind = "latent" | "linear" | "bayes-head" | "path/to/file.py:ClassName" (your own Pyro model),
          options = {..} (its constructor arguments), latent_dim, hidden = [..], heteroscedastic,
          guide = "diagonal" | "flow", objective = "rws" | "rws-wake" | "rws-sleep" | "elbo+sleep" | "elbo" | "iwae" | "iwae-dreg", num_particles,
          encoder_hidden = [..]
  [train] the fields of bayesmeta.inference.TrainConfig: steps, max_time (0: none), tasks_per_step,
          lr, final_lr_fraction, clip_norm (0: none), optimizer, seed, device, checkpoint_every, ...
"""
EVALUATE_EPILOG = """examples:
  bayesmeta evaluate runs/sleep --data test.csv --shots 1 5 10
  bayesmeta evaluate runs/sleep --data test.csv --baseline maml reptile --baseline-steps 3000
"""
PREDICT_EPILOG = """examples:
  bayesmeta predict runs/sleep --support new_subject.csv --query grid.csv --out preds.csv
  bayesmeta predict runs/sleep --support new_subject.csv --query grid.csv --out preds.csv --force  # replace it
support.csv: the x and y columns of the run (and its task column for several new tasks);
query.csv: the x columns (and the task column). A query task without support rows gets the
prior predictive. Output: task, x, then per y column mean, sd, lower/upper of each --levels.
"""
REPORT_EPILOG = """examples:
  bayesmeta report demo_out            # rewrites demo_out/report.html and demo_out/plots/
  bayesmeta report demo_out --out /tmp/report
  bayesmeta report studies/s1          # a tuning study: trials table, plots, best.toml
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bayesmeta", description="Bayesian meta-learning with Pyro.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="meta-train on sinusoids and report calibrated few-shot predictions",
                       epilog=DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    d.add_argument("--max-time", type=float, default=120.0, help="training budget in seconds (default: 120)")
    d.add_argument("--steps", type=int, default=1_000_000, help="maximum training steps")
    d.add_argument("--num-tasks", type=int, default=500, help="test tasks per shot count (default: 500)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--sbc-simulations", type=int, default=200, help="SBC simulations (0: skip; default: 200)")
    d.add_argument("--reference-tasks", type=int, default=3, help="tasks with a NUTS reference (0: skip; default: 3)")
    f = sub.add_parser("fit", help="fit a learner on a grouped CSV (one row per observation) into a run directory",
                       epilog=FIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--data", help="training CSV with a header row")
    f.add_argument("--task", help="column naming each row's task (group)")
    f.add_argument("--x", nargs="+", help="input column(s)")
    f.add_argument("--y", nargs="+", help="output column(s)")
    f.add_argument("--model", metavar="KIND", help="latent (default), linear, bayes-head, or a model class of your own "
                   "as path/to/file.py:ClassName (its constructor arguments: --set model.options.NAME=VALUE)")
    f.add_argument("--likelihood", choices=list(LIKELIHOODS),
                   help="outcome distribution (default: gaussian; others need --model linear: a hierarchical GLM)")
    f.add_argument("--trials", metavar="COLUMN", help="binomial: the column with each row's number of trials")
    f.add_argument("--offset", metavar="COLUMN", help="poisson / negative-binomial: a log-exposure column")
    f.add_argument("--steps", type=int, help="training steps (default: 2000)")
    f.add_argument("--max-time", type=float, help="training seconds at most (default: no limit)")
    f.add_argument("--seed", type=int)
    f.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    f.add_argument("--config", help="TOML config file")
    f.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")
    f.add_argument("--task-kind", choices=["regression", "classification"], default="regression",
                   help="regression (grouped rows of --data) or classification (few-shot episodes; see "
                        "docs/cli.md) (default: regression)")
    f.add_argument("--label", metavar="COLUMN", help="classification: the class column of --data")
    f.add_argument("--features", nargs="+", metavar="COLUMN", help="classification: feature columns (all but --label "
                   "when omitted)")
    f.add_argument("--images", metavar="DIR", help="classification: an image tree root/<class>/*.png or "
                   "root/<group>/<class>/*.png")
    f.add_argument("--image-size", type=int, default=28, help="classification: images resized to this (default: 28)")
    f.add_argument("--rotations", action="store_true", help="classification: rotated images as new classes")
    f.add_argument("--method", default="bayes-proto", help="classification: bayes-proto (default), protonet, "
                   "siamese, maml, fomaml, metasgd, reptile")
    f.add_argument("--ways", type=int, default=5, help="classification: classes per episode (default: 5)")
    f.add_argument("--out", required=True, help="run directory")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    f.add_argument("--force", action="store_true", help="write into an existing run directory, replacing its files")
    f.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("evaluate", help="score a fitted run on a test CSV at several shot counts",
                       epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run_dir")
    e.add_argument("--data", help="test CSV with the run's task, x and y columns (regression runs)")
    e.add_argument("--ways", type=int, default=None, help="classification runs: classes per episode (default: "
                   "the run's)")
    e.add_argument("--episodes", type=int, default=1000, help="classification runs: test episodes per shot count")
    e.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    e.add_argument("--baseline", nargs="+", choices=sorted(BASELINES),
                   help="also train and score these baselines on the run's training tasks")
    e.add_argument("--baseline-steps", type=int, default=2000)
    e.add_argument("--seed", type=int, default=0, help="seed of the K-shot splits and Monte-Carlo draws")
    e.add_argument("--no-progress", action="store_true")
    pr = sub.add_parser("predict", help="predict for new tasks from their support rows",
                        epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("run_dir")
    pr.add_argument("--support", required=True, help="CSV of the new tasks' observed rows")
    pr.add_argument("--query", required=True, help="CSV of the inputs to predict at")
    pr.add_argument("--out", required=True, help="output CSV (an existing file is replaced only with --force)")
    pr.add_argument("--force", action="store_true", help="replace --out if it exists")
    pr.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.9], help="central interval levels")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--task", default="task", help="classification runs: the task column (default: task)")
    r = sub.add_parser("report", help="write plots and report.html for a run directory", epilog=REPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dir", help="a run directory (learner.pt, eval.json, sbc.json, reference.json, plots/) or a "
                   "tuning study directory")
    r.add_argument("--out", default=None, help="write the report here instead of into RUN_DIR")
    add_tune_parser(sub)
    add_bench_parser(sub)
    add_suggest_parser(sub)
    return p


def cmd_demo(args) -> dict:
    """``bayesmeta demo``: :func:`bayesmeta.demo.run_demo` with the parsed flags; prints the table."""
    from ..demo import run_demo

    result = run_demo(args.out, max_time=args.max_time, steps=args.steps, num_tasks=args.num_tasks, seed=args.seed,
                      device=args.device, progress=not args.no_progress, sbc_simulations=args.sbc_simulations,
                      reference_tasks=args.reference_tasks)
    print(result["evaluation"].table())
    return result


def run_report(args) -> Path:
    """``bayesmeta report RUN_DIR``: the report of whatever the run directory holds."""
    import bayesmeta as bm

    if (Path(args.run_dir) / "base.toml").is_file() and (Path(args.run_dir) / "space.toml").is_file():
        if args.out:
            raise ValueError("--out: a tuning study's report is written into its directory")
        page = bm.tuning.write_report(bm.tuning.TuneResult.load(args.run_dir))
        print(f"wrote {page}", file=sys.stderr)
        return page
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out: {args.out} is a file; the report is a directory (report.html and plots/)")
    found = bm.diagnostics.load_run(args.run_dir)
    info = None
    run_json = Path(args.run_dir) / "run.json"
    if run_json.exists():
        from ..io import read_json

        info = read_json(run_json, "run's record")
    page = bm.report(args.out or args.run_dir, info=info, title=f"bayesmeta report: {args.run_dir}", **found)
    print(f"wrote {page}", file=sys.stderr)
    return page


def _classification(args) -> bool:
    """A classification fit (``--task-kind classification``), or evaluate / predict on a classification run."""
    if args.command == "fit":
        given = [f for f, v in (("--label", args.label), ("--features", args.features), ("--images", args.images),
                                ("--rotations", args.rotations)) if v]
        if args.task_kind == "regression" and given:
            raise ValueError(f"{', '.join(given)}: only with --task-kind classification")
        return args.task_kind == "classification"
    if args.command in ("evaluate", "predict"):
        from ..runs.classify import is_classification_run

        return is_classification_run(Path(args.run_dir))
    return False


def _one_line(err: BaseException) -> str:
    """An error as one line: an OS error as ``file: cause``, anything else as its message."""
    if isinstance(err, OSError) and err.strerror:
        msg = err.strerror if err.filename is None else f"{err.filename}: {err.strerror.lower()}"
    else:
        msg = str(err) or type(err).__name__
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def main(argv=None) -> int:
    """Run the command line; an error in the input or the environment is one line on stderr and exit code 2."""
    from ..runs.directory import RunInUseError

    args = _parser().parse_args(argv)
    command = f"{args.command} {args.benchmark}" if args.command == "bench" else args.command
    try:
        if args.command == "demo":
            cmd_demo(args)
        elif args.command == "bench":
            run_bench(args)
        elif args.command == "report":
            run_report(args)
        elif args.command == "tune":
            from .tune import cmd_tune

            cmd_tune(args)
        elif _classification(args):
            from . import classify

            {"fit": classify.cmd_fit_classifier, "evaluate": classify.cmd_evaluate_classifier,
             "predict": classify.cmd_predict_classifier}[args.command](args)
        elif args.command in ("fit", "evaluate", "predict"):
            from . import commands

            {"fit": commands.cmd_fit, "evaluate": commands.cmd_evaluate,
             "predict": commands.cmd_predict}[args.command](args)
        elif args.command == "suggest":
            from .suggest import cmd_suggest

            cmd_suggest(args)
    except KeyboardInterrupt:
        print(f"bayesmeta {command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError, RunInUseError) as err:
        print(f"bayesmeta {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0
