"""Tuning benchmark: does a time-boxed study on sinusoid tasks beat the defaults, and survive a killed worker?

Writes a grouped CSV of sinusoid tasks (the pool a user would have) and a fresh test CSV, a fit
config with the library's defaults and a per-trial time budget, and a search space over training
settings and architecture. Two worker processes (the same ``bayesmeta tune`` command started
twice) share the study; one is killed with SIGKILL part-way and started again. Afterwards the
study's finished trials are compared with what they were before the kill, the best trial's K=5
validation NLL with that of the defaults' trial (trial 0, same training time), and -- to discount
the luck of picking the best of many -- both configs are trained again with another seed and
scored on the fresh test tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..io import atomic_write_text
from ..runs.config import apply_overrides, load_config
from ..runs.evaluate import evaluate_run
from ..runs.fit import fit_run
from ..tasks import Sinusoid

__all__ = ["TUNE_SPACE", "run_tune_bench"]

TUNE_SPACE = """[space.train]
lr = { low = 1e-4, high = 1e-2, log = true }
tasks_per_step = [8, 16, 32, 64]

[space.model]
latent_dim = { low = 2, high = 16 }
width = { low = 32, high = 256, log = true }
depth = { low = 1, high = 4 }
encoder_width = [32, 64, 128, 256]
num_particles = [2, 4, 8, 16]

[objective]
shots = [5]

