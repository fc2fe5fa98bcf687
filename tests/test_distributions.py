"""vaelab.distributions against independent oracles: torch.distributions, Monte Carlo, scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from torch.distributions import Independent, MixtureSameFamily, Categorical, Normal
from torch.distributions import kl_divergence as torch_kl

from vaelab import distributions as D


def _params(seed: int, shape=(8, 5)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2,
            torch.randn(shape, generator=g, dtype=torch.float64))


def test_diag_normal_log_prob_and_entropy_match_torch():
    mu, lv = _params(0)
    q = D.DiagNormal(mu, lv)
    ref = Independent(Normal(mu, (0.5 * lv).exp()), 1)
    z = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z))  # (3, 8): sample dims kept
    torch.testing.assert_close(q.entropy(), ref.entropy())
    assert q.params().keys() == {"mu", "logvar"}


def test_standard_normal_log_prob_matches_torch():
    z = torch.randn(4, 6, dtype=torch.float64)
    p = D.StandardNormal(6, dtype=torch.float64)
    torch.testing.assert_close(p.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_kl_closed_forms_match_torch():
    mu, lv = _params(2)
    mu2, lv2 = _params(3)
    q, p = D.DiagNormal(mu, lv), D.DiagNormal(mu2, lv2)
    tq, tp = Normal(mu, (0.5 * lv).exp()), Normal(mu2, (0.5 * lv2).exp())
    torch.testing.assert_close(D.kl_per_dim(q, p), torch_kl(tq, tp))
    std = D.StandardNormal(5, dtype=torch.float64, batch_shape=(8,))
    torch.testing.assert_close(D.kl_per_dim(q, std), torch_kl(tq, Normal(torch.zeros_like(mu), torch.ones_like(mu))))
    torch.testing.assert_close(D.kl_divergence(q, std), D.kl_per_dim(q, std).sum(-1))
    # zero at the prior, positive elsewhere
    assert torch.equal(D.kl_per_dim(D.DiagNormal(torch.zeros(2, 3), torch.zeros(2, 3)), D.StandardNormal(3)),
                       torch.zeros(2, 3))


def test_kl_closed_form_vs_monte_carlo():
    """E_q[log q(z) - log p(z)] from many draws agrees with the closed form within 5 standard errors."""
    mu = torch.tensor([[1.5, -0.7, 0.3], [-2.0, 0.5, 3.0]], dtype=torch.float64)
    lv = torch.tensor([[-1.0, 0.8, -2.5], [1.2, -0.3, 0.0]], dtype=torch.float64)
    q = D.DiagNormal(mu, lv)
    p = D.DiagNormal(torch.tensor([[0.5, 0.0, -1.0]], dtype=torch.float64).expand(2, 3),
                     torch.tensor([[0.3, -0.2, 1.0]], dtype=torch.float64).expand(2, 3))
    n = 200_000
    z = q.rsample((n,), generator=torch.Generator().manual_seed(4))  # (n, 2, 3)
    terms = q.log_prob(z) - p.log_prob(z)  # (n, 2)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(n)
    closed = D.kl_divergence(q, p)
    assert (torch.abs(closed - mc) < 5 * se).all(), (closed, mc, se)


def test_no_closed_form_falls_back_to_the_one_sample_estimate():
    q = D.DiagNormal(*_params(5, (4, 2)))
    mix = D.MixtureDiagNormal(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))
    assert D.kl_per_dim(q, mix) is None
    z = q.rsample(generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(D.kl_divergence(q, mix, z), q.log_prob(z) - mix.log_prob(z))
    with pytest.raises(ValueError, match="no closed form"):
        D.kl_divergence(q, mix)


def test_mixture_log_prob_matches_torch_and_samples_follow_it():
    g = torch.Generator().manual_seed(6)
    means = torch.randn(4, 3, generator=g, dtype=torch.float64) * 3
    lvs = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.3
    logits = torch.randn(4, generator=g, dtype=torch.float64)
    mix = D.MixtureDiagNormal(means, lvs, logits)
    ref = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(means, (0.5 * lvs).exp()), 1))
    z = torch.randn(10, 3, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(mix.log_prob(z), ref.log_prob(z))
    draws = mix.sample((40_000,), generator=torch.Generator().manual_seed(7))
    assert draws.shape == (40_000, 3)
    torch.testing.assert_close(draws.mean(0), ref.mean, atol=0.06, rtol=0)


def test_point_mass_draws_its_value_and_has_no_density():
    v = torch.randn(3, 2)
    pm = D.PointMass(v)
    assert torch.equal(pm.rsample(), v) and pm.rsample((4,)).shape == (4, 3, 2)
    assert not pm.has_density
    with pytest.raises(TypeError):
        pm.log_prob(v)


def test_draws_are_reparameterised_and_seeded():
    mu = torch.zeros(5, 2, requires_grad=True)
    q = D.DiagNormal(mu, torch.zeros(5, 2))
    z = q.rsample(generator=torch.Generator().manual_seed(3))
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones(5, 2))
    again = D.DiagNormal(mu, torch.zeros(5, 2)).rsample(generator=torch.Generator().manual_seed(3))
    assert torch.equal(z, again)


def test_log_mean_exp_vs_scipy_and_importance_weights():
    lw = np.random.default_rng(7).normal(-300, 20, (50, 6))
    np.testing.assert_allclose(D.log_mean_exp(torch.from_numpy(lw), 0).numpy(), logsumexp(lw, axis=0) - np.log(50))
    w = D.importance_weights(torch.from_numpy(lw), 0)
    np.testing.assert_allclose(w.sum(0).numpy(), 1.0)


def test_cat_and_to_keep_every_parameter():
    a, b = D.DiagNormal(*_params(8, (2, 3))), D.DiagNormal(*_params(9, (4, 3)))
    c = D.cat([a, b])
    assert torch.equal(c.mean, torch.cat([a.mean, b.mean])) and torch.equal(c.logvar, torch.cat([a.logvar, b.logvar]))
    assert torch.equal(D.cat([D.PointMass(a.mean), D.PointMass(b.mean)]).mean, c.mean)
    assert D.to(c, "cpu").params().keys() == {"mu", "logvar"}
