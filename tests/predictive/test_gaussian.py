import math

import pytest
import torch
from torch.distributions import Normal

from bayesmeta import GaussianMixture


def _gauss(mu=0.5, sd=2.0, t=3, n=4):
    return GaussianMixture(torch.full((1, t, n, 1), mu, dtype=torch.float64), torch.tensor(sd, dtype=torch.float64))


def test_single_gaussian_matches_analytic():
    mix = _gauss()
    y = torch.linspace(-3, 3, 12, dtype=torch.float64).reshape(3, 4, 1)
    ref = Normal(0.5, 2.0)
    assert torch.allclose(mix.log_prob(y), ref.log_prob(y[..., 0]), atol=1e-12)
    assert torch.allclose(mix.cdf(y), ref.cdf(y), atol=1e-12)
    lo, hi = mix.interval(0.9)
    assert torch.allclose(lo, torch.full_like(lo, 0.5 - 1.6448536269514722 * 2.0), atol=1e-8)
    assert torch.allclose(hi, torch.full_like(hi, 0.5 + 1.6448536269514722 * 2.0), atol=1e-8)
    assert torch.allclose(mix.mean, torch.full_like(mix.mean, 0.5))
    assert torch.allclose(mix.std, torch.full_like(mix.std, 2.0))


def test_two_component_mixture_moments_density_and_quantile():
    loc = torch.tensor([-1.0, 2.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    scale = torch.tensor([0.5, 1.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    logw = torch.log(torch.tensor([[0.25], [0.75]], dtype=torch.float64)) + 3.0  # unnormalised
    mix = GaussianMixture(loc, scale, logw)
    assert mix.mean.item() == pytest.approx(0.25 * -1 + 0.75 * 2)
    second = 0.25 * (0.25 + 1) + 0.75 * (1 + 4)
    assert mix.variance.item() == pytest.approx(second - 1.25**2)
    y = torch.tensor([[[0.3]]], dtype=torch.float64)
    y0 = torch.tensor(0.3, dtype=torch.float64)
    dens = 0.25 * Normal(-1.0, 0.5).log_prob(y0).exp() + 0.75 * Normal(2.0, 1.0).log_prob(y0).exp()
    assert mix.log_prob(y).item() == pytest.approx(math.log(dens.item()), rel=1e-9)
    q = mix.quantile(0.3)
    assert mix.cdf(q).item() == pytest.approx(0.3, abs=1e-9)


def test_sampling_matches_moments():
    loc = torch.tensor([-1.0, 2.0]).reshape(2, 1, 1, 1)
    mix = GaussianMixture(loc, torch.tensor(0.5), torch.log(torch.tensor([[0.25], [0.75]])))
    s = mix.sample(40_000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (40_000, 1, 1, 1)
    # mean 1.25, sd ~1.37: 4 standard errors is ~0.03
    assert s.mean().item() == pytest.approx(1.25, abs=0.03)
    assert s.std().item() == pytest.approx(mix.std.item(), abs=0.03)


def test_prune_keeps_mass_and_density():
    torch.manual_seed(1)
    loc = torch.randn(500, 2, 3, 1, dtype=torch.float64)
    logw = 4 * torch.randn(500, 2, dtype=torch.float64)
    mix = GaussianMixture(loc, torch.tensor(0.3, dtype=torch.float64), logw)
    small = mix.prune(1 - 1e-6)
    assert small.num_components < 500
    y = torch.randn(2, 3, 1, dtype=torch.float64)
    assert torch.allclose(small.log_prob(y), mix.log_prob(y), atol=1e-4)


def test_bad_shapes_and_levels():
    mix = _gauss()
    with pytest.raises(ValueError, match="observations must have shape"):
        mix.log_prob(torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="level"):
        mix.interval(1.5)
    with pytest.raises(ValueError, match="loc must have shape"):
        GaussianMixture(torch.zeros(3, 4), 1.0)


# ---------------------------------------------------------------------- block-wise and lazy mixtures
def _lazy_and_dense(block_elements, cache_elements):
    g = torch.Generator().manual_seed(3)
    n, t, q = 7, 11, 5
    params = torch.randn(n, t, 2, generator=g, dtype=torch.float64)
    logw = 2 * torch.randn(n, t, generator=g, dtype=torch.float64)
    logw[5:, :4] = -math.inf  # padding for the first tasks, as when task groups are stacked
    x = torch.randn(t, q, 1, generator=g, dtype=torch.float64)

    def components(p, tasks):
        loc = p[..., 0, None, None] * torch.sin(x[tasks] - p[..., 1, None, None])  # [n_b, T_b, Q, 1]
        return loc, 0.2 + p[..., 0, None, None].abs()
    dense = GaussianMixture(*components(params, slice(0, t)), logw)
    lazy = GaussianMixture.from_parameters(params, logw, components, shape=(t, q, 1),
                                           block_elements=block_elements, cache_elements=cache_elements)
    return dense, lazy, torch.randn(t, q, 1, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("block_elements,cache_elements", [(1, 0), (40, 100), (10**9, 10**9)])
def test_lazy_blockwise_mixture_equals_dense(block_elements, cache_elements):
    dense, lazy, y = _lazy_and_dense(block_elements, cache_elements)
    if block_elements == 1:
        assert len(lazy._blocks) == 11  # one task per block
    for a, b in [(dense.log_prob(y), lazy.log_prob(y)), (dense.cdf(y), lazy.cdf(y)), (dense.mean, lazy.mean),
                 (dense.variance, lazy.variance), (dense.quantile(0.2), lazy.quantile(0.2)),
                 (dense.nonfinite_tasks(), lazy.nonfinite_tasks())]:
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(dense.log_weights.exp().sum(0), lazy.log_weights.exp().sum(0))
    shifted = lazy.affine(torch.tensor([2.0], dtype=torch.float64), 1.0).affine(0.5, -3.0)  # y -> y - 2.5
    assert torch.allclose(shifted.log_prob(y - 2.5), lazy.log_prob(y), atol=1e-10)
    real = torch.isfinite(dense.log_weights)  # [n, T]; padding (zero weight) may sit elsewhere per block
    assert torch.allclose(shifted.loc[real], dense.loc[real] - 2.5, atol=1e-10)
    pruned = lazy.prune(1 - 1e-9)
    assert torch.allclose(pruned.log_prob(y), dense.log_prob(y), atol=1e-7)
    s = lazy.sample(20_000, generator=torch.Generator().manual_seed(0))  # [s, T, Q, 1]
    z = (s.mean(0) - dense.mean) / (dense.std / math.sqrt(20_000))
    assert z.abs().max() < 5  # 55 means, each within 5 standard errors
    loc, scale = lazy.resample_components(4000)
    assert torch.allclose(loc.mean(0), dense.mean, atol=6 * float(dense.std.max()) / math.sqrt(4000))


def test_many_blocks_keep_memory_flat():
    # 1000 tasks, one per block: the result is written into one output, no per-block leftovers.
    fam_params = torch.rand(300, 1000, 2, dtype=torch.float64)
    x = torch.rand(1000, 50, 1, dtype=torch.float64)

    def components(p, tasks):
        return p[..., 0, None, None] * torch.sin(x[tasks] - p[..., 1, None, None]), torch.tensor(0.1)
    mix = GaussianMixture.from_parameters(fam_params, None, components, shape=(1000, 50, 1),
                                          block_elements=1, cache_elements=0)
    assert len(mix._blocks) == 1000
    assert mix.sample(3).shape == (3, 1000, 50, 1)
    assert mix.log_prob(torch.zeros(1000, 50, 1)).shape == (1000, 50)


def test_pad_rows_and_pad_components_equal_the_ensembles_own_padding():
    from bayesmeta.predictive import pad_components, pad_rows

    g = torch.Generator().manual_seed(0)
    loc, scale, logw = torch.randn(2, 3, 4, 1, generator=g), torch.rand(2, 3, 4, 1, generator=g), torch.randn(2, 3, generator=g)
    pad = 3  # what baselines/ensemble.py writes out by hand
    ref = (torch.cat([loc, loc[:1].expand(pad, *loc.shape[1:])]), torch.cat([scale, scale[:1].expand(pad, *scale.shape[1:])]),
           torch.cat([logw, logw.new_full((pad, logw.shape[1]), -torch.inf)]))
    new_loc, new_logw = pad_components(loc, logw, 5)
    assert torch.equal(new_loc, ref[0]) and torch.equal(pad_rows(scale, 5), ref[1]) and torch.equal(new_logw, ref[2])
    assert pad_rows(loc, 2) is loc and pad_components(loc, logw, 1)[0] is loc
    mixed = GaussianMixture(new_loc, pad_rows(scale, 5), new_logw)  # zero-weight padding changes nothing
    y = torch.randn(3, 4, 1, generator=g)
    assert torch.allclose(mixed.log_prob(y), GaussianMixture(loc, scale, logw).log_prob(y), atol=1e-6)


def test_log_prob_of_a_non_finite_value_names_it_and_its_point():
    mix = GaussianMixture(torch.zeros(2, 3, 4, 1), torch.ones(2, 3, 4, 1))
    y = torch.zeros(3, 4, 1)
    y[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^log_prob: y = \[nan\] at task 2, point 1 is not finite"):
        mix.log_prob(y)
