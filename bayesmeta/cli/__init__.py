"""Command line: ``bayesmeta demo | fit | evaluate | predict | report | bench``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..baselines import BASELINES
from ..diagnostics import plot_prediction_bands

__all__ = ["main", "run_demo", "run_report"]

DEMO_EPILOG = """examples:
  bayesmeta demo                       # ~4 min training + evaluation, writes demo_out/
  bayesmeta demo --max-time 60 --num-tasks 200 --out /tmp/demo
  bayesmeta demo --reference-tasks 0   # skip the NUTS reference (about a minute)
"""
FIT_EPILOG = """examples:
  bayesmeta fit --data train.csv --task subject --x days --y reaction --steps 5000 --out runs/sleep
  bayesmeta fit --config fit.toml --set train.steps=2000 --set model.latent_dim=4 --out runs/sleep
  bayesmeta fit --out runs/sleep --resume            # continue from runs/sleep/checkpoints/last.pt
config file (TOML; every key optional, flags override it, --set overrides both):
  [data]  path, task, x = [..], y = [..], val_fraction, split_seed, standardize
  [model] kind = "latent" | "linear" | "bayes-head", latent_dim, hidden = [..], heteroscedastic,
          guide = "diagonal" | "flow", objective = "elbo" | "iwae" | "iwae-dreg", num_particles
  [train] steps, max_time (0: none), tasks_per_step, lr, seed, device, checkpoint_every
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
"""
BENCH_EPILOG = """examples:
  bayesmeta bench sinusoid                          # every variant, 540 s training each
  bayesmeta bench sinusoid --variants iwae-diagonal --max-time 120 --num-tasks 200
  bayesmeta bench compare                           # Bayes vs MAML family vs ensemble, 300 s each
  bayesmeta bench compare --families sinusoid --methods bayes maml --budget 60 --num-tasks 200
  bayesmeta bench throughput                        # tasks/s and memory vs batch size and processes
  bayesmeta bench throughput --seconds 5 --batch-sizes 8 256 --learners amortized
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bayesmeta", description="Bayesian meta-learning with Pyro.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="meta-train on sinusoids and report calibrated few-shot predictions",
                       epilog=DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    d.add_argument("--max-time", type=float, default=240.0, help="training budget in seconds (default: 240)")
    d.add_argument("--steps", type=int, default=1_000_000, help="maximum training steps")
    d.add_argument("--num-tasks", type=int, default=1000, help="test tasks per shot count (default: 1000)")
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
    f.add_argument("--model", choices=["latent", "linear", "bayes-head"], help="model kind (default: latent)")
    f.add_argument("--steps", type=int, help="training steps (default: 5000)")
    f.add_argument("--max-time", type=float, help="training seconds at most (default: no limit)")
    f.add_argument("--seed", type=int)
    f.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    f.add_argument("--config", help="TOML config file")
    f.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")
    f.add_argument("--out", required=True, help="run directory")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    f.add_argument("--force", action="store_true", help="write into an existing run directory, replacing its files")
    f.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("evaluate", help="score a fitted run on a test CSV at several shot counts",
                       epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help="test CSV with the run's task, x and y columns")
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
    r = sub.add_parser("report", help="write plots and report.html for a run directory", epilog=REPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dir", help="a run directory (learner.pt, eval.json, sbc.json, reference.json, plots/)")
    r.add_argument("--out", default=None, help="write the report here instead of into RUN_DIR")
    b = sub.add_parser("bench", help="run a reproducible benchmark (prints a table, writes JSON)",
                       epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("name", choices=["sinusoid", "compare", "throughput"])
    b.add_argument("--variants", nargs="+", default=None, help="sinusoid: subset of variants (default: all)")
    b.add_argument("--max-time", type=float, default=540.0, help="sinusoid: training seconds per variant (default: 540)")
    b.add_argument("--families", nargs="+", default=["sinusoid", "linear"], help="compare: task families")
    b.add_argument("--methods", nargs="+", default=None, help="compare: methods (default: all)")
    b.add_argument("--budget", type=float, default=300.0, help="compare: training seconds per method (default: 300)")
    b.add_argument("--sweep-seconds", type=float, default=45.0,
                   help="compare: seconds per learning-rate trial of each baseline (default: 45)")
    b.add_argument("--classic-budget", type=float, default=150.0,
                   help="compare: seconds for the noise-free MAML check (0: skip; default: 150)")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 256, 512],
                   help="throughput: tasks per step")
    b.add_argument("--learners", nargs="+", default=["amortized", "maml"], help="throughput: learners")
    b.add_argument("--seconds", type=float, default=15.0, help="throughput: seconds per setting (default: 15)")
    b.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="throughput: process counts (CPU)")
    b.add_argument("--predict-batches", type=int, nargs="+", default=[1, 10, 100],
                   help="throughput: numbers of tasks adapted and predicted at once")
    b.add_argument("--num-tasks", type=int, default=1000)
    b.add_argument("--out", default=None, help="output directory (default: bench_out/NAME)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def _demo_diagnostics(learner, family, args) -> dict:
    """SBC of the amortized guide and a NUTS reference on a few 5-shot tasks (each optional)."""
    import bayesmeta as bm

    out = {}
    if args.sbc_simulations:
        print(f"simulation-based calibration ({args.sbc_simulations} simulations, K=5) ...", file=sys.stderr)
        x = family.sample_inputs(args.sbc_simulations, 5, torch.Generator().manual_seed(args.seed + 11))
        out["sbc"] = bm.simulation_based_calibration(learner.model, learner, x.to(learner.device),
                                                     num_simulations=args.sbc_simulations, seed=args.seed)
    if args.reference_tasks:
        print(f"NUTS reference posterior on {args.reference_tasks} tasks (K=5) ...", file=sys.stderr)
        test = family.sample(args.reference_tasks, shots=5, generator=torch.Generator().manual_seed(args.seed + 12))
        test = test.to(learner.device)
        ref = bm.reference_posterior(learner.model, *test.support, num_samples=500, num_warmup=500, num_chains=2,
                                     seed=args.seed, progress=not args.no_progress)
        amortized = bm.to_inference_data(learner.adapt(test), num_samples=2000, seed=args.seed)
        out["reference"] = {"diagnostics": bm.diagnostics.reference_diagnostics(ref),
                            "comparison": bm.compare_posteriors(amortized, ref)}
    return out


def run_demo(args) -> dict:
    """Meta-train the default learner on sinusoids, evaluate shots 1/5/10, diagnose, write a report."""
    import bayesmeta as bm
    from bayesmeta.benchmarks.sinusoid import evaluate_on_family
    from bayesmeta.io import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    family = bm.tasks.Sinusoid(noise_std=0.1)
    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=8))
    print(f"meta-training for up to {args.max_time:.0f} s on {family} ...", file=sys.stderr)
    learner.fit(family, steps=args.steps, max_time=args.max_time, device=args.device, seed=args.seed,
                progress=not args.no_progress)
    h = learner.history
    print(f"evaluating on {args.num_tasks} test tasks per shot count (1, 5, 10) ...", file=sys.stderr)
    ev = evaluate_on_family(learner, family, num_tasks=args.num_tasks, device=learner.device,
                            progress=not args.no_progress)
    print(ev.table())
    test = family.sample(6, shots=5, num_query=0, generator=torch.Generator().manual_seed(7)).to(learner.device)
    grid = torch.linspace(*family.x_range, 200, device=learner.device)
    xg = grid.reshape(1, -1, 1).expand(6, -1, -1)
    post = learner.adapt(test)
    bands = plot_prediction_bands(post.predict(xg, seed=0), grid, test.x_support, test.y_support,
                                  truth=family.mean_function(test.params, xg), title="bayesmeta demo: K=5")
    diag = _demo_diagnostics(learner, family, args)
    learner.save(out / "learner.pt")
    ev.to_json(out / "eval.json")
    ev.to_csv(out / "eval.csv")
    if "sbc" in diag:
        atomic_write_text(json.dumps(diag["sbc"].to_dict()), out / "sbc.json")
    if "reference" in diag:
        atomic_write_text(json.dumps(diag["reference"], indent=1), out / "reference.json")
    info = {"family": repr(family), "model": "LatentCodeRegression(latent_dim=8)", "train_steps": h.step[-1],
            "train_seconds": round(h.time[-1], 1), "final_loss": round(h.loss[-1], 4)}
    atomic_write_text(json.dumps(info, indent=1), out / "run.json")
    page = bm.report(out, evaluation=ev, learner=learner, posterior=post, figures={"prediction_bands": bands},
                     title="bayesmeta demo", info=info, **diag)
    print(f"wrote {page} (plots in {out}/plots), eval.json, eval.csv, learner.pt", file=sys.stderr)
    return {"info": info, "evaluation": ev, **diag}


