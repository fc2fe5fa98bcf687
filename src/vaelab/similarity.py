"""Structural similarity of images: SSIM and multi-scale SSIM, pure functions on tensors.

Here, below the models, because the ``msssim`` likelihood (a reconstruction loss) is built on
them; ``vaelab.evaluation.metrics`` offers them beside the other metrics. Images are float
tensors (N, C, H, W); per-image values come back as (N,). Tested against scikit-image (SSIM)
and pytorch-msssim (MS-SSIM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _valid_filter_matrix(n: int, win_size: int, sigma: float, dtype, device) -> torch.Tensor:
    """(n - win_size + 1, n) banded matrix: row i holds the Gaussian window at offset i."""
    r = torch.arange(win_size, dtype=dtype, device=device) - (win_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    m = torch.zeros(n - win_size + 1, n, dtype=dtype, device=device)
    for i in range(n - win_size + 1):
        m[i, i:i + win_size] = g
    return m


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, win: tuple[int, int], sigma: float, c1: float,
               c2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps (N, C, H - wh + 1, W - ww + 1) of float images (N, C, H, W),
    local statistics from a separable Gaussian window of ``win`` = (wh, ww) taps, 'valid' only.

    The window is separable, and 'valid' filtering along each axis is a product with a small
    banded matrix, so all five local statistics of a whole batch cost two batched matmuls
    (~100x faster on CPU than a 1-channel 11x11 conv2d)."""
    h, w = x.shape[-2:]
    gh = _valid_filter_matrix(h, win[0], sigma, x.dtype, x.device)  # (h', h)
    gw = _valid_filter_matrix(w, win[1], sigma, x.dtype, x.device)  # (w', w)
    stack = torch.stack([x, y, x * x, y * y, x * y])  # (5, N, C, H, W)
    ux, uy, uxx, uyy, uxy = gh @ stack @ gw.T  # each (N, C, h', w')
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    cs = (2 * vxy + c2) / (vx + vy + c2)
    return (2 * ux * uy + c1) / (ux * ux + uy * uy + c1) * cs, cs


SSIM_WINDOW = 11  # the Gaussian window's taps: images need at least this many pixels a side


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = SSIM_WINDOW,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity per image (N,), averaged over channels.

    Matches scikit-image's ``structural_similarity(..., data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: local statistics from a Gaussian window
    (11 taps at sigma 1.5), averaged over the region at least half a window from the
    border. Written here rather than taken from a library for speed (see ``_ssim_maps``);
    'valid' filtering yields exactly the border-cropped region scikit-image averages.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    h, w = x.shape[-2:]
    if min(h, w) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size}, got {(h, w)}")
    s, _ = _ssim_maps(x.float(), y.float(), (win_size, win_size), sigma, (k1 * data_range) ** 2, (k2 * data_range) ** 2)
    return s.mean(dim=(2, 3)).mean(1)


# Wang, Simoncelli & Bovik (2003), "Multi-scale structural similarity for image quality
# assessment": the exponents of the five scales, finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MIN_WINDOW = 3  # the smallest window (taps per axis) a scale may be measured with


def ms_ssim_min_size(levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """The smallest image side ``ms_ssim`` accepts: its coarsest scale (the side halved, rounded
    down, ``levels - 1`` times) must hold a 3-tap window. 48 for the standard five scales."""
    return MIN_WINDOW * 2 ** (levels - 1)


def _scale_window(side: int, win_size: int) -> int:
    # The largest odd window that fits the scale: win_size where it fits, else cut to the side.
    return min(win_size, side if side % 2 else side - 1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Multi-scale SSIM per image (N,) of (N, C, H, W) images (Wang et al. 2003).

    Scale j = 1..M (M = len(weights), five): the images average-pooled 2x2 (j - 1) times;
    MS-SSIM = cs_1^w_1 ... cs_{M-1}^w_{M-1} * SSIM_M^w_M per channel, with cs the mean
    contrast-structure term and SSIM the mean SSIM of the scale ('valid' Gaussian windows,
    11 taps at sigma 1.5, as ``ssim``), then averaged over channels. Negative terms (anti-
    correlated images) count as 0, as in pytorch-msssim (whose relu this is; the gradient of a
    loss built on it stays finite). Where every scale is at least 11 pixels (sides of 176
    and more) this is the standard definition, and pytorch-msssim's value when the sides halve
    evenly (multiples of 16: an odd side loses its last row or column here when pooled, and is
    zero-padded there). Smaller images down to ``ms_ssim_min_size()`` (48) keep the five
    scales, but a scale narrower than the window is measured with the window cut to it (the
    same sigma, renormalised): at 64x64 the 8x8 and 4x4 scales use 7 and 3 taps.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ms_ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    h, w = x.shape[-2:]
    levels, least = len(weights), ms_ssim_min_size(len(weights))
    if min(h, w) < least:
        raise ValueError(f"ms_ssim needs images of at least {least}x{least} ({levels} scales, the coarsest at least "
                         f"{MIN_WINDOW}x{MIN_WINDOW}), got {h}x{w}; use ssim for smaller images")
    x, y = x.float(), y.float()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    out = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)  # (N, C)
    for j, weight in enumerate(weights):
        if j:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        win = tuple(_scale_window(n, win_size) for n in x.shape[-2:])
        s, cs = _ssim_maps(x, y, win, sigma, c1, c2)
        term = (s if j == levels - 1 else cs).mean(dim=(2, 3)).clamp_min(0)  # (N, C)
        # 0^w without the infinite gradient of pow at 0 (which times relu's 0 would be NaN).
        out = out * torch.where(term > 0, term.clamp_min(1e-30) ** weight, 0.0)
    return out.mean(1)


__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim", "ms_ssim_min_size", "ssim"]
