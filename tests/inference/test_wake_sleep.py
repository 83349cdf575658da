"""Reweighted wake-sleep and the sleep phase: where each gradient goes, and what the sleep phase learns."""

import math
import re

import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import bayesmeta as bm
from bayesmeta.inference import AmortizedGuide
from bayesmeta.inference.objectives import ReweightedWakeSleep, make_objective, sleep_log_q
from bayesmeta.inference.program import ModelProgram


def _setup(points=4, tasks=6):
    model = bm.models.HierarchicalLinearRegression(1, init_noise=0.5)
    program = ModelProgram(model)
    guide = AmortizedGuide(program, hidden=(16, 16), embed_dim=16)
    b = bm.tasks.HierarchicalLinear(1, noise_std=0.5).sample(tasks, shots=points,
                                                              generator=torch.Generator().manual_seed(0))
    mask = torch.ones(tasks, points, dtype=torch.bool)
    mask[0, 1:] = False  # a one-point task
    return model, program, guide, b.x_support, b.y_support, mask


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


def test_rws_gradients_are_the_weighted_model_and_wake_terms_with_the_iwae_bound_as_value():
    model, program, guide, x, y, mask = _setup()
    obj = ReweightedWakeSleep(4, wake=True, sleep=False)
    torch.manual_seed(1)
    loss = obj.differentiable_loss(program, guide, x, y, mask, num_tasks=12)
    loss.backward()
    model_g, guide_g = _grads(model.parameters()), _grads(guide.parameters())
    for p in [*model.parameters(), *guide.parameters()]:
        p.grad = None

    torch.manual_seed(1)  # the same draws, by hand
    q = guide.distribution(x, y, mask, detach_prior=True)
    theta = q.sample((4,))  # [K, T, P]
    log_p, log_q = program.log_joint(x, y, mask, theta), q.log_prob(theta)
    log_w = (log_p - log_q).detach()
    w = torch.softmax(log_w, 0)
    bound = torch.logsumexp(log_w, 0) - math.log(4)
    assert loss.item() == pytest.approx(-2 * bound.sum().item(), rel=1e-6)
    model_term, wake_term = -2 * (w * log_p).sum(), -2 * (w * log_q).sum()
    # the model term reaches the model only, the wake term the guide only
    assert all(g is None for g in torch.autograd.grad(model_term, list(guide.parameters()), retain_graph=True,
                                                     allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(wake_term, list(model.parameters()), retain_graph=True,
                                                     allow_unused=True))
    expect_model = torch.autograd.grad(model_term, list(model.parameters()))
    expect_guide = torch.autograd.grad(wake_term, list(guide.parameters()), allow_unused=True)
    for got, want in zip(model_g, expect_model, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(guide_g, expect_guide, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_sleep_phase_moves_the_guide_and_never_the_model():
    model, program, guide, x, _, mask = _setup()
    (-sleep_log_q(program, guide, x, mask).sum()).backward()
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.parameters())


def test_simulated_tasks_come_from_the_learned_prior_and_likelihood():
    model, program, _, x, _, _ = _setup(points=3, tasks=4000)
    torch.manual_seed(0)
    u, y = program.sample_joint(x)
    assert u.shape == (4000, 2) and y.shape == (4000, 3, 1)
    assert u.mean(0).abs().max() < 0.06 and (u.std(0) - 1).abs().max() < 0.04  # prior N(0, I), 4000 draws
    resid = y[..., 0] - (u[:, None, 0] * x[..., 0] + u[:, None, 1])  # [T, N]: the noise, sd 0.5
    assert abs(resid.std().item() - 0.5) < 0.015 and abs(resid.mean().item()) < 0.015


@pytest.fixture(scope="module")
def sleep_trained():
    """A guide of a fixed linear-Gaussian model trained by the sleep phase alone (~10 s)."""
    torch.manual_seed(0)
    model = bm.models.HierarchicalLinearRegression(1, init_noise=0.5)
    for p in model.parameters():
        p.requires_grad_(False)  # the true model: prior N(0, I), noise 0.5
    program = ModelProgram(model)
    guide = AmortizedGuide(program, hidden=(64, 64), embed_dim=64)
    optim = torch.optim.Adam(guide.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, 3000, eta_min=1e-4)
    for _ in range(3000):
        x = 1 + 2 * torch.rand(64, 8, 1)  # inputs in [1, 3]: slope and intercept strongly correlated
        loss = -sleep_log_q(program, guide, x, torch.ones(64, 8, dtype=torch.bool)).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    return model, guide


@pytest.mark.parametrize("points", [1, 3])
def test_sleep_phase_learns_the_exact_marginal_posteriors(sleep_trained, points):
    """Forward KL with a diagonal Gaussian matches each coordinate's exact marginal mean and sd (moment
    matching), where the mean-field ELBO's optimum would be the narrower conditional sd 1/sqrt(Lambda_ii)."""
    model, guide = sleep_trained
    torch.manual_seed(1)
    x = 1 + 2 * torch.rand(40, points, 1)
    _, y = ModelProgram(model).sample_joint(x)
    exact = model.exact_posterior(x, y)
    sd_exact = exact.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()  # [T, 2]
    sd_conditional = exact.precision_matrix.diagonal(dim1=-2, dim2=-1).rsqrt()
    with torch.no_grad():
        q = guide.distribution(x, y, torch.ones(40, points, dtype=torch.bool))
    sd_q = q.base_dist.scale if isinstance(q, dist.Independent) else q.stddev
    assert (sd_exact / sd_conditional).log().mean() > 0.4  # the case under test: far from mean-field
    assert (sd_q / sd_exact).log().abs().mean() < 0.1, (sd_q / sd_exact)  # measured 0.06-0.07
    assert ((q.mean - exact.loc) / sd_exact).abs().mean() < 0.25  # measured 0.07 (1 point), 0.16 (3)


class _NoSampleNormal(dist.Normal):
    """A likelihood that stops being able to sample when told (a density known only up to evaluation)."""

    can_sample = True

    def sample(self, sample_shape=()):
        if not _NoSampleNormal.can_sample:
            raise NotImplementedError("this likelihood has no sampler")
        return super().sample(torch.Size(sample_shape))

    def rsample(self, sample_shape=()):
        return self.sample(sample_shape)


class _Model(PyroModule):
    x_dim = 1

    def forward(self, x, y=None, mask=None):
        import pyro

        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", _NoSampleNormal(w * x[..., 0], 1.0).mask(mask), obs=y)


def test_a_sleep_phase_for_a_model_that_cannot_simulate_is_refused_by_name(monkeypatch):
    """A model whose likelihood cannot be sampled at all is refused when its program is traced (the probe
    samples y); one that stops sampling later is refused by the sleep objectives, naming them."""
    from bayesmeta.inference.objectives import check_sleep_objective

    learner = bm.BayesLearner(_Model(), objective="rws")  # it can sample: fine
    monkeypatch.setattr(_NoSampleNormal, "can_sample", False)
    with pytest.raises(ValueError, match="_Model: running forward.*failed: NotImplementedError: this likelihood has no"):
        bm.BayesLearner(_Model(), objective="rws-wake")
    with pytest.raises(ValueError, match=r"observation site 'y' \(_NoSampleNormal\) cannot be sampled"):
        learner.program.sample_joint(torch.zeros(2, 3, 1))
    for objective in ("rws", "rws-sleep", "elbo+sleep"):
        with pytest.raises(ValueError, match=rf"objective='{re.escape(objective)}'.*_Model cannot simulate.*no sampler"):
            check_sleep_objective(learner.program, objective)


def test_rws_needs_a_wake_or_a_sleep_term():
    with pytest.raises(ValueError, match="wake=True, sleep=True or both"):
        ReweightedWakeSleep(4, wake=False, sleep=False)
    assert isinstance(make_objective("rws-sleep", 4), ReweightedWakeSleep)


class _Overflowing(PyroModule):
    """y ~ N(exp(100 w), 1): a task whose w > 0.89 simulates infinite outcomes."""

    x_dim = 1

    def forward(self, x, y=None, mask=None):
        import pyro

        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                loc = (100 * w).exp().expand(x.shape[:2] if w.dim() < 3 else w.shape[:-1] + x.shape[1:2])
                return pyro.sample("y", dist.Normal(loc, 1.0).mask(mask), obs=y)


def test_a_simulated_task_that_overflows_scores_nothing_and_spoils_no_gradient():
    program = ModelProgram(_Overflowing())
    guide = AmortizedGuide(program, hidden=(8,), embed_dim=8)
    x = torch.randn(64, 5, 1)
    torch.manual_seed(0)
    lq = sleep_log_q(program, guide, x, torch.ones(64, 5, dtype=torch.bool))
    torch.manual_seed(0)
    _, y = program.sample_joint(x)
    bad = ~torch.isfinite(y).all(-1).all(-1)
    assert bad.sum() >= 5  # the case under test: P(w > 0.89) = 0.19
    assert torch.isfinite(lq).all() and (lq[bad] == 0).all() and (lq[~bad] != 0).all()
    (-lq.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in guide.parameters() if p.grad is not None)
