"""The CUDA path (run with `pytest -m gpu` on a machine with a GPU; skipped cleanly without one)."""

import copy

import pytest
import torch

import bayesmeta as bm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_amortized_learner_trains_adapts_and_predicts_on_cuda():
    family = bm.tasks.Sinusoid()
    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, latent_dim=4, hidden=(32,)))
    learner.fit(family, steps=20, device="cuda", progress=False)
    assert next(learner.model.parameters()).is_cuda
    test = family.sample(8, shots=5, num_query=10, generator=torch.Generator().manual_seed(0)).to("cuda")
    for method in ("guide", "importance"):
        pred = learner.adapt(test).predict(test.x_query, method=method, seed=0)
        assert pred.mean.is_cuda and torch.isfinite(pred.log_prob(test.y_query)).all()
    ev = bm.evaluate(learner, family, shots=(1, 5), num_tasks=20, num_query=10)
    assert ev.summary[0]["num_tasks"] == 20


def test_conjugate_and_baselines_on_cuda():
    family = bm.tasks.HierarchicalLinear(dim=1)
    exact = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    exact.fit(family, steps=10, device="cuda", progress=False)
    maml = bm.baselines.MAML(x_dim=1).fit(family, steps=5, device="cuda", progress=False)
    test = family.sample(4, shots=3, num_query=5, generator=torch.Generator().manual_seed(0)).to("cuda")
    for learner in (exact, maml):
        assert learner.adapt(test).predict(test.x_query).mean.is_cuda


def test_device_auto_picks_cuda():
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    learner.fit(bm.tasks.HierarchicalLinear(dim=1), steps=2, device="auto", progress=False)
    assert learner.device.type == "cuda"


# CPU/CUDA agreement. Both devices compute in float32 and differ only in the order of floating-point sums
# (~1e-6 relative per operation); 1e-4 leaves two orders of magnitude for that to accumulate.
TOL = 1e-4


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


def _sgd_fit(device: str):
    """A conjugate learner: no Monte-Carlo particles, tasks from a CPU generator, so both devices see the same steps.

    Plain SGD (no clipping): each update is linear in the gradient, so rounding differences stay rounding-sized
    (Adam's normalisation could flip the sign of a near-zero gradient component).
    """
    torch.manual_seed(0)
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True)
    return learner.fit(bm.tasks.HierarchicalLinear(dim=1), steps=20, optimizer="sgd", clip_norm=None, seed=0,
                       device=device, progress=False)


def _check_training_agrees(device: str) -> None:
    torch.manual_seed(0)
    start = _flat(bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=1), conjugate=True).model)
    cpu, other = _sgd_fit("cpu"), _sgd_fit(device)
    assert (_flat(cpu.model) - start).abs().max() > 0.1  # 20 steps moved the prior (measured: 0.9)
    torch.testing.assert_close(_flat(other.model), _flat(cpu.model), atol=TOL, rtol=TOL)
    test = bm.tasks.HierarchicalLinear(dim=1).sample(8, shots=3, num_query=10, generator=torch.Generator().manual_seed(1))
    a, b = cpu.adapt(test).predict(test.x_query), other.adapt(test.to(device)).predict(test.x_query.to(device))
    torch.testing.assert_close(b.mean.cpu(), a.mean, atol=TOL, rtol=TOL)
    torch.testing.assert_close(b.std.cpu(), a.std, atol=TOL, rtol=TOL)
    torch.testing.assert_close(b.log_prob(test.y_query.to(device)).cpu(), a.log_prob(test.y_query), atol=TOL, rtol=TOL)


def _check_same_weights_agree(device: str) -> None:
    family = bm.tasks.Sinusoid()
    cpu = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, latent_dim=4, hidden=(32,)))
    cpu.fit(family, steps=10, device="cpu", progress=False)
    other = copy.deepcopy(cpu).to(device)
    test = family.sample(8, shots=5, num_query=10, generator=torch.Generator().manual_seed(0))
    q_cpu, q_other = cpu.adapt(test).distribution(), other.adapt(test.to(device)).distribution()
    torch.testing.assert_close(q_other.mean.cpu(), q_cpu.mean, atol=TOL, rtol=TOL)  # the encoder's posterior
    torch.testing.assert_close(q_other.variance.cpu(), q_cpu.variance, atol=TOL, rtol=TOL)


def test_training_and_exact_predictions_agree_with_the_cpu():
    _check_training_agrees("cuda")


def test_same_weights_give_the_same_guide_posterior_on_cpu_and_cuda():
    _check_same_weights_agree("cuda")


def test_pool_fits_with_the_models_own_scaling_and_the_polish_on_cuda():
    from bayesmeta.benchmarks.glmm import PoissonGLMM, ml_fit_glmm, simulate_glmm

    g = torch.Generator().manual_seed(0)
    x = torch.arange(10.0).expand(20, 10)[..., None]
    y = 250 + 25 * torch.randn(20, 1, 1, generator=g) + 10 * x + 5 * torch.randn(20, 10, 1, generator=g)
    pool = bm.TaskBatch(x, y, torch.ones(20, 10, dtype=torch.bool))
    neural = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, latent_dim=2, hidden=(16,)))
    neural.fit(pool, steps=20, device="cuda", progress=False, validation=False)
    assert neural.model.scaling.y_shift.is_cuda and neural.model.scaling.y_shift.dtype == torch.float64
    pred = neural.adapt(pool.to("cuda")).predict(x.to("cuda"), seed=0)
    assert pred.mean.is_cuda and 150 < float(pred.mean.mean()) < 400
    counts = simulate_glmm(16, seed=1)
    glmm = bm.BayesLearner(PoissonGLMM()).fit(counts, steps=20, device="cuda", progress=False, validation=False)
    assert glmm.history.polish["accepted"] and glmm.model.beta.is_cuda and glmm.model.beta.dtype == torch.float32
    ref = ml_fit_glmm(counts, points=4001)
    assert abs(float(glmm.model.beta[0].detach().cpu()) - float(ref[0])) < 2e-3
