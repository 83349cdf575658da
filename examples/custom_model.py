"""Define your own hierarchical model in plain Pyro, meta-train it, and predict for new tasks.

A hierarchical quadratic regression with two task sites (an intercept and two coefficients),
each with its own learned Gaussian prior, and a learned noise scale:

    y_ij = c_i + b_i x_ij + a_i x_ij^2 + eps,   c_i ~ N(mu_c, s_c^2),  (b_i, a_i) ~ N(mu, diag s^2)

The model is nothing but its ``forward``: bayesmeta traces it to find the task sites, the
observation and everything else it needs (docs/custom-model.md).

Run:  python examples/custom_model.py --steps 2000
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

import bayesmeta as bm


class HierarchicalQuadratic(PyroModule):
    """Learned priors are module parameters; task sites in the tasks plate; y in the points plate."""

    x_dim = 1

    def __init__(self) -> None:
        super().__init__()
        self.c_loc, self.c_raw = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.coef_loc, self.coef_raw = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
        self.raw_noise = nn.Parameter(torch.zeros(()))
        self.config: dict = {}  # constructor arguments, for save/load

    def forward(self, x, y=None, mask=None):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            c = pyro.sample("intercept", dist.Normal(self.c_loc, F.softplus(self.c_raw)).to_event(1))  # [..., T, 1, 1]
            coef = pyro.sample("coef", dist.Normal(self.coef_loc, F.softplus(self.coef_raw)).to_event(1))  # [..., T, 1, 2]
            xs = x[..., 0]  # [T, N]
            mean = c[..., 0] + coef[..., 0] * xs + coef[..., 1] * xs**2  # [..., T, N]
            with pyro.plate("points", x.shape[1], dim=-1):
                noise = F.softplus(self.raw_noise) + 1e-3
                return pyro.sample("y", dist.Normal(mean, noise).mask(mask), obs=y)


class QuadraticTasks(bm.tasks.TaskFamily):
    """Ground truth: c ~ N(1, 0.5^2), b ~ N(-1, 0.7^2), a ~ N(0.5, 0.3^2), noise 0.2, x ~ U[-2, 2]."""

    loc, scale, noise = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.5, 0.7, 0.3]), 0.2

    def sample_params(self, num_tasks, generator):
        return {"abc": self.loc + self.scale * torch.randn(num_tasks, 3, generator=generator)}

    def sample_inputs(self, num_tasks, num_points, generator):
        return 4 * torch.rand(num_tasks, num_points, 1, generator=generator) - 2

    def mean_function(self, params, x):
        c, b, a = params["abc"].unbind(-1)
        return (c[:, None] + b[:, None] * x[..., 0] + a[:, None] * x[..., 0] ** 2)[..., None]

    def simulate(self, params, x, generator):
        f = self.mean_function(params, x)
        return f + self.noise * torch.randn(f.shape, generator=generator)


def main(args) -> dict:
    torch.manual_seed(args.seed)
    family = QuadraticTasks()
    model = HierarchicalQuadratic()
    learner = bm.BayesLearner(model, guide="flow")  # joint flow over both sites
    learner.fit(family, steps=args.steps, tasks_per_step=32, max_points=10, lr=args.lr, device=args.device,
                seed=args.seed, progress=not args.no_progress)
    means = torch.cat([model.c_loc, model.coef_loc]).detach()
    print("learned prior means:", means.tolist())
    print("true prior means:   ", family.loc.tolist())
    test = family.sample(200, shots=3, num_query=20, generator=torch.Generator().manual_seed(1))
    pred = learner.adapt(test).predict(test.x_query, seed=0)
    nll = -pred.log_prob(test.y_query).mean().item()
    lo, hi = pred.interval(0.9)
    cov = ((test.y_query >= lo) & (test.y_query <= hi)).double().mean().item()
    print(f"3-shot test NLL {nll:.3f}, 90% coverage {cov:.3f}")
    return {"nll": nll, "coverage90": cov, "prior_means": means.tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (prior parameters move ~lr per step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    main(parser.parse_args())
