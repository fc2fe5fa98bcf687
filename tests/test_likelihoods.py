"""Likelihoods: loss conventions against direct formulas, and nll_offset against torch's Normal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab.models.likelihoods import LIKELIHOODS, apply_output, build_likelihood


def test_bce_from_logits_is_summed_bce_of_sigmoid():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 1, 6, 5, generator=g) * 3
    target = torch.rand(4, 1, 6, 5, generator=g)  # continuous targets, as for grey images
    out = build_likelihood("bce", "sigmoid").loss(logits, target)
    assert out.shape == (4,)
    p = torch.sigmoid(logits.double())
    per = -(target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(out.double(), per, rtol=1e-5, atol=1e-5)
    # leading sample dimensions broadcast against the target: (K, B, C, H, W) -> (K, B)
    out3 = build_likelihood("bce", "sigmoid").loss(torch.stack([logits, -logits]), target)
    assert out3.shape == (2, 4) and torch.equal(out3[0], out)


def test_bce_from_logits_is_stable_for_saturated_logits():
    out = build_likelihood("bce", "sigmoid").loss(torch.tensor([[[[100.0, -100.0, 100.0]]]]),
                                                  torch.tensor([[[[0.0, 1.0, 1.0]]]]))
    assert torch.isfinite(out).all() and abs(float(out) - 200.0) < 1e-3


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "none"])
def test_squared_error_conventions(act):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    target = rng.random((3, 2, 4, 4)).astype(np.float32)
    out_np = {"sigmoid": 1 / (1 + np.exp(-logits)), "tanh": np.tanh(logits), "none": logits}[act]
    sq = ((out_np - target) ** 2).reshape(3, -1)
    mse = build_likelihood("mse", act).loss(torch.from_numpy(logits), torch.from_numpy(target))
    euc = build_likelihood("euclidean", act).loss(torch.from_numpy(logits), torch.from_numpy(target))
    np.testing.assert_allclose(mse.numpy(), sq.mean(1), rtol=1e-5)
    np.testing.assert_allclose(euc.numpy(), sq.sum(1), rtol=1e-5)


@pytest.mark.parametrize("name,var", [("euclidean", lambda p: 0.5), ("mse", lambda p: p / 2)])
def test_gaussian_loss_plus_offset_is_the_negative_log_density(name, var):
    """loss + nll_offset = -log N(x; mean, s^2 I), s^2 = 1/2 (summed) or P/2 (averaged)."""
    g = torch.Generator().manual_seed(4)
    shape = (1, 3, 5)
    p = math.prod(shape)
    out = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    x = torch.rand(2, *shape, generator=g, dtype=torch.float64)
    lik = build_likelihood(name, "none")
    ref = -Independent(Normal(out, math.sqrt(var(p))), 3).log_prob(x)
    torch.testing.assert_close(lik.loss(out, x) + lik.nll_offset(shape, signed=False), ref)


def test_tanh_models_pay_the_change_of_variables():
    """A tanh model sees x' = 2x - 1: -log p(x) = -log p'(x') - P log 2, in image space."""
    shape = (1, 2, 2)
    lik = build_likelihood("euclidean", "tanh")
    assert lik.nll_offset(shape, signed=True) == pytest.approx(lik.nll_offset(shape, signed=False) - 4 * math.log(2))
    assert build_likelihood("bce", "sigmoid").nll_offset(shape, signed=False) == 0.0


def test_registry_and_apply_output():
    assert {"bce", "mse", "euclidean", "msssim"} <= set(LIKELIHOODS)  # more may be registered
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(apply_output(x, "sigmoid"), 1 / (1 + torch.exp(-x)))
    torch.testing.assert_close(apply_output(x, "tanh"), torch.tanh(x))
    assert torch.equal(apply_output(x, "none"), x)
