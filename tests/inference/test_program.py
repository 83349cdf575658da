"""The model's Pyro program is the one source of truth: traced densities against hand-written ones, and
the structure errors a user meets."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

import bayesmeta as bm
from bayesmeta.inference.program import ModelError, ModelProgram


def _data(t=4, n=6, d=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, n, d, generator=g)
    mask = torch.rand(t, n, generator=g) > 0.3
    return x, mask


@pytest.mark.parametrize("model", [
    bm.models.LatentCodeRegression(x_dim=1, latent_dim=3, hidden=(8,)),
    bm.models.HierarchicalLinearRegression(x_dim=1),
    bm.models.BayesianHeadRegression(x_dim=1, num_features=3, hidden=(8,)),
])
def test_traced_log_joint_equals_the_shipped_models_own_density(model):
    x, mask = _data()
    y = torch.randn(4, 6, 1)
    prog = ModelProgram(model)
    u = torch.randn(5, 4, prog.param_dim)
    prior, lik = prog._traced_terms(x, y, mask, u, observe=True)  # the trace, not the direct path
    assert torch.allclose(prior + lik, model.log_joint(x, y, mask, u), atol=1e-4)


def _hand_glm(model, x, y, mask, w):
    """log N(w; mu, LL^T) + sum_j mask log p(y_j | eta_j) written out with torch.distributions."""
    td = torch.distributions
    prior = td.MultivariateNormal(model.prior.loc, scale_tril=model.prior.scale_tril).log_prob(w)  # [n, T]
    feats = x[..., :1]
    eta = w[..., None, 0] * feats[..., 0] + w[..., None, 1]  # [n, T, N]
    f = torch.nn.functional.softplus
    kind = model.likelihood
    if kind == "gaussian":
        d = td.Normal(eta, f(model.raw_noise) + 1e-6)
    elif kind == "student-t":
        d = td.StudentT(f(model.raw_df) + 0.5, eta, f(model.raw_noise) + 1e-6)
    elif kind == "bernoulli":
        d = td.Bernoulli(logits=eta)
    elif kind == "binomial":
        d = td.Binomial(total_count=x[..., 1], logits=eta)
    elif kind == "poisson":
        d = td.Poisson((eta + x[..., 1]).exp())
    else:
        r = f(model.raw_concentration) + 1e-6
        mean = (eta + x[..., 1]).exp()
        d = td.NegativeBinomial(total_count=r, probs=mean / (mean + r))
    return prior + (d.log_prob(y[..., 0]) * mask).sum(-1)


@pytest.mark.parametrize("likelihood", bm.models.LIKELIHOODS)
def test_traced_log_joint_of_every_glm_likelihood_equals_the_hand_density(likelihood):
    offset = likelihood in ("poisson", "negative-binomial")
    model = bm.models.HierarchicalRegression(x_dim=1, likelihood=likelihood, offset=offset)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, mask = _data()
    g = torch.Generator().manual_seed(1)
    extra = torch.randint(1, 6, (4, 6, 1), generator=g).float() if likelihood == "binomial" else 0.3 * torch.randn(4, 6, 1)
    x = torch.cat([x, extra], -1) if model.x_dim == 2 else x
    y = {"bernoulli": torch.randint(0, 2, (4, 6, 1), generator=g).float(),
         "binomial": torch.minimum(torch.randint(0, 6, (4, 6, 1), generator=g).float(), extra),
         "poisson": torch.randint(0, 9, (4, 6, 1), generator=g).float(),
         "negative-binomial": torch.randint(0, 9, (4, 6, 1), generator=g).float()}.get(likelihood, torch.randn(4, 6, 1))
    prog = ModelProgram(model)
    w = torch.randn(3, 4, 2)
    assert torch.allclose(prog.log_joint(x, y, mask, w), _hand_glm(model, x, y, mask, w), atol=1e-4)


class GammaPoisson(PyroModule):
    """rate_i ~ Gamma(a, b); y_ij ~ Poisson(rate_i)."""

    x_dim = 1

    def __init__(self, a=2.0, b=0.5):
        super().__init__()
        self.log_a, self.log_b = nn.Parameter(torch.tensor(a).log()), nn.Parameter(torch.tensor(b).log())

    def forward(self, x, y=None, mask=None):
        t, n = x.shape[:2]
        with pyro.plate("tasks", t, dim=-2):
            rate = pyro.sample("rate", dist.Gamma(self.log_a.exp(), self.log_b.exp()))  # [..., T, 1]
            with pyro.plate("points", n, dim=-1):
                return pyro.sample("y", dist.Poisson(rate.expand(*rate.shape[:-1], n)).mask(mask), obs=y)


def test_positive_site_log_joint_includes_the_log_jacobian():
    model = GammaPoisson()
    prog = ModelProgram(model)
    assert [s.name for s in prog.sites] == ["rate"] and prog.coordinate_names() == ["log_rate"]
    assert prog.observation.discrete and prog.gaussian_prior() is None
    x, mask = _data()
    y = torch.randint(0, 6, (4, 6, 1)).float()
    u = torch.randn(7, 4, 1)
    rate = u[..., 0].exp()
    hand = (torch.distributions.Gamma(2.0, 0.5).log_prob(rate) + u[..., 0]
            + (torch.distributions.Poisson(rate[..., None]).log_prob(y[..., 0]) * mask).sum(-1))
    assert torch.allclose(prog.log_joint(x, y, mask, u), hand, atol=1e-4)
    assert torch.allclose(prog.split(u)["rate"], rate)
    assert torch.allclose(prog.flatten(prog.split(u)), u, atol=1e-6)


def _program(body):
    class M(PyroModule):
        x_dim = 1

        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(()))

        def forward(self, x, y=None, mask=None):
            return body(self, x, y, mask)
    return M()


def _bad_models():
    def only_a_global(self, x, y, mask):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("tasks", x.shape[0], dim=-2), pyro.plate("points", x.shape[1], dim=-1):
            return pyro.sample("y", dist.Normal(mu, 1.0).mask(mask), obs=y)

    def discrete_global(self, x, y, mask):
        k = pyro.sample("k", dist.Bernoulli(0.5))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(k, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(w, 1.0).mask(mask), obs=y)

    def global_in_points_plate(self, x, y, mask):
        points = pyro.plate("points", x.shape[1], dim=-1)
        with points:
            s = pyro.sample("s", dist.HalfNormal(1.0))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(self.loc, 1.0))
            with points:
                return pyro.sample("y", dist.Normal(w, s).mask(mask), obs=y)

    def global_after_a_task_site(self, x, y, mask):
        tasks = pyro.plate("tasks", x.shape[0], dim=-2)
        with tasks:
            w = pyro.sample("w", dist.Normal(self.loc, 1.0))
        s = pyro.sample("s", dist.LogNormal(w, 1.0))  # its prior depends on a task site
        with tasks, pyro.plate("points", x.shape[1], dim=-1):
            return pyro.sample("y", dist.Normal(w, s).mask(mask), obs=y)

    def unused_global(self, x, y, mask):
        pyro.sample("tau", dist.HalfNormal(1.0))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(self.loc, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(w, 1.0).mask(mask), obs=y)

    def unobserved(self, x, y, mask):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(self.loc, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(w, 1.0).mask(mask))  # obs=y forgotten

    def no_observation(self, x, y, mask):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            pyro.sample("w", dist.Normal(self.loc, 1.0))

    def discrete_latent(self, x, y, mask):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            k = pyro.sample("k", dist.Bernoulli(0.5))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(k, 1.0).mask(mask), obs=y)

    def ignores_mask(self, x, y, mask):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(self.loc, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(w * x[..., 0], 1.0), obs=y)

    def fixed_plate(self, x, y, mask):
        with pyro.plate("tasks", 10, dim=-2):
            pyro.sample("w", dist.Normal(self.loc, 1.0))

    def per_point_latent(self, x, y, mask):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(self.loc, 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                z = pyro.sample("z", dist.Normal(w, 1.0))
                return pyro.sample("y", dist.Normal(z, 1.0).mask(mask), obs=y)

    def undeclared_event(self, x, y, mask):
        with pyro.plate("tasks", x.shape[0], dim=-2):
            w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[0], 3), 1.0))
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(w.sum(-1, keepdim=True), 1.0).mask(mask), obs=y)

    return [(only_a_global, "no task-level latent site"), (discrete_global, "global site 'k' is discrete"),
            (global_in_points_plate, "'s' is inside the points plate but not the tasks plate"),
            (global_after_a_task_site, "global site 's' has batch shape"),
            (unused_global, "global site 'tau' influences nothing"), (unobserved, "'y' is not observed"),
            (no_observation, "no observation site"),
            (discrete_latent, "'k' is discrete"), (ignores_mask, "ignores mask"),
            (fixed_plate, "tasks plate has size 10"), (per_point_latent, "inside the points plate"),
            (undeclared_event, "'w' has batch shape")]


@pytest.mark.parametrize(("body", "message"), _bad_models(), ids=lambda v: getattr(v, "__name__", ""))
def test_programs_that_break_a_rule_get_an_error_naming_the_site(body, message):
    with pytest.raises(ModelError, match=message):
        bm.BayesLearner(_program(body))


def test_a_model_without_x_dim_needs_it_given():
    model = GammaPoisson()
    del GammaPoisson.x_dim
    try:
        with pytest.raises(ModelError, match="x_dim"):
            bm.BayesLearner(model)
        assert bm.BayesLearner(model, x_dim=1).x_dim == 1
    finally:
        GammaPoisson.x_dim = 1


@pytest.mark.parametrize(("model", "y", "x_extra", "message"), [
    (bm.models.HierarchicalPoissonRegression(x_dim=1), [2.0, -1.0], None, r"task 0, point 1: value -1 is outside"),
    (bm.models.HierarchicalPoissonRegression(x_dim=1), [2.5, 1.0], None, r"task 0, point 0: value 2.5 is outside"),
    (bm.models.HierarchicalLogisticRegression(x_dim=1), [1.0, 2.0], None, r"task 0, point 1: value 2 is outside .*0 or 1"),
    (bm.models.HierarchicalLogisticRegression(x_dim=1, trials=True), [3.0, 5.0], [4.0, 4.0],
     r"task 0, point 1: value 5 is outside .*\(Binomial: an integer in \[0, 4\]\)"),
])
def test_outcomes_outside_the_likelihoods_support_are_refused(model, y, x_extra, message):
    learner = bm.BayesLearner(model)
    x = torch.zeros(1, 2, 1)
    if x_extra is not None:
        x = torch.cat([x, torch.tensor(x_extra).reshape(1, 2, 1)], -1)
    with pytest.raises(ValueError, match=message):
        learner.adapt(x, torch.tensor(y).reshape(1, 2, 1))
    masked = torch.tensor([[True, False]]) if "point 1" in message else torch.tensor([[False, True]])
    learner.adapt(x, torch.tensor(y).reshape(1, 2, 1), masked)  # the bad value is padding: fine


def test_categorical_labels_outside_the_classes_are_refused():
    class Softmax(PyroModule):
        x_dim = 1

        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(3))

        def forward(self, x, y=None, mask=None):
            with pyro.plate("tasks", x.shape[0], dim=-2):
                b = pyro.sample("b", dist.Normal(self.loc, 1.0).to_event(1))  # [..., T, 1, 3]
                with pyro.plate("points", x.shape[1], dim=-1):
                    logits = b + 0 * x  # [..., T, N, 3]
                    return pyro.sample("y", dist.Categorical(logits=logits).mask(mask), obs=y)

    learner = bm.BayesLearner(Softmax())
    with pytest.raises(ValueError, match=r"task 0, point 1: value 3 is outside .*Categorical: an integer in \[0, 2\]"):
        learner.adapt(torch.zeros(1, 2, 1), torch.tensor([[[0.0], [3.0]]]))
    pred = learner.adapt(torch.zeros(1, 2, 1), torch.tensor([[[0.0], [2.0]]])).predict(torch.zeros(1, 4, 1))
    assert pred.probs.shape == (1, 4, 3) and torch.allclose(pred.probs.sum(-1), torch.ones(1, 4))


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical", "poisson"])
def test_latent_code_model_traced_log_joint_equals_the_hand_density(likelihood):
    model = bm.models.LatentCodeModel(x_dim=1, latent_dim=2, hidden=(8,), likelihood=likelihood, num_classes=3)
    x, mask = _data()
    y = torch.randint(0, 2 if likelihood == "bernoulli" else 3, (4, 6, 1)).float()
    z = torch.randn(5, 4, 2)
    td = torch.distributions
    scale = torch.nn.functional.softplus(model.raw_scale) + 1e-4
    prior = td.Normal(model.loc, scale).log_prob(z).sum(-1)  # [n, T]
    out = model.decoder(torch.cat([x.expand(5, -1, -1, -1), z[:, :, None].expand(-1, -1, 6, -1)], -1))
    d = {"bernoulli": lambda: td.Bernoulli(logits=out[..., 0]), "categorical": lambda: td.Categorical(logits=out),
         "poisson": lambda: td.Poisson(out[..., 0].exp())}[likelihood]()
    hand = prior + (d.log_prob(y[..., 0]) * mask).sum(-1)
    assert torch.allclose(ModelProgram(model).log_joint(x, y, mask, z), hand, atol=1e-4)


def test_a_deep_copy_of_a_learner_keeps_its_gaussian_prior_whitening():
    import copy

    import bayesmeta as bm

    learner = bm.BayesLearner(bm.models.LatentCodeRegression(x_dim=1, latent_dim=2, hidden=(8,)))
    other = copy.deepcopy(learner)  # constraints are copied too: "real" is a type, not one object
    assert other.guide.program.gaussian_prior() is not None
    test = bm.tasks.Sinusoid().sample(3, shots=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(other.adapt(test).distribution().mean, learner.adapt(test).distribution().mean)
