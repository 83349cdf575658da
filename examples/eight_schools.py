"""Eight schools, the classic hierarchical model, in bayesmeta's model protocol: NUTS and SVI.

Each school is a *task* with one observed point: the input is the known standard error
sigma_j of its estimate, the output the estimated effect y_j. Unlike bayesmeta's empirical-Bayes
models, the population parameters mu and tau get priors of their own (global sites, sampled
outside the tasks plate), non-centred:

    mu ~ N(0, 5),  tau ~ HalfCauchy(5),  theta_j = mu + tau * eta_j,  eta_j ~ N(0, 1),
    y_j ~ N(theta_j, sigma_j)

The script fits it with NUTS (``bm.reference_posterior``) and with SVI (Pyro autoguides: a
mean-field Normal and a full-rank Gaussian), prints mu and tau next to the reference bundled with
ArviZ (``az.load_arviz_data("non_centered_eight")``: mu 4.4 ± 3.3, tau 3.7 ± 3.1) and writes a
forest plot.

Run:  python examples/eight_schools.py --out eight_schools.png
"""

from __future__ import annotations

import argparse

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroModule

import bayesmeta as bm

matplotlib.use("Agg")


class EightSchools(PyroModule):
    """``model(x, y=None, mask=None)``: x = standard errors ``[T, 1, 1]``, y = effects ``[T, 1, 1]``."""

    task_sites = {"eta": torch.Size([])}

    def forward(self, x, y=None, mask=None):
        t, n = x.shape[:2]
        mask = torch.ones(t, n, dtype=torch.bool) if mask is None else mask
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))  # global sites: outside every plate
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("tasks", t, dim=-2):
            eta = pyro.sample("eta", dist.Normal(0.0, 1.0))  # [T, 1]
            theta = pyro.deterministic("theta", mu + tau * eta)
            with pyro.plate("points", n, dim=-1):
                return pyro.sample("y", dist.Normal(theta, x[..., 0]).mask(mask), obs=None if y is None else y[..., 0])


def load_data():
    ref = az.load_arviz_data("non_centered_eight")
    y = torch.tensor(ref.observed_data["obs"].values, dtype=torch.float64)
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)  # the published s.e.
    return sigma.reshape(8, 1, 1), y.reshape(8, 1, 1), list(ref.posterior["school"].values), ref


def fit_svi(model, x, y, guide_cls, steps: int, seed: int, num_samples: int = 4000):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = guide_cls(model)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.1 ** (1 / max(steps, 1))}),
              Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2))
    for _ in range(steps):
        svi.step(x, y)
    draws = Predictive(model, guide=guide, num_samples=num_samples, return_sites=["mu", "tau", "theta"])(x, None)
    post = {"mu": draws["mu"].reshape(1, -1).numpy(), "tau": draws["tau"].reshape(1, -1).numpy(),
            "theta": draws["theta"].reshape(1, num_samples, 8).numpy()}
    return az.from_dict(posterior=post, dims={"theta": ["school"]})


def main(args):
    torch.set_default_dtype(torch.float64)
    try:
        x, y, schools, reference = load_data()
        model = EightSchools()
        nuts = bm.reference_posterior(model, x, y, num_samples=args.num_samples, num_warmup=args.num_warmup,
                                      num_chains=args.num_chains, seed=args.seed, progress=not args.no_progress)
        post = nuts.posterior.squeeze("eta_dim_1", drop=True).rename({"eta_dim_0": "school"})
        nuts.posterior = post.assign(theta=post["mu"] + post["tau"] * post["eta"])  # MCMC keeps sampled sites only
        fits = {"NUTS": nuts,
                "SVI mean-field": fit_svi(model, x, y, AutoNormal, args.steps, args.seed),
                "SVI full-rank": fit_svi(model, x, y, AutoMultivariateNormal, args.steps, args.seed)}
    finally:
        torch.set_default_dtype(torch.float32)
    table = {"ArviZ reference": reference, **fits}
    print(f"{'':18s} {'mu mean':>8s} {'mu sd':>7s} {'tau mean':>9s} {'tau sd':>7s}")
    rows = {}
    for name, idata in table.items():
        mu, tau = (idata.posterior[v].values.ravel() for v in ("mu", "tau"))
        rows[name] = (float(mu.mean()), float(mu.std()), float(tau.mean()), float(tau.std()))
        print(f"{name:18s} {rows[name][0]:8.2f} {rows[name][1]:7.2f} {rows[name][2]:9.2f} {rows[name][3]:7.2f}")
    diag = bm.diagnostics.reference_diagnostics(nuts)
    print(f"NUTS: max R-hat {diag['max_rhat']:.3f}, min bulk ESS {diag['min_ess_bulk']:.0f}, "
          f"{diag['divergences']} divergences")
    if args.out:
        for idata in table.values():
            idata.posterior = idata.posterior.assign_coords(school=np.asarray(schools))
        axes = az.plot_forest(list(table.values()), model_names=list(table), var_names=["mu", "tau", "theta"],
                              combined=True, figsize=(7, 8))
        axes[0].figure.savefig(args.out, dpi=110, bbox_inches="tight")
        print(f"wrote {args.out}")
    return {"summary": rows, "nuts_diagnostics": diag}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=1000, help="NUTS draws per chain")
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000, help="SVI steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eight_schools.png", help="forest plot ('' to skip)")
    p.add_argument("--device", default="cpu", help="eight schools is tiny: cpu")
    p.add_argument("--no-progress", action="store_true")
    main(p.parse_args())
