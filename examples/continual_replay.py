"""Continual meta-learning on a drifting sinusoid: forgetting with and without experience replay.

Three phases of sinusoid tasks whose amplitudes and inputs move (``bm.tasks.drifting_sinusoid``).
The amortized Bayesian learner trains through them twice from the same initial weights -- plainly,
and with a reservoir replay buffer mixing stored past tasks into half of every mini-batch -- and
each phase's test tasks are scored (5-shot NLL) after every phase. Prints the table, saves the
forgetting plot.

Run:  python examples/continual_replay.py --steps-per-phase 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import bayesmeta as bm


def main(args) -> dict:
    stream = bm.tasks.drifting_sinusoid(num_phases=3, steps_per_phase=args.steps_per_phase)
    results = []
    for replay in (None, bm.ReplayBuffer(capacity=args.capacity, fraction=0.5)):
        torch.manual_seed(args.seed)  # the same initial weights for both runs
        learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=8))
        results.append(bm.evaluation.continual_evaluation(
            learner, stream, replay=replay, shots=(5,), num_tasks=args.num_tasks, seed=args.seed,
            device=args.device, progress=not args.no_progress))
    print(bm.evaluation.forgetting_table(results))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        bm.diagnostics.plot_forgetting(results).savefig(Path(args.out) / "forgetting.png", dpi=90)
    return {r.name: {"nll": r.nll.tolist(), "forgetting": r.forgetting, "final": r.final} for r in results}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps-per-phase", type=int, default=1000, help="training steps per phase (default: 1000)")
    p.add_argument("--capacity", type=int, default=1000, help="replay buffer capacity in tasks (default: 1000)")
    p.add_argument("--num-tasks", type=int, default=100, help="test tasks per phase (default: 100)")
    p.add_argument("--out", default="continual_out", help="where the plot goes ('' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
