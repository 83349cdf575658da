"""Thompson sampling against its definition: the proposal is distributed as the posterior of the argmax."""

import math

import pytest
import torch

import bayesmeta as bm
from bayesmeta.optimize import Candidates, propose

ANGLES = torch.arange(8) * (2 * math.pi / 8)
CIRCLE = torch.stack([ANGLES.cos(), ANGLES.sin()], -1)  # 8 candidates on the unit circle [8, 2]


def _observations(num_tasks: int):
    """The same three noisy observations of one linear task, copied to every task ``[T, 3, 2]``."""
    x = torch.tensor([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.4]])
    y = torch.tensor([0.4, 1.1, -0.2])
    return x.expand(num_tasks, -1, -1), y.expand(num_tasks, -1)


def _argmax_law(mean: torch.Tensor, cov: torch.Tensor, n: int = 400_000) -> torch.Tensor:
    """P(argmax over the circle = c) under w ~ N(mean, cov), f_c = [x_c, 1] . w (independent simulation)."""
    w = torch.distributions.MultivariateNormal(mean.double(), cov.double()).sample((n,))  # [n, 3]
    f = w[:, :2] @ CIRCLE.double().T + w[:, 2:]  # [n, 8]
    return torch.bincount(f.argmax(-1), minlength=8).double() / n


def _check_law(props: torch.Tensor, law: torch.Tensor) -> None:
    """Frequencies of 4000 proposals vs the law: every cell within 4.5 binomial s.e., total variation < 0.03."""
    n = props.shape[0]
    freq = torch.bincount(props, minlength=8).double() / n
    se = (law * (1 - law) / n).sqrt() + 1e-3
    assert ((freq - law).abs() < 4.5 * se).all(), (freq, law)
    assert 0.5 * (freq - law).abs().sum() < 0.03
    assert (law > 0.02).sum() >= 3  # the check is about a spread-out law, not one sure winner


def _index(x: torch.Tensor) -> torch.Tensor:
    return (x[:, None, :] - CIRCLE[None]).abs().sum(-1).argmin(-1)  # the candidate of each proposal


def test_oracle_thompson_sampling_proposes_the_posterior_argmax_law():
    fam = bm.tasks.HierarchicalLinear(dim=2, noise_std=0.5)
    x, y = _observations(4000)
    prop = propose(fam, x, y, Candidates(CIRCLE), acquisition="ts", seed=0)
    assert prop.x.shape == (4000, 1, 2) and prop.target == "f"
    mean, cov = fam.posterior(x[:1], y[:1])
    _check_law(_index(prop.x[:, 0]), _argmax_law(mean[0], cov[0]))


def test_thompson_sampling_with_an_exact_learner_proposes_its_posterior_argmax_law():
    """A conjugate BayesLearner: posterior draws pushed through the model's own observation distribution."""
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=2), conjugate=True)
    x, y = _observations(4000)
    prop = propose(learner, x, y, Candidates(CIRCLE), acquisition="ts", seed=1)
    post = learner.adapt(x[:1], y[:1, :, None])
    _check_law(_index(prop.x[:, 0]), _argmax_law(post.exact.loc[0], post.exact.covariance_matrix[0]))


def test_a_batch_of_thompson_draws_is_q_independent_proposals():
    fam = bm.tasks.HierarchicalLinear(dim=2, noise_std=0.5)
    x, y = _observations(1000)
    prop = propose(fam, x, y, Candidates(CIRCLE), acquisition="ts", q=4, seed=2)
    assert prop.x.shape == (1000, 4, 2)
    idx = _index(prop.x.reshape(-1, 2)).reshape(1000, 4)
    law = _argmax_law(*(v[0] for v in fam.posterior(x[:1], y[:1])))
    for j in range(4):  # each of the q draws has the argmax law ...
        freq = torch.bincount(idx[:, j], minlength=8).double() / 1000
        assert 0.5 * (freq - law).abs().sum() < 0.08
    # ... and they are independent: the share of equal pairs is sum_c law_c^2
    same = (idx[:, 0] == idx[:, 1]).double().mean()
    assert float(same) == pytest.approx(float((law**2).sum()), abs=0.05)


def test_thompson_sampling_in_a_box_lands_on_the_maximiser_of_its_draw():
    """A linear function's maximum over a box is a corner: TS proposals sit on corners after the refinement."""
    fam = bm.tasks.HierarchicalLinear(dim=2, noise_std=0.5)
    x, y = _observations(50)
    prop = propose(fam, x, y, bm.optimize.Box([-1.0, -1.0], [1.0, 1.0]), acquisition="ts", seed=3,
                   num_candidates=64, refine_steps=100)
    assert torch.allclose(prop.x.abs(), torch.ones_like(prop.x), atol=1e-4)
    # the score is the draw's value there; the corners' values under the draw are not above it
    assert torch.isfinite(prop.score).all()
