"""Scoring a fitted run on a test CSV at several shot counts (``bayesmeta evaluate``)."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..baselines import BASELINES
from ..evaluation import Evaluation, evaluate
from ..tasks import Standardization, TaskDataset
from .data import check_in_support, read_tasks, run_data_path
from .layout import check_writable, read_split, say, write_together, y_column
from .learner import load_fitted, predictor

__all__ = ["evaluate_run"]


def _kshot_sets(test: TaskDataset, shots, seed: int) -> tuple[dict, dict]:
    if any(k < 0 for k in shots) or len(set(shots)) != len(shots):
        raise ValueError(f"--shots must be distinct ints >= 0; got {list(shots)}")
    sets, ids = {}, {}
    for k in shots:
        batch, kept, skipped = test.kshot(k, seed=seed)
        if skipped:
            say(f"shots={k}: {len(skipped)} task(s) with at most {k} rows skipped: {skipped[:20]}"
                 f"{' ...' if len(skipped) > 20 else ''}")
        sets[k], ids[k] = batch, kept
    return sets, ids


def evaluate_run(run, data, *, shots=(1, 5, 10), baselines=(), baseline_steps: int = 2000, seed: int = 0,
                 progress: bool = True) -> Evaluation:
    """Score a fitted run (and optional baselines trained on its training groups) on the test CSV
    ``data`` at several shot counts; returns the evaluation and writes ``eval.json`` / ``eval.csv``.

    Data, shots and the run directory's writability are checked before anything is computed;
    ``eval.json`` and ``eval.csv`` are written together (both or neither).
    """
    run = Path(run)
    if not data:
        raise ValueError("evaluate: --data TEST_CSV is required for a regression run")
    cfg, learner = load_fitted(run)
    d = cfg.data
    test = read_tasks(d, data)
    test.check_standardized(Standardization.identity(test.x_dim, test.y_dim))
    check_in_support(learner.program, test, y_column=y_column(d))  # every row any shot count scores
    sets, ids = _kshot_sets(test, shots, seed)
    base_data = None
    if baselines:
        base_data = read_tasks(d, run_data_path(cfg, run)).subset(read_split(run))
    check_writable(run)
    methods = [("bayes", predictor(learner))]
    for name in baselines or ():
        assert base_data is not None  # read above whenever a baseline is asked for
        base = BASELINES[name](x_dim=base_data.x_dim, y_dim=base_data.y_dim)
        say(f"training baseline {name} for {baseline_steps} steps on the run's training tasks ...")
        base.fit(base_data.to_batch(), baseline_steps, seed=cfg.train.seed, progress=progress)
        methods.append((name, predictor(base)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skipped tasks were reported above
        ev = Evaluation.concat([evaluate(fn, sets, name=name, seed=seed, oracle=False) for name, fn in methods])
    for row in ev.rows:  # positions in the K-shot batch -> the data's task ids
        row["task"] = ids[row["shots"]][row["task"]]
    write_together(run, {"eval.json": ev.to_json, "eval.csv": ev.to_csv})
    say(f"wrote {run}/eval.json and {run}/eval.csv")
    return ev
