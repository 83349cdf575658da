"""ArviZ conversion, SBC and the NUTS reference for models that are not Gaussian (counts, binary outcomes)."""

import math
import warnings

import torch

import bayesmeta as bm
from bayesmeta._compat import arviz


def _poisson_learner():
    torch.manual_seed(0)
    fam = bm.tasks.HierarchicalPoisson()
    learner = bm.BayesLearner(bm.models.HierarchicalPoissonRegression(x_dim=1))
    learner.fit(fam, steps=200, lr=1e-2, progress=False)
    return fam, learner


def test_inference_data_of_a_count_model_has_an_integer_predictive_and_works_with_loo():
    fam, learner = _poisson_learner()
    test = fam.sample(6, shots=5, num_query=8, generator=torch.Generator().manual_seed(3))
    idata = bm.to_inference_data(learner.adapt(test), tasks=test, num_samples=200)
    assert idata.posterior["w"].shape == (1, 200, 6, 2)
    rep = idata.posterior_predictive["y"].values
    assert rep.shape == (1, 200, 48) and (rep >= 0).all() and (rep == rep.round()).all()
    # the pointwise log-likelihood is the Poisson pmf of the observed counts under each draw
    ll = idata.log_likelihood["y"].values
    with warnings.catch_warnings():  # ArviZ's Pareto-k note on 48 points is a diagnostic, not an error here
        warnings.simplefilter("ignore", UserWarning)
        loo = arviz().loo(idata)
    assert (ll <= 0).all() and math.isfinite(float(loo.elpd_loo))


def test_sbc_and_nuts_reference_run_for_a_logistic_model():
    torch.manual_seed(0)
    fam = bm.tasks.HierarchicalLogistic()
    model = bm.models.HierarchicalLogisticRegression(x_dim=1)
    learner = bm.BayesLearner(model)
    learner.fit(fam, steps=100, lr=1e-2, progress=False)
    x = torch.linspace(-2, 2, 6)[:, None]
    sbc = bm.simulation_based_calibration(model, learner, x, num_simulations=40, num_posterior_samples=50,
                                          method="importance")
    assert sbc.ranks.shape == (40, 2) and sbc.names == ["w[0]", "w[1]"]
    test = fam.sample(2, shots=6, generator=torch.Generator().manual_seed(5))
    ref = bm.reference_posterior(model, test.x_support, test.y_support, num_samples=100, num_warmup=100,
                                 num_chains=2)
    assert ref.posterior["w"].shape == (2, 100, 2, 2)
    # NUTS and importance-corrected amortized draws agree on each task's posterior mean (within 0.35 sd:
    # 200 correlated NUTS draws)
    amortized = learner.adapt(test).sample(2000, seed=0)["w"]  # [n, T, 2]
    nuts = torch.as_tensor(ref.posterior["w"].values).reshape(-1, 2, 2)
    diff = (amortized.mean(0) - nuts.mean(0)).abs() / nuts.std(0)
    assert (diff < 0.35).all(), diff
