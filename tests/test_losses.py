"""Losses against independent oracles (torch.distributions, F.binary_cross_entropy, numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vaelab.models.losses import apply_output, kl_normal, reconstruction


def test_kl_closed_form_vs_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(8, 5, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(8, 5, generator=g, dtype=torch.float64)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    out = kl_normal(mu, logvar)
    assert out.shape == (8, 5)
    torch.testing.assert_close(out, expected)


def test_kl_zero_at_the_prior_and_positive_elsewhere():
    assert torch.equal(kl_normal(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))
    assert (kl_normal(torch.tensor([[0.1, 0.0]]), torch.tensor([[0.0, -0.1]])) > 0).all()


def test_kl_closed_form_vs_monte_carlo():
    """E_q[log q(z) - log p(z)] estimated from many samples agrees within 5 standard errors."""
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([[0.0, 0.0, 0.0], [1.5, -0.7, 0.3], [-2.0, 0.5, 3.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.8, -2.5], [1.2, -0.3, 0.0]], dtype=torch.float64)
    n = 200_000
    q = Normal(mu, (0.5 * logvar).exp())
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    eps = torch.randn((n, *mu.shape), generator=g, dtype=torch.float64)
    z = mu + eps * (0.5 * logvar).exp()
    terms = (q.log_prob(z) - p.log_prob(z)).sum(-1)  # (n, rows)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(n)
    closed = kl_normal(mu, logvar).sum(1)
    assert closed[0] == 0
    for i in range(1, 3):
        assert abs(float(closed[i] - mc[i])) < 5 * float(se[i]) + 1e-9, (float(closed[i]), float(mc[i]), float(se[i]))


def test_bce_from_logits_is_summed_bce_of_sigmoid():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 1, 6, 5, generator=g) * 3
    target = torch.rand(4, 1, 6, 5, generator=g)  # continuous targets, as for grey images
    out = reconstruction(logits, target, "bce", "sigmoid")
    assert out.shape == (4,)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="sum") / 4
    torch.testing.assert_close(out.mean(), expected, rtol=1e-5, atol=1e-5)
    # per image, by the formula
    p = torch.sigmoid(logits.double())
    per = -(target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(out.double(), per, rtol=1e-5, atol=1e-5)


def test_bce_from_logits_is_stable_for_saturated_logits():
    out = reconstruction(torch.tensor([[100.0, -100.0, 100.0]]), torch.tensor([[0.0, 1.0, 1.0]]), "bce", "sigmoid")
    assert torch.isfinite(out).all()
    assert abs(float(out) - 200.0) < 1e-3  # -log(1 - sigmoid(100)) = 100 + log1p(e^-100)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "none"])
def test_squared_errors(act):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    target = rng.random((3, 2, 4, 4)).astype(np.float32)
    out_np = {"sigmoid": 1 / (1 + np.exp(-logits)), "tanh": np.tanh(logits), "none": logits}[act]
    sq = ((out_np - target) ** 2).reshape(3, -1)
    mse = reconstruction(torch.from_numpy(logits), torch.from_numpy(target), "mse", act)
    euc = reconstruction(torch.from_numpy(logits), torch.from_numpy(target), "euclidean", act)
    np.testing.assert_allclose(mse.numpy(), sq.mean(1), rtol=1e-5)
    np.testing.assert_allclose(euc.numpy(), sq.sum(1), rtol=1e-5)


def test_apply_output_and_unknown_loss():
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(apply_output(x, "sigmoid"), 1 / (1 + torch.exp(-x)))
    torch.testing.assert_close(apply_output(x, "tanh"), torch.tanh(x))
    assert torch.equal(apply_output(x, "none"), x)
    with pytest.raises(ValueError, match="unknown loss"):
        reconstruction(x[None], x[None], "hinge", "none")
