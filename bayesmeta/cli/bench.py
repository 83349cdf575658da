"""``bayesmeta bench NAME``: one sub-command per benchmark, each with its own flags and help.

``add_bench_parser`` builds ``bench sinusoid | compare | throughput | exact-fit``; the flags several
benchmarks share (``--out``, ``--seed``, ``--device``, ``--num-tasks``, ``--no-progress``,
``--threads``) come from one helper, :func:`_shared_flags`, and only where they apply.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..benchmarks import (
    CLASSIFY_FAMILIES,
    CLASSIFY_METHODS,
    COMPARE_FAMILIES,
    COMPARE_METHODS,
    CONTINUAL_METHODS,
    POOL_CASES,
    SINUSOID_VARIANTS,
)
from ..benchmarks.throughput import LEARNERS
from .bench_flags import shared_flags as _shared_flags
from .bench_flags import sub_parser as _sub
from .bench_optimize import add_optimize_bench

__all__ = ["BENCH_EPILOG", "add_bench_parser", "run_bench"]

BENCH_EPILOG = """examples:
  bayesmeta bench sinusoid                          # every variant, 540 s training each
  bayesmeta bench sinusoid --variants iwae-diagonal --max-time 120 --num-tasks 200
  bayesmeta bench compare                           # Bayes vs MAML family vs ensemble, 300 s each
  bayesmeta bench compare --families sinusoid --methods bayes maml --budget 60 --num-tasks 200
  bayesmeta bench throughput                        # tasks/s and memory vs batch size and processes
  bayesmeta bench throughput --seconds 5 --batch-sizes 8 256 --learners amortized
  bayesmeta bench exact-fit --repeats 3             # exact type-II ML against an independent scipy fit
  bayesmeta bench pools                             # finite pools: calibrated on fresh tasks? (~1 h)
  bayesmeta bench pools --cases sinusoid-50 --steps 4000 --num-tasks 200
  bayesmeta bench glm                               # logistic and Poisson GLMs vs their oracles (~20 min)
  bayesmeta bench glm --cases poisson --max-time 60 --num-tasks 200
  bayesmeta bench glmm                              # a Poisson GLMM against maximum likelihood, 10 pools (~15 min)
  bayesmeta bench hyper                             # full vs empirical Bayes on 200 small pools: coverage (~1 h)
  bayesmeta bench hyper --pools 20 --steps 300
  bayesmeta bench hyper-nuts                        # varying intercepts + slope, 10-100 groups: new-group NLL vs NUTS
  bayesmeta bench classify                          # few-shot classification, 120 s per method (~40 min)
  bayesmeta bench classify --families clusters --methods oracle bayes-proto protonet --budget 30
  bayesmeta bench continual                         # forgetting with / without replay vs joint (~15 min)
  bayesmeta bench continual --methods maml --steps-per-phase 300 --num-tasks 100
  bayesmeta bench tune                              # a 20-minute 2-worker study on sinusoid tasks, one worker killed
  bayesmeta bench tune --minutes 4 --trial-seconds 20 --no-confirm
  bayesmeta bench NAME --help                       # the flags of one benchmark
