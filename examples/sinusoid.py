"""Meta-train a latent-code model on sinusoids and compare with the Bayes oracle.

Run:  python examples/sinusoid.py --max-time 300
"""

from __future__ import annotations

import argparse

import torch

import bayesmeta as bm
from bayesmeta.evaluation import coverage, mean_se, task_nll


def main(args) -> dict:
    family = bm.tasks.Sinusoid(noise_std=0.1)
    model = bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=8)
    learner = bm.BayesLearner(model)
    learner.fit(family, steps=args.steps, max_time=args.max_time, tasks_per_step=32, device=args.device,
                seed=args.seed, progress=not args.no_progress)
    out = {}
    for k in (1, 5, 10):
        test = family.sample(args.num_tasks, shots=k, num_query=100, generator=torch.Generator().manual_seed(1))
        pred = learner.adapt(test).predict(test.x_query, seed=0)
        oracle = family.oracle_predict(test.x_support, test.y_support, test.x_query)
        gap = mean_se(task_nll(pred, test.y_query) - task_nll(oracle, test.y_query))
        cov = coverage(pred, test.y_query, level=0.9)
        print(f"K={k:2d}  NLL gap to oracle {gap[0]:.3f} ± {gap[1]:.3f}   90% coverage {cov:.3f}   "
              f"median ESS {pred.ess.median():.0f}")
        out[k] = {"gap": gap, "coverage90": cov}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--max-time", type=float, default=300.0)
    parser.add_argument("--num-tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    main(parser.parse_args())
