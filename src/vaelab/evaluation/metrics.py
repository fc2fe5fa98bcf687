"""Metrics: pure functions on tensors, each tested against an independent reference.

Images are float tensors (N, C, H, W) in [0, 1]; per-image metrics return (N,).
"""

from __future__ import annotations

import numpy as np
import torch


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel, per image (N,)."""
    return (x - y).square().flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image (N,)."""
    return 10 * torch.log10(data_range**2 / (mse(x, y) + eps))


def _valid_filter_matrix(n: int, win_size: int, sigma: float, dtype, device) -> torch.Tensor:
    """(n - win_size + 1, n) banded matrix: row i holds the Gaussian window at offset i."""
    r = torch.arange(win_size, dtype=dtype, device=device) - (win_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    m = torch.zeros(n - win_size + 1, n, dtype=dtype, device=device)
    for i in range(n - win_size + 1):
        m[i, i:i + win_size] = g
    return m


SSIM_WINDOW = 11  # the Gaussian window's taps: images need at least this many pixels a side


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = SSIM_WINDOW,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity per image (N,), averaged over channels.

    Matches scikit-image's ``structural_similarity(..., data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: local statistics from a Gaussian window
    (11 taps at sigma 1.5), averaged over the region at least half a window from the
    border. Written here rather than taken from a library for speed: the window is
    separable, and 'valid' filtering along each axis is a product with a small banded
    matrix, so all five local statistics of a whole batch cost two batched matmuls
    (~100x faster on CPU than a 1-channel 11x11 conv2d). 'Valid' filtering yields exactly
    the border-cropped region scikit-image averages.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, c, h, w = x.shape
    if min(h, w) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size}, got {(h, w)}")
    x, y = x.float(), y.float()
    gh = _valid_filter_matrix(h, win_size, sigma, x.dtype, x.device)  # (h', h)
    gw = _valid_filter_matrix(w, win_size, sigma, x.dtype, x.device)  # (w', w)
    stack = torch.stack([x, y, x * x, y * y, x * y])  # (5, N, C, H, W)
    ux, uy, uxx, uyy, uxy = gh @ stack @ gw.T  # each (N, C, h', w')
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(1)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions whose posterior mean varies across the data
    (Burda et al. 2016: Cov_x(E_q[z_u]) > 0.01)."""
    return int((mu.var(0, unbiased=True) > threshold).sum())


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), as in FID:
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    covmean = _sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise, as pytorch-fid does
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = _sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    from scipy import linalg

    import warnings

    with warnings.catch_warnings():
        # Singular products (dead ReLU features) are handled by the caller's regularised retry.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        out = linalg.sqrtm(a)  # older SciPy may return (root, error) for some inputs
    return out[0] if isinstance(out, tuple) else out


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; ``labels`` 1 marks the positive (anomalous) class."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels), np.asarray(scores)))
