import pytest
import torch

import bayesmeta as bm
from bayesmeta.inference import AmortizedGuide


def _data(t=4, s=6, d=1):
    return torch.randn(t, s, d), torch.randn(t, s, 1), torch.ones(t, s, dtype=torch.bool)


@pytest.mark.parametrize("model", [bm.models.LatentCodeRegression(1, latent_dim=3, hidden=(8,)),
                                   bm.models.HierarchicalLinearRegression(1)])
def test_empty_set_gives_exactly_the_prior(model):
    with torch.no_grad():  # move the prior away from N(0, I)
        model.prior["loc"].add_(0.7)
    guide = AmortizedGuide(model, "diagonal", hidden=(16,), embed_dim=8)
    q = guide.distribution(torch.zeros(2, 0, 1), torch.zeros(2, 0, 1), torch.zeros(2, 0, dtype=torch.bool))
    prior = model.prior_distribution()
    theta = prior.sample((5, 2))
    assert torch.allclose(q.log_prob(theta), prior.log_prob(theta).expand(5, 2), atol=1e-5)


def test_encoder_is_permutation_and_padding_invariant():
    model = bm.models.LatentCodeRegression(1, latent_dim=3, hidden=(8,))
    guide = AmortizedGuide(model, "diagonal", hidden=(16,), embed_dim=8)
    x, y, m = _data()
    perm = torch.randperm(6)
    a = guide.encode(x, y, m)
    b = guide.encode(x[:, perm], y[:, perm], m[:, perm])
    assert torch.allclose(a["a"], b["a"], atol=1e-5) and torch.allclose(a["log_s"], b["log_s"], atol=1e-5)
    xp, yp = torch.cat([x, 100 * torch.randn(4, 3, 1)], 1), torch.cat([y, torch.randn(4, 3, 1)], 1)
    mp = torch.cat([m, torch.zeros(4, 3, dtype=torch.bool)], 1)
    c = guide.encode(xp, yp, mp)
    assert torch.allclose(a["a"], c["a"], atol=1e-5)


def test_flow_family_samples_and_densities():
    model = bm.models.LatentCodeRegression(1, latent_dim=4, hidden=(8,))
    guide = AmortizedGuide(model, "flow", hidden=(16,), embed_dim=8, flow_layers=2)
    q = guide.distribution(*_data())
    th = q.rsample((7,))
    assert th.shape == (7, 4, 4) and q.log_prob(th).shape == (7, 4)
    assert torch.isfinite(q.log_prob(model.prior_distribution().sample((7, 4)))).all()
    # widening leaves the centre and spreads the samples
    wide = guide.distribution(*_data(), widen=3.0)
    assert wide.sample((2000,)).std(0).mean() > q.sample((2000,)).std(0).mean()


def test_guide_errors():
    with pytest.raises(ValueError, match="family must be one of"):
        AmortizedGuide(bm.models.LatentCodeRegression(1), "gaussian")
    with pytest.raises(ValueError, match="needs at least 2 task parameters"):
        AmortizedGuide(bm.models.HierarchicalLinearRegression(1, bias=False), "flow")


class _TwoSites(bm.models.HierarchicalModel):
    """Two task sites with different priors: exercises the joint (auxiliary) guide path."""

    def __init__(self):
        super().__init__(1, 1)
        self.task_sites = {"a": torch.Size([1]), "b": torch.Size([2])}
        self.loc = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def site_priors(self):
        import pyro.distributions as dist

        return {"a": dist.Normal(self.loc[:1], 1.0).to_event(1), "b": dist.Normal(self.loc[1:], 2.0).to_event(1)}

    def likelihood(self, x, theta):
        import pyro.distributions as dist

        mean = theta["a"][..., None, :] + theta["b"][..., None, :1] * x  # [..., T, N, 1]
        return dist.Normal(mean, 0.5)


@pytest.mark.parametrize("family", ["diagonal", "flow"])
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_multi_site_models_train_through_an_auxiliary_site(family, objective):
    model = _TwoSites()
    prior = model.prior_distribution()
    assert prior.event_shape == (3,)
    assert torch.allclose(prior.mean, torch.tensor([0.5, -1.0, 2.0]))
    assert torch.allclose(prior.stddev, torch.tensor([1.0, 2.0, 2.0]))
    guide = AmortizedGuide(model, family, hidden=(8,), embed_dim=4, flow_layers=2)
    loss = bm.inference.make_objective(objective, 3)(model, guide)
    x, y, m = _data()
    value = loss(x, y, m)
    value.backward()
    assert torch.isfinite(value) and model.loc.grad is not None
    assert all(p.grad is not None for p in guide.head.parameters())


@pytest.mark.parametrize("family", ["diagonal", "flow"])
def test_empty_set_gives_exactly_the_prior_after_training_moved_the_weights(family):
    # Flows too: every coupling is gated off on an empty set.
    torch.manual_seed(0)
    model = bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=4, hidden=(8,))
    with torch.no_grad():  # a shifted, rescaled prior, and guide weights far from their init
        model.prior["loc"].add_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        model.prior["raw_scale"].add_(torch.tensor([0.3, -0.5, 0.0, 1.0]))
        guide = AmortizedGuide(model, family, hidden=(16,), embed_dim=8)
        for p in guide.parameters():  # every coupling layer far from the identity too
            p.add_(0.5 * torch.randn_like(p))
    empty = (torch.zeros(5, 0, 1), torch.zeros(5, 0, 1), torch.zeros(5, 0, dtype=torch.bool))
    q, prior = guide.distribution(*empty), model.prior_distribution()
    theta = prior.sample((400, 5))  # [400, 5, P]
    assert torch.allclose(q.log_prob(theta), prior.log_prob(theta), atol=1e-5)
    draws = q.sample((4000,))  # [4000, 5, P]: the prior's moments (standard errors ~0.03 x scale)
    assert torch.allclose(draws.mean(0), prior.mean.detach().expand(5, -1), atol=0.15 * float(prior.stddev.detach().max()))
    # a batch that mixes empty and non-empty sets: only the empty ones are the prior
    x, y = torch.randn(5, 3, 1), torch.randn(5, 3, 1)
    mask = torch.ones(5, 3, dtype=torch.bool)
    mask[1:3] = False
    q_mixed = guide.distribution(x, y, mask)
    diff = (q_mixed.log_prob(theta) - prior.log_prob(theta)).abs().amax(0)  # [5]
    assert diff[1:3].max() < 1e-5 and diff[[0, 3, 4]].min() > 1e-2
