"""The learning-rate schedule: cosine decay over the step budget, or over the time budget when that is further along."""

import math
from types import SimpleNamespace

import pytest
import torch

from bayesmeta.inference.loop import set_lr


def _cfg(**kw):
    # any object with these four attributes drives the schedule (the baselines share it)
    return SimpleNamespace(**{"lr": 0.1, "final_lr_fraction": 0.01, "steps": 100, "max_time": None, **kw})


def _lr(cfg, step, elapsed=0.0):
    optim = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(2))], lr=123.0)
    optim.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 456.0})
    set_lr(optim, cfg, step, elapsed)
    lrs = [g["lr"] for g in optim.param_groups]
    assert lrs == [lrs[0]] * len(lrs)  # every parameter group follows the schedule
    return lrs[0]


def _cosine(lr, final, frac):
    """The schedule's definition: ``lr * (f + (1 - f) * (1 + cos(pi * frac)) / 2)``, progress clipped at 1."""
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def test_step_budget_goes_from_lr_to_its_final_fraction():
    cfg = _cfg()
    assert _lr(cfg, 0) == pytest.approx(0.1, rel=1e-12)  # start: the full rate
    assert _lr(cfg, 50) == pytest.approx((0.1 + 0.001) / 2, rel=1e-12)  # middle: halfway between the ends
    assert _lr(cfg, 25) == pytest.approx(0.001 + 0.099 * (1 + math.sqrt(0.5)) / 2, rel=1e-12)  # cos(pi/4)
    assert _lr(cfg, 100) == pytest.approx(0.001, rel=1e-12)  # end: lr * final_lr_fraction
    assert _lr(cfg, 250) == pytest.approx(0.001, rel=1e-12)  # past the end: stays there
    for step in range(0, 101, 7):
        assert _lr(cfg, step) == pytest.approx(_cosine(0.1, 0.01, step / 100), rel=1e-12)


def test_rate_decreases_monotonically():
    cfg = _cfg(final_lr_fraction=0.3, steps=37)
    lrs = [_lr(cfg, s) for s in range(38)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.03, rel=1e-12)


def test_elapsed_time_is_ignored_without_a_time_budget():
    assert _lr(_cfg(), 10, elapsed=1e6) == pytest.approx(_cosine(0.1, 0.01, 0.1), rel=1e-12)


def test_time_budget_drives_the_schedule_when_it_is_further_along():
    cfg = _cfg(steps=1000, max_time=60.0)
    # 30 of 60 s gone but only 10 of 1000 steps: the time fraction (0.5) sets the rate
    assert _lr(cfg, 10, elapsed=30.0) == pytest.approx((0.1 + 0.001) / 2, rel=1e-12)
    assert _lr(cfg, 10, elapsed=15.0) == pytest.approx(_cosine(0.1, 0.01, 0.25), rel=1e-12)
    # 900 of 1000 steps but 6 of 60 s: the step fraction (0.9) is further along and wins
    assert _lr(cfg, 900, elapsed=6.0) == pytest.approx(_cosine(0.1, 0.01, 0.9), rel=1e-12)
    assert _lr(cfg, 1, elapsed=60.0) == pytest.approx(0.001, rel=1e-12)  # time is up: the final rate
    assert _lr(cfg, 1, elapsed=600.0) == pytest.approx(0.001, rel=1e-12)


def test_final_fraction_one_is_a_constant_rate():
    cfg = _cfg(final_lr_fraction=1.0, max_time=5.0)
    assert {_lr(cfg, s, elapsed=t) for s, t in ((0, 0.0), (50, 1.0), (100, 2.5), (7, 9.0))} == {0.1}
