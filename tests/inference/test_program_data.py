"""Data checked against a model's program (bayesmeta.inference.program.data): one line naming the value and its
position, never a whole tensor, and the structure errors met at probe time."""

import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

import bayesmeta as bm
from bayesmeta.inference.program import ModelError


class Binomial(PyroModule):
    """A user's Binomial model reading each point's number of trials from x[..., 1] (in its own units)."""

    x_dim = 2

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))

    def forward(self, x, y=None, mask=None):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(self.loc, 1.0).to_event(1))  # [..., T, 1, 2]
            logits = w[..., 0] * x[..., 0] + w[..., 1]  # [..., T, N]
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Binomial(x[..., 1], logits=logits).mask(mask), obs=y)


class Counts(PyroModule):
    x_dim = 1

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(()))

    def forward(self, x, y=None, mask=None):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            b = pyro.sample("b", dist.Normal(self.loc, 1.0))  # [..., T, 1]
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Poisson((b + 0 * x[..., 0]).exp()).mask(mask), obs=y)


def _binomial_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 2, generator=g)
    x[..., 1] = torch.randint(3, 10, (6, 5), generator=g).float()  # trials
    y = torch.distributions.Binomial(x[..., 1], probs=0.4).sample()[..., None]  # [6, 5, 1]
    return x, y


def _no_tensor(message: str) -> None:
    assert "tensor(" not in message and "\n" not in message, message


@pytest.mark.parametrize(("trials", "shown"), [(7.5, "total_count=7.5"), (-3.0, "total_count=-3")])
def test_trials_that_are_no_whole_number_are_named_at_fit_and_adapt(trials, shown):
    x, y = _binomial_data()
    x[2, 3, 1], y[2, 3, 0] = trials, 0.0
    learner = bm.BayesLearner(Binomial())
    with pytest.raises(ValueError, match=rf"fit: training pool y_support: task 2, point 3: the observation site 'y' "
                                         rf"\(Binomial\) gets {shown} there, which is not an integer >= 0") as err:
        learner.fit(bm.TaskBatch.from_arrays(list(x), list(y)), steps=2, progress=False)
    _no_tensor(str(err.value))
    with pytest.raises(ValueError, match=rf"y_support: task 2, point 3: .* gets {shown} there") as err:
        learner.adapt(x, y)
    _no_tensor(str(err.value))


def test_successes_above_a_points_trials_name_that_points_trials_only():
    x, y = _binomial_data()
    y[2, 3, 0] = x[2, 3, 1] + 2
    learner = bm.BayesLearner(Binomial())
    with pytest.raises(ValueError) as err:
        learner.adapt(x, y)
    trials = int(x[2, 3, 1])
    assert str(err.value) == (f"y_support: task 2, point 3: value {trials + 2} is outside the support of the "
                              f"observation site 'y' (Binomial: an integer in [0, {trials}])")


def test_counts_beyond_the_whole_numbers_float32_holds_are_refused():
    x, y = torch.zeros(2, 3, 1), torch.ones(2, 3, 1)
    learner = bm.BayesLearner(Counts())
    y[1, 2, 0] = 2e7
    with pytest.raises(ValueError, match=r"task 1, point 2: value 20000000 is above 2\^24 = 16777216, the largest "
                                         r"count float32 holds exactly .* typo or a missing-value code"):
        learner.adapt(x, y)
    y[1, 2, 0] = 1e30  # beyond what float32 can square: refused before it gets ESS 1 and Pareto-k inf
    with pytest.raises(ValueError, match=r"support y: task 1, point 2: value 1e\+30 is beyond ±1.8e\+19"):
        learner.adapt(x, y)
    y[1, 2, 0] = 1e6  # large, but a whole number float32 holds: fine
    assert learner.adapt(x, y).predict(x, num_samples=50).mean.isfinite().all()


def test_a_delta_site_is_refused_at_probe_time_naming_it():
    class Fixed(PyroModule):
        x_dim = 1

        def __init__(self, where):
            super().__init__()
            self.loc, self.where = nn.Parameter(torch.zeros(2)), where

        def forward(self, x, y=None, mask=None):
            s = pyro.sample("s", dist.Delta(torch.ones(()))) if self.where == "global" else None
            with pyro.plate("tasks", x.shape[0], dim=-2):
                w = pyro.sample("w", (dist.Delta(self.loc) if s is None else dist.Normal(self.loc, s)).to_event(1))
                with pyro.plate("points", x.shape[1], dim=-1):
                    return pyro.sample("y", dist.Normal(w[..., 0] * x[..., 0] + w[..., 1], 1.0).mask(mask), obs=y)

    with pytest.raises(ModelError, match=r"Fixed: task site 'w' has a Delta \(point-mass\) prior: .* module "
                                         r"parameter \(nn.Parameter\) or record it with pyro.deterministic"):
        bm.BayesLearner(Fixed("task"))
    with pytest.raises(ModelError, match=r"Fixed: global site 's' has a Delta \(point-mass\) prior"):
        bm.BayesLearner(Fixed("global"))


