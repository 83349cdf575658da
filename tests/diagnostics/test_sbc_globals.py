"""Simulation-based calibration of a model with global latent sites: the whole model over simulated pools.

The reference is a conjugate hierarchy with a Normal hyperprior on the population mean, whose joint posterior
is Normal in closed form: exact draws must pass, and draws made too narrow must fail (the check can fail).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import bayesmeta as bm
from bayesmeta.diagnostics.sbc import refit_posterior

MU_SD = 3.0


class NormalHierarchy(PyroModule):
    """mu ~ N(0, 3), theta_i ~ N(mu, 1), y_ij ~ N(theta_i, 1): no module parameters at all."""

    x_dim = 1

    def forward(self, x, y=None, mask=None):
        mu = pyro.sample("mu", dist.Normal(0.0, MU_SD))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(theta, 1.0).mask(mask), obs=y)


SIZES = torch.tensor([1, 2, 3, 5, 5, 5])  # task 0: a new task with one support point
X = torch.zeros(6, 5, 1)
MASK = torch.arange(5) < SIZES[:, None]  # [6, 5]


def exact(x, y, mask, n, *, mu_spread=1.0, theta_spread=1.0):
    """Exact joint posterior draws: mu | pool ~ N(m, s^2), theta_i | mu, D_i ~ N((mu + sum y) / (1 + n_i), 1 / (1 + n_i));
    ``*_spread`` < 1 shrinks the draws around their means (a too narrow posterior)."""
    k = mask.sum(-1).double()  # [T]
    total = (y[..., 0].double() * mask).sum(-1)
    var = 1.0 + 1.0 / k.clamp_min(1)  # Var(ybar_i | mu); a task with no points says nothing of mu
    informative = k > 0
    prec = 1 / MU_SD**2 + (informative / var).sum()
    m = (torch.where(informative, total / k.clamp_min(1), 0.0) / var * informative).sum() / prec
    mu = m + mu_spread * prec**-0.5 * torch.randn(n, dtype=torch.float64)
    loc = (mu[:, None] + total) / (1 + k)  # [n, T]
    centre = (m + total) / (1 + k)
    theta = loc + (1 + k).rsqrt() * torch.randn(n, len(k), dtype=torch.float64)
    theta = centre + theta_spread * (theta - centre)
    return {"mu": mu.float(), "theta": theta.float()}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_exact_joint_posterior_passes(seed):
    res = bm.simulation_based_calibration(NormalHierarchy(), exact, X, mask=MASK, num_simulations=200, seed=seed)
    assert res.names == ["mu"] + [f"theta (task {i})" for i in range(6)]
    assert res.ranks.shape == (200, 7) and int(res.ranks.min()) >= 0 and int(res.ranks.max()) <= 100
    assert res.passed(alpha=0.01), res.p_values
    assert float(res.p_values[0]) > 0.01  # mu on its own


@pytest.mark.parametrize("seed", [0, 1])
def test_a_too_narrow_hyperposterior_fails(seed):
    def narrow(x, y, mask, n):  # mu's spread halved; each theta exact given its mu
        return exact(x, y, mask, n, mu_spread=0.5)

    res = bm.simulation_based_calibration(NormalHierarchy(), narrow, X, mask=MASK, num_simulations=200, seed=seed,
                                          tasks=())
    assert res.names == ["mu"]
    assert not res.passed(alpha=0.01)
    assert float(res.p_values[0]) < 1e-6
    ends = ((res.ranks[:, 0] < 10) | (res.ranks[:, 0] > 90)).double().mean()
    assert ends > 0.35  # too narrow: ranks pile up at both ends (uniform ranks put 19 % there)


def test_a_too_narrow_posterior_of_a_new_task_fails_where_the_hyperposterior_is_right():
    def narrow(x, y, mask, n):
        return exact(x, y, mask, n, theta_spread=0.5)

    res = bm.simulation_based_calibration(NormalHierarchy(), narrow, X, mask=MASK, num_simulations=200, seed=0,
                                          tasks=[0])
    assert res.names == ["mu", "theta (task 0)"]
    assert float(res.p_values[0]) > 1e-3 and float(res.p_values[1]) < 1e-6
    assert not res.passed()


def test_flat_global_draws_and_a_task_batch_as_the_pool():
    pool = bm.TaskBatch.from_arrays([torch.zeros(int(k), 1) for k in SIZES], [torch.zeros(int(k), 1) for k in SIZES])

    def flat(x, y, mask, n):
        return exact(x, y, mask, n)["mu"][:, None]  # [n, G]: the globals only

    res = bm.simulation_based_calibration(NormalHierarchy(), flat, pool, num_simulations=100, seed=2)
    assert res.names == ["mu"] and res.passed()


def test_what_a_model_with_globals_refuses_is_named():
    model = NormalHierarchy()
    learner = bm.BayesLearner(model)
    with pytest.raises(ValueError, match=r"global latent sites \['mu'\].*not amortized over pools.*refit_posterior"):
        bm.simulation_based_calibration(model, learner, X, num_simulations=20)
    with pytest.raises(ValueError, match=r"simulates a whole pool.*\[T, N, D\]"):
        bm.simulation_based_calibration(model, exact, torch.zeros(5, 1), num_simulations=20)
    with pytest.raises(ValueError, match=r"lack the global sites \['mu'\]"):
        bm.simulation_based_calibration(model, lambda x, y, m, n: {"theta": exact(x, y, m, n)["theta"]}, X,
                                        num_simulations=20)
    with pytest.raises(ValueError, match="hold no task sites.*tasks=\\[0\\]"):
        bm.simulation_based_calibration(model, lambda x, y, m, n: {"mu": exact(x, y, m, n)["mu"]}, X,
                                        num_simulations=20, tasks=[0])
    with pytest.raises(ValueError, match="tasks must be indices of the pool's 6 tasks"):
        bm.simulation_based_calibration(model, exact, X, num_simulations=20, tasks=[6])
    with pytest.raises(ValueError, match=r"mask must have shape \(6, 5\)"):
        bm.simulation_based_calibration(model, exact, X, mask=MASK[:3], num_simulations=20)


class NoParameters(PyroModule):
    """theta ~ N(0, 1), y ~ N(theta, 1): no globals and no module parameters (SBC once raised StopIteration)."""

    x_dim = 1

    def forward(self, x, y=None, mask=None):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(theta, 1.0).mask(mask), obs=y)


def test_a_model_without_parameters_or_globals_is_calibrated_as_before():
    def conjugate(x, y, mask, n):
        k = mask.sum(-1)  # [T]
        loc = (y[..., 0] * mask).sum(-1) / (1 + k)
        return {"theta": loc + (1 + k).rsqrt() * torch.randn(n, x.shape[0])}

    res = bm.simulation_based_calibration(NoParameters(), conjugate, torch.zeros(3, 1), num_simulations=200)
    assert res.names == ["theta"] and res.passed()
    with pytest.raises(ValueError, match="tasks= is for a model with global latent sites"):
        bm.simulation_based_calibration(NoParameters(), conjugate, torch.zeros(3, 1), num_simulations=20, tasks=[0])


@pytest.mark.slow
def test_refit_posterior_fits_a_learner_to_every_simulated_pool():
    # a fit per simulation: the cost is the point of this sketch; 20 pools of 4 tasks, short fits
    x, mask = X[:4, :3], MASK[:4, :3]
    post = refit_posterior(lambda: bm.BayesLearner(NormalHierarchy()), 100, polish=False)
    res = bm.simulation_based_calibration(NormalHierarchy(), post, x, mask=mask, num_simulations=20,
                                          num_posterior_samples=19, seed=0)
    assert res.names == ["mu"] + [f"theta (task {i})" for i in range(4)]
    assert res.ranks.shape == (20, 5) and math.isfinite(float(res.chi2.sum()))
