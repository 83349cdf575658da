"""Metrics against their definitions: coverage, calibration error, PIT, CRPS."""

import math

import pytest
import torch

import bayesmeta as bm
from bayesmeta.evaluation import (
    calibration_error,
    coverages,
    crps_gaussian,
    pit,
    task_coverages,
    task_crps,
    task_nll,
)


def _gaussian_case(scale_factor=1.0, t=200, n=100, seed=0):
    """True predictive N(mu, 1) per point; the predictive under test has scale * scale_factor."""
    g = torch.Generator().manual_seed(seed)
    mu = 3 * torch.randn(t, n, 1, generator=g, dtype=torch.float64)
    y = mu + torch.randn(t, n, 1, generator=g, dtype=torch.float64)
    pred = bm.GaussianMixture(mu[None], torch.full_like(mu, scale_factor)[None])
    return pred, y


def test_correct_gaussian_covers_within_binomial_error():
    pred, y = _gaussian_case()
    m = y.numel()
    cov = coverages(pred, y)
    for lv, c in cov.items():
        assert abs(c - lv) < 4 * math.sqrt(lv * (1 - lv) / m), (lv, c)
    assert calibration_error(pred, y) < 0.01
    counts = torch.histc(pit(pred, y), bins=10, min=0, max=1)
    chi2 = float(((counts - m / 10) ** 2 / (m / 10)).sum())
    assert chi2 < 27.9  # chi^2_9 upper 0.1 % point


def test_half_scale_is_flagged():
    pred, y = _gaussian_case(scale_factor=0.5)
    expected90 = 2 * float(torch.special.ndtr(torch.tensor(0.5 * 1.6448536))) - 1  # P(|Z| < z_0.95 / 2) = 0.59
    assert coverages(pred, y, levels=(0.9,))[0.9] == pytest.approx(expected90, abs=0.01)
    assert calibration_error(pred, y) > 0.15


def test_task_coverages_pool_to_coverages():
    pred, y = _gaussian_case(t=30, n=40)
    mask = torch.rand(30, 40, generator=torch.Generator().manual_seed(1)) < 0.7
    per_task = task_coverages(pred, y, mask, levels=(0.5, 0.9))  # [T, 2]
    pooled = (per_task * mask.sum(-1, keepdim=True)).sum(0) / mask.sum()
    cov = coverages(pred, y, mask, levels=(0.5, 0.9))
    assert pooled.tolist() == pytest.approx([cov[0.5], cov[0.9]], abs=1e-12)


def test_crps_gaussian_matches_its_integral_definition():
    loc, scale, y = torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64), torch.tensor(1.1, dtype=torch.float64)
    below, above = torch.linspace(-30, 1.1, 300_001, dtype=torch.float64), torch.linspace(1.1, 30, 300_001, dtype=torch.float64)
    cdf = lambda t: torch.special.ndtr((t - loc) / scale)  # noqa: E731
    numeric = torch.trapezoid(cdf(below) ** 2, below) + torch.trapezoid((cdf(above) - 1) ** 2, above)
    assert float(crps_gaussian(loc, scale, y)) == pytest.approx(float(numeric), rel=1e-5)


def test_sample_crps_matches_closed_form():
    pred, y = _gaussian_case(scale_factor=1.5, t=50, n=100)
    est = task_crps(pred, y, num_samples=400).mean()
    exact = crps_gaussian(pred.loc[0], pred.scale[0], y).mean()
    assert float(est) == pytest.approx(float(exact), rel=0.01)


def test_nll_of_single_gaussian_is_exact():
    pred, y = _gaussian_case(t=3, n=5)
    expected = (0.5 * (y - pred.loc[0]) ** 2 + 0.5 * math.log(2 * math.pi)).mean((-1, -2))
    assert task_nll(pred, y).tolist() == pytest.approx(expected.tolist(), abs=1e-10)


@pytest.mark.parametrize("levels", [(0.0,), (1.0,), (0.5, 1.2), ()])
def test_levels_outside_unit_interval_raise(levels):
    pred, y = _gaussian_case(t=2, n=3)
    with pytest.raises(ValueError, match="levels"):
        coverages(pred, y, levels=levels)


def test_mismatched_shapes_and_nans_raise():
    pred, y = _gaussian_case(t=2, n=3)
    with pytest.raises(ValueError, match=r"y: shape \(2, 4, 1\)"):
        task_nll(pred, torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="mask"):
        task_nll(pred, y, torch.ones(2, 4, dtype=torch.bool))
    y_bad = y.clone()
    y_bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="task 1, point 2"):
        task_nll(pred, y_bad)
    loc = pred.loc.clone()
    loc[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="samples of task 1"):
        coverages(bm.GaussianMixture(loc, pred.scale), y)



def test_classwise_ece_and_selective_prediction_by_hand():
    from bayesmeta.evaluation.metrics import classwise_ece, selective_prediction

    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])
    # class 0: bins 0.9 (2 points, 1 hit: |0.5 - 0.9| = 0.4) and 0.2 (2 points, 0 hits: 0.2) -> (2*0.4 + 2*0.2) / 4
    # class 1: bins 0.1 (1 hit of 2: 0.4) and 0.8 (2 hits of 2: 0.2) -> the same 0.3
    assert classwise_ece(probs, labels) == pytest.approx(0.3)
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6])
    correct = torch.tensor([1.0, 1.0, 0.0, 1.0])
    sel = selective_prediction(conf, correct, fractions=(0.5, 1.0))
    assert sel["accuracy"] == pytest.approx([1.0, 0.75])
    assert sel["area"] == pytest.approx((1 + 1 + 2 / 3 + 3 / 4) / 4)
