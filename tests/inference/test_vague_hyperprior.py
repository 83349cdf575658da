"""A vague hyperprior (``mu ~ N(0, 1000)``): q(g) starts where the first batch puts it and steps in its units.

Before the Laplace start, q(g) was parametrised in the prior's units from the prior's median: on 100 groups
of 5 points, 300 steps left q(mu) 4.8 posterior sds off with 4.5 times the posterior's sd (ESS of the
correction 125 of 4000), and one fit of 2000 steps diverged at step 140; on 400 groups, 1500 steps left it
16 sds off and the correction was refused (Pareto-k 7.9).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import bayesmeta as bm
from bayesmeta.inference import GlobalGuide, GlobalObjective


class VagueMean(PyroModule):
    """mu ~ N(0, 1000), theta_i ~ N(mu, 1), y_ij ~ N(theta_i, 1): mu's posterior is Normal in closed form."""

    x_dim = 1

    def forward(self, x, y=None, mask=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1000.0))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(theta, 1.0).mask(mask), obs=y)


def _pool(t: int = 100, n: int = 5, seed: int = 0):
    """A pool around mu = 3 and the exact posterior mean and sd of mu."""
    gen = torch.Generator().manual_seed(seed)
    theta = 3.0 + torch.randn(t, 1, generator=gen)
    y = theta + torch.randn(t, n, generator=gen)
    var = 1.0 + 1.0 / n  # Var(ybar_i | mu)
    precision = 1 / 1000**2 + t / var
    mean = float(y.double().mean(1).sum() / var / precision)
    return bm.TaskBatch.from_arrays(list(torch.zeros(t, n, 1)), list(y[..., None])), mean, precision**-0.5


def test_the_first_training_batch_starts_q_g_at_the_data_in_its_units():
    pool, mean, sd = _pool()
    learner = bm.BayesLearner(VagueMean())
    globals_ = learner.guide.globals
    assert not bool(globals_.initialised) and float(globals_.spread[0]) > 100  # the prior's units
    x, y, mask = pool.all_points()
    objective = GlobalObjective("rws", num_particles=8)
    with torch.no_grad():  # an evaluation starts nothing
        objective.differentiable_loss(learner.program, learner.guide, x[:32], y[:32], mask[:32], num_tasks=100)
    assert not bool(globals_.initialised)
    state = torch.get_rng_state()
    assert objective.initialise(learner.program, learner.guide, x[:32], y[:32], mask[:32], num_tasks=100)
    assert torch.equal(torch.get_rng_state(), state)  # the Laplace fit leaves the caller's random stream alone
    assert bool(globals_.initialised)
    with torch.no_grad():
        q = globals_.distribution()
    # 32 of the 100 tasks: the batch's estimate is off by about sqrt(100 / 32) = 1.8 posterior sds
    assert abs(float(q.mean[0]) - mean) < 4 * sd
    # q(mu)'s sd and the units: the data-free start's 1 (the floor) and the Laplace sd together, not 1000
    assert 1.0 <= float(q.stddev[0]) < 1.1 and 1.0 <= float(globals_.spread[0]) < 1.1
    before = globals_.state_dict()
    assert not objective.initialise(learner.program, learner.guide, x[32:64], y[32:64], mask[32:64], num_tasks=100)
    assert all(torch.equal(v, globals_.state_dict()[k]) for k, v in before.items())  # once per guide


def test_a_guide_saved_before_the_laplace_start_loads_and_keeps_its_units():
    learner = bm.BayesLearner(VagueMean())
    old = {k: v for k, v in learner.guide.globals.state_dict().items()
           if k not in ("initialised", "prior_center", "prior_spread")}
    fresh = GlobalGuide(learner.program)
    fresh.load_state_dict(old)
    assert bool(fresh.initialised)  # trained in the prior's units: never re-started
    assert torch.equal(fresh.prior_center, old["center"]) and torch.equal(fresh.prior_spread, old["spread"])


def test_a_vague_hyperprior_recovers_the_posterior_mean_in_300_steps():
    pool, mean, sd = _pool()
    learner = bm.BayesLearner(VagueMean()).fit(pool, 300, progress=False, seed=0)
    q = learner.guide.globals.distribution()
    # measured (seeds 0, 1, 2): q(mu) -0.05, -0.05, +0.21 sd off with 1.6, 1.5, 1.5 times the sd (before: -4.8,
    # +0.1 and 4.5, 3.4 times); the corrected draws within 0.04 sd, ESS ~1800 of 4000 (before ~120)
    assert abs(float(q.mean.detach()[0]) - mean) < 0.6 * sd
    assert 0.8 < float(q.stddev.detach()[0]) / sd < 2.0
    hyper = learner.history.hyper
    assert hyper["kept"] and hyper["ess"] > 1000
    draws = learner.program.split_globals(learner.hyperposterior()(4000, 1)[:, 0])["mu"].double()
    assert abs(float(draws.mean()) - mean) < 0.15 * sd and abs(float(draws.std()) / sd - 1) < 0.1


@pytest.mark.slow
def test_a_vague_hyperprior_on_400_groups_in_the_default_steps():
    """The review's case: VaryingIntercepts with mu ~ N(0, 1000) on 400 groups, the default 2000 steps."""
    gen = torch.Generator().manual_seed(0)
    t, n = 400, 5
    y = 2.0 + 0.5 * torch.randn(t, 1, generator=gen) + torch.randn(t, n, generator=gen)
    pool = bm.TaskBatch.from_arrays(list(torch.zeros(t, n, 1)), list(y[..., None]))
    model = bm.models.VaryingIntercepts(slopes=False, mu_scale=1000.0, tau_scale=5.0, sigma_scale=5.0)
    learner = bm.BayesLearner(model).fit(pool, progress=False, seed=0)
    ybar = y.double().mean(1)
    target, sd = float(ybar.mean()), math.sqrt(float(ybar.var()) / t)  # mu's posterior, about
    q = learner.guide.globals.distribution()
    # measured at 1500 steps: q(mu) 0.4 sd off, sd ratio 1.00; corrected 0.00 sd off, Pareto-k 0.17 (before:
    # 16 sds off and the correction refused, Pareto-k 7.9)
    assert abs(float(q.mean.detach()[0]) - target) < 1.0 * sd
    assert learner.history.hyper["kept"]
    draws = learner.program.split_globals(learner.hyperposterior()(4000, 1)[:, 0])["mu"].double()
    assert abs(float(draws.mean()) - target) < 0.5 * sd and abs(float(draws.std()) / sd - 1) < 0.2
