"""Plain Pyro models with exact answers: Beta-Bernoulli, Gamma-Poisson and Normal-Gamma tasks.

The amortized posterior after importance correction must match the exact posterior under the
model's (learned) prior: means within 0.1 posterior sd, sds within 10 %. The learned prior of the
Gamma-Poisson model must match a direct maximisation of the exact marginal likelihood.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

import bayesmeta as bm

SHOTS = (1, 4, 10)


class BetaBernoulli(PyroModule):
    x_dim = 1

    def __init__(self):
        super().__init__()
        self.log_ab = nn.Parameter(torch.zeros(2))

    def prior(self):
        a, b = self.log_ab.exp()
        return a, b

    def forward(self, x, y=None, mask=None):
        a, b = self.prior()
        with pyro.plate("tasks", x.shape[0], dim=-2):
            p = pyro.sample("p", dist.Beta(a, b))  # [..., T, 1], in (0, 1)
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Bernoulli(p.expand(*p.shape[:-1], x.shape[1])).mask(mask), obs=y)

    def exact(self, y, n):
        a, b = self.prior()
        s = y.sum()
        post = torch.distributions.Beta(a + s, b + n - s)
        return {"p": (post.mean, post.variance.sqrt())}


class GammaPoisson(PyroModule):
    x_dim = 1

    def __init__(self):
        super().__init__()
        self.log_ab = nn.Parameter(torch.zeros(2))

    def prior(self):
        a, b = self.log_ab.exp()
        return a, b

    def forward(self, x, y=None, mask=None):
        a, b = self.prior()
        with pyro.plate("tasks", x.shape[0], dim=-2):
            rate = pyro.sample("rate", dist.Gamma(a, b))  # [..., T, 1], positive
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Poisson(rate.expand(*rate.shape[:-1], x.shape[1])).mask(mask), obs=y)

    def exact(self, y, n):
        a, b = self.prior()
        post = torch.distributions.Gamma(a + y.sum(), b + n)
        return {"rate": (post.mean, post.variance.sqrt())}

    def log_marginal(self, y):  # [T, N] counts, every point observed: negative binomial per point, jointly
        a, b = self.prior()
        n, s = y.shape[1], y.sum(1)
        return (torch.lgamma(a + s) - torch.lgamma(a) - torch.lgamma(y + 1).sum(1)
                + a * torch.log(b) - (a + s) * torch.log(b + n))


class NormalGamma(PyroModule):
    """tau_i ~ Gamma(a, b); mu_i ~ N(m, 1 / (kappa tau_i)); y_ij ~ N(mu_i, 1 / tau_i)."""

    x_dim = 1

    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.tensor(0.5))
        self.log_kappa = nn.Parameter(torch.tensor(0.0))
        self.log_ab = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x, y=None, mask=None):
        a, b = self.log_ab.exp()
        with pyro.plate("tasks", x.shape[0], dim=-2):
            tau = pyro.sample("tau", dist.Gamma(a, b))  # [..., T, 1]
            mu = pyro.sample("mu", dist.Normal(self.m, (self.log_kappa.exp() * tau).rsqrt()))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(mu, tau.rsqrt()).mask(mask), obs=y)

    def exact(self, y, n):
        a, b = self.log_ab.exp()
        kappa, m = self.log_kappa.exp(), self.m
        ybar = y.mean()
        kn, an = kappa + n, a + n / 2
        mn = (kappa * m + n * ybar) / kn
        bn = b + 0.5 * ((y - ybar) ** 2).sum() + kappa * n * (ybar - m) ** 2 / (2 * kn)
        return {"tau": (an / bn, an.sqrt() / bn), "mu": (mn, (bn / (kn * (an - 1))).sqrt())}


def _pool(model_cls, num_tasks, points, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(num_tasks, points, 1)
    if model_cls is BetaBernoulli:
        p = torch.distributions.Beta(2.0, 3.0).sample((num_tasks, 1))
        y = torch.bernoulli(p.expand(num_tasks, points), generator=g)
    elif model_cls is GammaPoisson:
        rate = torch.distributions.Gamma(4.0, 1.0).sample((num_tasks, 1))
        y = torch.poisson(rate.expand(num_tasks, points), generator=g)
    else:
        tau = torch.distributions.Gamma(3.0, 2.0).sample((num_tasks, 1))
        mu = 1.0 + torch.randn(num_tasks, 1, generator=g) / (2.0 * tau).sqrt()
        y = mu + torch.randn(num_tasks, points, generator=g) / tau.sqrt()
    return x, y[..., None]


@pytest.mark.parametrize("model_cls", [BetaBernoulli, GammaPoisson, NormalGamma])
def test_importance_corrected_posterior_matches_the_exact_one(model_cls):
    torch.manual_seed(0)
    model = model_cls()
    x, y = _pool(model_cls, 200, 12, seed=0)
    learner = bm.BayesLearner(model)
    learner.fit(bm.TaskBatch(x, y, torch.ones(200, 12, dtype=torch.bool)), steps=400, lr=3e-3, validation=False,
                progress=False, seed=0)  # the model sees the data's units, as the exact posterior below
    xt, yt = _pool(model_cls, 6, max(SHOTS), seed=1)
    _check_posteriors(learner, model, xt, yt)


def _check_posteriors(learner, model, xt, yt):
    for k in SHOTS:
        post = learner.adapt(xt[:, :k], yt[:, :k])
        draws = post.sample(4000, seed=0, min_ess=1000)  # a task below ESS 1000 is re-drawn with up to 64 000
        for t in range(xt.shape[0]):
            for site, (mean, sd) in model.exact(yt[t, :k, 0], k).items():
                v = draws[site][:, t].double()
                mean, sd = float(mean.detach()), float(sd.detach())
                assert abs(float(v.mean()) - mean) < 0.1 * sd, (site, k, t)
                assert abs(float(v.std()) / sd - 1) < 0.1, (site, k, t)


def test_learned_gamma_poisson_prior_matches_the_marginal_likelihood_maximum():
    torch.manual_seed(0)
    x, y = _pool(GammaPoisson, 400, 8, seed=2)
    exact = GammaPoisson()
    optim = torch.optim.LBFGS(exact.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optim.zero_grad()
        loss = -exact.log_marginal(y[..., 0]).sum()
        loss.backward()
        return loss
    optim.step(closure)
    model = GammaPoisson()
    learner = bm.BayesLearner(model, objective="iwae", num_particles=16)
    learner.fit(bm.TaskBatch(x, y, torch.ones(400, 8, dtype=torch.bool)), steps=1500, lr=5e-3, validation=False,
                progress=False, seed=0)
    with torch.no_grad():
        (a0, b0), (a1, b1) = exact.prior(), model.prior()
    print("type-II ML prior", float(a0), float(b0), "learned", float(a1), float(b1))
    # the prior's mean a/b and sd sqrt(a)/b: within 5 % of the type-II maximum-likelihood prior's
    assert abs(float(a1 / b1) / float(a0 / b0) - 1) < 0.05
    assert abs(float(a1.sqrt() / b1) / float(a0.sqrt() / b0) - 1) < 0.05
