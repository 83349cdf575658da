"""The CUDA path (run with `pytest -m gpu` on a machine with a GPU; skipped cleanly without one)."""

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
