"""Baselines that learn nothing from earlier tasks: random search and GP-BO from scratch (scikit-learn)."""

import pytest
import torch

from bayesmeta.optimize import Box, Candidates, GPBayesOpt, RandomSearch, optimize


def test_random_search_is_uniform_in_the_box_and_without_replacement_over_candidates():
    box = Box([-1.0, 0.0], [1.0, 10.0])
    prop = RandomSearch()(torch.zeros(2000, 0, 2), torch.zeros(2000, 0), None, box, q=1, seed=0)
    x = prop.x[:, 0]
    assert ((x >= box.low) & (x <= box.high)).all()
    torch.testing.assert_close(x.mean(0), torch.tensor([0.0, 5.0]), atol=0.1, rtol=0)  # s.e. 0.013 and 0.065
    assert torch.isnan(prop.predicted_mean).all()
    pts = torch.arange(5.0)[:, None]
    prop = RandomSearch()(torch.zeros(3, 0, 1), torch.zeros(3, 0), None, Candidates(pts), q=5, seed=0)
    assert all(sorted(prop.x[t, :, 0].tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0] for t in range(3))


def test_gp_bo_from_scratch_finds_a_smooth_maximum():
    pytest.importorskip("sklearn")
    fn = lambda x: -((x[:, 0] - 0.3) ** 2)  # noqa: E731
    trace = optimize(fn, GPBayesOpt(), Box(-2.0, 2.0), budget=8, seed=0)
    # two random points, then EI: measured |x - 0.3| = 0.01 at the best of 8
    assert abs(float(trace.best_x) - 0.3) < 0.05
    assert torch.isnan(trace.predicted_mean[:2]).all() and torch.isfinite(trace.predicted_mean[2:]).all()
    low = optimize(lambda x: -fn(x), GPBayesOpt(maximize=False), Box(-2.0, 2.0), budget=8, q=2, seed=0)
    assert abs(float(low.best_x) - 0.3) < 0.1 and low.round.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
