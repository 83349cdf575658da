"""The model as written: a user's Pyro program sees the user's data, in the user's units (DESIGN.md, principle 1)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

import bayesmeta as bm
from bayesmeta.models import DataScaling


class Recorder(PyroModule):
    """A random-intercept model in plain Pyro that records every x and y its program is called with."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.tensor(0.0))
        self.log_tau = nn.Parameter(torch.tensor(0.0))
        self.log_sigma = nn.Parameter(torch.tensor(0.0))
        self.x_dim, self.y_dim, self.config = 1, 1, {}
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, y=None, mask=None):
        self.seen.append((x.detach().clone(), None if y is None else y.detach().clone()))
        t, n = x.shape[:2]
        with pyro.plate("tasks", t, dim=-2):
            b = pyro.sample("b", dist.Normal(self.loc, self.log_tau.exp()))  # [..., T, 1]
            with pyro.plate("points", n, dim=-1):
                d = dist.Normal(b + 0.01 * x[..., 0], self.log_sigma.exp())
                return pyro.sample("y", d.mask(mask) if mask is not None else d, obs=y)


def _pool(num_tasks=12, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 1000 + 50 * torch.randn(num_tasks, n, 1, generator=g)  # inputs near 1000
    y = 300 + 40 * torch.randn(num_tasks, 1, 1, generator=g) + 5 * torch.randn(num_tasks, n, 1, generator=g)
    return bm.TaskBatch(x, y, torch.ones(num_tasks, n, dtype=torch.bool))


def _seen_values(model) -> set[float]:
    return {float(v) for x, y in model.seen for v in (x.flatten().tolist() + ([] if y is None else y.flatten().tolist()))}


def test_a_plain_pyro_model_receives_the_users_tensors_unchanged_in_fit_adapt_and_predict():
    pool = _pool()
    data_values = {float(v) for v in torch.cat([pool.x_support.flatten(), pool.y_support.flatten()]).tolist()}
    model = Recorder()
    learner = bm.BayesLearner(model)
    learner.fit(pool, steps=3, progress=False, validation=False, tasks_per_step=4)
    fit_calls = [(x, y) for x, y in model.seen if y is not None and x.shape[0] == 4]
    assert fit_calls, "the model was called on the training tasks"
    for x, _ in fit_calls:  # every training call: the user's inputs (no shift, no division); masked padding is 1
        assert {float(v) for v in x.flatten().tolist()} - {0.0, 1.0} <= data_values, "the model saw inputs that are not the user's"
    # the real-data terms observe the user's outcomes as given (the sleep phase's simulated outcomes aside)
    real = [y for _, y in fit_calls if {float(v) for v in y.flatten().tolist()} - {0.0} <= data_values]
    assert len(real) >= 3 and all(float(y.max()) > 200 for y in real)
    model.seen.clear()
    post = learner.adapt(pool[:3])
    xq = pool.x_support[:3] + 1.0
    post.predict(xq, num_samples=20, seed=0)  # importance-corrected: the log joint of the support
    seen = _seen_values(model)
    assert {float(v) for v in xq.flatten().tolist()} <= seen  # the query inputs as given
    assert {float(v) for v in pool[:3].y_support.flatten().tolist()} <= seen  # the support outcomes as given
    learned = float(model.loc.detach())
    assert not math.isnan(learned)


def test_shipped_glm_learns_coefficients_in_the_units_of_the_columns():
    # Pooled logistic data with a slope of 0.02 per unit of x (x in the hundreds): the learned prior
    # mean of the slope is in the same units (per unit of x), not per standard deviation of x.
    g = torch.Generator().manual_seed(1)
    t, n = 60, 20
    x = 500 + 100 * torch.randn(t, n, 1, generator=g)
    b = -10 + 0.3 * torch.randn(t, 1, generator=g)
    p = torch.sigmoid(b + 0.02 * x[..., 0])
    y = torch.bernoulli(p, generator=g)[..., None]
    pool = bm.TaskBatch(x, y, torch.ones(t, n, dtype=torch.bool))
    torch.manual_seed(0)
    model = bm.models.HierarchicalLogisticRegression(x_dim=1)
    bm.BayesLearner(model).fit(pool, steps=2000, progress=False, validation=False)
    assert model.scaling.fitted and not model.scaling.outputs
    prior = model.prior_distribution()
    slope, intercept = (float(v) for v in prior.loc.detach())
    assert abs(slope - 0.02) < 0.003, slope  # per unit of x: a standardised slope would be ~2
    assert abs(intercept - (-10)) < 1.5, intercept


def test_glm_preconditioning_is_an_exact_reparameterisation():
    # The same coefficients v give the same likelihood whether the scaling is fitted or not,
    # once w = A v + b: the model's density in the data's units does not depend on the scaling.
    torch.manual_seed(0)
    m = bm.models.HierarchicalRegression(x_dim=2, likelihood="gaussian")
    x = torch.randn(3, 5, 2, dtype=torch.float64) * torch.tensor([10.0, 0.1], dtype=torch.float64) + 7
    y = torch.randn(3, 5, 1, dtype=torch.float64) * 30 + 100
    m = m.double()
    prior_before = m.prior_distribution()
    m.scaling.fit_(x, y)
    a, b = m.preconditioner()
    prior_after = m.prior_distribution()
    assert torch.allclose(prior_after.loc, a @ prior_before.loc + b)
    assert torch.allclose(prior_after.covariance_matrix, a @ prior_before.covariance_matrix @ a.T)
    # a slope of 1 per sd of x_0 in standardised units is s_y / s_x0 per unit in the data's units
    assert torch.isclose(a[0, 0], m.scaling.y_scale[0] / m.scaling.x_scale[0])


def test_a_constant_column_is_shifted_not_divided():
    s = DataScaling(2, 1)
    x = torch.stack([torch.arange(6.0), torch.full((6,), 3.0)], -1)[None]  # column 1 constant
    s.fit_(x, torch.arange(6.0)[None, :, None])
    assert float(s.x_scale[1]) == 1.0 and float(s.x_shift[1]) == 3.0
    assert torch.isfinite(s.x(x)).all()


def test_a_model_that_rescales_non_real_outputs_is_refused():
    model = bm.models.HierarchicalPoissonRegression(x_dim=1)
    model.scaling = DataScaling(1, 1, outputs=True)  # counts must be modelled as they are
    with pytest.raises(ValueError, match="rescales the outputs.*not real-valued"):
        bm.BayesLearner(model)


def _v1_file(learner, std: bm.tasks.Standardization, path):
    """What an earlier version saved: format 1, no scaling buffers, the learner-level standardisation beside."""
    state = torch.load(learner.save(path), weights_only=True)
    state["format"] = "bayesmeta.BayesLearner/1"
    state["model_state"] = {k: v for k, v in state["model_state"].items() if "scaling" not in k}
    if state["guide_state"] is not None:
        state["guide_state"] = {k: v for k, v in state["guide_state"].items() if "scaling" not in k}
    state["standardization"] = std.to_dict()
    torch.save(state, path)
    return path


def test_an_old_learner_file_with_standardisation_loads_with_the_same_predictions(tmp_path):
    # An earlier version trained the model on standardised data and mapped predictions back: the
    # converted file must predict exactly that.
    pool = _pool(seed=2)
    std = bm.tasks.Standardization.from_batch(pool)
    torch.manual_seed(0)
    old = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, y_dim=1, latent_dim=2, hidden=(16,)))
    old.fit(std.batch(pool), steps=20, progress=False, validation=False)  # what the old learner did inside
    for scaling in (old.model.scaling, old.guide.input_scaling):  # the old learner had no scalings: identity
        scaling.set_([0.0], [1.0], [0.0], [1.0])
        scaling.is_fitted.fill_(False)
    xq = pool.x_support[:2]
    expected = old.adapt(std.x(pool.x_support[:2]), std.y(pool.y_support[:2])).predict(std.x(xq), method="guide", seed=0)
    path = _v1_file(old, std, tmp_path / "old.pt")
    new = bm.BayesLearner.load(path)
    assert new.model.scaling.fitted and new.guide.input_scaling.fitted
    got = new.adapt(pool.x_support[:2], pool.y_support[:2]).predict(xq, method="guide", seed=0)
    y_std, y_mean = std.y_std[0], std.y_mean[0]
    assert torch.allclose(got.mean, expected.mean * y_std + y_mean, rtol=1e-5, atol=1e-3)
    assert torch.allclose(got.std, expected.std * y_std, rtol=1e-4)


