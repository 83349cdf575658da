"""Exact type-II ML on a pool in natural units against an independent maximum-likelihood fit (scipy)."""

import warnings

import numpy as np
import pytest
import torch

import bayesmeta as bm

scipy_optimize = pytest.importorskip("scipy.optimize")


def _grouped_data(seed=0, groups=18, points=10):
    """A random intercept and slope per group, outcomes in the hundreds (like a reaction-time study)."""
    rng = np.random.default_rng(seed)
    cov = np.array([[24.7**2, 0.07 * 24.7 * 5.9], [0.07 * 24.7 * 5.9, 5.9**2]])
    b = rng.multivariate_normal([251.4, 10.5], cov, size=groups)  # [G, 2]: intercept, slope
    x = np.tile(np.arange(points, dtype=float), (groups, 1))  # days 0..9
    y = b[:, :1] + b[:, 1:] * x + rng.normal(0, 25.6, size=x.shape)
    return x, y


def _scipy_ml(x, y):
    """ML of y_i ~ N(X_i beta, X_i Sigma X_i^T + s^2 I) by BFGS, written from the formula alone."""
    design = np.stack([x, np.ones_like(x)], -1)  # [G, N, 2]: slope, intercept (the model's order)

    def unpack(p):
        tril = np.array([[np.exp(p[2]), 0.0], [p[3], np.exp(p[4])]])
        return p[:2], tril @ tril.T, np.exp(2 * p[5])

    def nll(p):
        beta, sigma, s2 = unpack(p)
        total = 0.0
        for xi, yi in zip(design, y, strict=True):
            cov = xi @ sigma @ xi.T + s2 * np.eye(len(yi))
            r = yi - xi @ beta
            _, logdet = np.linalg.slogdet(cov)
            total += 0.5 * (logdet + r @ np.linalg.solve(cov, r) + len(yi) * np.log(2 * np.pi))
        return total

    start = np.array([10.0, 250.0, np.log(5.0), 0.0, np.log(20.0), np.log(30.0)])
    res = scipy_optimize.minimize(nll, start, method="BFGS", options={"gtol": 1e-6, "maxiter": 10_000})
    beta, sigma, s2 = unpack(res.x)
    return beta, sigma, np.sqrt(s2), -res.fun


def test_type2_ml_in_natural_units_matches_an_independent_fit():
    # Its time is measured by `python -m bayesmeta.benchmarks.exact_fit`, not here.
    x, y = _grouped_data()
    pool = bm.TaskBatch.from_arrays(x_support=[xi[:, None] for xi in x], y_support=[yi[:, None] for yi in y])
    model = bm.models.HierarchicalLinearRegression(x_dim=1, bias=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ConvergenceWarning would fail the test
        bm.BayesLearner(model, conjugate=True).fit(pool, steps=2000, progress=False)  # library defaults
    beta, sigma, noise, loglik = _scipy_ml(x, y)
    prior = model.prior_distribution()
    got_cov = prior.covariance_matrix.double().detach().numpy()
    np.testing.assert_allclose(prior.loc.double().detach().numpy(), beta, rtol=5e-3)
    np.testing.assert_allclose(np.sqrt(np.diag(got_cov)), np.sqrt(np.diag(sigma)), rtol=5e-3)
    assert float(model.noise_std.detach()) == pytest.approx(noise, rel=5e-3)
    xt, yt, mt = pool.all_points()
    ours = float(model.double().log_marginal_likelihood(xt.double(), yt.double(), mt).sum().detach())
    assert ours == pytest.approx(loglik, abs=1e-3)  # the same maximum of the same likelihood


def test_not_converged_says_so():
    x, y = _grouped_data(seed=1)
    pool = bm.TaskBatch.from_arrays(x_support=[xi[:, None] for xi in x], y_support=[yi[:, None] for yi in y])
    model = bm.models.HierarchicalLinearRegression(x_dim=1)
    with pytest.warns(bm.inference.ConvergenceWarning, match="not converged"):
        bm.inference.fit_type2_ml(model, pool, max_iter=2)


def test_init_from_data_is_on_the_datas_scale():
    x, y = _grouped_data(seed=2)
    pool = bm.TaskBatch.from_arrays(x_support=[xi[:, None] for xi in x], y_support=[yi[:, None] for yi in y])
    model = bm.models.HierarchicalLinearRegression(x_dim=1)
    model.init_from_data(*pool.all_points())
    slope, intercept = model.prior["loc"].tolist()
    assert 200 < intercept < 300 and 0 < slope < 20
    assert 15 < float(model.noise_std.detach()) < 40


def test_neural_features_keep_the_stochastic_path():
    assert bm.models.HierarchicalLinearRegression(x_dim=1).fixed_features
    assert not bm.models.BayesianHeadRegression(x_dim=1).fixed_features


def test_tasks_smaller_than_the_feature_count_in_natural_units():
    # 2 points per task, 4 weights: no task determines its own fit; the start must still be on scale
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, 3, generator=g)
    w = torch.randn(30, 3, generator=g)
    y = 300 + 100 * (x * w[:, None]).sum(-1, keepdim=True) + 50 * torch.randn(30, 2, 1, generator=g)
    pool = bm.TaskBatch(x_support=x, y_support=y, mask_support=torch.ones(30, 2, dtype=torch.bool))
    model = bm.models.HierarchicalLinearRegression(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bm.BayesLearner(model, conjugate=True).fit(pool, steps=500, progress=False)
    assert 250 < float(model.prior["loc"][-1].detach()) < 350  # the intercept
    assert 25 < float(model.noise_std.detach()) < 100  # true 50
