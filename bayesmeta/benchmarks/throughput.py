"""``bayesmeta bench throughput``: how meta-training and prediction scale with batch size and processes.

* Meta-training tasks/s and peak memory against tasks per step (8 ... 512), for the amortized
  learner (``LatentCodeRegression`` on sinusoids) and MAML. Each setting runs in a fresh process
  so its peak resident memory (``ru_maxrss``; on CUDA, ``max_memory_allocated``) is its own.
* Tasks/s against the number of processes (``torch.distributed`` with gloo, per-rank batch fixed).
* Adaptation + prediction time per task against the number of tasks adapted at once.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ..evaluation.results import markdown_table
from ..io import atomic_write_text

__all__ = ["run_throughput"]

LEARNERS = ("amortized", "maml")


def _make(kind: str):
    from ..baselines import MAML
    from .sinusoid import amortized_learner

    if kind == "amortized":
        return amortized_learner()
    return MAML(x_dim=1, y_dim=1, hidden=(40, 40))


def _train_once(kind: str, tasks_per_step: int, seconds: float, device: str, threads: int, distributed: bool = False):
    from ..tasks import Sinusoid

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    learner = _make(kind)
    family = Sinusoid(noise_std=0.1)
    learner.fit(family, steps=3, tasks_per_step=tasks_per_step, device=device, progress=False)  # warm-up
    learner.fit(family, 10**9, max_time=seconds, tasks_per_step=tasks_per_step, device=device, progress=False,
                distributed=distributed)
    h = learner.history
    rate = h.step[-1] * tasks_per_step / h.time[-1]
    if torch.device(device).type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"tasks_per_second": rate, "steps": h.step[-1], "peak_memory_mib": peak}


def _in_fresh_process(fn, *args):
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _rank_worker(rank, world, port, kind, tasks_per_step, seconds, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        res = _train_once(kind, tasks_per_step, seconds, "cpu", 1, distributed=True)
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _multi_process(kind: str, world: int, tasks_per_step: int, seconds: float, out: Path) -> dict:
    if world == 1:
        res = _in_fresh_process(_train_once, kind, tasks_per_step, seconds, "cpu", 1)
        return {"processes": 1, "tasks_per_second": res["tasks_per_second"]}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_worker, args=(world, port, kind, tasks_per_step, seconds, str(out)), nprocs=world, join=True)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    return {"processes": world, "tasks_per_second": sum(r["tasks_per_second"] for r in ranks)}


def _prediction_timing(batch_sizes, device: str) -> list[dict]:
    from ..tasks import Sinusoid

    torch.manual_seed(0)
    learner = _make("amortized").to(device)
    family = Sinusoid(noise_std=0.1)
    rows = []
    for t in batch_sizes:
        test = family.sample(t, shots=5, num_query=100, generator=torch.Generator().manual_seed(t)).to(device)
        for method in ("guide", "importance"):
            learner.adapt(test).predict(test.x_query, method=method, seed=0)  # warm-up
            t0 = time.perf_counter()
            learner.adapt(test).predict(test.x_query, method=method, seed=0)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            rows.append({"tasks": t, "method": method, "us_per_task": 1e6 * (time.perf_counter() - t0) / t})
    return rows


def run_throughput(*, tasks_per_step=(8, 32, 128, 256, 512), learners=LEARNERS, seconds: float = 15.0,
                   processes=(1, 2), process_batch: int = 64, predict_batches=(1, 10, 100), device="cpu",
                   threads: int | None = None, out_dir="bench_out/throughput") -> dict:
    """Run the throughput study; writes ``results.json`` and returns the rows and a Markdown table."""
    unknown = sorted(set(learners) - set(LEARNERS))
    if unknown:
        raise ValueError(f"unknown learner(s) {unknown}; choose from {list(LEARNERS)}")
    threads = threads or torch.get_num_threads()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "throughput", "device": device, "threads": threads, "seconds_per_setting": seconds,
              "batch": [], "processes": [], "prediction": []}
    for kind in learners:
        for b in tasks_per_step:
            print(f"{kind}: {b} tasks per step ...", file=sys.stderr, flush=True)
            res = _in_fresh_process(_train_once, kind, b, seconds, device, threads)
            result["batch"].append({"learner": kind, "tasks_per_step": b, **res})
        if device == "cpu":
            for w in processes:
                print(f"{kind}: {w} process(es) x {process_batch} tasks per step ...", file=sys.stderr, flush=True)
                result["processes"].append({"learner": kind, "tasks_per_step_per_rank": process_batch,
                                            **_multi_process(kind, w, process_batch, seconds, out)})
    result["prediction"] = _prediction_timing(predict_batches, device)
    for kind in learners:
        rates = {r["tasks_per_step"]: r["tasks_per_second"] for r in result["batch"] if r["learner"] == kind}
        if 8 in rates and 256 in rates:
            result[f"{kind}_speedup_256_vs_8"] = rates[256] / rates[8]
    atomic_write_text(json.dumps(result, indent=1), out / "results.json")
    result["table"] = format_throughput(result)
    return result


def format_throughput(result: dict) -> str:
    lines = [f"meta-training on {result['device']} ({result['threads']} threads, {result['seconds_per_setting']:.0f} s "
             "per setting)", "", markdown_table(
                 ["learner", "tasks/step", "tasks/s", "steps", "peak MiB"],
                 [[r["learner"], r["tasks_per_step"], f"{r['tasks_per_second']:.0f}", r["steps"],
                   f"{r['peak_memory_mib']:.0f}"] for r in result["batch"]])]
    if result["processes"]:
        lines += ["", markdown_table(["learner", "processes", "tasks/step/rank", "tasks/s (all ranks)"],
                                     [[r["learner"], r["processes"], r["tasks_per_step_per_rank"],
                                       f"{r['tasks_per_second']:.0f}"] for r in result["processes"]])]
    lines += ["", markdown_table(["tasks adapted at once", "predict method",
                                  "µs per task (adapt + predict, 100 query points)"],
                                 [[r["tasks"], r["method"], f"{r['us_per_task']:.0f}"] for r in result["prediction"]])]
    return "\n".join(lines)
