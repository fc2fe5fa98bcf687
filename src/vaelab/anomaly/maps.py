"""Per-pixel anomaly maps (``vaelab detect --maps``): where an image differs from its reconstruction.

The map of an image x (C, H, W) in [0, 1] with reconstruction x_hat (through the posterior mean)
is the squared error per pixel, summed over the channels: m[i, j] = sum_c (x_hat - x)[c, i, j]^2,
so that its mean over the pixels, divided by C, is the image's ``mse`` score. ``sigma`` smooths
it with a Gaussian as ``scipy.ndimage.gaussian_filter(m, sigma)`` does (border mode 'reflect',
the kernel cut at 4 sigma), the usual way (anomalib, PaDiM) to turn speckled pixel errors
into regions::

    from vaelab.anomaly.maps import error_maps
    m = error_maps(run.model, x, sigma=2.0)   # x (N, C, H, W) in [0, 1] -> (N, H, W) float32
"""

from __future__ import annotations

import math

import numpy as np
import torch

TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: the kernel reaches int(4 sigma + 0.5) pixels


def _reflect(j: np.ndarray, n: int) -> np.ndarray:
    """Indices outside 0..n-1 mirrored as scipy's mode 'reflect' does (d c b a | a b c d | d c b a)."""
    m = np.mod(j, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def smoothing_matrix(n: int, sigma: float, truncate: float = TRUNCATE) -> torch.Tensor:
    """(n, n) matrix S with S @ v = scipy.ndimage.gaussian_filter1d(v, sigma) for a length-n v.

    Row i holds the normalised Gaussian taps exp(-k^2 / 2 sigma^2), |k| <= radius, added at the
    reflected positions i + k; a radius longer than the side reflects more than once, as scipy does."""
    radius = int(truncate * sigma + 0.5)
    k = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (k / sigma) ** 2)
    g /= g.sum()
    m = np.zeros((n, n))
    rows = np.repeat(np.arange(n), len(k))
    cols = _reflect(np.arange(n)[:, None] + k[None, :], n).ravel()
    np.add.at(m, (rows, cols), np.tile(g, n))
    return torch.from_numpy(m).float()


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-smoothed maps (N, H, W): separable, one matrix product per axis."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"the smoothing sigma must be a positive number of pixels, got {sigma!r}")
    h, w = maps.shape[-2:]
    sh, sw = smoothing_matrix(h, sigma).to(maps.device), smoothing_matrix(w, sigma).to(maps.device)
    return sh @ maps @ sw.T


def _labels(model, xb: torch.Tensor, yb: torch.Tensor | None) -> torch.Tensor | None:
    # What a conditional model reads: the given labels, else each image's most probable class.
    if not model.conditional:
        return None
    return yb.to(xb.device) if yb is not None else model.infer_labels(xb)


@torch.no_grad()
def error_maps(model, x: torch.Tensor, y: torch.Tensor | None = None, sigma: float | None = None,
               batch_size: int = 1000) -> torch.Tensor:
    """Squared reconstruction error per pixel, summed over channels: (N, H, W) float32 on the CPU,
    for images ``x`` (N, C, H, W) in [0, 1]; smoothed with a Gaussian of ``sigma`` pixels if given.
    A conditional model reads ``y``, else the most probable class of each image."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].float().to(device)
        yb = _labels(model, xb, None if y is None else y[i:i + batch_size])
        m = (model.reconstruct(xb, yb).float() - xb).square().sum(1)  # (B, H, W)
        out.append((smooth_maps(m, sigma) if sigma else m).cpu())
    return torch.cat(out)


def save_maps(path, maps: torch.Tensor) -> None:
    """``maps`` (N, H, W) as a float32 .npy file, written atomically."""
    from vaelab.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, maps.numpy().astype(np.float32, copy=False))


@torch.no_grad()
def write_maps(model, x: torch.Tensor, y: torch.Tensor | None, scores: np.ndarray, folder, sigma: float | None = None,
               show: int = 16, score: str = "") -> dict:
    """``folder/anomaly_maps.npy`` (N, H, W) float32, the maps of every image ``x`` (N, C, H, W), and
    ``folder/anomaly_maps.png``: the ``show`` images with the highest ``scores``, their
    reconstructions and their maps as heat maps. Returns the two paths."""
    from pathlib import Path

    from vaelab import plots

    folder = Path(folder)
    maps = error_maps(model, x, y, sigma)
    save_maps(folder / "anomaly_maps.npy", maps)
    order = torch.from_numpy(np.argsort(-np.asarray(scores), kind="stable")[:show].copy())
    xs = x[order].float().to(next(model.parameters()).device)
    recons = model.reconstruct(xs, _labels(model, xs, None if y is None else y[order])).cpu()
    smooth = f", smoothed (sigma {sigma:g} px)" if sigma else ""
    per_row = 8
    captions = [f"anomaly ranks {i + 1}-{min(i + per_row, len(order))} of {len(x)} by {score or 'score'}"
                for i in range(0, len(order), per_row)]
    png = plots.plot_anomaly_maps(xs.cpu(), recons, maps[order].numpy(), folder / "anomaly_maps.png",
                                  title=f"the {len(order)} most anomalous images: squared error per pixel{smooth}",
                                  per_row=per_row, captions=captions)
    return {"npy": str(folder / "anomaly_maps.npy"), "png": str(png)}


__all__ = ["error_maps", "save_maps", "smooth_maps", "smoothing_matrix", "write_maps"]
