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


# ------------------------------------------------------------------------------ inpainting and anomalies
def plot_image_rows(rows: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """One labelled row per (label, images (n, C, H, W)) pair, e.g. original / masked / inpainted."""
    plt = _plt()
    n = max(len(x) for _, x in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.75 + 1.2, len(rows) * 0.85 + 0.6), dpi=120,
                             squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], rows):
        _show(ax, image_grid(imgs.cpu(), nrow=n))
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_score_histogram(scores: np.ndarray, threshold: float, path: str | Path, title: str = "",
                         xlabel: str = "anomaly score") -> Path:
    """Histogram of anomaly scores (higher = more anomalous) with the threshold as a red line."""
    plt = _plt()
    scores = np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.hist(scores, bins=min(60, max(10, len(scores) // 10)), color="0.55")
    ax.axvline(threshold, color="red", lw=1.5,
               label=f"threshold {threshold:.4g} ({int((scores > threshold).sum())} of {len(scores)} above)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title or "anomaly scores")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path,
                    title: str = "ROC per normal class") -> Path:
    """One ROC curve per entry label -> (false positive rates, true positive rates, AUROC)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.2, label=f"{label}: {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right", title="normal class: AUROC", title_fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
