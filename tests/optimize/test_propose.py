"""propose / suggest: every acquisition with every kind of model, the local refinement, and bad input."""

import math

import numpy as np
import pytest
import torch

import bayesmeta as bm
from bayesmeta.optimize import Box, Candidates, ThompsonSamplingError, propose, suggest
from bayesmeta.optimize.propose import _maximize

LINEAR = bm.tasks.HierarchicalLinear(dim=1, noise_std=0.3)


@pytest.fixture(scope="module")
def sinusoid_learner():
    """A BayesLearner trained for a few steps (shapes and plumbing, not quality)."""
    torch.manual_seed(0)
    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=2, hidden=(16,)))
    return learner.fit(bm.tasks.Sinusoid(), steps=5, progress=False)


@pytest.mark.parametrize("acquisition", ["ts", "ei", "ucb", "pi", "greedy"])
def test_every_acquisition_with_a_bayes_learner_gives_points_in_the_box(sinusoid_learner, acquisition):
    b = bm.tasks.Sinusoid().sample(3, shots=2, generator=torch.Generator().manual_seed(0))
    prop = propose(sinusoid_learner, b.x_support, b.y_support, Box(-5.0, 5.0), acquisition=acquisition, q=2,
                   seed=0, num_samples=32, num_candidates=32, refine_steps=3)
    assert prop.x.shape == (3, 2, 1) and prop.score.shape == (3, 2)
    assert (prop.x.abs() <= 5).all() and torch.isfinite(prop.score).all() and (prop.predicted_std > 0).all()
    assert prop.target == ("f" if acquisition == "ts" else "y")


def test_a_learner_with_no_observations_proposes_from_its_prior(sinusoid_learner):
    prop = propose(sinusoid_learner, torch.zeros(2, 0, 1), torch.zeros(2, 0), Box(-5.0, 5.0), acquisition="ei",
                   seed=0, num_samples=16, num_candidates=16, refine_steps=0)
    assert prop.x.shape == (2, 1, 1) and torch.isfinite(prop.score).all()


def test_the_same_seed_gives_the_same_proposal_and_another_seed_another(sinusoid_learner):
    b = bm.tasks.Sinusoid().sample(2, shots=3, generator=torch.Generator().manual_seed(1))
    def run(seed):
        p = propose(sinusoid_learner, b.x_support, b.y_support, Box(-5.0, 5.0), seed=seed, num_samples=32,
                    num_candidates=32, refine_steps=5)
        return torch.cat([p.x[..., 0], p.score], -1)  # the point and its draw's value there
    assert torch.equal(run(4), run(4)) and not torch.equal(run(4), run(5))


def test_greedy_maml_and_its_refusal_of_thompson_sampling():
    maml = bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,))
    b = bm.tasks.Sinusoid().sample(2, shots=2)
    with pytest.raises(ThompsonSamplingError, match="acquisition='ts'.*MAML gives one point estimate.*'greedy'"):
        propose(maml, b.x_support, b.y_support, Box(-5.0, 5.0), acquisition="ts")
    grid = torch.linspace(-5, 5, 101)[:, None]
    prop = propose(maml, b.x_support, b.y_support, Candidates(grid), acquisition="greedy")
    mean = maml.adapt(b.x_support, b.y_support).predict(grid).mean[..., 0]  # [T, N]
    assert torch.equal(prop.x[:, 0, 0], grid[mean.argmax(-1), 0])  # the predicted argmax
    # tasks without observations keep the meta-learned initialisation (MAML cannot adapt to nothing)
    assert propose(maml, torch.zeros(2, 0, 1), torch.zeros(2, 0), Candidates(grid), acquisition="greedy").x.shape == (2, 1, 1)


def test_an_ensemble_of_point_estimates_does_thompson_sampling_over_its_members():
    ens = bm.baselines.Ensemble(lambda: bm.baselines.MAML(x_dim=1, y_dim=1, hidden=(8,)), n=3)
    b = bm.tasks.Sinusoid().sample(2, shots=2)
    grid = torch.linspace(-5, 5, 41)[:, None]
    prop = propose(ens, b.x_support, b.y_support, Candidates(grid), acquisition="ts", q=30, seed=0)
    maxima = {float(grid[m.adapt(b.x_support, b.y_support).predict(grid).mean[0, :, 0].argmax(), 0])
              for m in ens.members}
    assert set(prop.x[0, :, 0].tolist()) <= maxima and len(set(prop.x[0, :, 0].tolist())) > 1


def test_minimising_is_maximising_the_negated_objective():
    x, y = torch.tensor([[[0.5]]]), torch.tensor([[1.0]])
    grid = torch.linspace(-2, 2, 41)[:, None]
    for acq in ("ei", "ucb", "greedy"):
        low = propose(LINEAR, x, y, Candidates(grid), acquisition=acq, maximize=False, seed=0)
        high = propose(LINEAR, x, -y, Candidates(grid), acquisition=acq, maximize=True, seed=0)
        assert torch.equal(low.x, high.x), acq  # the linear posterior is symmetric in y's sign


