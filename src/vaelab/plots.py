"""Figures: functions that take tensors or histories and save PNGs.

Sampling returns tensors; only this module touches matplotlib. Every figure is
written atomically and the matplotlib figure is closed after saving.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vaelab.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; idempotent
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=fig.dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def to_numpy_images(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W) or (N, H, W, 3) for imshow."""
    a = x.detach().float().clamp(0, 1).cpu().numpy()
    return a[:, 0] if a.shape[1] == 1 else a.transpose(0, 2, 3, 1)


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images into one array with a ``pad``-pixel white border."""
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = x[i]
    return to_numpy_images(grid[None])[0]


def _show(ax, img: np.ndarray) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_grid(x: torch.Tensor, path: str | Path, title: str = "", nrow: int | None = None) -> Path:
    plt = _plt()
    img = image_grid(x.cpu(), nrow)
    scale = 6 / max(img.shape[:2])
    fig, ax = plt.subplots(figsize=(max(3, img.shape[1] * scale), max(3, img.shape[0] * scale) + 0.4), dpi=120)
    _show(ax, img)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_reconstructions(x: torch.Tensor, x_hat: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Two rows of up to 16 images per row pair: originals above, reconstructions below."""
    plt = _plt()
    n = x.shape[0]
    per_row = min(n, 16)
    rows = math.ceil(n / per_row)
    fig, axes = plt.subplots(2 * rows, 1, figsize=(per_row * 0.75 + 1.2, 2 * rows * 0.85 + 0.6), dpi=120,
                             squeeze=False)
    for r in range(rows):
        sl = slice(r * per_row, (r + 1) * per_row)
        for k, (imgs, label) in enumerate(((x[sl], "original"), (x_hat[sl], "reconstruction"))):
            ax = axes[2 * r + k, 0]
            _show(ax, image_grid(imgs.cpu(), nrow=per_row))
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title or "originals (top) and reconstructions (bottom)", fontsize=10)
    return save_figure(fig, path)


def plot_history(history: list[dict], path: str | Path, title: str = "loss per epoch") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    epochs = [r["epoch"] for r in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        vals = [r.get(key) for r in history]
        if any(v is not None and v != "" for v in vals):
            ax.plot(epochs, [float(v) if v not in (None, "") else np.nan for v in vals], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
