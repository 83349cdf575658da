"""NUTS reference against the exact conjugate posterior; posterior comparison numbers."""

import math

import arviz as az
import numpy as np
import pytest
import torch

import bayesmeta as bm


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = bm.models.HierarchicalLinearRegression(x_dim=1)
    test = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5).sample(2, shots=4, generator=torch.Generator().manual_seed(2))
    ref = bm.reference_posterior(model, *test.support, num_samples=500, num_warmup=300, num_chains=2, seed=0)
    return model, test, ref


def test_nuts_matches_the_exact_posterior(case):
    model, test, ref = case
    assert ref.posterior["w"].dims == ("chain", "draw", "task", "w_dim_0")
    assert ref.posterior["w"].shape == (2, 500, 2, 2)
    diag = bm.diagnostics.reference_diagnostics(ref)
    assert diag["max_rhat"] < 1.01 and diag["divergences"] == 0 and diag["min_ess_bulk"] > 300
    exact = model.exact_posterior(*test.support)
    mean, sd = exact.loc.detach().double().numpy(), exact.variance.sqrt().detach().double().numpy()
    draws = ref.posterior["w"].values.reshape(-1, 2, 2)
    ess = az.ess(ref)["w"].values  # [task, dim]
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * sd / np.sqrt(ess))  # MC error of the mean
    assert np.all(np.abs(draws.std(0) / sd - 1) < 4 / np.sqrt(2 * ess) + 0.02)  # MC error of the sd


def test_compare_posteriors_scores_exact_and_shrunk(case):
    model, test, ref = case
    learner = bm.BayesLearner(model, conjugate=True)
    post = learner.adapt(test)
    exact = bm.to_inference_data(post, num_samples=4000, seed=1)
    rows = bm.compare_posteriors(exact, ref)
    assert len(rows) == 4 and {r["task"] for r in rows} == {0, 1} and rows[0]["site"] == "w"
    for r in rows:
        assert abs(r["mean_error_sd"]) < 0.2 and abs(r["sd_ratio"] - 1) < 0.12 and r["wasserstein_sd"] < 0.2
    draws = exact.posterior["w"].values
    shrunk = az.from_dict(posterior={"w": draws.mean(1, keepdims=True) + 0.5 * (draws - draws.mean(1, keepdims=True))},
                          coords={"task": [0, 1]}, dims={"w": ["task", "w_dim_0"]})
    for r in bm.compare_posteriors(shrunk, ref):
        assert abs(r["sd_ratio"] - 0.5) < 0.06
        # W1 of N(0, 1/4) vs N(0, 1) is E|Z| / 2 = 1 / sqrt(2 pi) ~ 0.40 reference sds
        assert r["wasserstein_sd"] == pytest.approx(1 / math.sqrt(2 * math.pi), abs=0.08)


def test_compare_posteriors_names_a_missing_site(case):
    _, _, ref = case
    other = az.from_dict(posterior={"v": np.zeros((1, 10, 2))})
    with pytest.raises(ValueError, match="site 'w' is not in the amortized posterior"):
        bm.compare_posteriors(other, ref)


def test_nuts_argument_checks():
    model = bm.models.HierarchicalLinearRegression(x_dim=1)
    x, y = torch.zeros(1, 2, 1), torch.zeros(1, 2, 1)
    with pytest.raises(ValueError, match="num_chains must be an int >= 1"):
        bm.reference_posterior(model, x, y, num_chains=0)
    with pytest.raises(ValueError, match="target_accept_prob"):
        bm.reference_posterior(model, x, y, target_accept_prob=1.5)
