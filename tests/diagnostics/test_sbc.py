"""Simulation-based calibration passes for exact posteriors and flags a shrunk one."""

import pytest
import torch

import bayesmeta as bm
from bayesmeta.diagnostics.sbc import rank_uniformity


@pytest.fixture(scope="module")
def learner():
    torch.manual_seed(0)
    family = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5)
    lrn = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    return lrn.fit(family, steps=100, progress=False, lr=0.05)


X = torch.linspace(-2, 2, 5)[:, None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_posterior_passes(learner, seed):
    res = bm.simulation_based_calibration(learner.model, learner, X, num_simulations=200, method="exact", seed=seed)
    assert res.ranks.shape == (200, 2) and res.names == ["w[0]", "w[1]"]
    assert int(res.ranks.min()) >= 0 and int(res.ranks.max()) <= 100
    assert res.passed(alpha=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_half_scale_posterior_fails(learner, seed):
    def shrunk(x, y, mask, n):
        d = learner.adapt(x, y, mask).distribution()
        return d.mean + 0.5 * (d.sample((n,)) - d.mean)

    res = bm.simulation_based_calibration(learner.model, shrunk, X, num_simulations=200, seed=seed)
    assert not res.passed(alpha=0.01)
    assert float(res.p_values.max()) < 1e-6
    # too narrow: ranks pile up at both ends
    ends = ((res.ranks < 10) | (res.ranks > 90)).double().mean()
    assert ends > 0.4  # uniform ranks put 19 % there


def test_rank_uniformity_statistic_by_hand():
    ranks = torch.tensor([[0], [1], [2], [3], [3], [3]])  # L = 3: rank values 0..3, two bins {0,1}, {2,3}
    chi2, p = rank_uniformity(ranks, num_posterior_samples=3, bins=2)
    # observed (2, 4), expected (3, 3): chi2 = 1/3 + 1/3
    assert float(chi2[0]) == pytest.approx(2 / 3)
    assert float(p[0]) == pytest.approx(0.4142161782825252, rel=1e-9)  # P(chi2_1 > 2/3)


def test_bad_arguments(learner):
    with pytest.raises(ValueError, match="num_simulations must be an int >= 20"):
        bm.simulation_based_calibration(learner.model, learner, X, num_simulations=5)
    with pytest.raises(ValueError, match=r"x must have shape \[S, D\]"):
        bm.simulation_based_calibration(learner.model, learner, torch.zeros(3, 4, 1))
    with pytest.raises(ValueError, match="posterior draws must have shape"):
        bm.simulation_based_calibration(learner.model, lambda x, y, m, n: torch.zeros(n, 3), X)


def test_exact_posterior_of_a_learner_fitted_in_natural_units_passes():
    # Fitted on a pool in natural units (outcomes near 300, inputs near 20): SBC simulates in the
    # model's units, which are the data's, and hands adapt the same units.
    pool = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.5).sample(60, shots=8, generator=torch.Generator().manual_seed(3))
    pool.y_support.mul_(40).add_(300)
    pool.x_support.mul_(5).add_(20)
    lrn = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    lrn.fit(pool, progress=False)
    assert float(lrn.model.noise_std.detach()) > 5  # learned in the data's units (the noise sd is 0.5 * 40 = 20)
    res = bm.simulation_based_calibration(lrn.model, lrn, X + 20, num_simulations=200, method="exact", seed=0)
    assert res.passed(alpha=0.01)
