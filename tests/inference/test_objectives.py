import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesmeta as bm
from bayesmeta.inference import AmortizedGuide, TaskImportanceELBO, make_objective


def _exact_guide(model):
    """A Pyro guide that samples the exact conjugate posterior of each task."""
    def guide(x, y, mask=None, *, num_tasks=None):
        post = model.exact_posterior(x, y, mask)
        t = x.shape[0]
        with pyro.plate("tasks", num_tasks or t, subsample=torch.arange(t), dim=-2):
            pyro.sample("w", dist.MultivariateNormal(post.loc[:, None], scale_tril=post.scale_tril[:, None]))
    return guide


@pytest.mark.parametrize(("name", "particles", "tol"), [("iwae", 4, 1e-6), ("elbo", 4000, 0.05)])
def test_bounds_equal_log_marginal_under_the_exact_posterior(name, particles, tol):
    """With q = the exact posterior every importance weight is p(D): the bound is log p(D).

    The mean-field ELBO uses an analytic KL plus a Monte-Carlo expected log-likelihood, so it
    only matches within Monte-Carlo error (sd ~0.01 with 4000 particles here).
    """
    torch.set_default_dtype(torch.float64)
    try:
        model = bm.models.HierarchicalLinearRegression(1)
        fam = bm.tasks.HierarchicalLinear(1, noise_std=0.5)
        b = fam.sample(5, shots=4, generator=torch.Generator().manual_seed(0))
        x, y = b.x_support.double(), b.y_support.double()
        obj = make_objective(name, particles)
        loss = obj.differentiable_loss(model, _exact_guide(model), x, y, None)
        lml = model.log_marginal_likelihood(x, y).sum()
        assert loss.item() == pytest.approx(-lml.item(), abs=tol)
        scaled = obj.differentiable_loss(model, _exact_guide(model), x, y, None, num_tasks=50)
        assert scaled.item() == pytest.approx(-10 * lml.item(), abs=10 * tol)
    finally:
        torch.set_default_dtype(torch.float32)


def test_importance_bound_tightens_with_particles_and_stays_below_evidence():
    model = bm.models.HierarchicalLinearRegression(1)
    guide = AmortizedGuide(model, "diagonal", hidden=(8,), embed_dim=4)
    b = bm.tasks.HierarchicalLinear(1, noise_std=0.5).sample(200, shots=6, generator=torch.Generator().manual_seed(1))
    x, y = b.x_support, b.y_support
    lml = model.log_marginal_likelihood(x, y).sum().item()
    with torch.no_grad():
        vals = {k: sum(TaskImportanceELBO(k).differentiable_loss(model, guide, x, y, None).item()
                       for _ in range(5)) / 5 for k in (1, 16)}
    # -loss is the bound: bound(1) < bound(16) < log p(D); Monte-Carlo error here is < 1 nat
    assert -vals[1] < -vals[16] < lml + 1.0
    assert -vals[16] - -vals[1] > 5.0


def _gradient_samples(name, model, guide, x, y, reps):
    params = list(model.parameters()) + list(guide.parameters())
    obj = make_objective(name, 8)
    rows, values = [], []
    for _ in range(reps):
        loss = obj.differentiable_loss(model, guide, x, y, None)
        values.append(loss.item())
        g = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g, params, strict=True)]))
    return torch.tensor(values), torch.stack(rows)


def test_dreg_gradients_are_unbiased_and_quieter_for_the_guide():
    model = bm.models.HierarchicalLinearRegression(1)
    guide = AmortizedGuide(model, "diagonal", hidden=(8,), embed_dim=4)
    with torch.no_grad():  # a guide that is neither the prior nor the posterior
        guide.head[-1].bias.normal_(0, 0.5)
    b = bm.tasks.HierarchicalLinear(1, noise_std=0.5).sample(30, shots=6, generator=torch.Generator().manual_seed(1))
    v1, g1 = _gradient_samples("iwae", model, guide, b.x_support, b.y_support, 200)
    v2, g2 = _gradient_samples("iwae-dreg", model, guide, b.x_support, b.y_support, 200)
    se_v = ((v1.var() + v2.var()) / 200).sqrt()
    assert abs(v1.mean() - v2.mean()) < 4 * se_v  # the same bound
    se = ((g1.var(0) + g2.var(0)) / 200).sqrt().clamp_min(1e-6)
    z = (g1.mean(0) - g2.mean(0)) / se
    assert z.abs().max() < 5.0  # the same expected gradient, coordinate by coordinate
    n_model = sum(p.numel() for p in model.parameters())
    sd1, sd2 = g1.std(0)[n_model:], g2.std(0)[n_model:]
    live = sd1 > 1e-6
    assert (sd2[live] / sd1[live]).median() < 0.8  # and less noise for the encoder