def _model(lik, prior=None, x_dim=1):
    """A user's model with a 2-vector task site ``w`` and the given likelihood ``lik(w, x)``."""

    class User(PyroModule):
        def __init__(self):
            super().__init__()
            self.x_dim, self.loc = x_dim, nn.Parameter(torch.zeros(2))

        def forward(self, x, y=None, mask=None):
            with pyro.plate("tasks", x.shape[0], dim=-2):
                w = pyro.sample("w", prior(self.loc) if prior else dist.Normal(self.loc, 1.0).to_event(1))
                with pyro.plate("points", x.shape[1], dim=-1):
                    return pyro.sample("y", lik(w, x).mask(mask), obs=y)

    return User()


@pytest.mark.parametrize(("lik", "message"), [
    (lambda w, x: dist.Normal(w[..., 0] * x[..., 0], -torch.ones(())),
     r"^User: running forward\(x, y=None, mask\) on a probe .* failed: ValueError: Expected parameter scale .* but "
     r"found invalid values$"),
    (lambda w, x: dist.Normal(w[..., 0] * x[..., 0], 1.0 + 0 * x[..., 0]).expand([7]),
     r"^User: running forward"),
])
def test_a_probe_failure_is_one_line_without_torchs_tensor(lik, message):
    with pytest.raises(ModelError, match=message) as err:
        bm.BayesLearner(_model(lik))
    _no_tensor(str(err.value))


def test_a_program_that_fails_for_several_draws_at_once_is_refused_at_probe_time():
    def stacked(w, x):  # 0 * x has no draws dim: torch.stack fails once w carries one (rule 4)
        logits = torch.stack([w[..., 0] * x[..., 0], w[..., 1] + 0 * x[..., 0], 0 * x[..., 0]], -1)
        return dist.Categorical(logits=logits)

    with pytest.raises(ModelError, match=r"^User: forward fails when run for 2 parameter draws at once \(inside a plate "
                                         r"at dim -3, as the library evaluates it\): RuntimeError: stack expects .*; "
                                         r"write arithmetic that broadcasts over leading dims"):
        bm.BayesLearner(_model(stacked))


@pytest.mark.parametrize(("lik", "value", "family", "support"), [
    (lambda w, x: dist.Gamma(2.0, (w[..., 0] * x[..., 0]).exp()), 0.0, "Gamma", "a number >= 0"),
    (lambda w, x: dist.Beta(3.0 + 0 * w[..., 0] * x[..., 0], 2.0), 1.0, "Beta", "a number in [0, 1]"),
])
def test_a_continuous_outcome_on_the_edge_of_its_support_is_refused(lik, value, family, support):
    x, y = torch.rand(3, 4, 1), 0.5 * torch.ones(3, 4, 1)
    y[1, 2, 0] = value
    learner = bm.BayesLearner(_model(lik))
    with pytest.raises(ValueError, match=rf"^y_support: task 1, point 2: value {int(value)} is on the edge of the "
                                         rf"support of the observation site 'y' \({family}: {re.escape(support)}\), where its "
                                         "density is 0 or infinite"):
        learner.adapt(x, y)
    y[1, 2, 0] = 0.25
    assert learner.adapt(x, y).predict(x, num_samples=50).mean.isfinite().all()


def test_an_exponential_outcome_of_zero_is_fine():  # its density at the edge is finite
    learner = bm.BayesLearner(_model(lambda w, x: dist.Exponential((w[..., 0] * x[..., 0]).exp())))
    assert learner.adapt(torch.rand(2, 3, 1), torch.zeros(2, 3, 1)).predict(torch.rand(2, 3, 1)).mean.isfinite().all()


@pytest.mark.parametrize(("lik", "x_bad", "shown"), [
    (lambda w, x: dist.Normal(w[..., 0] * torch.log(x[..., 0]) + w[..., 1], 1.0), -1.0, "loc=nan"),  # log(-1)
    (lambda w, x: dist.Poisson((w[..., 0] * x[..., 0] + w[..., 1] + x[..., 0]).exp()), 500.0, "rate=inf"),  # exp(500)
])
def test_a_parameter_the_data_make_non_finite_is_named_by_task_and_point(lik, x_bad, shown):
    x = torch.rand(4, 5, 1) + 0.5
    x[3, 2, 0] = x_bad
    learner = bm.BayesLearner(_model(lik))
    pool = bm.TaskBatch.from_arrays(list(x), list(torch.ones(4, 5, 1)))
    with pytest.raises(ValueError, match=rf"^fit: training pool y_support: task 3, point 2: the observation site 'y' "
                                         rf"\(\w+\) gets {shown} there, which is not finite; it is computed from x"):
        learner.fit(pool, steps=2, progress=False)


def test_a_formula_singular_at_one_draw_only_is_no_data_problem():
    # 1 / w[0] is infinite where the draw is 0 (the origin of the site's coordinates), finite at a prior draw
    learner = bm.BayesLearner(_model(lambda w, x: dist.Normal(x[..., 0] / w[..., 0], 1.0)))
    learner.adapt(torch.rand(2, 3, 1), torch.rand(2, 3, 1))  # no error
