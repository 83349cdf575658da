"""Mixtures of any observation family: densities, moments, CDFs, quantiles and PIT against their definitions."""

import pytest
import torch
import torch.distributions as D

from bayesmeta.evaluation.metrics import reliability
from bayesmeta.predictive import FamilyMixture, component_cdf


def _poisson_mix(t=3, n=4):
    rates = torch.tensor([[1.0], [6.0]]).expand(2, t) + torch.arange(t).float()  # [2, T]
    params = rates[..., None]  # [2, T, 1]
    log_w = torch.tensor([[0.3], [0.7]]).log().expand(2, t)
    mix = FamilyMixture(params, log_w, lambda p, sl: D.Poisson(p[..., 0, None].expand(-1, -1, n)), shape=(t, n, 1))
    return mix, rates


def test_poisson_mixture_density_moments_and_cdf_follow_their_definitions():
    mix, rates = _poisson_mix()
    y = torch.tensor([0.0, 2.0, 5.0, 9.0]).expand(3, 4)[..., None]
    comp = D.Poisson(rates[:, :, None])  # [2, T, 1]
    w = torch.tensor([0.3, 0.7])[:, None, None]
    pmf = (w * comp.log_prob(y[None, ..., 0]).exp()).sum(0)  # [T, N]
    assert torch.allclose(mix.log_prob(y), pmf.log(), atol=1e-5)
    mean = (w * rates[:, :, None]).sum(0)
    var = (w * (rates[:, :, None] + rates[:, :, None] ** 2)).sum(0) - mean**2  # total variance
    assert torch.allclose(mix.mean[..., 0], mean.expand(3, 4), atol=1e-5)
    assert torch.allclose(mix.variance[..., 0], var.expand(3, 4), atol=1e-4)
    cdf = sum((w * comp.log_prob(torch.full_like(y[None, ..., 0], float(k))).exp()).sum(0) * (y[..., 0] >= k)
              for k in range(10))
    assert torch.allclose(mix.cdf(y)[..., 0], cdf, atol=1e-5)


def test_discrete_intervals_are_integers_holding_the_level():
    mix, _ = _poisson_mix()
    lo, hi = mix.interval(0.9)
    assert torch.equal(lo, lo.round()) and torch.equal(hi, hi.round())
    # the smallest integers with F(lo) >= 0.05 and F(hi) >= 0.95
    assert (mix.cdf(lo) >= 0.05).all() and (mix.cdf(lo - 1) < 0.05).all()
    assert (mix.cdf(hi) >= 0.95).all() and (mix.cdf(hi - 1) < 0.95).all()


def test_randomised_pit_of_draws_from_the_predictive_is_uniform():
    torch.manual_seed(0)
    t, n = 4000, 5
    rates = torch.rand(2, t) * 3 + 0.5
    mix = FamilyMixture(rates[..., None], None, lambda p, sl: D.Poisson(p[..., 0, None].expand(-1, -1, n)),
                        shape=(t, n, 1))
    u = mix.pit(mix.sample(1)[0]).reshape(-1)  # [T N]
    # uniform: every decile holds 10 %. A task's points share one component, so the 20 000 values count as
    # ~4 000 independent ones: sd of a decile's share ~0.005; 4 sd
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.02
    plain = mix.cdf(mix.sample(1)[0]).reshape(-1)  # the non-randomised PIT piles up at the top
    assert (torch.histc(plain, bins=10, min=0, max=1) / plain.numel())[-1] > 0.15


def test_bernoulli_mixture_has_class_probabilities():
    p = torch.tensor([[0.2, 0.9], [0.6, 0.5]])[..., None]  # [n=2, T=2, 1]
    mix = FamilyMixture(p, None, lambda q, sl: D.Bernoulli(probs=q[..., 0, None].expand(-1, -1, 3)), shape=(2, 3, 1))
    probs = mix.probs
    assert probs.shape == (2, 3, 2)
    assert torch.allclose(probs[0, 0], torch.tensor([0.6, 0.4])) and torch.allclose(probs[1, 0], torch.tensor([0.3, 0.7]))
    assert torch.allclose(mix.mean[..., 0], probs[..., 1])


@pytest.mark.parametrize("d", [D.StudentT(3.0, 1.0, 2.0), D.Beta(2.0, 5.0), D.NegativeBinomial(4.0, probs=0.3),
                               D.Binomial(7, probs=0.35), D.Gamma(2.0, 1.5)])
def test_component_cdfs_agree_with_the_density(d):
    if d.support.is_discrete:
        k = torch.arange(0, 30).float()
        pmf = d.log_prob(k.clamp(max=7) if isinstance(d, D.Binomial) else k).exp()
        if isinstance(d, D.Binomial):
            pmf = torch.where(k <= 7, pmf, torch.zeros_like(pmf))
        assert torch.allclose(component_cdf(d, k), pmf.cumsum(0), atol=1e-5)
        return
    lo = 1e-4 if isinstance(d, D.Beta | D.Gamma) else -60.0
    grid = torch.linspace(lo, 0.9 if isinstance(d, D.Beta) else 3.0, 20001, dtype=torch.float64)
    dens = d.log_prob(grid.float()).double().exp()
    integral = torch.cumulative_trapezoid(dens, grid)[-1]
    exact = component_cdf(d, torch.tensor(grid[-1].item())).double() - component_cdf(d, torch.tensor(lo)).double()
    assert float(integral) == pytest.approx(float(exact), abs=2e-3)


def test_reliability_and_ece_by_definition():
    conf = torch.tensor([0.95, 0.95, 0.62, 0.62, 0.62])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    rel = reliability(conf, correct)
    # bin 14: accuracy 0.5 at confidence 0.95 (2 points); bin 9: accuracy 1 at 0.62 (3 points)
    assert rel["ece"] == pytest.approx((2 * 0.45 + 3 * 0.38) / 5)
    assert rel["count"][14] == 2 and rel["count"][9] == 3 and sum(rel["count"]) == 5


@pytest.mark.parametrize(("value", "family", "support"), [
    (-1.0, "Poisson", "an integer >= 0"), (2.5, "Poisson", "an integer >= 0"), (9.0, "Binomial", "an integer in [0, 5]"),
])
def test_log_prob_outside_the_support_names_the_value_and_its_point_not_a_tensor(value, family, support):
    if family == "Poisson":
        mix, _ = _poisson_mix(t=3, n=4)
        y = torch.ones(3, 4, 1)
    else:  # every point has its own number of trials: 5 at task 2, point 1
        trials = torch.arange(12.0).reshape(3, 4) - 4.0
        mix = FamilyMixture(torch.zeros(2, 3, 1), None, lambda p, sl: D.Binomial(trials[sl].clamp_min(0).expand(
            p.shape[0], -1, -1), logits=p[..., 0, None].expand(-1, -1, 4)), shape=(3, 4, 1))
        y = torch.zeros(3, 4, 1)
    y[2, 1, 0] = value
    with pytest.raises(ValueError) as err:
        mix.log_prob(y)
    shown = f"{value:g}" if value != int(value) else str(int(value))
    assert str(err.value) == (f"log_prob: y = {shown} at task 2, point 1 is outside the support of the {family} "
                              f"predictive ({support})")
