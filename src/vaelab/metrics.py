"""Metrics: pure functions on tensors, each tested against an independent reference.

Images are float tensors (N, C, H, W) in [0, 1]; per-image metrics return (N,).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel, per image (N,)."""
    return (x - y).square().flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image (N,)."""
    return 10 * torch.log10(data_range**2 / (mse(x, y) + eps))


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity per image (N,), averaged over channels.

    Matches scikit-image's ``structural_similarity(..., data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: local statistics from a Gaussian window
    (11 taps at sigma 1.5), averaged over the region at least half a window from the
    border. Written here rather than taken from a library because the window is
    separable: two 1-D convolutions over the whole batch at once are ~5x cheaper than
    an 11x11 2-D filter, and there is no per-image Python loop.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size}, got {tuple(x.shape[-2:])}")
    n, c, h, w = x.shape
    x = x.double().reshape(n * c, 1, h, w)
    y = y.double().reshape(n * c, 1, h, w)
    g = _gaussian_window(win_size, sigma, x.dtype, x.device)
    gh, gw = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        # 'valid' filtering yields exactly the border-cropped region scikit-image averages.
        return F.conv2d(F.conv2d(t, gh), gw)

    stats = filt(torch.cat([x, y, x * x, y * y, x * y]))  # one batched pass: (5 * N * C, 1, h', w')
    ux, uy, uxx, uyy, uxy = stats.chunk(5)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).view(n, c).mean(1).float()


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over the data of the closed-form KL(q(z|x) || N(0, I)) per latent dimension (D,)."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp())).mean(0)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions whose posterior mean varies across the data
    (Burda et al. 2016: Cov_x(E_q[z_u]) > 0.01)."""
    return int((mu.var(0, unbiased=True) > threshold).sum())


def iw_nll(log_w: torch.Tensor) -> torch.Tensor:
    """Importance-weighted NLL per image from log weights (K, N):
    -log (1/K sum_k exp(log_w_k)), the IWAE bound (Burda et al. 2016)."""
    return -(torch.logsumexp(log_w.double(), 0) - math.log(log_w.shape[0])).float()


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), as in FID:
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    covmean, _ = linalg.sqrtm(cov1 @ cov2, disp=False)
    if not np.isfinite(covmean).all():  # near-singular product: regularise, as pytorch-fid does
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; ``labels`` 1 marks the positive (anomalous) class."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels), np.asarray(scores)))