def run_report(args) -> Path:
    """``bayesmeta report RUN_DIR``: the report of whatever the run directory holds."""
    import bayesmeta as bm

    found = bm.diagnostics.load_run(args.run_dir)
    info = None
    run_json = Path(args.run_dir) / "run.json"
    if run_json.exists():
        info = json.loads(run_json.read_text())
    page = bm.report(args.out or args.run_dir, info=info, title=f"bayesmeta report: {args.run_dir}", **found)
    print(f"wrote {page}", file=sys.stderr)
    return page


def run_bench(args) -> dict:
    from bayesmeta.benchmarks import BENCHMARKS, COMPARE_METHODS

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out_dir = args.out or f"bench_out/{args.name}"
    if args.name == "compare":
        result = BENCHMARKS["compare"](families=args.families, methods=args.methods or COMPARE_METHODS,
                                       budget=args.budget, sweep_seconds=args.sweep_seconds,
                                       classic_budget=args.classic_budget, num_tasks=args.num_tasks,
                                       out_dir=out_dir, seed=args.seed, device=args.device)
        print("\n\n".join(result["tables"]))
        for fam, meta in result["families"].items():
            for m, info in meta["methods"].items():
                if "tasks_per_second" in info:
                    print(f"{fam} {m}: {info['tasks_per_second']:.0f} training tasks/s, settings {info['settings']}")
        if "maml_classic" in result:
            print(f"noise-free MAML sinusoid (K=10): {result['maml_classic']}")
        print(f"MAML step, vectorised vs per-task loop: {result['vectorisation']}")
    elif args.name == "throughput":
        result = BENCHMARKS["throughput"](tasks_per_step=args.batch_sizes, learners=args.learners, seconds=args.seconds,
                                          processes=args.processes, predict_batches=args.predict_batches,
                                          device=args.device, threads=args.threads,
                                          out_dir=out_dir)
        print(result["table"])
        for k, v in result.items():
            if k.endswith("_speedup_256_vs_8"):
                print(f"{k}: {v:.1f}x")
    else:
        result = BENCHMARKS["sinusoid"](variants=args.variants, max_time=args.max_time, num_tasks=args.num_tasks,
                                        out_dir=out_dir, seed=args.seed, progress=not args.no_progress,
                                        device=args.device)
        print(result["evaluation"].table())
        for name, v in result["variants"].items():
            print(f"{name}: {v['train_steps']} steps in {v['train_seconds']:.0f} s")
    print(f"total {time.perf_counter() - t0:.0f} s; results in {out_dir}/results.json")
    return result


def _one_line(err: BaseException) -> str:
    """An error as one line: an OS error as ``file: cause``, anything else as its message."""
    if isinstance(err, OSError) and err.strerror:
        msg = err.strerror if err.filename is None else f"{err.filename}: {err.strerror.lower()}"
    else:
        msg = str(err) or type(err).__name__
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def main(argv=None) -> int:
    """Run the command line; an error in the input or the environment is one line on stderr and exit code 2."""
    from .rundir import RunInUseError

    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(args)
        elif args.command == "bench":
            run_bench(args)
        elif args.command == "report":
            run_report(args)
        elif args.command in ("fit", "evaluate"):
            from . import runs

            {"fit": runs.cmd_fit, "evaluate": runs.cmd_evaluate}[args.command](args)
        elif args.command == "predict":
            from .predict import cmd_predict

            cmd_predict(args)
    except KeyboardInterrupt:
        print(f"bayesmeta {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError, RunInUseError) as err:
        print(f"bayesmeta {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0
