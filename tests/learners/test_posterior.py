"""Importance-sampled predictives: tasks with a low effective sample size are re-drawn, and the answer is the exact one."""

import pytest
import torch

import bayesmeta as bm

NOISE = 0.5


@pytest.fixture(scope="module")
def tasks():
    """One-shot linear tasks, an untrained amortized posterior of them, and the exact predictive of the same model."""
    torch.manual_seed(0)
    model = bm.models.HierarchicalLinearRegression(x_dim=1, init_noise=NOISE)  # prior N(0, I) on (slope, intercept)
    test = bm.tasks.HierarchicalLinear(dim=1, noise_std=NOISE).sample(32, shots=1, num_query=5,
                                                                      generator=torch.Generator().manual_seed(0))
    # the untrained guide is a poor proposal: the first 100 draws give ESS 10-40 (measured), below min_ess=100
    approx = bm.BayesLearner(model).adapt(test)
    exact = bm.BayesLearner(model, conjugate=True).adapt(test).predict(test.x_query)  # same model, closed form
    return test, approx, exact, model.noise_std.detach()


def _predict(post, x, **kw):
    return post.predict(x, method="importance", seed=0, **{"num_samples": 100, "min_ess": 100.0, "max_draws": 1600, **kw})


def test_low_ess_tasks_are_redrawn_until_the_ess_is_reached_or_the_draws_run_out(tasks):
    test, post, _, _ = tasks
    first = _predict(post, test.x_query, min_ess=0.0)  # no re-draw: every task keeps its first 100 draws
    assert first.num_draws.tolist() == [100.0] * 32
    low = first.ess < 100
    assert low.sum() >= 16  # the case under test: most tasks start below min_ess
    pred = _predict(post, test.x_query)
    assert torch.equal(pred.num_draws[~low], first.num_draws[~low])  # enough ESS: not re-drawn
    assert torch.isin(pred.num_draws[low], torch.tensor([200.0, 400.0, 800.0, 1600.0])).all()  # doubling, to max_draws
    assert (pred.num_draws > 100).any() and (pred.num_draws == 1600).any()
    # the reported ESS is that of all the task's draws: at least min_ess unless max_draws stopped it
    assert ((pred.ess >= 100) | (pred.num_draws == 1600)).all()
    assert (pred.ess[low] > first.ess[low]).all()
    assert (pred.ess <= pred.num_draws).all() and (pred.ess >= 1).all()  # Kish ESS lies in [1, n]
    assert pred.pareto_k.shape == (32,) and torch.isfinite(pred.pareto_k).all()
    capped = _predict(post, test.x_query, max_draws=400)  # two doublings at most
    assert capped.num_draws.max() == 400 and torch.equal(capped.num_draws > 100, low)


def test_a_target_ess_the_draw_budget_cannot_reach_is_refused(tasks):
    test, post, _, _ = tasks
    with pytest.raises(ValueError, match=r"min_ess=2000 is above the draw budget max_draws=1600"):
        post.predict(test.x_query, num_samples=100, min_ess=2000)
    with pytest.raises(ValueError, match=r"min_ess=500 is above the draw budget max_draws=400"):
        post.predict(test.x_query, num_samples=100, max_draws=400, min_ess=500)
    with pytest.raises(ValueError, match=r"max_draws must be None or an int >= num_samples=100"):
        post.predict(test.x_query, num_samples=100, max_draws=50)
    with pytest.raises(ValueError, match=r"min_ess=900 is above the draw budget max_draws=1000 \(doubling from "
                       r"num_samples=100 reaches 800 draws"):
        post.predict(test.x_query, num_samples=100, max_draws=1000, min_ess=900)
    with pytest.raises(ValueError, match=r"min_ess must be None or a finite number >= 0"):
        post.sample(100, min_ess=float("nan"))
    # the default target shrinks to what a small budget can reach: these are fine
    assert post.sample(5, seed=0)["w"].shape[:2] == (5, 32)
    assert post.predict(test.x_query, num_samples=50, max_draws=50, seed=0).num_draws.max() == 50


def test_redrawn_predictive_agrees_with_the_exact_one(tasks):
    test, post, exact, noise = tasks
    pred = _predict(post, test.x_query)
    var_f = exact.variance - noise**2  # [T, N, 1] posterior variance of the regression line at each query point
    # Monte-Carlo variance: importance sampling (1 / ESS) plus the resampling to at most num_samples=100 draws that
    # predict pushes through the likelihood (1 / 100 for multinomial resampling; systematic resampling is no worse)
    mc = 1 / pred.ess[:, None, None] + 1 / 100
    se = (var_f * mc).sqrt()
    z = (pred.mean - exact.mean) / se
    # 4 s.e. per point; and over 160 points the mean squared z stays near 1 (chi2 with ~32-160 dof: < 2).
    # Keeping the first round's draws (ESS 10-40) with the last round's ESS makes z^2 average ~5.
    assert z.abs().max() < 4 and (z**2).mean() < 2, ((z**2).mean(), z.abs().max())
    # the (weighted, resampled) sample variance of a Gaussian line has s.e. var_f * sqrt(2 * mc)
    zv = (pred.variance - exact.variance) / (var_f * (2 * mc).sqrt())
    assert zv.abs().max() < 4 and (zv**2).mean() < 2, ((zv**2).mean(), zv.abs().max())
