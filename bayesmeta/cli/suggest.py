"""``bayesmeta suggest RUN``: flags to :func:`bayesmeta.runs.suggest.suggest_run`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..optimize import ACQUISITIONS
from ..runs.suggest import suggest_run

__all__ = ["SUGGEST_EPILOG", "add_suggest_parser", "cmd_suggest"]

SUGGEST_EPILOG = """examples:
  bayesmeta suggest runs/sleep --observed new_subject.csv --candidates grid.csv --out next.csv
  bayesmeta suggest runs/sleep --observed new_subject.csv --candidates grid.csv --n 3 --acquisition ei --minimize --out next.csv
  bayesmeta suggest runs/sleep --candidates grid.csv --out first.csv      # nothing measured yet: from the prior
observed.csv: the run's x and y columns of the rows measured so far (and its task column for several new
tasks); candidates.csv: the run's x columns, one row per point that may be tried (shared by every task).
Output: task, the x columns, score (the acquisition's value), and the predictive mean and sd of the objective there.
"""


def add_suggest_parser(sub) -> argparse.ArgumentParser:
    """``bayesmeta suggest`` under the command line's sub-parsers ``sub``."""
    p = sub.add_parser("suggest", help="propose the next point(s) to evaluate on a new task (Thompson sampling, EI, UCB)",
                       epilog=SUGGEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a fitted run directory (bayesmeta fit)")
    p.add_argument("--observed", help="CSV of the new task's measured rows (default: none, the prior)")
    p.add_argument("--candidates", required=True, help="CSV of the points that may be tried (the run's x columns)")
    p.add_argument("--n", type=int, default=1, help="points to propose per task (default: 1)")
    p.add_argument("--acquisition", choices=ACQUISITIONS, default="ts",
                   help="ts (Thompson sampling, default), ei, ucb, pi or greedy")
    p.add_argument("--minimize", action="store_true", help="lower outcomes are better (without it: higher)")
    p.add_argument("--objective", help="the y column to optimise (default: the run's first)")
    p.add_argument("--beta", type=float, default=2.0, help="UCB's width in predictive sd (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output CSV (an existing file is replaced only with --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def cmd_suggest(args) -> Path:
    """Propose ``--n`` points per new task from the run's learner; writes the CSV ``--out``."""
    return suggest_run(args.run_dir, args.candidates, args.out, observed=args.observed, n=args.n,
                       acquisition=args.acquisition, minimize=args.minimize, objective=args.objective, beta=args.beta,
                       seed=args.seed, force=args.force)
