"""The vectorised MAML family against explicit per-task autograd and the published update rules."""

import pytest
import torch
from torch.func import functional_call

import bayesmeta as bm
from bayesmeta.baselines.base import split_support_query


def _batch(t=4, n=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, n, 1, generator=g, dtype=dtype)
    y = torch.sin(x) + 0.1 * torch.randn(t, n, 1, generator=g, dtype=dtype)
    mask = torch.ones(t, n, dtype=torch.bool)
    mask[1, 5:] = False  # ragged tasks
    support, query = split_support_query(mask, 4, g)
    return x, y, support, query


def _grads(learner, loss):
    params = learner.meta_parameters()
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("cls", [bm.baselines.MAML, bm.baselines.FOMAML, bm.baselines.MetaSGD])
@pytest.mark.parametrize("noise", ["heteroscedastic", "global", "mse"])
def test_vectorised_meta_gradient_equals_per_task_loop(cls, noise):
    torch.manual_seed(0)
    learner = cls(x_dim=1, y_dim=1, hidden=(8, 8), inner_steps=2, inner_lr=0.05, noise=noise)
    learner.net.double()
    if cls is bm.baselines.MetaSGD:
        learner.rates.double()
    x, y, s, q = _batch()
    vec = _grads(learner, learner.meta_loss(x, y, s, q))
    loop = _grads(learner, learner.meta_loss_loop(x, y, s, q))
    for a, b in zip(vec, loop, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)
    assert any(float(g.abs().max()) > 1e-4 for g in vec)


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights():
    torch.manual_seed(1)
    learner = bm.baselines.FOMAML(x_dim=1, y_dim=1, hidden=(6,), inner_steps=1, inner_lr=0.1)
    learner.net.double()
    x, y, s, q = _batch(t=3)
    vec = _grads(learner, learner.meta_loss(x, y, s, q))
    names = list(learner.params())
    expected = [torch.zeros_like(p) for p in learner.meta_parameters()]
    for i in range(3):  # by hand: phi = theta - alpha * g_support (constant), gradient of L_query at phi
        theta = {k: p.detach().clone().requires_grad_(True) for k, p in learner.params().items()}
        g = torch.autograd.grad(learner.task_loss(theta, x[i], y[i], s[i]), list(theta.values()))
        phi = {k: (theta[k] - 0.1 * gk).detach().requires_grad_(True) for k, gk in zip(names, g, strict=True)}
        gq = torch.autograd.grad(learner.task_loss(phi, x[i], y[i], q[i]), list(phi.values()))
        expected = [e + gqk / 3 for e, gqk in zip(expected, gq, strict=True)]
    for a, b in zip(vec, expected, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_maml_differs_from_fomaml_by_the_second_order_term():
    torch.manual_seed(2)
    maml = bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(6,), inner_lr=0.1)
    fo = bm.baselines.FOMAML(x_dim=1, y_dim=1, hidden=(6,), inner_lr=0.1)
    fo.net.load_state_dict(maml.net.state_dict())
    maml.net.double()
    fo.net.double()
    x, y, s, q = _batch()
    a, b = _grads(maml, maml.meta_loss(x, y, s, q)), _grads(fo, fo.meta_loss(x, y, s, q))
    assert max(float((u - v).abs().max()) for u, v in zip(a, b, strict=True)) > 1e-4


def test_reptile_step_is_theta_plus_eps_times_mean_displacement():
    torch.manual_seed(3)
    learner = bm.baselines.Reptile(x_dim=1, y_dim=1, hidden=(6,), inner_steps=3, inner_lr=0.05)
    learner.net.double()
    x, y, s, q = _batch()
    mask = s | q
    theta = {k: p.detach().clone() for k, p in learner.params().items()}
    adapted = []
    for i in range(x.shape[0]):  # explicit per-task SGD
        phi = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        for _ in range(3):
            g = torch.autograd.grad(learner.task_loss(phi, x[i], y[i], mask[i]), list(phi.values()))
            phi = {k: (phi[k] - 0.05 * gk).detach().requires_grad_(True) for k, gk in zip(phi, g, strict=True)}
        adapted.append(phi)
    eps = 0.3
    optim = torch.optim.SGD(learner.meta_parameters(), lr=eps)
    optim.zero_grad()
    learner.compute_gradients(x, y, s, q)  # the step function the training loop calls
    optim.step()
    for k, p in learner.params().items():
        mean_phi = torch.stack([a[k].detach() for a in adapted]).mean(0)
        assert torch.allclose(p.detach(), theta[k] + eps * (mean_phi - theta[k]), atol=1e-10)


def test_meta_sgd_rates_receive_gradients_and_move():
    torch.manual_seed(4)
    learner = bm.baselines.MetaSGD(x_dim=1, y_dim=1, hidden=(6,))
    before = [r.detach().clone() for r in learner.rates.values()]
    learner.fit(bm.tasks.Sinusoid(), steps=5, progress=False)
    assert all(r.grad is not None and float(r.grad.abs().sum()) > 0 for r in learner.rates.values())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, learner.rates.values(), strict=True))