def test_a_batch_over_candidates_has_distinct_points():
    prop = propose(LINEAR, torch.zeros(1, 0, 1), torch.zeros(1, 0), Candidates(torch.linspace(-2, 2, 5)[:, None]),
                   acquisition="ucb", q=4, seed=0)
    assert len(set(prop.x[0, :, 0].tolist())) == 4


def test_the_refinement_finds_the_maximum_between_candidates():
    box = Box([-1.0, -1.0], [1.0, 1.0])
    target = torch.tensor([0.3712, -0.6180])
    obj = lambda x: -((x - target) ** 2).sum(-1)  # noqa: E731  [*B, K, D] -> [*B, K]
    points = box.sobol(16, seed=0)[None]  # [1, 16, 2]: spacing ~0.5
    x, v = _maximize(obj, points, box, num_starts=2, refine_steps=200, chunk=100, generator=torch.Generator())
    assert torch.allclose(x[0], target, atol=1e-3) and float(v) > -1e-6
    # without gradients: the derivative-free local search gets there too, less closely
    def no_grad_obj(p):
        with torch.no_grad():
            return obj(p)
    x, _ = _maximize(no_grad_obj, points, box, num_starts=2, refine_steps=60, chunk=100,
                     generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x[0], target, atol=2e-2)


def test_numpy_float64_observations_meet_a_float32_model(sinusoid_learner):
    p = suggest(sinusoid_learner, np.array([[0.5], [1.0]]), np.array([0.1, 0.3]), Box(-5.0, 5.0), acquisition="ei",
                num_samples=16, num_candidates=16, refine_steps=2, seed=0)
    assert p.x.dtype == torch.float32 and p.x.shape == (1, 1)


def test_suggest_is_propose_for_one_task():
    p = suggest(LINEAR, [[0.1], [1.5]], [0.2, 0.9], Box(-2.0, 2.0), acquisition="ucb", q=2, seed=0)
    assert p.x.shape == (2, 1) and p.score.shape == (2,) and p.predicted_mean.shape == (2,)
    empty = suggest(LINEAR, torch.zeros(0, 1), [], Box(-2.0, 2.0), seed=0)
    assert empty.x.shape == (1, 1)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"space": Box([-1.0, -1.0], [1.0, 1.0])}, ValueError, r"x_observed has 1 input dimension\(s\) but the search space has 2"),
    ({"space": torch.zeros(0, 1)}, ValueError, "the candidate set is empty"),
    ({"space": Box(-1.0, 1.0)}, ValueError, r"x_observed: point \[1.5\] at task 0, point 1 is outside the box"),
    ({"q": 0}, ValueError, "q must be an int >= 1; got 0"),
    ({"y": [[0.0, float("nan")]]}, ValueError, r"y_observed: non-finite value \[nan\] at task 0, point 1"),
    ({"x": [[[0.0], [float("nan")]]]}, ValueError, r"x_observed: non-finite value \[nan\] at task 0, point 1"),
    ({"acquisition": "thompson"}, ValueError, r"acquisition must be one of \('ts', 'ei', 'ucb', 'pi', 'greedy'\)"),
    ({"target": "z"}, ValueError, "target must be one of"),
    ({"y": [[0.0, 1.0, 2.0]]}, ValueError, "y_observed must have shape"),
    ({"space": None}, ValueError, "space: give a Box"),
    ({"model": object()}, TypeError, "model must be a fitted learner, a task family with an oracle or a Surrogate"),
])
def test_bad_input_is_an_error_naming_the_argument(kwargs, error, match):
    args = {"model": LINEAR, "x": [[[0.0], [1.5]]], "y": [[0.0, 1.0]], "space": Box(-2.0, 2.0)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        propose(args.pop("model"), args.pop("x"), args.pop("y"), args.pop("space"), **args)


def test_a_space_that_differs_from_the_models_inputs_is_refused():
    learner = bm.BayesLearner(bm.models.HierarchicalLinearRegression(x_dim=2), conjugate=True)
    with pytest.raises(ValueError, match=r"the search space has 1 dimension\(s\) but the model's inputs have 2"):
        propose(learner, torch.zeros(1, 0, 1), torch.zeros(1, 0), Box(-1.0, 1.0))


@pytest.mark.parametrize("low, high, match", [
    (1.0, 1.0, "high must be > low in every coordinate; coordinate 0 has low=1.0, high=1.0"),
    ([0.0, 0.0], [1.0], "low and high must have the same shape"),
    (0.0, math.inf, "corners must be finite"),
])
def test_a_bad_box_is_refused(low, high, match):
    with pytest.raises(ValueError, match=match):
        Box(low, high)
