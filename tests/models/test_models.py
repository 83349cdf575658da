import pyro
import pyro.poutine as poutine
import pytest
import torch

import bayesmeta as bm

MODELS = [
    lambda: bm.models.LatentCodeRegression(x_dim=2, y_dim=1, latent_dim=3, hidden=(16,)),
    lambda: bm.models.HierarchicalLinearRegression(x_dim=2),
    lambda: bm.models.BayesianHeadRegression(x_dim=2, num_features=4, hidden=(8,)),
]


@pytest.mark.parametrize("make", MODELS)
def test_trace_plates_and_shapes(make):
    model = make()
    x, y = torch.randn(5, 7, 2), torch.randn(5, 7, 1)
    tr = poutine.trace(model).get_trace(x, y)
    tr.compute_log_prob()
    (site_name,) = model.task_sites
    site = tr.nodes[site_name]
    assert [f.name for f in site["cond_indep_stack"]] == ["tasks"]  # task site: tasks plate only
    assert site["value"].shape == (5, 1, model.param_dim)
    obs = tr.nodes["y"]
    assert {f.name for f in obs["cond_indep_stack"]} == {"tasks", "points"}
    assert obs["log_prob"].shape == (5, 7)
    sample_sites = [n for n, s in tr.nodes.items() if s["type"] == "sample" and n not in ("tasks", "points")]
    assert sample_sites == [site_name, "y"]  # no global latent sites (empirical Bayes)


@pytest.mark.parametrize("make", MODELS)
def test_masked_points_contribute_nothing(make):
    model = make()
    x, y = torch.randn(3, 6, 2), torch.randn(3, 6, 1)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 2:] = False
    mask[2, :] = False
    theta = model.prior_distribution().sample((3,))  # [T, P]
    ll = model.log_likelihood(x, y, mask, theta)
    y2 = y.clone()
    y2[~mask] = 1e6  # garbage in masked slots changes nothing
    assert torch.allclose(model.log_likelihood(x, y2, mask, theta), ll)
    assert ll[2].item() == 0.0
    # Pyro trace agrees with log_joint when conditioned on the same theta
    cond = poutine.condition(model, data={next(iter(model.task_sites)): theta[:, None, :]})
    tr = poutine.trace(cond).get_trace(x, y2, mask)
    assert tr.log_prob_sum().item() == pytest.approx(model.log_joint(x, y2, mask, theta).sum().item(), rel=1e-5)


def test_task_subsampling_scales_log_density():
    model = bm.models.HierarchicalLinearRegression(x_dim=1)
    x, y = torch.randn(4, 3, 1), torch.randn(4, 3, 1)
    theta = model.prior_distribution().sample((4,))
    cond = poutine.condition(model, data={"w": theta[:, None, :]})
    full = poutine.trace(cond).get_trace(x, y).log_prob_sum()
    scaled = poutine.trace(cond).get_trace(x, y, num_tasks=40).log_prob_sum()
    assert scaled.item() == pytest.approx(10 * full.item(), rel=1e-5)


def test_predictive_sampling_with_y_none():
    model = bm.models.LatentCodeRegression(x_dim=1, latent_dim=2, hidden=(8,))
    out = pyro.infer.Predictive(model, num_samples=4)(torch.randn(3, 5, 1))
    assert out["y"].shape == (4, 3, 5, 1) and out["z"].shape == (4, 3, 1, 2)


def test_models_keep_parameters_out_of_the_global_param_store():
    a, b = bm.models.LatentCodeRegression(1, latent_dim=2), bm.models.LatentCodeRegression(1, latent_dim=2)
    with torch.no_grad():
        a.prior["loc"].fill_(3.0)
    poutine.trace(b).get_trace(torch.randn(2, 3, 1), torch.randn(2, 3, 1))
    assert len(pyro.get_param_store()) == 0
    assert b.prior_distribution().mean.abs().max().item() == 0.0


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="x_dim must be a positive int"):
        bm.models.LatentCodeRegression(x_dim=0)
    with pytest.raises(ValueError, match="latent_dim"):
        bm.models.LatentCodeRegression(x_dim=1, latent_dim=0)