def test_adapt_and_predict_shapes_and_adaptation_helps():
    torch.manual_seed(5)
    family = bm.tasks.Sinusoid(noise_std=0.1)
    maml = bm.baselines.MAML(x_dim=1, y_dim=1, adapt_steps=5).fit(family, steps=300, progress=False, lr=3e-3)
    assert maml.net.noise == "global"
    test = family.sample(50, shots=10, num_query=30, generator=torch.Generator().manual_seed(9))
    pred = maml.adapt(test).predict(test.x_query)
    assert isinstance(pred, bm.PosteriorPredictive) and pred.shape == (50, 30, 1)
    unadapted = maml.adapt(test, steps=0).predict(test.x_query)
    mse = lambda p: float(((p.mean - test.y_query) ** 2).mean())  # noqa: E731
    assert mse(pred) < 0.9 * mse(unadapted)
    # the predictive is the adapted network's Gaussian
    params = {k: v[3] for k, v in maml.adapt(test).params.items()}
    mean, scale = functional_call(maml.net, params, (test.x_query[3],))
    assert torch.allclose(pred.mean[3], mean, atol=1e-6) and torch.allclose(pred.std[3], scale, atol=1e-6)


def test_ensemble_is_the_equal_weight_mixture_of_its_members():
    family = bm.tasks.Sinusoid()
    ens = bm.baselines.Ensemble(lambda: bm.baselines.FOMAML(x_dim=1, y_dim=1, hidden=(8,)), n=3)
    ens.fit(family, steps=3, progress=False)
    test = family.sample(4, shots=5, num_query=6, generator=torch.Generator().manual_seed(0))
    adapted = ens.adapt(test)
    pred = adapted.predict(test.x_query)
    members = [m.predict(test.x_query) for m in adapted.members]
    assert pred.num_components == 3
    assert torch.allclose(pred.mean, torch.stack([m.mean for m in members]).mean(0), atol=1e-6)
    assert not torch.equal(members[0].mean, members[1].mean)  # independent initialisations


@pytest.mark.parametrize(("make", "match"), [
    (lambda: bm.baselines.MAML(x_dim=1, inner_lr=0.0), "inner_lr must be > 0"),
    (lambda: bm.baselines.MAML(x_dim=1, inner_lr=-1), "inner_lr must be > 0"),
    (lambda: bm.baselines.MAML(x_dim=1, inner_steps=0), "inner_steps must be an int >= 1"),
    (lambda: bm.baselines.Ensemble(lambda: None, n=0), r"n \(ensemble size\) must be an int >= 1"),
    (lambda: bm.baselines.MAML(x_dim=1, noise="laplace"), "noise must be one of"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_empty_support_set_is_refused():
    maml = bm.baselines.MAML(x_dim=1)
    x, y = torch.zeros(3, 4, 1), torch.zeros(3, 4, 1)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False
    with pytest.raises(ValueError, match="task 2 has 0 observed support points"):
        maml.adapt(x, y, mask)
    with pytest.raises(ValueError, match="unknown option"):
        maml.fit(bm.tasks.Sinusoid(), steps=1, inner_lr=0.1)


def test_pool_in_natural_units_is_standardised_for_baselines():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(10.0).expand(30, 10)[..., None]
    y = 250 + 25 * torch.randn(30, 1, 1, generator=g) + 10 * x + 5 * torch.randn(30, 10, 1, generator=g)
    pool = bm.TaskBatch(x_support=x, y_support=y, mask_support=torch.ones(30, 10, dtype=torch.bool))
    torch.manual_seed(0)
    maml = bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(16,)).fit(pool, steps=200, progress=False, validation=False)
    assert maml.standardization is not None and abs(maml.standardization.y_mean[0] - float(y.mean())) < 1e-3
    pred = maml.adapt(pool[:4]).predict(x[:4])
    assert float((pred.mean - y[:4]).abs().mean()) < 40  # natural units: near the data, not near 0
    assert float(pred.std.mean()) > 1  # scales back in natural units too


def test_ensemble_members_are_initialised_from_its_seed():
    def weights(ens):
        return torch.cat([p.detach().reshape(-1) for m in ens.members for p in m.net.parameters()])

    factory = lambda: bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,))  # noqa: E731
    a, b, c = (bm.baselines.Ensemble(factory, n=3, seed=s) for s in (0, 0, 1))
    assert torch.equal(weights(a), weights(b)) and not torch.allclose(weights(a), weights(c))
    w0, w1 = (torch.cat([p.detach().reshape(-1) for p in m.net.parameters()]) for m in a.members[:2])
    assert not torch.allclose(w0, w1)  # members differ from each other


@pytest.mark.parametrize("cls", [bm.baselines.MAML, bm.baselines.Reptile])
def test_float64_inputs_are_cast_to_the_network_dtype(cls):
    learner = cls(x_dim=1, y_dim=1, hidden=(8,))
    xs, ys, xq = torch.randn(2, 3, 1, dtype=torch.float64), torch.randn(2, 3, 1, dtype=torch.float64), torch.randn(4, 1)
    got = learner.adapt(xs, ys).predict(xq.double()).mean
    assert got.dtype == torch.float32
    assert torch.allclose(got, learner.adapt(xs.float(), ys.float()).predict(xq).mean)
