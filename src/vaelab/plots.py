"""Figures: functions that take tensors or histories and save PNGs.

Sampling returns tensors; only this module touches matplotlib. Every figure is
written atomically and the matplotlib figure is closed after saving.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vaelab.errors import ConfigError
from vaelab.io import atomic_path
from vaelab.rundir import ID_TEXT, RunDir

MAX_PIXELS = 2**16  # matplotlib's Agg draws figures less than this many pixels a side


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; idempotent
    import matplotlib.pyplot as plt

    return plt


def figure_formats() -> tuple[str, ...]:
    """The extensions (formats) matplotlib writes a figure as, sorted: png, pdf, svg, ..."""
    _plt()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return tuple(sorted(FigureCanvasAgg.get_supported_filetypes()))


def check_figure_path(path: str | Path, option: str | None = "--out") -> str:
    """The format a figure saved at ``path`` is written in: its extension, png when it has none.
    An extension matplotlib cannot write is refused in one line naming the ones it can (commands
    call this before any work; ``save_figure`` again before writing)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    formats = figure_formats()
    if fmt not in formats:
        raise ConfigError(f"{option + ' ' if option else ''}{path}: matplotlib cannot write a figure as .{fmt}; "
                          f"give the file one of the extensions {', '.join('.' + f for f in formats)}")
    return fmt


def save_figure(fig, path: str | Path) -> Path:
    """Save and close ``fig``. A PNG saved inside a run directory records the id of that run's
    weights (a tEXt chunk, ``vaelab.rundir``): the figure is of the weights there now. A format
    matplotlib cannot write, or a figure larger than it draws, is refused in one line and
    nothing is written."""
    path = Path(path)
    try:
        fmt = check_figure_path(path, None)
        run = RunDir.owning(path) if fmt == "png" else None
        meta = {ID_TEXT: run.checkpoint_id()} if run is not None else None
        width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
        if max(width, height) >= MAX_PIXELS:
            raise ConfigError(f"{path}: the figure would be {width:,} x {height:,} pixels, more than matplotlib "
                              f"draws ({MAX_PIXELS:,} a side); ask for fewer images")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=fig.dpi, bbox_inches="tight", metadata=meta)
    finally:
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


# ------------------------------------------------------------------------------ sweeps
def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _label(v) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def plot_metrics_vs(rows: list[dict], key: str, others: list[str], metrics: tuple[str, ...],
                    path: str | Path) -> Path:
    """One panel per metric against the swept ``key``; one line per setting of the ``others``.
    Numeric values go on a numeric axis; anything else (losses, layer lists) is categorical."""
    plt = _plt()
    values = []
    for r in rows:
        if _label(r[key]) not in [_label(v) for v in values]:
            values.append(r[key])
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        values = sorted(values)
    pos = {_label(v): (float(v) if numeric else i) for i, v in enumerate(values)}
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(", ".join(f"{o.split('.', 1)[1]}={_label(r.get(o))}" for o in others), []).append(r)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), dpi=110, squeeze=False)
    name = key.split(".", 1)[-1]
    for ax, m in zip(axes[0], metrics):
        for label, grp in groups.items():
            pts = sorted((pos[_label(r[key])], _num(r.get(m))) for r in grp if _num(r.get(m)) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label=label or None)
        if not numeric:
            ax.set_xticks(list(pos.values()), list(pos), rotation=30 if len(pos) > 3 else 0, fontsize=7)
        ax.set_xlabel(name)
        ax.set_title(m)
        ax.grid(alpha=0.3)
    if len(groups) > 1:
        axes[0, -1].legend(fontsize=7)
    fig.suptitle(f"test metrics against {name}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_metrics_by_trial(rows: list[dict], metrics: tuple[str, ...], path: str | Path) -> Path:
    """One bar panel per metric, one bar per trial (for trials that are not a grid)."""
    plt = _plt()
    names = [r["trial"] for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.2, 0.55 * len(names) + 1.2) * len(metrics), 3.6),
                             dpi=110, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        vals = [_num(r.get(m)) or 0.0 for r in rows]
        ax.bar(range(len(names)), vals, color="0.45")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(m)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("test metrics per trial", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_image_blocks(blocks: list[tuple[str, torch.Tensor]], path: str | Path, nrow: int = 10,
                      title: str = "", per_row: int = 4) -> Path:
    """Labelled image grids side by side (e.g. the same test images reconstructed by each trial)."""
    plt = _plt()
    cols = min(per_row, len(blocks))
    rows = math.ceil(len(blocks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.2 * rows + 0.4), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, x) in zip(axes.flat, blocks):
        _show(ax, image_grid(x.cpu(), nrow=nrow))
        ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ inpainting and anomalies
def plot_image_rows(rows: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """One labelled row per (label, images (n, C, H, W)) pair, e.g. original / masked / inpainted."""
    plt = _plt()
    n = max(len(x) for _, x in rows)
    h, w = rows[0][1].shape[-2:]
    row_h = 0.75 * h / w + 0.12  # tiles 0.75 in wide: the rows as tall as their images, so no gaps
    width, height = n * 0.75 + 1.2, len(rows) * row_h + (0.5 if title else 0.1)
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, height), dpi=120, squeeze=False)
    fig.subplots_adjust(left=1.1 / width, right=1 - 0.1 / width, bottom=0.05 / height,
                        top=1 - (0.45 if title else 0.05) / height, hspace=0.12 / row_h)
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


