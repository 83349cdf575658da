"""The maximum-likelihood reference of ``bench glmm``: its dense-grid marginal likelihood and its maximum."""

import math

import numpy as np
import torch

from bayesmeta.benchmarks.glmm import _log_joint, eb_predictive_nll, ml_fit_glmm, simulate_glmm


def _grid_log_marginal(p, pool) -> float:
    """An independent computation: 40-node Gauss-Hermite quadrature centred at each group's mode (found on a grid)."""
    x, y, m = pool.all_points()
    x, y, m = x.double(), y.double()[..., 0], m.double()
    grid = torch.linspace(-15, 15, 6001, dtype=torch.float64)[:, None] * p[-1].exp()
    lj = _log_joint(p, x, y, m, grid.expand(-1, len(pool)))  # [K, T]
    w = torch.softmax(lj, 0)
    centre = (w * grid).sum(0)
    sd = (w * (grid - centre) ** 2).sum(0).sqrt()
    z, wt = np.polynomial.hermite.hermgauss(40)
    z = torch.tensor(z * math.sqrt(2), dtype=torch.float64)[:, None]
    log_w = torch.tensor(np.log(wt / math.sqrt(math.pi)), dtype=torch.float64)[:, None]
    b = centre + sd * z  # [40, T]
    log_q = log_w + sd.log() + 0.5 * z**2 + 0.5 * math.log(2 * math.pi)
    return float(torch.logsumexp(_log_joint(p, x, y, m, b) + log_q, 0).sum())


def test_the_dense_grid_and_adaptive_quadrature_agree():
    from bayesmeta.benchmarks.glmm import grid_log_marginal

    pool = simulate_glmm(12, seed=3)
    for p in (ml_fit_glmm(pool), torch.tensor([2.5, 0.1, 0.0, 0.0, 0.3, math.log(0.8)], dtype=torch.float64)):
        assert abs(float(grid_log_marginal(p, pool)) - _grid_log_marginal(p, pool)) < 1e-6


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
