"""Metrics: pure functions on tensors, each tested against an independent reference.

Images are float tensors (N, C, H, W) in [0, 1]; per-image metrics return (N,).
"""

from __future__ import annotations

import numpy as np
import torch

# SSIM and MS-SSIM live below the models (the msssim likelihood is built on them); they are
# metrics like the others here.
from vaelab.similarity import (
    MS_SSIM_WEIGHTS,
    SSIM_WINDOW,
    ms_ssim,
    ms_ssim_min_size,
    ssim,
)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel, per image (N,)."""
    return (x - y).square().flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image (N,)."""
    return 10 * torch.log10(data_range**2 / (mse(x, y) + eps))


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
    import warnings

    from scipy import linalg

    with warnings.catch_warnings():
        # Singular products (dead ReLU features) are handled by the caller's regularised retry.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        out = linalg.sqrtm(a)  # older SciPy may return (root, error) for some inputs
    return out[0] if isinstance(out, tuple) else out


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; ``labels`` 1 marks the positive (anomalous) class. Both
    classes must be present: with one the area is undefined, and that is an error."""
    from sklearn.metrics import roc_auc_score

    from vaelab.errors import VaelabError

    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(present) < 2:
        which = "normal" if len(present) and present[0] == 1 else "anomalous"
        raise VaelabError(f"AUROC needs normal and anomalous images, and these {len(labels)} have no {which} one; "
                          "score more (or a random sample of the) test images")
    return float(roc_auc_score(labels, np.asarray(scores)))


__all__ = ["MS_SSIM_WEIGHTS", "SSIM_WINDOW", "active_units", "auroc", "frechet_distance", "ms_ssim", "ms_ssim_min_size",
           "mse", "psnr", "ssim"]
