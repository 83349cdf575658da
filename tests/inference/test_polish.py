"""The marginal-likelihood polish: type-II maximum likelihood of a small model's parameters on a pool."""

import math

import pytest
import torch

import bayesmeta as bm
from bayesmeta.benchmarks.glmm import PoissonGLMM, grid_log_marginal, ml_fit_glmm, simulate_glmm
from bayesmeta.inference.polish import can_polish, polish_marginal_likelihood
from bayesmeta.inference.program import program_of


def test_polish_from_a_poor_start_reaches_the_dense_grid_maximum_of_a_poisson_glmm():
    pool = simulate_glmm(16, seed=1)
    ref = ml_fit_glmm(pool, points=4001)
    model = PoissonGLMM()  # beta = 0, tau = 1: far from the maximum (intercept near 3)
    program = program_of(model)
    assert can_polish(program)
    report = polish_marginal_likelihood(program, pool)
    assert report["accepted"] and report["log_marginal"] > report["log_marginal_before"]
    got = torch.cat([model.beta.detach(), model.log_tau.detach()[None]]).double()
    assert torch.allclose(got, ref, atol=2e-3), (got, ref)  # 1-D random effect: 32-node adaptive quadrature
    assert abs(report["log_marginal"] - float(grid_log_marginal(ref, pool, points=4001))) < 1e-3
    assert model.beta.dtype == torch.float32  # the parameters keep their dtype


def test_polish_with_four_task_parameters_matches_exact_type2_ml():
    # Gaussian random intercept and three slopes (P = 4: importance draws, not a grid); the Laplace
    # Gaussian is the exact posterior, so the polish must reach the closed-form type-II ML fit
    torch.manual_seed(0)
    pool = bm.tasks.HierarchicalLinear(dim=3, noise_std=0.5).sample(30, shots=8, generator=torch.Generator().manual_seed(2))
    exact = bm.models.HierarchicalLinearRegression(x_dim=3)
    bm.BayesLearner(exact, conjugate=True).fit(pool, progress=False)
    model = bm.models.HierarchicalLinearRegression(x_dim=3)
    program = program_of(model)
    assert can_polish(program) and program.param_dim == 4
    report = polish_marginal_likelihood(program, pool)
    assert report["accepted"]
    for a, b in ((model.prior_distribution().loc, exact.prior_distribution().loc),
                 (model.prior_distribution().covariance_matrix, exact.prior_distribution().covariance_matrix),
                 (model.noise_std, exact.noise_std)):
        assert torch.allclose(a.detach(), b.detach(), atol=5e-3, rtol=5e-3), (a, b)


def test_a_failed_polish_leaves_the_parameters_as_they_were(monkeypatch):
    import bayesmeta.inference.polish as polish

    model = PoissonGLMM()
    with torch.no_grad():
        model.beta.fill_(0.5)
    before = [p.detach().clone() for p in model.parameters()]

    def boom(*a, **k):
        for p in model.parameters():
            p.data.fill_(math.nan)
        raise RuntimeError("singular")

    monkeypatch.setattr(polish, "_polish", boom)
    report = polish_marginal_likelihood(program_of(model), simulate_glmm(4, seed=0))
    assert not report["accepted"] and "singular" in report["why"]
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_fit_polishes_small_models_on_pools_only_and_the_option_is_refused_elsewhere():
    pool = simulate_glmm(12, seed=2)
    torch.manual_seed(0)
    learner = bm.BayesLearner(PoissonGLMM()).fit(pool, steps=20, progress=False, validation=False)
    assert learner.history.polish["accepted"]
    unpolished = bm.BayesLearner(PoissonGLMM()).fit(pool, steps=20, progress=False, validation=False, polish=False)
    assert unpolished.history.polish is None
    big = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=4, y_dim=1, latent_dim=2, hidden=(8,)))
    assert not can_polish(big.program)  # a neural decoder: thousands of weights
    with pytest.raises(ValueError, match="polish.*does not apply"):
        bm.baselines.MAML(x_dim=1, y_dim=1).fit(bm.tasks.Sinusoid(), 1, polish=False, progress=False)


def test_a_polish_out_of_time_changes_nothing():
    model = PoissonGLMM()
    before = [p.detach().clone() for p in model.parameters()]
    report = polish_marginal_likelihood(program_of(model), simulate_glmm(6, seed=0), max_seconds=0.0)
    assert not report["accepted"] and "max_seconds" in report["why"]
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
