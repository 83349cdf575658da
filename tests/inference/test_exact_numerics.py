"""The exact linear-Gaussian posterior on ill-conditioned designs, against dense float64 algebra (numpy).

A covariate constant within each task (a region-level measurement, in the hundreds) is collinear with
the intercept inside every task, and tasks may have fewer points than weights: the posterior precision
is far too ill-conditioned for float32, so the algebra runs in float64 whatever the model's dtype.
"""

import copy
import warnings

import numpy as np
import pytest
import torch

import bayesmeta as bm

# float32 results against the float64 reference, each entry scaled by what float32 can resolve there:
# means and predictive means within RTOL of the value or RTOL posterior sds, covariances within
# RTOL * sd_i * sd_j, predictive sds within RTOL relative.
RTOL = 1e-4


def _region_pool(seed, tasks, lo=5, hi=10):
    """``x[:, 0]`` varies within a task; ``x[:, 1]`` (100 to 900) is constant within it; float32."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(tasks):
        n = int(rng.integers(lo, hi + 1))
        region = rng.uniform(100, 900)
        x0 = rng.uniform(0, 10, n)
        a, b = 50 + rng.normal(0, 10), 3 + rng.normal(0, 1)
        xs.append(np.stack([x0, np.full(n, region)], -1).astype(np.float32))
        ys.append((a + b * x0 + 0.2 * region + rng.normal(0, 2, n)).astype(np.float32)[:, None])
    return bm.TaskBatch.from_arrays(x_support=xs, y_support=ys)


def _dense(model, x, y, mask, xq):
    """Posterior mean, covariance, log marginal and predictive mean / sd per task in numpy float64 with
    the model's (upcast) prior, by conditioning the joint Gaussian of weights and targets: the
    independent reference. (Not the precision form: a fitted prior can be all but singular, e.g. the
    random slope of a within-task-constant covariate is the random intercept again.)"""
    loc = model.prior["loc"].detach().double().numpy()
    tril = model.prior_scale_tril.detach().double().numpy()
    s2 = float(model.noise_std.detach().double()) ** 2
    prior_cov = tril @ tril.T
    out = []
    for t in range(x.shape[0]):
        m = mask[t].numpy()
        phi = model.features(x[t : t + 1].double())[0].detach().numpy()[m]  # [n, F]
        c = phi @ prior_cov @ phi.T + s2 * np.eye(m.sum())  # [n, n]: cov(y)
        r = y[t, m, 0].double().numpy() - phi @ loc
        gain = np.linalg.solve(c, phi @ prior_cov).T  # [F, n]: cov(w, y) cov(y)^{-1}
        mean, cov = loc + gain @ r, prior_cov - gain @ phi @ prior_cov
        lml = -0.5 * (len(r) * np.log(2 * np.pi) + np.linalg.slogdet(c)[1] + r @ np.linalg.solve(c, r))
        phi_q = model.features(xq[t : t + 1].double())[0].detach().numpy()  # [Q, F]
        sd_q = np.sqrt(np.einsum("qf,fg,qg->q", phi_q, cov, phi_q) + s2)
        out.append((mean, cov, lml, phi_q @ mean, sd_q))
    return [np.stack(v) for v in zip(*out, strict=True)]


def _fitted_region_learner():
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=2, bias=True), conjugate=True)
    with warnings.catch_warnings():
        # whether L-BFGS meets its gradient test on this scale is not the point here: the posterior is
        warnings.simplefilter("ignore", bm.inference.ConvergenceWarning)
        learner.fit(_region_pool(0, 30), progress=False)
    return learner


def _assert_close_to_float64(got, ref):
    mean, cov, lml, mu, sd = ref
    post_sd = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))  # [T, F]
    g_mean, g_cov, g_lml, g_mu, g_sd = (v.detach().double().numpy() for v in got)
    assert np.all(np.abs(g_mean - mean) <= RTOL * np.maximum(np.abs(mean), post_sd))
    assert np.all(np.abs(g_cov - cov) <= RTOL * post_sd[:, :, None] * post_sd[:, None, :])
    np.testing.assert_allclose(g_lml, lml, rtol=RTOL)
    assert np.all(np.abs(g_mu - mu) <= RTOL * np.maximum(np.abs(mu), sd))
    np.testing.assert_allclose(g_sd, sd, rtol=RTOL)


def _exact(model, learner_or_none, x, y, mask, xq):
    """Posterior, log marginal and exact predictive of ``model`` (through the learner when given)."""
    if learner_or_none is None:
        post = model.exact_posterior(x, y, mask)
        mu, sd = model.exact_predict(post, xq)
    else:
        adapted = learner_or_none.adapt(x, y, mask)
        post = adapted.distribution()
        pred = adapted.predict(xq)  # method "exact": one Gaussian component per point
        # its scale, not ``pred.std``: GaussianMixture forms E[y^2] - E[y]^2 in the input dtype
        mu, sd = pred.mean, pred.scale[0]
    lml = model.log_marginal_likelihood(x, y, mask)
    return post.mean, post.covariance_matrix, lml, mu[..., 0], sd[..., 0]


def test_group_level_covariate_in_float32_adapts_and_matches_float64():
    learner = _fitted_region_learner()
    model = learner.model
    assert model.prior["loc"].dtype == torch.float32
    new = _region_pool(1, 40, lo=1, hi=10)  # 1 to 10 points: some tasks have fewer points than weights
    x, y, mask = new.support
    xq = x[:, :3] + 1.0  # [T, 3, 2]: the same region, other x0
    with torch.no_grad():
        got = _exact(model, learner, x, y, mask, xq)
    ref = _dense(model, x, y, mask, xq)
    assert all(v.dtype == torch.float32 for v in got)
    _assert_close_to_float64(got, ref)
    assert np.linalg.cond(ref[1]).max() > 1e6  # the design is as ill-conditioned as the reported one
    # the float64 model through the same code gives the same answer as the dense algebra
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        got64 = _exact(model64, None, x.double(), y.double(), mask, xq.double())
    for g, r in zip(got64, ref, strict=True):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-6, atol=1e-9 * np.abs(r).max())


def test_tasks_with_fewer_points_than_weights_in_float32():
    # 5 weights, 0 to 3 points a task, inputs in the hundreds and nearly collinear
    g = torch.Generator().manual_seed(0)
    base = 100 + 800 * torch.rand(12, 3, 1, generator=g)
    x = base + torch.randn(12, 3, 4, generator=g) * torch.tensor([1.0, 0.01, 10.0, 0.1])  # [T, 3, 4]
    y = 0.3 * x.sum(-1, keepdim=True) + 5 * torch.randn(12, 3, 1, generator=g)  # [T, 3, 1]
    mask = torch.arange(3) < torch.arange(12)[:, None] % 4  # [T, 3]: 0, 1, 2 or 3 points
    model = bm.models.HierarchicalLinearRegression(x_dim=4, bias=True)
    tril = torch.tensor(
        [
            [0.2, 0, 0, 0, 0],
            [0.1, 0.05, 0, 0, 0],
            [0, 0, 0.3, 0, 0],
            [0, 0.01, 0, 0.02, 0],
            [5.0, 0, 0, 0, 30.0],
        ]
    )
    with torch.no_grad():
        model._set_prior(torch.tensor([0.3, 0.3, 0.3, 0.3, 10.0]), tril, torch.tensor(5.0))
    xq = x[:, :2] + 1.0
    with torch.no_grad():
        got = _exact(model, None, x, y, mask, xq)
    ref = _dense(model, x, y, mask, xq)
    _assert_close_to_float64(got, ref)
    empty = mask.sum(-1) == 0
    prior_cov = model.prior_distribution().covariance_matrix.detach()
    torch.testing.assert_close(got[1][empty], prior_cov.expand(int(empty.sum()), 5, 5), rtol=RTOL, atol=0)
    assert (got[4] >= model.noise_std.detach()).all()


def test_exact_posterior_equals_the_textbook_conjugate_posterior_in_float64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, 2, generator=g, dtype=torch.float64)
    y = (
        1.0
        + x @ torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
        + 0.5 * torch.randn(6, 8, 1, generator=g, dtype=torch.float64)
    )
    mask = torch.arange(8) < torch.tensor([8, 5, 3, 1, 0, 2])[:, None]  # ragged, one task empty
    model = bm.models.HierarchicalLinearRegression(x_dim=2, bias=True).double()
    tril = torch.tensor([[1.5, 0, 0], [-0.4, 0.8, 0], [0.3, 0.2, 2.0]], dtype=torch.float64)
    with torch.no_grad():
        model._set_prior(
            torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64), tril, torch.tensor(0.7, dtype=torch.float64)
        )
    xq = torch.randn(6, 4, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = _exact(model, None, x, y, mask, xq)
    ref = _dense(model, x, y, mask, xq)
    for name, gv, rv in zip(
        ("mean", "cov", "log marginal", "predictive mean", "predictive sd"), got, ref, strict=True
    ):
        assert gv.dtype == torch.float64
        np.testing.assert_allclose(gv.numpy(), rv, rtol=1e-8, atol=1e-10, err_msg=name)
    post = model.exact_posterior(x, y, mask)
    assert (
        torch.equal(torch.tril(post.scale_tril), post.scale_tril)
        and (post.scale_tril.diagonal(0, -2, -1) > 0).all()
    )


def test_log_marginal_gradients_flow_in_the_models_dtype():
    model = bm.models.HierarchicalLinearRegression(x_dim=2, bias=True)
    pool = _region_pool(2, 5)
    lml = model.log_marginal_likelihood(*pool.support)
    assert lml.dtype == torch.float32 and lml.shape == (5,)
    lml.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None and gr.dtype == torch.float32 and torch.isfinite(gr).all() for gr in grads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_group_level_covariate_on_cuda_in_float32():
    learner = _fitted_region_learner()
    model = learner.model
    new = _region_pool(1, 40, lo=1, hi=10)
    x, y, mask = new.support
    xq = x[:, :3] + 1.0
    ref = _dense(model, x, y, mask, xq)
    learner.to("cuda")
    with torch.no_grad():
        got = _exact(model, learner, x.cuda(), y.cuda(), mask.cuda(), xq.cuda())
    assert all(v.is_cuda and v.dtype == torch.float32 for v in got)
    _assert_close_to_float64(tuple(v.cpu() for v in got), ref)
