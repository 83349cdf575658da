"""``bayesmeta bench optimize``: its flags and its printing (the benchmark is :mod:`bayesmeta.benchmarks.optimize`)."""

from __future__ import annotations

import argparse

from .bench_flags import shared_flags as _shared_flags
from .bench_flags import sub_parser as _sub

__all__ = ["OPTIMIZE_EPILOG", "add_optimize_bench"]

OPTIMIZE_EPILOG = """examples:
  bayesmeta bench optimize --size quick              # every case in under a minute
  bayesmeta bench optimize                           # 200 new tasks, 20 evaluations, 100 pulls, 300 s training
  bayesmeta bench optimize --cases sinusoid --max-time 120 --num-tasks 100
  bayesmeta bench optimize --cases bandit --methods meta-ts oracle-ts flat-ts --horizon 200
"""


def _run_optimize(args) -> dict:
    from ..benchmarks.optimize import run_optimize

    result = run_optimize(cases=args.cases, size=args.size, max_time=args.max_time, num_tasks=args.num_tasks,
                          budget=args.budget, horizon=args.horizon, methods=args.methods, out_dir=args.out,
                          seed=args.seed, device=args.device, progress=not args.no_progress)
    print(result["table"])
    for case, res in result["cases"].items():
        for name, t in res["train"].items():
            print(f"{case} {name}: {t['steps']} training steps in {t['seconds']:.0f} s")
    return result


def add_optimize_bench(bench) -> argparse.ArgumentParser:
    """Add ``optimize`` to ``bayesmeta bench``'s sub-parsers ``bench``."""
    from ..benchmarks.optimize import OPTIMIZE_CASES, OPTIMIZE_SIZES

    p = _sub(bench, "optimize", "decisions on new tasks: meta-learned BO and bandits against the oracle, GP-BO "
             "and random search", _run_optimize)
    p.epilog, p.formatter_class = OPTIMIZE_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--cases", nargs="+", default=None, choices=OPTIMIZE_CASES,
                   help=f"cases (default: all): {', '.join(OPTIMIZE_CASES)}")
    p.add_argument("--size", choices=list(OPTIMIZE_SIZES), default="full",
                   help="quick (under a minute) or full (default: full)")
    p.add_argument("--max-time", type=float, default=None, help="training seconds per learner (default: the size's)")
    p.add_argument("--num-tasks", type=int, default=None, help="new tasks per case (default: the size's)")
    p.add_argument("--budget", type=int, default=None, help="evaluations per task (default: the size's)")
    p.add_argument("--horizon", type=int, default=None, help="bandit pulls (default: the size's)")
    p.add_argument("--methods", nargs="+", default=None, help="only these methods (names as in the table)")
    _shared_flags(p, "optimize", progress=True)
    return p
