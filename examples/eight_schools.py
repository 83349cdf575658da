"""Eight schools, the classic hierarchical model, through ``BayesLearner`` and against NUTS.

Each school is a *task* with one observed point: the input is the known standard error
sigma_j of its estimate, the output the estimated effect y_j. The population parameters mu and
tau get priors of their own (global latent sites, sampled outside the tasks plate: full Bayes),
non-centred (``bm.models.EightSchools``):

    mu ~ N(0, 5),  tau ~ HalfCauchy(5),  theta_j = mu + tau * eta_j,  eta_j ~ N(0, 1),
    y_j ~ N(theta_j, sigma_j)

The script fits it with ``BayesLearner`` (the library's defaults: a full-rank Gaussian guide over
mu and log tau, the amortized guide of eta conditioned on them, the hyperposterior importance-
corrected after the fit) and with NUTS on the whole model (``bm.reference_posterior``), prints mu
and tau next to the reference bundled with ArviZ (``az.load_arviz_data("non_centered_eight")``:
mu 4.4 ± 3.3, tau 3.7 ± 3.1) and writes a forest plot.

Run:  python examples/eight_schools.py --out eight_schools.png
"""

from __future__ import annotations

import argparse

import arviz as az
import matplotlib
import numpy as np
import torch

import bayesmeta as bm

matplotlib.use("Agg")


def load_data():
    ref = az.load_arviz_data("non_centered_eight")
    y = torch.tensor(ref.observed_data["obs"].values, dtype=torch.float64)
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)  # the published s.e.
    return sigma.reshape(8, 1, 1), y.reshape(8, 1, 1), list(ref.posterior["school"].values), ref


def fit_bayes_learner(x, y, steps: int, seed: int, num_samples: int = 4000):
    """The library's way: BayesLearner on the model with global sites mu and tau (full Bayes)."""
    pool = bm.TaskBatch.from_arrays(list(x.float()), list(y.float()))
    learner = bm.BayesLearner(bm.models.EightSchools()).fit(pool, steps, progress=False, seed=seed)
    return bm.diagnostics.hyperposterior_inference_data(learner, num_samples=num_samples, seed=seed), learner


def main(args):
    x, y, schools, reference = load_data()
    torch.set_default_dtype(torch.float64)
    try:
        nuts = bm.reference_posterior(bm.models.EightSchools(), x, y, num_samples=args.num_samples,
                                      num_warmup=args.num_warmup, num_chains=args.num_chains, seed=args.seed,
                                      progress=not args.no_progress)
    finally:
        torch.set_default_dtype(torch.float32)
    nuts.posterior = nuts.posterior.rename({"task": "school"})
    amortized, learner = fit_bayes_learner(x, y, args.steps, args.seed)
    fits = {"NUTS": nuts, "BayesLearner": amortized}
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
        for idata in (reference, nuts):
            idata.posterior = idata.posterior.assign_coords(school=np.asarray(schools))
        axes = az.plot_forest(list(table.values()), model_names=list(table), var_names=["mu", "tau"],
                              combined=True, figsize=(7, 4))
        axes[0].figure.savefig(args.out, dpi=110, bbox_inches="tight")
        print(f"wrote {args.out}")
    return {"summary": rows, "nuts_diagnostics": diag, "hyper": learner.history.hyper}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=1000, help="NUTS draws per chain")
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--steps", type=int, default=2000, help="BayesLearner training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eight_schools.png", help="forest plot ('' to skip)")
    p.add_argument("--device", default="cpu", help="eight schools is tiny: cpu")
    p.add_argument("--no-progress", action="store_true")
    main(p.parse_args())
