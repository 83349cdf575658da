"""A LogNormal task prior whose parameters are global sites: the conditional prior p(theta | g) is a Normal in
the task site's unconstrained coordinate (the log), so the amortized guide is whitened by it (an empty support
set gives the conditional prior, whatever the global draw), as for a Normal task prior."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import bayesmeta as bm
from bayesmeta.inference.guides import AmortizedGuide
from bayesmeta.inference.program import program_of


class Clearance(PyroModule):
    """Per-subject clearance around a population value: cl_i ~ LogNormal(log_cl, omega), y = dose / cl_i."""

    x_dim = 1

    def __init__(self):
        super().__init__()
        self.config = {}

    def forward(self, x, y=None, mask=None):
        log_cl = pyro.sample("log_cl", dist.Normal(0.0, 1.0))
        omega = pyro.sample("omega", dist.HalfNormal(0.5))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("tasks", x.shape[0], dim=-2):
            cl = pyro.sample("cl", dist.LogNormal(log_cl, omega))  # [..., T, 1]
            with pyro.plate("points", x.shape[1], dim=-1):
                return pyro.sample("y", dist.Normal(x[..., 0] / cl, sigma).mask(mask), obs=y)


def test_the_conditional_prior_of_a_lognormal_site_is_its_log_normal():
    torch.manual_seed(0)
    program = program_of(Clearance())
    g = program.sample_globals(3)  # three global draws, flat unconstrained [3, G]
    loc, scale = program.conditional_gaussian(g[:, None])  # [3, 1, P=1]
    x = torch.ones(1, 2, 1)
    for i in range(3):
        u = program.sample_prior(x, 20000, g=g[i].expand(20000, 1, -1))[:, 0, 0]  # log cl given global draw i
        # 20000 draws: the mean within 4 standard errors, the sd within 3 %
        assert abs(float(u.mean() - loc[i, 0, 0])) < 4 * float(scale[i, 0, 0]) / 20000**0.5
        assert abs(float(u.std() / scale[i, 0, 0]) - 1) < 0.03


def test_the_guide_is_whitened_by_it_and_an_empty_set_gives_the_conditional_prior():
    torch.manual_seed(0)
    model = Clearance()
    guide = AmortizedGuide(model, "diagonal")
    assert guide.gaussian_prior  # no fixed empty-set Gaussian that ignores the global draw
    g = program_of(model).sample_globals(4)[:, None]  # [4, 1, G]
    loc, scale, _ = guide.whitening(g=g)
    want_loc, want_scale = program_of(model).conditional_gaussian(g)
    assert torch.allclose(loc, want_loc) and torch.allclose(scale, want_scale)
    assert bm.BayesLearner(model).program.has_globals


class OneCompartment(PyroModule):
    """A mechanistic model in physical units: c(t) = dose / V * exp(-CL_i / V * t) after an IV bolus (mg/L, h),
    per-subject clearance CL_i ~ LogNormal(log_cl, omega) with hyperpriors on log_cl, omega and the assay sd."""

    x_dim = 1

    def __init__(self, dose: float = 100.0, volume: float = 10.0):
        super().__init__()
        self.dose, self.volume = dose, volume
        self.config = {"dose": dose, "volume": volume}

    def forward(self, x, y=None, mask=None):
        log_cl = pyro.sample("log_cl", dist.Normal(0.69, 1.0))  # log L/h
        omega = pyro.sample("omega", dist.HalfNormal(0.5))
        sigma = pyro.sample("sigma", dist.HalfNormal(0.5))  # mg/L
        with pyro.plate("tasks", x.shape[0], dim=-2):
            cl = pyro.sample("cl", dist.LogNormal(log_cl, omega))
            with pyro.plate("points", x.shape[1], dim=-1):
                conc = self.dose / self.volume * torch.exp(-cl / self.volume * x[..., 0])
                return pyro.sample("y", dist.Normal(conc, sigma).mask(mask), obs=y)


@pytest.mark.slow
def test_a_pharmacokinetic_model_with_hyperpriors_matches_nuts():
    """16 subjects x 6 samples: the hyperposterior of log_cl, omega and sigma against NUTS on the whole model
    (measured: |z| <= 0.08, sd ratios 0.96-1.03; the bar leaves Monte-Carlo room: 0.25 NUTS sd, 20 %)."""
    torch.manual_seed(0)
    times = torch.tensor([0.5, 1.0, 2.0, 4.0, 6.0, 8.0])
    cl = torch.exp(0.69 + 0.3 * torch.randn(16, 1))
    y = 10.0 * torch.exp(-cl / 10.0 * times) + 0.3 * torch.randn(16, 6)
    pool = bm.TaskBatch.from_arrays([times[:, None]] * 16, [row[:, None] for row in y])
    learner = bm.BayesLearner(OneCompartment()).fit(pool, progress=False)
    rows = bm.diagnostics.compare_global_posteriors(learner, pool, num_samples=500, num_warmup=500, num_chains=2)
    assert {r["site"] for r in rows} == {"log_cl", "omega", "sigma"}
    for r in rows:
        assert abs(r["z"]) < 0.25 and abs(r["sd_ratio"] - 1) < 0.2, r