def test_an_old_file_of_a_model_without_its_own_scaling_is_refused(tmp_path):
    pool = _pool(seed=3)
    learner = bm.BayesLearner(Recorder())
    learner.fit(pool, steps=2, progress=False, validation=False)
    path = _v1_file(learner, bm.tasks.Standardization.from_batch(pool), tmp_path / "old.pt")
    with pytest.raises(ValueError, match="standardised data.*no scaling of its own.*Refit"):
        bm.BayesLearner.load(path)


def test_config_key_standardize_is_refused_in_a_users_config_and_dropped_from_a_runs_own():
    from bayesmeta.runs.config import config_from_dict

    with pytest.raises(ValueError, match="data.standardize was removed"):
        config_from_dict({"data": {"standardize": True}})
    cfg = config_from_dict({"data": {"standardize": True, "val_fraction": 0.3}}, run_file=True)
    assert cfg.data.val_fraction == 0.3


def test_prior_and_simulated_draws_of_real_sites_are_not_clipped_in_the_data_units():
    # An intercept prior near 300 (a reaction time): prior draws and simulated tasks (sleep phase, SBC) keep it
    # (they were once clipped at +-87.7, the float32 exp bound meant for support edges)
    model = bm.models.HierarchicalLinearRegression(x_dim=1)
    with torch.no_grad():
        model._set_prior(torch.tensor([10.0, 300.0]), torch.diag(torch.tensor([2.0, 20.0])), torch.tensor(5.0))
    program = bm.inference.program.program_of(model)
    x = torch.zeros(400, 3, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        u = program.sample_prior(x, 2)  # [2, 400, 2]
    assert abs(float(u[..., 1].mean()) - 300) < 5 and float(u[..., 1].std()) > 10
    u_joint, y = program.sample_joint(x)
    assert abs(float(u_joint[:, 1].mean()) - 300) < 5 and abs(float(y.mean()) - 300) < 5


def test_the_predictive_sd_of_outcomes_far_from_zero_keeps_its_precision_in_float32():
    # a reaction time near 5000 ms with sd 1: the variance as E[y^2] - E[y]^2 cancelled to 0 in float32
    from bayesmeta.predictive import GaussianMixture

    loc = torch.full((4, 2, 1, 1), 5000.0) + torch.tensor([0.0, 0.5, -0.5, 0.0])[:, None, None, None]  # [S, T, N, E]
    pred = GaussianMixture(loc, torch.ones_like(loc), None)
    expected = math.sqrt(1 + 0.125)  # within-component 1, between-component variance 0.125
    assert torch.allclose(pred.std, torch.full_like(pred.std, expected), rtol=1e-5)
