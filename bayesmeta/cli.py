"""Command line: ``bayesmeta demo`` and ``bayesmeta bench NAME``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

__all__ = ["main", "run_demo"]

DEMO_EPILOG = """examples:
  bayesmeta demo                       # ~4 min training + evaluation, writes demo_out/
  bayesmeta demo --max-time 60 --num-tasks 200 --out /tmp/demo
"""
BENCH_EPILOG = """examples:
  bayesmeta bench sinusoid                          # every variant, 540 s training each
  bayesmeta bench sinusoid --variants iwae-diagonal --max-time 120 --num-tasks 200
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
    b = sub.add_parser("bench", help="run a reproducible benchmark (prints a table, writes JSON)",
                       epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("name", choices=["sinusoid"])
    b.add_argument("--variants", nargs="+", default=None, help="subset of variants (default: all)")
    b.add_argument("--max-time", type=float, default=540.0, help="training seconds per variant (default: 540)")
    b.add_argument("--num-tasks", type=int, default=1000)
    b.add_argument("--out", default=None, help="output directory (default: bench_out/NAME)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def run_demo(args) -> dict:
    """Meta-train the default learner on sinusoids, evaluate shots 1/5/10, write plots + metrics."""
    import bayesmeta as bm
    from bayesmeta.benchmarks.sinusoid import evaluate_on_family, format_table
    from bayesmeta.diagnostics import plot_prediction_bands

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    family = bm.tasks.Sinusoid(noise_std=0.1)
    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=8))
    print(f"meta-training for up to {args.max_time:.0f} s on {family} ...", file=sys.stderr)
    learner.fit(family, steps=args.steps, max_time=args.max_time, device=args.device, seed=args.seed,
                progress=not args.no_progress)
    h = learner.history
    print(f"evaluating on {args.num_tasks} test tasks per shot count (1, 5, 10) ...", file=sys.stderr)
    rows = [{"variant": "default", **r} for r in evaluate_on_family(
        learner, family, num_tasks=args.num_tasks, device=learner.device, progress=not args.no_progress)]
    print(format_table(rows))
    test = family.sample(6, shots=5, num_query=0, generator=torch.Generator().manual_seed(7))
    grid = torch.linspace(*family.x_range, 200)
    xg = grid.reshape(1, -1, 1).expand(6, -1, -1)
    pred = learner.adapt(test).predict(xg, seed=0)
    fig = plot_prediction_bands(pred, grid, test.x_support, test.y_support,
                                truth=family.mean_function(test.params, xg), title="bayesmeta demo: K=5")
    fig.savefig(out / "prediction_bands.png", dpi=110)
    learner.save(out / "learner.pt")
    metrics = {"family": repr(family), "train_steps": h.step[-1], "train_seconds": h.time[-1],
               "final_loss": h.loss[-1], "rows": rows}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out}/prediction_bands.png, {out}/metrics.json, {out}/learner.pt", file=sys.stderr)
    return metrics


def run_bench(args) -> dict:
    from bayesmeta.benchmarks import BENCHMARKS
    from bayesmeta.benchmarks.sinusoid import format_table

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = BENCHMARKS[args.name](variants=args.variants, max_time=args.max_time, num_tasks=args.num_tasks,
                                   out_dir=args.out or f"bench_out/{args.name}", seed=args.seed,
                                   progress=not args.no_progress, device=args.device)
    print(format_table(result["rows"]))
    for name, v in result["variants"].items():
        print(f"{name}: {v['train_steps']} steps in {v['train_seconds']:.0f} s")
    print(f"total {time.perf_counter() - t0:.0f} s; results in {args.out or f'bench_out/{args.name}'}/results.json")
    return result


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(args)
        elif args.command == "bench":
            run_bench(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"bayesmeta {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
