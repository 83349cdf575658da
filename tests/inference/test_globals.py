"""Models with global latent sites (hyperpriors): posteriors against exact and reference answers, and their rules."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import bayesmeta as bm
from bayesmeta._compat import arviz
from bayesmeta.inference import GlobalObjective


class KnownVariances(PyroModule):
    """theta_i ~ N(mu, 1), y_ij ~ N(theta_i, 1), mu ~ N(0, 10): mu's posterior is Normal in closed form."""

    x_dim = 1

    def forward(self, x, y=None, mask=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(theta, 1.0).mask(mask), obs=y)


def _known_variance_pool(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    sizes = [1 + i % 5 for i in range(12)]
    theta = 3.0 + torch.randn(12, generator=gen)
    ys = [theta[i] + torch.randn(k, generator=gen) for i, k in enumerate(sizes)]
    pool = bm.TaskBatch.from_arrays([torch.zeros(k, 1) for k in sizes], [v[:, None] for v in ys])
    var = torch.tensor([1.0 + 1.0 / k for k in sizes], dtype=torch.float64)  # Var(ybar_i | mu)
    ybar = torch.stack([v.mean() for v in ys]).double()
    precision = 1 / 100 + (1 / var).sum()
    return pool, float((ybar / var).sum() / precision), float(precision**-0.5)


def _weighted_moments(learner, name: str):
    draws = learner.global_draws
    values = learner.program.split_globals(draws["g"])[name].double().reshape(-1)
    w = torch.softmax(draws["log_w"].double(), 0)
    mean = (w * values).sum()
    return float(mean), float((w * (values - mean) ** 2).sum().sqrt())


def test_the_hyperposterior_of_a_conjugate_hierarchy_matches_its_closed_form():
    pool, mean, sd = _known_variance_pool()
    learner = bm.BayesLearner(KnownVariances()).fit(pool, 1000, progress=False, seed=0)
    assert learner.history.hyper["kept"] and learner.history.hyper["ess"] > 500
    got_mean, got_sd = _weighted_moments(learner, "mu")
    # measured: 0.003 sd and 0.1 % (4000 draws, ESS ~2800: Monte-Carlo error ~0.02 sd)
    assert abs(got_mean - mean) < 0.05 * sd
    assert abs(got_sd / sd - 1) < 0.05
    q = learner.guide.globals.distribution()  # the fitted guide alone: near, not exact
    assert abs(float(q.mean.detach()[0]) - mean) < 0.5 * sd


@pytest.mark.parametrize("centred", [False, True])
def test_eight_schools_through_bayes_learner_match_the_reference(centred):
    ref = arviz().load_arviz_data("non_centered_eight").posterior
    x, y = bm.models.eight_schools_data()
    pool = bm.TaskBatch.from_arrays(list(x), list(y))
    learner = bm.BayesLearner(bm.models.EightSchools(centred=centred)).fit(pool, 1000, progress=False, seed=0)
    for name in ("mu", "tau"):
        m, s = float(ref[name].mean()), float(ref[name].std())
        got_mean, got_sd = _weighted_moments(learner, name)
        # the bar: means within 0.25 reference sd, sds within 20 % (measured: 0.03-0.08 sd, 1-5 %)
        assert abs(got_mean - m) < 0.25 * s, (name, got_mean, m)
        assert abs(got_sd / s - 1) < 0.2, (name, got_sd, s)


def test_a_new_task_with_no_points_gets_the_prior_integrated_over_the_hyperposterior():
    pool, mean, sd = _known_variance_pool()
    learner = bm.BayesLearner(KnownVariances()).fit(pool, 600, progress=False, seed=0)
    post = learner.adapt(torch.zeros(1, 0, 1), torch.zeros(1, 0, 1))
    draws = post.sample(4000, seed=0)
    assert set(draws) == {"mu", "theta"} and draws["mu"].shape == (4000, 1)
    # theta_new | pool ~ N(E mu, Var mu + 1): the hyperposterior's spread carried into the new task
    got_mean, got_sd = _weighted_moments(learner, "mu")
    assert abs(float(draws["theta"].mean()) - got_mean) < 0.1
    assert abs(float(draws["theta"].std()) - math.sqrt(got_sd**2 + 1)) < 0.08
    pred = post.predict(torch.zeros(1, 1), seed=0)  # y_new ~ N(E mu, Var mu + 2)
    assert abs(float(pred.std[0, 0, 0]) - math.sqrt(got_sd**2 + 2)) < 0.08


def test_a_large_pool_concentrates_the_hyperposterior_on_the_empirical_bayes_answer():
    gen = torch.Generator().manual_seed(0)
    t, n = 400, 5
    alpha = 2.0 + 0.5 * torch.randn(t, 1, generator=gen)
    y = alpha + torch.randn(t, n, generator=gen)
    pool = bm.TaskBatch.from_arrays(list(torch.zeros(t, n, 1)), list(y[..., None]))
    model = bm.models.VaryingIntercepts(slopes=False, mu_scale=10.0, tau_scale=5.0, sigma_scale=5.0)
    learner = bm.BayesLearner(model).fit(pool, 1500, progress=False, seed=0)
    # empirical Bayes: the balanced one-way ANOVA's maximum-likelihood estimates
    ybar = y.double().mean(1)
    sigma2 = float(((y.double() - ybar[:, None]) ** 2).sum() / (t * (n - 1)))
    eb = {"mu": float(ybar.mean()), "tau": math.sqrt(max(float(ybar.var(unbiased=False)) - sigma2 / n, 0.0)),
          "sigma": math.sqrt(sigma2)}
    draws = learner.program.split_globals(learner.hyperposterior()(4000, 1)[:, 0])
    # measured: mu 2.020 +- 0.033 (EB 2.022), tau 0.460 +- 0.033 (0.459), sigma 1.027 +- 0.018 (1.024)
    for name, value in eb.items():
        v = draws[name].double()
        assert float(v.std()) < 0.1, name  # concentrated
        assert abs(float(v.mean()) - value) < 3 * float(v.std()) + 0.02, (name, float(v.mean()), value)


def test_save_and_load_keep_the_global_guide_and_the_corrected_draws(tmp_path):
    pool, _, _ = _known_variance_pool()
    model = bm.models.VaryingIntercepts(slopes=False, mu_scale=10.0, tau_scale=2.0, sigma_scale=2.0)
    learner = bm.BayesLearner(model).fit(pool, 600, progress=False, seed=0)
    loaded = bm.BayesLearner.load(learner.save(tmp_path / "learner.pt"))
    assert (loaded.global_draws is None) == (learner.global_draws is None)
    if learner.global_draws is not None:
        assert torch.equal(loaded.global_draws["g"], learner.global_draws["g"])
    for a, b in zip(learner.guide.globals.parameters(), loaded.guide.globals.parameters(), strict=True):
        assert torch.equal(a, b)
    x = torch.zeros(2, 1)
    a = learner.adapt(pool[:2]).predict(x, seed=3)
    b = loaded.adapt(pool[:2]).predict(x, seed=3)
    assert torch.allclose(a.mean, b.mean) and torch.allclose(a.std, b.std)


def test_the_objectives_count_the_globals_once_per_pool():
    """The bound of a pool of M tasks from a mini-batch of B: one global prior and entropy, tasks x M / B."""
    pool, _, _ = _known_variance_pool()
    learner = bm.BayesLearner(KnownVariances(), objective="iwae")
    x, y, mask = pool.all_points()
    program, guide = learner.program, learner.guide
    torch.manual_seed(0)
    objective = GlobalObjective("iwae", num_particles=4, global_particles=3)
    loss_half = objective.differentiable_loss(program, guide, x[:6], y[:6], mask[:6], num_tasks=12)
    torch.manual_seed(0)
    qg = guide.globals.distribution()
    g = qg.rsample((3,))[:, None, :]
    global_terms = program.log_global_prior(g[:, 0]) - qg.log_prob(g[:, 0])
    q = guide.build(guide.encode(x[:6], y[:6], mask[:6]), g=g)
    theta = q.rsample((4,))
    log_w = program.log_joint(x[:6], y[:6], mask[:6], theta, g=g.expand(4, *g.shape)) - q.log_prob(theta)
    bound = torch.logsumexp(log_w, 0) - math.log(4)  # [K, B]
    hand = global_terms + 2.0 * bound.sum(-1)
    assert torch.allclose(loss_half, -hand.mean(), rtol=1e-5)


def test_global_models_refuse_what_they_do_not_support():
    with pytest.raises(ValueError, match="iwae-dreg.*global latent sites"):
        bm.BayesLearner(KnownVariances(), objective="iwae-dreg")
    with pytest.raises(ValueError, match="family='flow' is not supported yet"):
        bm.BayesLearner(bm.models.VaryingIntercepts(x_dim=1), guide="flow")
    pool, _, _ = _known_variance_pool()
    learner = bm.BayesLearner(KnownVariances()).fit(pool, 5, progress=False)
    with pytest.raises(ValueError, match="steps > 0"):
        learner.adapt(pool[:1], steps=3)


def test_pyros_own_elbo_counts_the_globals_once_with_the_library_guide():
    """The model and the guide are Pyro programs: Trace_ELBO scales only the tasks' sites by M / B."""
    pool, _, _ = _known_variance_pool()
    learner = bm.BayesLearner(KnownVariances())
    program, guide = learner.program, learner.guide
    x, y, mask = pool.all_points()
    elbo = pyro.infer.Trace_ELBO(num_particles=1, max_plate_nesting=2)
    guide_trace = pyro.poutine.trace(guide).get_trace(x[:6], y[:6], mask[:6], num_tasks=12)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(program, trace=guide_trace)).get_trace(
        x[:6], y[:6], mask[:6], num_tasks=12)
    assert model_trace.nodes["mu"]["scale"] == 1.0 and guide_trace.nodes["mu"]["scale"] == 1.0
    assert model_trace.nodes["theta"]["scale"] == 2.0 and model_trace.nodes["y"]["scale"] == 2.0
    assert guide_trace.nodes["theta"]["scale"] == 2.0
    loss = elbo.differentiable_loss(program, guide, x[:6], y[:6], mask[:6], num_tasks=12)
    assert torch.isfinite(loss)


