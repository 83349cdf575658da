"""Bandits: the arms' posteriors against their closed forms, and regret orderings that must hold."""

import pytest
import torch

import bayesmeta as bm
from bayesmeta.optimize import BernoulliBandit, GaussianBandit, IndependentArms, RandomSearch, run_bandits


def _pulls():
    """Two bandits with 3 arms: one-hot pulls and their rewards (arm 2 of bandit 1 never pulled)."""
    arms = torch.tensor([[0, 0, 1, 2, 0, 1], [1, 1, 0, 0, 1, 0]])
    reward = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    return torch.nn.functional.one_hot(arms, 3).float(), reward[..., None], torch.ones(2, 6, dtype=torch.bool)


def _arm_draws(belief) -> torch.Tensor:
    """The pool's draws of every arm's mean reward ``[m, T, K]`` (the function at the K one-hot inputs)."""
    values, _ = belief.function_pool(torch.eye(3).expand(2, 3, 3))
    return values


def test_flat_bernoulli_arms_are_beta_posteriors():
    x, y, mask = _pulls()
    draws = _arm_draws(IndependentArms(3).belief(x, y, mask, pool_size=40_000, seed=0))  # probabilities
    n = x.sum(1)  # [T, K] pulls
    s = (x * y).sum(1)  # successes
    a, b = 1 + s, 1 + n - s
    torch.testing.assert_close(draws.mean(0), (a / (a + b)).float(), atol=6e-3, rtol=0)  # s.e. ~0.0015
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    torch.testing.assert_close(draws.var(0), var.float(), atol=4e-3, rtol=0)


def test_gaussian_bandit_oracle_is_the_conjugate_posterior():
    fam = GaussianBandit(3, loc=[0.0, 1.0, -1.0], scale=0.5, noise_std=2.0)
    x, y, mask = _pulls()
    draws = _arm_draws(fam.oracle_belief(x, y, mask, pool_size=40_000, generator=torch.Generator().manual_seed(0)))
    n, s = x.sum(1).double(), (x * y).sum(1).double()
    prec = 1 / 0.25 + n / 4.0
    mean = (fam.loc / 0.25 + s / 4.0) / prec
    torch.testing.assert_close(draws.mean(0).double(), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(draws.var(0).double(), 1 / prec, atol=0.005, rtol=0)


def test_bernoulli_bandit_oracle_matches_quadrature_of_the_logit_normal_posterior():
    fam = BernoulliBandit(3, loc=[-1.0, 0.0, 1.0], scale=[1.0, 0.5, 2.0])
    x, y, mask = _pulls()
    draws = _arm_draws(fam.oracle_belief(x, y, mask, pool_size=40_000, generator=torch.Generator().manual_seed(0)))
    n, s = x.sum(1).double(), (x * y).sum(1).double()
    # independent quadrature: a fine uniform grid over +-10 prior sd
    z = torch.linspace(-10, 10, 20_001, dtype=torch.float64)[:, None, None]  # [G, 1, 1] (tasks, arms)
    theta = fam.loc + fam.scale * z  # [G, 1, K]
    logsig = torch.nn.functional.logsigmoid
    log_post = -0.5 * z**2 + s * logsig(theta) + (n - s) * logsig(-theta)  # [G, T, K]
    w = torch.softmax(log_post, 0)
    exact = (w * torch.sigmoid(theta)).sum(0)  # posterior mean of each arm's probability [T, K]
    torch.testing.assert_close(draws.mean(0).double(), exact, atol=6e-3, rtol=0)


def test_bandit_families_sample_one_hot_pulls_and_rewards():
    fam = BernoulliBandit(4)
    b = fam.sample(5, shots=7, num_query=2, generator=torch.Generator().manual_seed(0))
    assert b.x_support.shape == (5, 7, 4) and (b.x_support.sum(-1) == 1).all()
    assert set(b.y_support.unique().tolist()) <= {0.0, 1.0}
    means = fam.arm_means(b.params)
    assert means.shape == (5, 4) and ((means > 0) & (means < 1)).all()
    with pytest.raises(ValueError, match="num_arms must be an int >= 2"):
        BernoulliBandit(1)


def test_oracle_prior_thompson_sampling_beats_a_flat_prior_which_beats_random():
    fam = BernoulliBandit(6)
    regret = {name: run_bandits(model, fam, num_tasks=60, horizon=40, seed=0)["cumulative_regret"][:, -1]
              for name, model in (("oracle", fam), ("flat", IndependentArms(6)), ("random", RandomSearch()))}
    mean = {k: float(v.mean()) for k, v in regret.items()}
    se = {k: float(v.std() / 60**0.5) for k, v in regret.items()}
    # measured (seeds 0-2): oracle 3.2-3.6, flat 7.4-7.6, random 14.3-15.6, s.e. 0.23-0.60: gaps of 7+ s.e.
    assert mean["oracle"] + 2 * (se["oracle"] + se["flat"]) < mean["flat"]
    assert mean["flat"] + 2 * (se["flat"] + se["random"]) < mean["random"]


def test_run_bandits_with_a_meta_learner_and_its_regret_bookkeeping():
    fam = BernoulliBandit(4)
    torch.manual_seed(0)
    learner = bm.BayesLearner(bm.models.HierarchicalLogisticRegression(x_dim=4, bias=False))
    learner.fit(fam, steps=3, progress=False)
    out = run_bandits(learner, fam, num_tasks=5, horizon=6, seed=0, num_samples=32)
    assert out["arms"].shape == (5, 6) and out["rewards"].shape == (5, 6)
    params = fam.sample_params(5, torch.Generator().manual_seed(0))  # run_bandits draws the bandits from seed
    means = fam.arm_means(params)
    expected = means.max(-1, keepdim=True).values - torch.gather(means, 1, out["arms"])
    torch.testing.assert_close(out["regret"], expected)
    assert (out["regret"] >= 0).all() and torch.equal(out["cumulative_regret"], out["regret"].cumsum(-1))


@pytest.mark.slow  # ~2.5 min: 60 s of training, then 200 bandits x 100 pulls per policy (the bar)
def test_meta_thompson_sampling_beats_a_flat_prior_and_nears_the_oracle():
    fam = BernoulliBandit(10)
    torch.manual_seed(0)
    learner = bm.BayesLearner(bm.models.HierarchicalLogisticRegression(x_dim=10, bias=False))
    learner.fit(fam, steps=10**9, max_time=60, seed=0, progress=False)
    regret = {name: float(run_bandits(m, fam, num_tasks=200, horizon=100, seed=1)["cumulative_regret"][:, -1].mean())
              for name, m in (("meta", learner), ("oracle", fam), ("flat", IndependentArms(10)))}
    assert regret["meta"] < regret["flat"] and regret["meta"] < 1.25 * regret["oracle"], regret
