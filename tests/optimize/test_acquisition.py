"""Acquisition functions against their definitions, by numerical integration over the predictive."""

import math

import pytest
import torch

import bayesmeta as bm
from bayesmeta.optimize import (
    draw_acquisition,
    expected_improvement,
    gaussian_ei,
    probability_of_improvement,
    upper_confidence_bound,
)
from bayesmeta.predictive import FamilyMixture


def _mixture():
    """Two tasks x three points, mixtures of three Gaussians with unequal weights (float64)."""
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 2, 3, 1, generator=g, dtype=torch.float64) * 2
    scale = 0.3 + torch.rand(3, 2, 3, 1, generator=g, dtype=torch.float64)
    log_w = torch.randn(3, 2, generator=g, dtype=torch.float64)
    return bm.GaussianMixture(loc, scale, log_w), loc, scale, torch.softmax(log_w, 0)


def _density(loc, scale, w, y):
    """Mixture density on a grid ``y [G]``: ``[T, N, G]``."""
    comp = torch.exp(-0.5 * ((y - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))  # [n, T, N, G]
    return (w[:, :, None, None] * comp).sum(0)


@pytest.mark.parametrize("maximize", [True, False])
def test_ei_and_pi_of_a_gaussian_mixture_match_numerical_integration(maximize):
    pred, loc, scale, w = _mixture()
    best = torch.tensor([0.5, -1.0], dtype=torch.float64)
    y = torch.linspace(-25, 25, 200_001, dtype=torch.float64)
    dens = _density(loc, scale, w, y)  # [T, N, G]
    b = best[:, None, None]
    gain = (y - b).clamp_min(0) if maximize else (b - y).clamp_min(0)
    ei_num = torch.trapezoid(gain * dens, y)  # [T, N]
    # P(improvement): the density integrated from best on (each task's own grid starts at its best, no jump)
    pi_num = torch.stack([torch.trapezoid(_density(loc[:, t:t + 1], scale[:, t:t + 1], w[:, t:t + 1], yt), yt)[0]
                          for t, yt in enumerate(torch.linspace(0, 25, 100_001, dtype=torch.float64) * (1 if maximize else -1)
                                                 + best[:, None])])
    if not maximize:
        pi_num = -pi_num  # the grid runs downwards
    ei = expected_improvement(pred, best, maximize=maximize)
    pi = probability_of_improvement(pred, best, maximize=maximize)
    assert ei.shape == (2, 3)
    torch.testing.assert_close(ei, ei_num, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(pi, pi_num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("maximize", [True, False])
def test_ucb_of_a_gaussian_mixture_is_mean_plus_beta_sd_of_the_density(maximize):
    pred, loc, scale, w = _mixture()
    y = torch.linspace(-25, 25, 200_001, dtype=torch.float64)
    dens = _density(loc, scale, w, y)
    mean = torch.trapezoid(y * dens, y)
    sd = torch.trapezoid((y - mean[..., None]) ** 2 * dens, y).sqrt()
    expected = mean + 1.5 * sd if maximize else -(mean - 1.5 * sd)
    torch.testing.assert_close(upper_confidence_bound(pred, 1.5, maximize=maximize), expected, rtol=1e-6, atol=1e-8)


def test_gaussian_ei_keeps_relative_precision_far_in_the_tail():
    # E[max(y - b, 0)], y ~ N(0, 1), b = 10 and 30: the integral over the tail on a fine grid (float64)
    for b in (10.0, 30.0):
        y = torch.linspace(b, b + 5, 500_001, dtype=torch.float64)
        num = torch.trapezoid((y - b) * torch.exp(-0.5 * y**2) / math.sqrt(2 * math.pi), y)
        ei = gaussian_ei(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64),
                         torch.tensor(b, dtype=torch.float64))
        assert num > 0 and float(ei / num) == pytest.approx(1.0, rel=1e-5)
    # the gradient in the tail is finite and positive (the refinement needs it)
    mu = torch.tensor([-40.0, -5.0, 0.0, 50.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(gaussian_ei(mu, torch.ones(4, dtype=torch.float64), torch.zeros(())).sum(), mu)
    assert torch.isfinite(g).all() and (g >= 0).all() and g[-1] == pytest.approx(1.0)


def test_ei_of_a_bernoulli_mixture_by_samples_matches_the_exact_sum():
    p = torch.tensor([[[0.2], [0.7]], [[0.6], [0.1]]], dtype=torch.float64)  # [n=2, T=2, P=1]
    mix = FamilyMixture(p, torch.log(torch.tensor([[0.3, 0.5], [0.7, 0.5]], dtype=torch.float64)),
                        lambda q, sl: torch.distributions.Bernoulli(probs=q[..., 0, None].expand(-1, -1, 2)),
                        shape=(2, 2, 1))
    w = torch.tensor([[0.3, 0.5], [0.7, 0.5]], dtype=torch.float64)
    p1 = (w * p[..., 0]).sum(0)  # P(y = 1) per task
    best = 0.4  # improvement 0.6 when y = 1, 0 when y = 0
    ei = expected_improvement(mix, best, num_samples=200_000, generator=torch.Generator().manual_seed(1))
    exact = (0.6 * p1)[:, None].expand(2, 2)
    # Monte-Carlo s.e. of a 0.6 x Bernoulli mean over 2e5 draws: <= 0.6 * 0.5 / sqrt(2e5) = 6.7e-4
    torch.testing.assert_close(ei, exact, atol=3e-3, rtol=0)
    pi = probability_of_improvement(mix, best, num_samples=200_000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(pi, p1[:, None].expand(2, 2), atol=5e-3, rtol=0)
    ucb = upper_confidence_bound(mix, 1.0)
    torch.testing.assert_close(ucb, (p1 + (p1 * (1 - p1)).sqrt())[:, None].expand(2, 2))


def test_draw_acquisition_is_its_definition_on_weighted_draws():
    g = torch.Generator().manual_seed(3)
    values = torch.randn(5, 2, 4, generator=g, dtype=torch.float64)
    log_w = torch.randn(5, 2, generator=g, dtype=torch.float64)
    w = torch.softmax(log_w, 0)[..., None]
    best = torch.tensor([0.1, -0.2], dtype=torch.float64)
    mean = (w * values).sum(0)
    sd = (w * (values - mean) ** 2).sum(0).sqrt()
    torch.testing.assert_close(draw_acquisition(values, log_w, "greedy"), mean)
    torch.testing.assert_close(draw_acquisition(values, log_w, "ucb", beta=2.0), mean + 2 * sd)
    torch.testing.assert_close(draw_acquisition(values, log_w, "ei", best=best),
                               (w * (values - best[:, None]).clamp_min(0)).sum(0))
    torch.testing.assert_close(draw_acquisition(values, log_w, "ei", best=best, maximize=False),
                               (w * (best[:, None] - values).clamp_min(0)).sum(0))
    torch.testing.assert_close(draw_acquisition(values, None, "pi", best=best),
                               (values > best[:, None]).double().mean(0))


def test_bad_acquisition_arguments_are_named():
    pred, *_ = _mixture()
    with pytest.raises(ValueError, match="best must be a number or one value per task"):
        expected_improvement(pred, torch.zeros(3))
    with pytest.raises(ValueError, match="best must be finite"):
        expected_improvement(pred, float("nan"))
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        upper_confidence_bound(pred, -1.0)
    with pytest.raises(ValueError, match=r"output must be an int in \[0, 1\)"):
        expected_improvement(pred, 0.0, output=1)
    with pytest.raises(TypeError, match="maximize must be True or False"):
        expected_improvement(pred, 0.0, maximize="yes")
    with pytest.raises(ValueError, match="kind must be one of"):
        draw_acquisition(torch.zeros(1, 1, 1), None, "ts")
