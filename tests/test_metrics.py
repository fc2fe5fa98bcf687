"""Metrics against independent references: scikit-image SSIM, numpy, scipy, analytic values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import image_pairs
from skimage.metrics import structural_similarity

from vaelab.evaluation import metrics


# ---------------------------------------------------------------------------- SSIM vs scikit-image
def sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image SSIM of one (C, H, W) pair in [0, 1]."""
    kw = dict(data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if a.shape[0] == 1:
        return structural_similarity(a[0], b[0], **kw)
    return structural_similarity(a, b, channel_axis=0, **kw)


@pytest.mark.parametrize("kind", ["random", "noisy", "shapes", "checker", "smooth"])
@pytest.mark.parametrize("chw", [(1, 28, 28), (3, 32, 32), (1, 20, 31), (3, 11, 16)],
                         ids=["grey28", "rgb32", "grey20x31", "rgb11x16"])
def test_ssim_matches_scikit_image(kind, chw):
    x, y = image_pairs(kind, *chw)
    ours = metrics.ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert ours.shape == (x.shape[0],) and ours.dtype == torch.float32
    ref = np.array([sk_ssim(x[i].astype(np.float32).astype(np.float64), y[i].astype(np.float32).astype(np.float64))
                    for i in range(x.shape[0])])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4, rtol=0)


def test_ssim_identical_and_constant_images():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(2))
    c = torch.full((1, 1, 12, 12), 0.5)
    torch.testing.assert_close(metrics.ssim(c, c), torch.ones(1))
    d = torch.full((1, 1, 12, 12), 0.2)
    ref = sk_ssim(c[0].numpy().astype(np.float64), d[0].numpy().astype(np.float64))
    assert abs(float(metrics.ssim(c, d)) - ref) < 1e-4


def test_ssim_input_checks():
    with pytest.raises(ValueError, match="one shape"):
        metrics.ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 15))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(1, 1, 10, 16), torch.rand(1, 1, 10, 16))


# ---------------------------------------------------------------------------- mse, psnr
def test_mse_and_psnr_vs_numpy():
    rng = np.random.default_rng(6)
    x, y = rng.random((4, 3, 5, 6)), rng.random((4, 3, 5, 6))
    x[1] = y[1] + 0.01
    mse = ((x - y) ** 2).reshape(4, -1).mean(1)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    np.testing.assert_allclose(metrics.mse(tx, ty).numpy(), mse, rtol=1e-10)
    np.testing.assert_allclose(metrics.psnr(tx, ty).numpy(), 10 * np.log10(1 / mse), rtol=1e-8)
    np.testing.assert_allclose(metrics.psnr(tx * 255, ty * 255, data_range=255).numpy(), 10 * np.log10(1 / mse),
                               rtol=1e-8)
    assert abs(float(metrics.psnr(tx[1:2], ty[1:2])) - 40.0) < 1e-6  # an error of 0.01 everywhere: 40 dB
    assert torch.isfinite(metrics.psnr(tx, tx)).all()


# ---------------------------------------------------------------------------- latent statistics
def test_active_units_counts_dims_with_variance_above_threshold():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5000, 5, generator=g)
    base = (base - base.mean(0)) / base.std(0)  # unit sample variance per column exactly
    stds = torch.tensor([0.0, 0.05, 0.2, 1.0, 0.099])  # variances 0, .0025, .04, 1, .0098
    mu = base * stds + torch.tensor([3.0, -1.0, 0.0, 2.0, 5.0])
    assert metrics.active_units(mu) == 2
    assert metrics.active_units(mu, threshold=0.001) == 4
    assert metrics.active_units(torch.zeros(10, 4)) == 0


# ---------------------------------------------------------------------------- Frechet distance
def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_equal_covariances_is_squared_mean_distance():
    rng = np.random.default_rng(9)
    cov = _random_cov(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert metrics.frechet_distance(mu1, cov, mu2, cov) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), abs=1e-6)
    assert metrics.frechet_distance(mu1, cov, mu1, cov) == pytest.approx(0.0, abs=1e-6)


def test_frechet_diagonal_covariances():
    rng = np.random.default_rng(10)
    a, b = rng.uniform(0.1, 4, 5), rng.uniform(0.1, 4, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_one_dimension():
    assert metrics.frechet_distance(0.0, 4.0, 1.0, 1.0) == pytest.approx(1.0 + (2 - 1) ** 2)
    assert metrics.frechet_distance(np.zeros(1), np.eye(1) * 9, np.ones(1), np.eye(1)) == pytest.approx(1.0 + 4.0)


def test_frechet_general_covariances_vs_eigenvalues():
    rng = np.random.default_rng(11)
    c1, c2 = _random_cov(rng, 4), _random_cov(rng, 4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    # tr (c1 c2)^(1/2) = sum of square roots of the (real, non-negative) eigenvalues of c1 c2
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(c1 @ c2).real, 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-7)


def test_frechet_uses_no_deprecated_scipy_api():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))


# ---------------------------------------------------------------------------- AUROC
def test_auroc_vs_hand_count():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.5, 0.1, 0.7, 0.8])
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    pos, neg = scores[labels == 1], scores[labels == 0]
    # P(score of a positive > score of a negative), ties count one half
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    expected = wins / (len(pos) * len(neg))
    assert expected == pytest.approx(13 / 16)
    assert metrics.auroc(scores, labels) == pytest.approx(expected)
    assert metrics.auroc(-scores, labels) == pytest.approx(1 - expected)
    assert metrics.auroc(np.arange(6), np.array([0, 0, 0, 1, 1, 1])) == 1.0
