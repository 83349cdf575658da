"""ArviZ conversion: groups, dims, coordinates, shapes; az.loo against a hand computation."""

import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch

import bayesmeta as bm


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    family = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5)
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    learner.fit(family, steps=300, progress=False, lr=0.05)
    return family, learner


def _ragged_test(family):
    test = family.sample(3, shots=4, num_query=5, generator=torch.Generator().manual_seed(1))
    test.mask_query[1, 3:] = False  # task 1 has 3 query points
    return test


def test_groups_dims_coords_and_shapes(fitted):
    family, learner = fitted
    test = _ragged_test(family)
    idata = bm.to_inference_data(learner.adapt(test), tasks=test, num_samples=200, task_ids=["a", "b", "c"])
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood", "observed_data", "constant_data"}
    w = idata.posterior["w"]
    assert w.dims == ("chain", "draw", "task", "w_dim_0") and w.shape == (1, 200, 3, 2)
    assert list(idata.posterior["task"].values) == ["a", "b", "c"]
    n_obs = 5 + 3 + 5
    assert idata.log_likelihood["y"].shape == (1, 200, n_obs)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "obs")
    assert idata.observed_data["y"].shape == (n_obs,) and idata.constant_data["x"].shape == (n_obs, 1)
    assert list(idata.log_likelihood["obs_task"].values) == ["a"] * 5 + ["b"] * 3 + ["c"] * 5
    assert list(idata.observed_data["obs_point"].values[5:8]) == [0, 1, 2]
    np.testing.assert_allclose(idata.observed_data["y"].values[5:8], test.y_query[1, :3, 0].double().numpy())


def test_loo_elpd_plus_p_loo_is_the_hand_computed_lppd(fitted):
    family, learner = fitted
    test = _ragged_test(family)
    post = learner.adapt(test)
    idata = bm.to_inference_data(post, tasks=test, num_samples=400, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto-k warnings are az.loo's business
        loo = az.loo(idata)
    # By hand: the same posterior draws, pushed through the Gaussian likelihood.
    w = torch.as_tensor(idata.posterior["w"].values[0])  # [S, T, 2]
    noise = float(learner.model.noise_std.detach())
    xq, yq, mq = test.query
    feats = torch.cat([xq.double(), torch.ones_like(xq.double())], -1)  # [T, N, 2]
    mu = torch.einsum("tnp,stp->stn", feats, w)
    ll = -0.5 * ((yq[..., 0].double() - mu) / noise) ** 2 - math.log(noise) - 0.5 * math.log(2 * math.pi)
    lppd = float((torch.logsumexp(ll, 0) - math.log(ll.shape[0]))[mq].sum())
    assert loo.elpd_loo + loo.p_loo == pytest.approx(lppd, abs=1e-6)


def test_posterior_only_and_predictive_source(fitted, tmp_path):
    family, learner = fitted
    test = _ragged_test(family)
    post = learner.adapt(test)
    idata = bm.to_inference_data(post, num_samples=50)
    assert set(idata.groups()) == {"posterior"}
    pred = post.predict(test.x_query)
    idata = bm.to_inference_data(post, pred, tasks=test, num_samples=50)
    assert idata.log_likelihood["y"].shape == (1, 50, 13)
    idata.to_netcdf(tmp_path / "idata.nc")
    back = az.from_netcdf(tmp_path / "idata.nc")
    np.testing.assert_allclose(back.log_likelihood["y"].values, idata.log_likelihood["y"].values)


def test_amortized_posterior_converts(fitted):
    family, _ = fitted
    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=2, latent_dim=3, hidden=(8,)))
    x = torch.randn(2, 4, 1)
    y = torch.randn(2, 4, 2)
    post = learner.adapt(x, y)
    idata = bm.to_inference_data(post, x_query=x, y_query=y, num_samples=30)
    assert idata.posterior["z"].shape == (1, 30, 2, 3)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs", "y_dim")
    assert idata.log_likelihood["y"].shape == (1, 30, 8, 2)


def test_bad_input(fitted):
    family, learner = fitted
    test = _ragged_test(family)
    post = learner.adapt(test)
    with pytest.raises(ValueError, match=r"y_query must have shape \[3, N, E\]"):
        bm.to_inference_data(post, x_query=test.x_query[:2], y_query=test.y_query[:2])
    with pytest.raises(ValueError, match="task_ids must hold one id per task"):
        bm.to_inference_data(post, task_ids=[1, 2])
    y = test.y_query.clone()
    y[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="task 2, point 1"):
        bm.to_inference_data(post, x_query=test.x_query, y_query=y)
    with pytest.raises(ValueError, match="predictive: shape"):
        bm.to_inference_data(post, post.predict(test.x_query[:, :2]), tasks=test)
    with pytest.raises(TypeError, match="posterior must be"):
        bm.to_inference_data(test)