[study]
sampler = "gp"
pruner = "median"
"""


def _write_tasks(path: Path, num_tasks: int, points: int, seed: int) -> None:
    b = Sinusoid(noise_std=0.1).sample(num_tasks, shots=points, generator=torch.Generator().manual_seed(seed))
    lines = ["task,x,y"]
    for t in range(num_tasks):
        lines += [f"t{seed}_{t},{x:.6f},{y:.6f}" for x, y in zip(b.x_support[t, :, 0].tolist(),
                                                                  b.y_support[t, :, 0].tolist(), strict=True)]
    atomic_write_text("\n".join(lines) + "\n", path)


def _fit_config(data: Path, trial_seconds: float, seed: int) -> str:
    return (f'[data]\npath = "{data}"\ntask = "task"\nx = ["x"]\ny = ["y"]\n\n'
            f"[train]\nsteps = 1000000\nmax_time = {trial_seconds}\nseed = {seed}\nprogress = false\n")


def _worker(out: Path, timeout: float, threads: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bayesmeta", "tune", "--out", str(out), "--timeout", str(timeout),
           "--threads", str(threads), "--no-progress"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_tune_bench(*, minutes: float = 20.0, workers: int = 2, trial_seconds: float = 60.0, kill_at: float = 0.5,
                   num_tasks: int = 500, points: int = 20, test_tasks: int = 500, out_dir="bench_out/tune",
                   seed: int = 0, confirm: bool = True) -> dict:
    """Run the study (``minutes`` of wall time, ``workers`` processes); returns and writes ``results.json``."""
    from ..tuning import TuneResult, open_study, write_report

    if workers < 1 or not 0 < kill_at < 1:
        raise ValueError(f"workers must be >= 1 and kill_at in (0, 1); got {workers}, {kill_at}")
    budget = minutes * 60 - trial_seconds  # a trial started before the timeout runs to its end
    if budget <= 0:
        raise ValueError(f"--minutes {minutes} leaves no time for trials of --trial-seconds {trial_seconds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = out / "study"
    if study.exists():
        raise ValueError(f"{study} exists: remove it (or give another --out) to run the benchmark afresh")
    _write_tasks(out / "train.csv", num_tasks, points, seed)
    _write_tasks(out / "test.csv", test_tasks, points, seed + 1)
    atomic_write_text(_fit_config((out / "train.csv").resolve(), trial_seconds, seed), out / "fit.toml")
    atomic_write_text(TUNE_SPACE, out / "space.toml")
    open_study(study, config=out / "fit.toml", space=out / "space.toml")
    threads = max(1, (os.cpu_count() or 1) // workers)
    start = time.perf_counter()
    logs = [open(out / f"worker-{i}.log", "ab") for i in range(workers)]  # noqa: SIM115 - closed below
    procs: list[subprocess.Popen] = []
    try:
        procs = [_worker(study, budget, threads, logs[i]) for i in range(workers)]
        time.sleep(kill_at * budget)
        before = TuneResult.load(study).rows
        os.killpg(procs[-1].pid, signal.SIGKILL)
        procs[-1].wait()
        killed_at = time.perf_counter() - start
        procs[-1] = _worker(study, max(1.0, budget - killed_at), threads, logs[-1])
        for p in procs:
            p.wait()
    except BaseException:
        for p in procs:  # an interrupted benchmark leaves no worker behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        raise
    finally:
        for log in logs:
            log.close()
    wall = time.perf_counter() - start
    result = TuneResult.load(study)
    write_report(result)
    finished_before = {r["number"]: r["value"] for r in before if r["state"] == "COMPLETE"}
    now = {r["number"]: r for r in result.rows}
    lost = [n for n, v in finished_before.items() if now[n]["state"] != "COMPLETE" or now[n]["value"] != v]
    best, default = result.best, result.defaults
    summary = {"wall_seconds": round(wall, 1), "killed_at_seconds": round(killed_at, 1),
               "trials": len(result.rows), "states": {s: sum(r["state"] == s for r in result.rows)
                                                     for s in ("COMPLETE", "STOPPED", "DIVERGED", "FAIL")},
               "finished_before_kill": len(finished_before), "finished_trials_lost": lost,
               "retried": [r["retry_of"] for r in result.rows if r["retry_of"] is not None],
               "default_val_nll_K5": None if default is None else default["value"],
               "best_val_nll_K5": None if best is None else best["value"],
               "best_trial": None if best is None else best["number"],
               "best_params": None if best is None else best["params"]}
    if confirm and best is not None and default is not None:
        summary["confirm"] = _confirm(out, study, seed + 1)
    payload = {"summary": summary, "options": {"minutes": minutes, "workers": workers, "trial_seconds": trial_seconds,
                                               "kill_at": kill_at, "num_tasks": num_tasks, "points": points,
                                               "seed": seed}, "trials": result.rows}
    atomic_write_text(json.dumps(payload, indent=1, default=str), out / "results.json")
    return {**payload, "table": result.table()}


def _confirm(out: Path, study: Path, seed: int) -> dict:
    """Train the defaults and the best config again (another seed) and score both on the fresh test tasks (K=5)."""
    scores: dict = {}
    per_task = {}
    # trial 0's own config (validated at the objective's shots, as every trial): the defaults as the study ran them
    for name, config in (("defaults", study / "trials" / "0000" / "config.toml"), ("best", study / "best.toml")):
        run = out / f"confirm_{name}"
        cfg = apply_overrides(load_config(config), [f"train.seed={seed}"])
        fit_run(replace(cfg, train=replace(cfg.train, progress=False)), run, force=True, progress=False)
        evaluate_run(run, out / "test.csv", shots=[5], progress=False)
        ev = json.loads((run / "eval.json").read_text())
        s = ev["summary"][0]
        scores[name] = {"test_nll_K5": s["nll"], "test_nll_K5_se": s["nll_se"], "coverage_90": s.get("coverage_90"),
                        "train_steps": json.loads((run / "run.json").read_text())["train_steps"]}
        per_task[name] = {r["task"]: r["nll"] for r in ev["rows"]}
    diff = torch.tensor([per_task["best"][t] - per_task["defaults"][t] for t in per_task["defaults"]])
    scores["difference"] = float(diff.mean())  # paired over the same test tasks
    scores["difference_se"] = float(diff.std() / len(diff) ** 0.5)
    return scores