"""


def _run_sinusoid(args) -> dict:
    from ..benchmarks import run_sinusoid

    result = run_sinusoid(variants=args.variants, max_time=args.max_time, num_tasks=args.num_tasks, out_dir=args.out,
                          seed=args.seed, progress=not args.no_progress, device=args.device)
    print(result["evaluation"].table())
    for name, v in result["variants"].items():
        print(f"{name}: {v['train_steps']} steps in {v['train_seconds']:.0f} s")
    return result


def _run_compare(args) -> dict:
    from ..benchmarks import run_compare

    result = run_compare(families=args.families, methods=args.methods, budget=args.budget,
                         sweep_seconds=args.sweep_seconds, classic_budget=args.classic_budget,
                         num_tasks=args.num_tasks, out_dir=args.out, seed=args.seed, device=args.device,
                         tune_seconds=args.tune_seconds)
    print("\n\n".join(result["tables"]))
    for fam, meta in result["families"].items():
        for m, info in meta["methods"].items():
            if "tasks_per_second" in info:
                print(f"{fam} {m}: {info['tasks_per_second']:.0f} training tasks/s, settings {info['settings']}")
    if "maml_classic" in result:
        print(f"noise-free MAML sinusoid (K=10): {result['maml_classic']}")
    print(f"MAML step, vectorised vs per-task loop: {result['vectorisation']}")
    return result


def _run_throughput(args) -> dict:
    from ..benchmarks import run_throughput

    result = run_throughput(tasks_per_step=args.batch_sizes, learners=args.learners, seconds=args.seconds,
                            processes=args.processes, predict_batches=args.predict_batches, device=args.device,
                            threads=args.threads, out_dir=args.out)
    print(result["table"])
    for k, v in result.items():
        if k.endswith("_speedup_256_vs_8"):
            print(f"{k}: {v:.1f}x")
    return result


def _run_exact_fit(args) -> dict:
    from ..benchmarks.exact_fit import run_exact_fit

    result = run_exact_fit(repeats=args.repeats, seed=args.seed, out_dir=args.out)
    print(result["table"])
    return result


def _run_glmm(args) -> dict:
    from ..benchmarks.glmm import run_glmm

    result = run_glmm(seeds=args.seeds, groups=args.groups, steps=args.steps, out_dir=args.out,
                      progress=not args.no_progress)
    print(result["table"])
    return result


def _run_hyper(args) -> dict:
    from ..benchmarks.hyper import run_hyper

    result = run_hyper(pools=args.pools, groups=args.groups, points=args.points, steps=args.steps, seed=args.seed,
                       out_dir=args.out, progress=not args.no_progress)
    print(result["table"])
    return result


def _run_hyper_nuts(args) -> dict:
    from ..benchmarks.hyper import run_hyper_nuts

    result = run_hyper_nuts(groups=tuple(args.groups), steps=args.steps, seed=args.seed, out_dir=args.out,
                            progress=not args.no_progress)
    print(result["table"])
    return result


def _run_pools(args) -> dict:
    from ..benchmarks import run_pools

    model = {k: v for k, v in (("hidden", args.hidden and tuple(args.hidden)), ("latent_dim", args.latent_dim)) if v}
    options = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    result = run_pools(cases=args.cases, steps=args.steps, num_tasks=args.num_tasks, last_tasks=args.last_tasks,
                       out_dir=args.out, seed=args.seed, progress=not args.no_progress, device=args.device,
                       model=model, **options)
    print(result["evaluation"].table())
    for name, c in result["cases"].items():
        print(f"{name}: {c['steps']} steps in {c['train_seconds']:.0f} s, best validation step {c['best_step']}; "
              f"{len(c['notes'])} note(s)")
    return result


def _run_glm(args) -> dict:
    from ..benchmarks import run_glm

    result = run_glm(cases=args.cases, max_time=args.max_time, num_tasks=args.num_tasks, out_dir=args.out,
                     seed=args.seed, progress=not args.no_progress, device=args.device)
    print(result["evaluation"].table())
    for name, c in result["cases"].items():
        print(f"{name}: {c['steps']} steps in {c['train_seconds']:.0f} s; learned prior {c['learned_prior']}, "
              f"true {c['true_prior']}")
    return result


def _run_classify(args) -> dict:
    from ..benchmarks import run_classify

    result = run_classify(families=args.families, methods=args.methods, budget=args.budget, episodes=args.episodes,
                          ways=args.ways, shots=tuple(args.shots), out_dir=args.out, seed=args.seed,
                          device=args.device, progress=not args.no_progress)
    print("\n\n".join(result["tables"]))
    for name, t in result["train"].items():
        temps = ", ".join(f"{t:.2f} (K={k})" for k, t in t.get("temperature", {}).items())
        extra = f", temperature {temps}" if temps else ""
        print(f"{name}: {t['steps']} steps in {t['train_seconds']:.0f} s{extra}")
    return result


def _run_continual(args) -> dict:
    from ..benchmarks import run_continual

    result = run_continual(methods=args.methods, steps_per_phase=args.steps_per_phase, phases=args.phases,
                           capacity=args.capacity, fraction=args.fraction, num_tasks=args.num_tasks,
                           out_dir=args.out, seed=args.seed, device=args.device, progress=not args.no_progress)
    print("\n\n".join(result["tables"]))
    for method, s in result["summary"].items():
        print(f"{method}: replay keeps {s['forgetting_replay']:+.3f} of {s['forgetting_no_replay']:+.3f} nats of "
              f"forgetting; final phase {s['final_replay']:.3f} vs {s['final_no_replay']:.3f} without replay")
    return result


def _run_tune(args) -> dict:
    from ..benchmarks.tune import run_tune_bench

    result = run_tune_bench(minutes=args.minutes, workers=args.workers, trial_seconds=args.trial_seconds,
                            kill_at=args.kill_at, num_tasks=args.num_tasks, out_dir=args.out, seed=args.seed,
                            confirm=not args.no_confirm)
    print(result["table"])
    s = result["summary"]
    print(f"{s['trials']} trials {s['states']} in {s['wall_seconds']:.0f} s; a worker was killed at "
          f"{s['killed_at_seconds']:.0f} s with {s['finished_before_kill']} finished trials, lost: "
          f"{s['finished_trials_lost'] or 'none'}; retried: {s['retried'] or 'none'}")
    print(f"K=5 validation NLL: defaults {s['default_val_nll_K5']}, best {s['best_val_nll_K5']} (trial {s['best_trial']})")
    if "confirm" in s:
        c = s["confirm"]
        print(f"retrained with another seed, fresh test tasks (K=5): defaults {c['defaults']['test_nll_K5']:.4f}, best "
              f"{c['best']['test_nll_K5']:.4f}, paired difference {c['difference']:+.4f} ± {c['difference_se']:.4f}")
    return result


def add_bench_parser(sub) -> argparse.ArgumentParser:
    """``bayesmeta bench``: a sub-command per benchmark under the command line's sub-parsers ``sub``."""
    b = sub.add_parser("bench", help="run a reproducible benchmark (prints a table, writes JSON)",
                       description="Run a reproducible benchmark: it prints a table and writes results.json.",
                       epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench = b.add_subparsers(dest="benchmark", required=True, metavar="NAME")

    s = _sub(bench, "sinusoid", "amortized Bayesian learners against the Bayes oracle on sinusoids", _run_sinusoid)
    s.add_argument("--variants", nargs="+", default=None,
                   help=f"variants to run (default: all): {', '.join(SINUSOID_VARIANTS)}")
    s.add_argument("--max-time", type=float, default=540.0, help="training seconds per variant (default: 540)")
    _shared_flags(s, "sinusoid", num_tasks=True, progress=True)

    c = _sub(bench, "compare", "the Bayesian learner, the MAML family and an ensemble at the same budget",
             _run_compare)
    c.add_argument("--families", nargs="+", default=list(COMPARE_FAMILIES),
                   help=f"task families (default: {' '.join(COMPARE_FAMILIES)})")
    c.add_argument("--methods", nargs="+", default=list(COMPARE_METHODS),
                   help=f"methods (default: all): {', '.join(COMPARE_METHODS)}")
    c.add_argument("--budget", type=float, default=300.0, help="training seconds per method (default: 300)")
    c.add_argument("--sweep-seconds", type=float, default=45.0,
                   help="seconds per learning-rate trial of each baseline (default: 45)")
    c.add_argument("--tune-seconds", type=float, default=0.0,
                   help="give every method (the Bayesian learner too) an Optuna study of this many seconds over lr, "
                   "tasks per step and inner step size, trials of --sweep-seconds (0: the fixed sweep; default: 0)")
    c.add_argument("--classic-budget", type=float, default=150.0,
                   help="seconds for the noise-free MAML check (0: skip; default: 150)")
    _shared_flags(c, "compare", num_tasks=True)

    t = _sub(bench, "throughput", "tasks/s and memory against tasks per step, processes and tasks adapted at once",
             _run_throughput)
    t.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 256, 512],
                   help="tasks per step (default: 8 32 128 256 512)")
    t.add_argument("--learners", nargs="+", default=list(LEARNERS), help=f"learners (default: {' '.join(LEARNERS)})")
    t.add_argument("--seconds", type=float, default=15.0, help="seconds per setting (default: 15)")
    t.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts, on CPU (default: 1 2)")
    t.add_argument("--predict-batches", type=int, nargs="+", default=[1, 10, 100],
                   help="numbers of tasks adapted and predicted at once (default: 1 10 100)")
    _shared_flags(t, "throughput", seed=False)

    e = _sub(bench, "exact-fit", "exact type-II ML of a linear mixed model: time and agreement with scipy",
             _run_exact_fit)
    e.add_argument("--repeats", type=int, default=5, help="timed fits (default: 5)")
    _shared_flags(e, "exact-fit", device=False)

    gm = _sub(bench, "glmm", "a user's random-intercept Poisson GLMM in its own units against maximum likelihood",
              _run_glmm)
    gm.add_argument("--seeds", type=int, default=10, help="simulated pools (default: 10)")
    gm.add_argument("--groups", type=int, default=40, help="groups per pool (default: 40)")
    gm.add_argument("--steps", type=int, nargs="+", default=[2000],
                    help="step budgets, each fitted on every pool with and without the polish (default: 2000)")
    _shared_flags(gm, "glmm", seed=False, device=False, progress=True)

    hy = _sub(bench, "hyper", "full Bayes (hyperpriors) vs empirical Bayes on small pools: new-group calibration",
              _run_hyper)
    hy.add_argument("--pools", type=int, default=200, help="simulated pools (default: 200)")
    hy.add_argument("--groups", type=int, default=8, help="groups per pool (default: 8)")
    hy.add_argument("--points", type=int, default=5, help="points per group (default: 5)")
    hy.add_argument("--steps", type=int, default=500, help="training steps per fit (default: 500)")
    _shared_flags(hy, "hyper", device=False, progress=True)

    hn = _sub(bench, "hyper-nuts", "a varying-intercept model with global latents: new-group predictive against NUTS",
              _run_hyper_nuts)
    hn.add_argument("--groups", type=int, nargs="+", default=[10, 30, 100], help="pool sizes (default: 10 30 100)")
    hn.add_argument("--steps", type=int, default=2000, help="training steps per fit (default: 2000)")
    _shared_flags(hn, "hyper", device=False, progress=True)

    pl = _sub(bench, "pools", "finite pools of tasks: library defaults, scored on fresh tasks", _run_pools)
    pl.add_argument("--cases", nargs="+", default=None, help=f"cases (default: all): {', '.join(POOL_CASES)}")
    pl.add_argument("--steps", type=int, default=20_000, help="training steps at most (default: 20000)")
    pl.add_argument("--last-tasks", type=int, default=200,
                    help="test tasks per shot count for the last step's weights (0: skip; default: 200)")
    pl.add_argument("--hidden", type=int, nargs="+", default=None, help="decoder widths (default: 128 128 128)")
    pl.add_argument("--latent-dim", type=int, default=None, help="task code size (default: 8)")
    pl.add_argument("--weight-decay", type=float, default=None, help="fit's weight_decay (default: 0)")
    _shared_flags(pl, "pools", num_tasks=True, progress=True)

    k = _sub(bench, "classify", "few-shot classifiers (Bayesian, metric, MAML family) at one budget, with the oracle",
             _run_classify)
    k.add_argument("--families", nargs="+", default=list(CLASSIFY_FAMILIES), choices=CLASSIFY_FAMILIES)
    k.add_argument("--methods", nargs="+", default=list(CLASSIFY_METHODS), choices=CLASSIFY_METHODS)
    k.add_argument("--budget", type=float, default=120.0, help="training seconds per method (default: 120)")
    k.add_argument("--episodes", type=int, default=1000, help="test episodes per shot count (default: 1000)")
    k.add_argument("--ways", type=int, default=5, help="classes per episode (default: 5)")
    k.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="shots per class (default: 1 5)")
    _shared_flags(k, "classify", progress=True)
    g = _sub(bench, "glm", "hierarchical logistic and Poisson regression against their Bayes oracles", _run_glm)
    g.add_argument("--cases", nargs="+", default=None, help="cases (default: all): logistic, poisson")
    g.add_argument("--max-time", type=float, default=300.0, help="training seconds per case (default: 300)")
    _shared_flags(g, "glm", num_tasks=True, progress=True)
    r = _sub(bench, "continual", "continual meta-learning: forgetting with and without replay, against joint training",
             _run_continual)
    r.add_argument("--methods", nargs="+", default=list(CONTINUAL_METHODS), choices=CONTINUAL_METHODS)
    r.add_argument("--steps-per-phase", type=int, default=1000, help="training steps per phase (default: 1000)")
    r.add_argument("--phases", type=int, default=3, help="phases of the drifting sinusoid (default: 3)")
    r.add_argument("--capacity", type=int, default=1000, help="replay buffer capacity in tasks (default: 1000)")
    r.add_argument("--fraction", type=float, default=0.5, help="replayed share of each mini-batch (default: 0.5)")
    r.add_argument("--num-tasks", type=int, default=200, help="test tasks per phase (default: 200)")
    _shared_flags(r, "continual", progress=True)
    u = _sub(bench, "tune", "a time-boxed tuning study on sinusoid tasks with several workers, one of them killed",
             _run_tune)
    u.add_argument("--minutes", type=float, default=20.0, help="wall-clock minutes of the study (default: 20)")
    u.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    u.add_argument("--trial-seconds", type=float, default=60.0, help="training seconds per trial (default: 60)")
    u.add_argument("--kill-at", type=float, default=0.5, help="kill a worker at this fraction of the study (default: 0.5)")
    u.add_argument("--num-tasks", type=int, default=500, help="tasks in the training CSV (default: 500)")
    u.add_argument("--no-confirm", action="store_true", help="skip retraining defaults and best on fresh test tasks")
    _shared_flags(u, "tune", device=False)
    add_optimize_bench(bench)
    return b


def run_bench(args) -> dict:
    """Run the benchmark ``args.benchmark`` with its parsed flags; prints its table and the total time."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = args.run_benchmark(args)
    print(f"total {time.perf_counter() - t0:.0f} s; results in {args.out}/results.json")
    return result