def test_the_hyperposterior_goes_to_arviz_without_a_task_dim():
    x, y = bm.models.eight_schools_data()
    pool = bm.TaskBatch.from_arrays(list(x), list(y))
    learner = bm.BayesLearner(bm.models.EightSchools()).fit(pool, 200, progress=False, seed=0)
    idata = bm.diagnostics.hyperposterior_inference_data(learner, num_samples=2000)
    assert set(idata.posterior.data_vars) == {"mu", "tau"} and idata.posterior["mu"].shape == (1, 2000)
    summary = arviz().summary(idata, kind="stats")
    assert list(summary.index) == ["mu", "tau"]
    assert float(idata.posterior["tau"].min()) > 0  # in the model's units: tau on its support
    with pytest.raises(ValueError, match="no global latent sites"):
        bm.diagnostics.hyperposterior_inference_data(bm.BayesLearner(bm.models.LatentCodeRegression(1, 1)))


@pytest.mark.slow
def test_the_amortized_hyperposterior_sits_beside_nuts_on_the_whole_model():
    x, y = bm.models.eight_schools_data()
    pool = bm.TaskBatch.from_arrays(list(x), list(y))
    learner = bm.BayesLearner(bm.models.EightSchools()).fit(pool, 1000, progress=False, seed=0)
    rows = bm.diagnostics.compare_global_posteriors(learner, pool, num_samples=1000, num_warmup=500)
    # NUTS on the whole model (mu, tau and the eight eta) against the amortized hyperposterior
    assert [r["site"] for r in rows] == ["mu", "tau"]
    for row in rows:
        assert abs(row["z"]) < 0.25 and abs(row["sd_ratio"] - 1) < 0.2, row


