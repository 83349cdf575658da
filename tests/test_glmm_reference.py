"""The maximum-likelihood reference of ``bench glmm``: adaptive Gauss-Hermite quadrature against a dense grid."""

import torch

from bayesmeta.benchmarks.glmm import _log_joint, eb_predictive_nll, ml_fit_glmm, simulate_glmm


def _grid_log_marginal(p, pool) -> float:
    x, y, m = pool.all_points()
    grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)[:, None] * p[-1].exp()  # [K, 1]
    lj = _log_joint(p, x.double(), y.double()[..., 0], m.double(), grid.expand(-1, len(pool)))  # [K, T]
    step = float(grid[1, 0] - grid[0, 0])
    return float((torch.logsumexp(lj, 0) + torch.log(torch.tensor(step, dtype=torch.float64))).sum())


def test_the_ml_fit_is_a_maximum_of_the_marginal_likelihood_computed_on_a_dense_grid():
    pool = simulate_glmm(12, seed=3)
    p = ml_fit_glmm(pool)
    best = _grid_log_marginal(p, pool)
    for i in range(len(p)):  # a step of 0.02 in any coordinate lowers the (independently computed) likelihood
        for d in (-0.02, 0.02):
            q = p.clone()
            q[i] += d
            assert _grid_log_marginal(q, pool) < best, (i, d)
    assert abs(float(p[0]) - 3.0) < 0.5 and 0.1 < float(p[-1].exp()) < 1.5  # near the truth (3.0, tau 0.5)


def test_the_empirical_bayes_predictive_is_normalised_over_counts():
    pool = simulate_glmm(3, seed=4, points=(4, 4))
    p = ml_fit_glmm(simulate_glmm(20, seed=5))
    x, y, m = pool.all_points()
    support = (x[:, :3], y[:, :3], m[:, :3])
    total = torch.zeros(3, dtype=torch.float64)
    for count in range(400):  # p(y* = count | support) summed over counts
        q = (x[:, 3:], torch.full_like(y[:, 3:], float(count)), m[:, 3:])
        total += torch.exp(-eb_predictive_nll(p, support, q))
    assert torch.allclose(total, torch.ones(3, dtype=torch.float64), atol=1e-6)
