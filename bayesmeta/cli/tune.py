"""``bayesmeta tune``: an Optuna study over a fit config's settings and architecture.

See :mod:`bayesmeta.tuning` for the study directory; this module only parses flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["TUNE_EPILOG", "add_tune_parser", "cmd_tune"]

TUNE_EPILOG = """examples:
  bayesmeta tune --config fit.toml --space space.toml --out studies/s1 --timeout 1200 --workers 2
  bayesmeta tune --out studies/s1 --timeout 600     # continue the study (another worker, or after a kill)
  bayesmeta tune --config fit.toml --space space.toml --out studies/s1 --storage postgresql://host/db
then the best trial's config, as it is:  bayesmeta fit --config studies/s1/best.toml --out runs/best
space.toml:
  [space.train]  lr = { low = 3e-4, high = 3e-3, log = true }, tasks_per_step = [16, 32, 64], ...
  [space.model]  latent_dim = { low = 2, high = 16 }, width, depth, encoder_width, encoder_depth, ...
  [objective]    shots = [5]        (validation NLL at these shot counts, on the held-out groups)
  [study]        sampler = "gp" | "tpe" | "random", pruner = "median" | "none", trials, timeout, seed
Each trial trains for the config's train.max_time (or steps); see docs/tuning.md.
"""


def add_tune_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("tune", help="tune a fit config's settings and architecture (Optuna; validation NLL)",
                       description="Bayesian optimisation of a fit config's training settings and architecture: "
                       "each trial fits a run directory and is scored on the held-out groups.",
                       epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help="the fit config every trial starts from (TOML; needed for a new study)")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key of --config")
    t.add_argument("--space", help="the search space (TOML; needed for a new study)")
    t.add_argument("--out", required=True, help="study directory (an existing study is continued)")
    t.add_argument("--trials", type=int, default=None, help="finished trials in the whole study (default: the "
                   "space's study.trials)")
    t.add_argument("--timeout", type=float, default=None, help="seconds for each worker; a trial started before then "
                   "runs to its end (default: the space's study.timeout)")
    t.add_argument("--workers", type=int, default=1, help="processes on this machine sharing the study (default: 1)")
    t.add_argument("--storage", default=None, help="an Optuna storage URL (database server) instead of the journal file")
    t.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    t.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    t.add_argument("--no-progress", action="store_true")
    return t


def cmd_tune(args):
    """Run (or continue) the study; a helper worker (``--worker-index > 0``) only runs trials."""
    import torch

    from ..runs.config import apply_overrides, load_config
    from ..tuning import run_worker, tune

    out = Path(args.out)
    if args.worker_index > 0:
        if args.threads:
            torch.set_num_threads(args.threads)
        run_worker(out, trials=args.trials, timeout=args.timeout, storage=args.storage, progress=False,
                   worker=args.worker_index)
        return None
    if (args.config is None) != (args.space is None) and not (out / "base.toml").is_file():
        raise ValueError("a new study needs both --config and --space")
    if args.set and not args.config:
        raise ValueError("--set overrides keys of --config; give --config too")
    config = apply_overrides(load_config(args.config), args.set) if args.config else None
    result = tune(config, args.space, out, trials=args.trials, timeout=args.timeout, workers=args.workers,
                  storage=args.storage, progress=not args.no_progress, threads=args.threads)
    print(result.table())
    print(f"wrote {out}/report.html, summary.md, trials.csv" + (f", {out}/best.toml" if result.best else ""),
          file=sys.stderr)
    return result
