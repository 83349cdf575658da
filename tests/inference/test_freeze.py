"""``frozen``: parameters held fixed inside a block (NUTS, local refinement), flags restored after."""

import pytest
import torch

from bayesmeta.inference.freeze import frozen


def test_frozen_restores_each_flag_even_after_an_error():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(1, 1)
    b.bias.requires_grad_(False)
    shared = torch.nn.Sequential(a, b)
    with pytest.raises(RuntimeError, match="inside"), frozen(shared, a, None, "not a module"):
        assert not any(p.requires_grad for p in shared.parameters())
        raise RuntimeError("inside")
    assert [p.requires_grad for p in shared.parameters()] == [True, True, True, False]


def test_refine_local_moves_only_the_locals_and_leaves_everything_trainable():
    import bayesmeta as bm

    family = bm.tasks.Sinusoid(noise_std=0.1)
    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=2, hidden=(8,)))
    learner.fit(family, steps=2, progress=False)
    x, y, mask = family.sample(3, shots=2, generator=torch.Generator().manual_seed(0)).support
    params = list(learner.model.parameters()) + list(learner.guide.parameters())
    before = [p.detach().clone() for p in params]
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    with torch.no_grad():
        local = learner.guide.encode(x, y, mask)
    refined = bm.inference.refine_local(learner.guide, learner.model, x, y, mask, local, steps=3)
    assert not torch.equal(refined["a"], local["a"])
    assert all(p.requires_grad for p in params)
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, params, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(before, params, strict=True))
