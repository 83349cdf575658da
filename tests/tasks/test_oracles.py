import math

import numpy as np
import pytest
import torch

import bayesmeta as bm


def test_sinusoid_oracle_matches_brute_force():
    """Grid oracle vs a direct float64 numpy integral over a fine grid on a tiny case."""
    fam = bm.tasks.Sinusoid(noise_std=0.3)
    b = fam.sample(2, shots=2, num_query=3, generator=torch.Generator().manual_seed(0))
    pred = fam.oracle_predict(b.x_support, b.y_support, b.x_query, grid=400, mass=1.0)
    amps = np.linspace(0.1, 5.0, 1201)
    phs = np.linspace(0.0, math.pi, 1201)
    a, p = np.meshgrid(amps, phs, indexing="ij")
    wa = np.full_like(amps, amps[1] - amps[0])
    wa[[0, -1]] /= 2  # trapezoid weights
    wp = np.full_like(phs, phs[1] - phs[0])
    wp[[0, -1]] /= 2
    wgt = wa[:, None] * wp[None, :]
    for t in range(2):
        xs, ys = b.x_support[t, :, 0].double().numpy(), b.y_support[t, :, 0].double().numpy()
        loglik = sum(-0.5 * ((ys[j] - a * np.sin(xs[j] - p)) / 0.3) ** 2 for j in range(2))
        post = np.exp(loglik - loglik.max()) * wgt
        post /= post.sum()
        for q in range(3):
            xq, yq = b.x_query[t, q, 0].item(), b.y_query[t, q, 0].item()
            dens = (post * np.exp(-0.5 * ((yq - a * np.sin(xq - p)) / 0.3) ** 2)).sum() / (0.3 * math.sqrt(2 * math.pi))
            assert pred.log_prob(b.y_query)[t, q].item() == pytest.approx(math.log(dens), abs=2e-3)


def test_sinusoid_oracle_without_data_is_the_prior_predictive():
    fam = bm.tasks.Sinusoid(noise_std=0.1)
    x = torch.tensor([[[0.7]]])
    pred = fam.oracle_predict(torch.zeros(1, 0, 1), torch.zeros(1, 0, 1), x, grid=300)
    # E[A sin(x - phi)] over the priors, and E[A^2] E[sin^2] + noise for the second moment
    ea, ea2 = 2.55, (5.0**3 - 0.1**3) / (3 * 4.9)
    phi = np.linspace(0, math.pi, 200001)
    es = np.trapezoid(np.sin(0.7 - phi), phi) / math.pi
    es2 = np.trapezoid(np.sin(0.7 - phi) ** 2, phi) / math.pi
    assert pred.mean.item() == pytest.approx(ea * es, abs=2e-3)
    assert pred.variance.item() == pytest.approx(ea2 * es2 + 0.01 - (ea * es) ** 2, rel=2e-3)


def _dense_posterior(fam, x, y, mask):
    m = mask.numpy()
    phi = np.c_[x[m, 0].double().numpy(), np.ones(m.sum())]
    prec = np.linalg.inv(fam.prior_cov.numpy()) + phi.T @ phi / fam.noise_std**2
    cov = np.linalg.inv(prec)
    mean = cov @ (np.linalg.inv(fam.prior_cov.numpy()) @ fam.prior_mean.numpy()
                  + phi.T @ y[m, 0].double().numpy() / fam.noise_std**2)
    c = phi @ fam.prior_cov.numpy() @ phi.T + fam.noise_std**2 * np.eye(len(phi))
    r = y[m, 0].double().numpy() - phi @ fam.prior_mean.numpy()
    lml = -0.5 * (len(r) * math.log(2 * math.pi) + np.linalg.slogdet(c)[1] + r @ np.linalg.solve(c, r))
    return mean, cov, lml


def test_hierarchical_linear_exact_posterior_and_marginal_vs_dense_algebra():
    fam = bm.tasks.HierarchicalLinear(1, prior_mean=[0.5, -1.0], prior_cov=[[1.0, 0.3], [0.3, 0.5]], noise_std=0.3)
    b = fam.sample(4, shots=5, num_query=2, generator=torch.Generator().manual_seed(0))
    b.mask_support[1, 3:] = False
    b.mask_support[2, :] = False  # no data: posterior = prior
    mean, cov = fam.posterior(*b.support)
    lml = fam.log_marginal_likelihood(*b.support)
    for t in range(4):
        m_ref, c_ref, l_ref = _dense_posterior(fam, b.x_support[t], b.y_support[t], b.mask_support[t])
        np.testing.assert_allclose(mean[t].numpy(), m_ref, atol=1e-10)
        np.testing.assert_allclose(cov[t].numpy(), c_ref, atol=1e-10)
        assert lml[t].item() == pytest.approx(l_ref, abs=1e-9)
    pred = fam.oracle_predict(*b.support[:2], b.x_query, mask=b.mask_support)
    phi_q = torch.cat([b.x_query.double(), torch.ones_like(b.x_query.double())], -1)
    var = torch.einsum("tnf,tfg,tng->tn", phi_q, cov, phi_q) + 0.09
    assert torch.allclose(pred.variance[..., 0].double(), var, atol=1e-5)