def test_the_report_shows_the_hyperposterior_and_nuts_beside_it(tmp_path):
    x, y = bm.models.eight_schools_data()
    pool = bm.TaskBatch.from_arrays(list(x), list(y))
    learner = bm.BayesLearner(bm.models.EightSchools()).fit(pool, 200, progress=False, seed=0)
    rows = [{"site": "mu", "mean": 4.0, "sd": 3.0, "nuts_mean": 4.4, "nuts_sd": 3.3, "z": -0.12, "sd_ratio": 0.91}]
    page = bm.report(tmp_path, learner=learner, reference={"globals": rows}).read_text()
    assert "Hyperposterior (global sites)" in page and "importance-corrected draws" in page
    assert "Amortized vs NUTS on the whole model" in page and "0.91" in page


def test_a_global_model_works_under_no_grad_in_arviz_with_query_points_and_after_a_refit():
    with torch.no_grad():  # building checks the globals by autograd: it must not depend on the caller's mode
        learner = bm.BayesLearner(KnownVariances())
    pool, _, _ = _known_variance_pool()
    learner.fit(pool, 200, progress=False, seed=0)
    post = learner.adapt(pool[:2])
    idata = bm.to_inference_data(post, x_query=torch.zeros(2, 3, 1), y_query=torch.zeros(2, 3, 1), num_samples=50)
    assert set(idata.posterior.data_vars) == {"mu", "theta"} and "log_likelihood" in idata.groups()
    before = learner.global_draws
    learner.fit(pool, 5, progress=False, seed=1, polish=False)  # a new fit corrects anew (or drops old draws)
    assert learner.global_draws is None or learner.global_draws is not before