def _tile_maps(maps: np.ndarray, nrow: int, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W) maps like ``image_grid`` tiles images, the borders NaN (drawn transparent)."""
    n, h, w = maps.shape
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), np.nan)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = maps[i]
    return grid


def plot_anomaly_maps(images: torch.Tensor, recons: torch.Tensor, maps: np.ndarray, path: str | Path,
                      title: str = "", per_row: int = 8, captions: list[str] | None = None) -> Path:
    """Per block of ``per_row`` images: the images (N, C, H, W), their reconstructions, and the
    per-pixel maps (N, H, W) as heat maps over the images, one colour scale for all (0 to the
    99.5th percentile of the maps shown, with a colour bar). ``captions``: one line per block."""
    plt = _plt()
    maps = np.asarray(maps, dtype=np.float64)
    n = len(images)
    per_row = min(per_row, n)
    blocks = math.ceil(n / per_row)
    vmax = float(np.percentile(maps, 99.5)) or 1e-12
    cmap = plt.get_cmap("inferno").with_extremes(bad=(0, 0, 0, 0))
    fig, axes = plt.subplots(3 * blocks, 1, figsize=(per_row * 0.9 + 1.8, 3 * blocks * 1.0 + 0.7), dpi=120,
                             squeeze=False, gridspec_kw={"hspace": 0.45})
    for b in range(blocks):
        sl = slice(b * per_row, (b + 1) * per_row)
        rows = (("image", images[sl]), ("reconstruction", recons[sl]), ("error map", images[sl]))
        for k, (label, x) in enumerate(rows):
            ax = axes[3 * b + k, 0]
            grid = image_grid(x.cpu(), nrow=per_row)
            if k == 2:  # the map over a faded grey copy of the image, so the colour is the map's alone
                tiles = _tile_maps(maps[sl], per_row)
                grey = grid.mean(-1) if grid.ndim == 3 else grid
                _show(ax, np.where(np.isnan(tiles), 1.0, 0.35 + 0.3 * grey))  # borders stay white
                heat = ax.imshow(tiles, cmap=cmap, vmin=0, vmax=vmax, alpha=0.85, interpolation="nearest")
            else:
                _show(ax, grid)
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        if captions:
            axes[3 * b, 0].set_title(captions[b], fontsize=8)
    fig.colorbar(heat, ax=axes[:, 0].tolist(), fraction=0.025, pad=0.01,
                 label="squared error per pixel, summed over channels")
    fig.suptitle(title or "per-pixel anomaly maps", fontsize=10)
    return save_figure(fig, path)
