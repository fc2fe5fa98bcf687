"""dSprites (Matthey et al. 2017), generated here instead of downloaded.

737,280 binary 64x64 images: every combination of the factors
``color (1) x shape (3: square, ellipse, heart) x scale (6, 0.5..1) x
orientation (40, 0..2pi) x posX (32, 0..1) x posY (32, 0..1)`` once, in the
original's order: the index of an image is the mixed-radix number of its factor
classes over ``FACTOR_SIZES`` (posY varies fastest).

How the original was drawn (it was rendered with the LOVE engine; the code was never
published) was recovered from the 320 frames of the animation in its repository
(deepmind/dsprites-dataset, ``dsprites.gif``: scale, rotation and position sweeps of
all three shapes at known factors). The geometry below reproduces those frames to
48 of their 1,310,720 pixels (square 8, ellipse 12, heart 28), every one a pixel
centre that growing or shrinking the shape by 0.1% (~0.01 px) moves across its
outline. In pixel units, with pixel (row r, column c) centred at (c + 0.5, r + 0.5):

- the shape's centre is at 16 + 32 * posX (columns) and 16 + 32 * posY (rows), i.e.
  the middle half of the image, so no shape ever leaves it. posX runs left to right
  (the original's notebook shows posX = 0 on the left); that posY runs downwards is
  an assumption (LOVE's y axis points down; the animation cannot tell up from down);
- at scale 1 the square's half side is ``HALF = 9.6`` (side 0.3 * 64); the ellipse
  has semi-axes 1.33 * HALF along x and HALF / 1.33 along y (the square's area);
  the heart is the parametric heart x = sin^3 t, y = (13 cos t - 5 cos 2t - 2 cos 3t
  - cos 4t) / 14.5 + 0.15 (times HALF, y up) as a 160-gon; scale multiplies all;
- orientation rotates the shape counterclockwise (as displayed) about that centre
  (reading the animation's one rotation sweep as orientation 0 -> 39, as its scale
  sweeps first run 0.5 -> 1);
- a pixel is on when its centre is inside the shape (no anti-aliasing).

Orientation takes 40 values ``linspace(0, 2pi, 40)`` *including* 2pi, as the
original's metadata lists them, so orientation 39 draws exactly what orientation 0
draws (the animation shows the same): 18,432 images appear twice. The quirk is the
original's and is kept.

Rendering: a shape meets each pixel row in at most two intervals, so for each
(shape, scale, orientation) the crossings of its outline with the 32 x 64 row lines
are computed once, and every image row is one lookup in a table of 64-pixel rows
indexed by (first column, end column). No per-image Python loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vaelab.data.download import cache_dir
from vaelab.data.memory import size_text
from vaelab.data.sets import FactorLabels
from vaelab.errors import DataError
from vaelab.io import atomic_path, write_json
from vaelab.progress import announce
from vaelab.progress import bar as progress_bar

if TYPE_CHECKING:
    from vaelab.config import DataConfig

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
N_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
IMAGE_SIZE = 64
HALF = 9.6  # the square's half side at scale 1, in pixels (0.15 * 64)
ELLIPSE_STRETCH = 1.33  # ellipse semi-axes HALF * 1.33 and HALF / 1.33
HEART_VERTICES = 160
CACHE_VERSION = 1  # bump when the drawing changes: old caches are then rebuilt
_SPRITE = 32 * 32  # images per (shape, scale, orientation): all positions


def factor_values() -> tuple[np.ndarray, ...]:
    """The possible value of each factor, as the original's ``latents_values`` holds them."""
    return (np.ones(1), np.arange(1.0, 4.0), np.linspace(0.5, 1.0, 6),
            np.linspace(0.0, 2 * np.pi, 40), np.linspace(0.0, 1.0, 32), np.linspace(0.0, 1.0, 32))


def _bases() -> np.ndarray:
    # Place value of each factor in the mixed-radix index: (6,) int64.
    return np.concatenate([np.cumprod(FACTOR_SIZES[::-1])[::-1][1:], [1]]).astype(np.int64)


def factor_index(classes) -> int | np.ndarray:
    """Image index of factor classes: (6,) -> int, or (N, 6) -> (N,) int64."""
    c = np.asarray(classes)
    if c.shape[-1:] != (len(FACTOR_SIZES),) or c.ndim > 2:
        raise DataError(f"dSprites factor classes must have shape (6,) or (N, 6), got {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise DataError(f"dSprites factor classes must be integers, got {c.dtype}")
    for j, (name, size) in enumerate(zip(FACTOR_NAMES, FACTOR_SIZES)):
        bad = (c[..., j] < 0) | (c[..., j] >= size)
        if bad.any():
            raise DataError(f"dSprites factor {name} = {int(c[..., j][bad].flat[0])} is out of range 0..{size - 1}")
    index = c.astype(np.int64) @ _bases()
    return int(index) if c.ndim == 1 else index


def index_factors(index) -> np.ndarray:
    """Factor classes of image indices: int -> (6,), (N,) -> (N, 6) int64."""
    i = np.asarray(index)
    if not np.issubdtype(i.dtype, np.integer):
        raise DataError(f"dSprites image indices must be integers, got {i.dtype}")
    bad = (i < 0) | (i >= N_IMAGES)
    if bad.any():
        raise DataError(f"dSprites image index {int(i[bad].flat[0])} is out of range 0..{N_IMAGES - 1}")
    return (i.astype(np.int64)[..., None] // _bases()) % np.asarray(FACTOR_SIZES, dtype=np.int64)


def _outline(shape: int) -> np.ndarray:
    """Polygon of the square (0) or heart (2) at scale 1, counterclockwise, y up: (K, 2)."""
    if shape == 0:
        return HALF * np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    t = 2 * np.pi * np.arange(HEART_VERTICES) / HEART_VERTICES
    y = (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 14.5 + 0.15
    return HALF * np.stack([np.sin(t) ** 3, y], axis=1)


def _row_intervals(shape: int, scale: float, theta: float, dy: np.ndarray) -> np.ndarray:
    """Where the shape meets horizontal lines ``dy`` (offsets from its centre, y down).

    Returns (..., 2, 2): up to two [start, end) intervals of x offsets per line, +inf
    for an absent one. A pixel centre at offset x is inside iff start <= x < end.
    """
    c, s = np.cos(theta), np.sin(theta)
    if shape == 1:
        # Ellipse (u/a)^2 + (w/b)^2 <= 1 in its own frame (u right, w up), rotated by
        # theta: solve the quadratic A x^2 + B x + C <= 0 along each line.
        a, b = HALF * scale * ELLIPSE_STRETCH, HALF * scale / ELLIPSE_STRETCH
        qa = c * c / a**2 + s * s / b**2
        qb = 2 * dy * c * s * (1 / b**2 - 1 / a**2)
        qc = dy**2 * (s * s / a**2 + c * c / b**2) - 1
        disc = qb * qb - 4 * qa * qc
        root = np.sqrt(np.maximum(disc, 0.0))
        lo = np.where(disc > 0, (-qb - root) / (2 * qa), np.inf)
        hi = np.where(disc > 0, (-qb + root) / (2 * qa), np.inf)
        out = np.full(dy.shape + (2, 2), np.inf)
        out[..., 0, 0], out[..., 0, 1] = lo, hi
        return out
    p = _outline(shape) * scale  # (K, 2), y up
    # Into image offsets: rotate counterclockwise (y up), then flip y to point down.
    px = c * p[:, 0] - s * p[:, 1]  # (K,)
    py = -(s * p[:, 0] + c * p[:, 1])  # (K,)
    x0, y0, x1, y1 = px, py, np.roll(px, -1), np.roll(py, -1)
    line = dy[..., None]  # (..., 1) against (K,) edges
    # Half-open rule: an edge counts when exactly one end is below the line, so a
    # vertex on a line is counted once and crossings always pair up.
    crosses = (y0 > line) != (y1 > line)  # (..., K)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x0 + (line - y0) * (x1 - x0) / (y1 - y0)
    x = np.sort(np.where(crosses, x, np.inf), axis=-1)[..., :4]  # at most 4 crossings
    return x.reshape(dy.shape + (2, 2))


def _row_table() -> np.ndarray:
    # table[first, end] is a 64-pixel row with columns first..end-1 on: (65, 65, 64) uint8.
    cols = np.arange(IMAGE_SIZE)
    edge = np.arange(IMAGE_SIZE + 1)
    on = (cols >= edge[:, None, None]) & (cols < edge[None, :, None])
    return np.where(on, 255, 0).astype(np.uint8)


def _render_sprite(sprite: int, table: np.ndarray) -> np.ndarray:
    """All 1,024 positions of one (shape, scale, orientation): (32 posX, 32 posY, 64, 64) uint8."""
    shape, scale_i, orient_i = sprite // 240, (sprite // 40) % 6, sprite % 40
    _, _, scales, orients, pos_x, pos_y = factor_values()
    centre_x = 16.0 + 32.0 * pos_x  # (32,) in pixels
    centre_y = 16.0 + 32.0 * pos_y  # (32,)
    rows = np.arange(IMAGE_SIZE) + 0.5
    dy = rows[None, :] - centre_y[:, None]  # (32 posY, 64 rows)
    iv = _row_intervals(shape, scales[scale_i], orients[orient_i], dy)  # (32, 64, 2, 2)
    # Column c is on iff start <= c + 0.5 - centre_x < end, i.e. ceil(start + centre_x - 0.5) <= c
    # < ceil(end + centre_x - 0.5); clipping to [0, 64] keeps +inf (no interval) empty.
    edges = iv[None] + (centre_x - 0.5)[:, None, None, None, None]  # (32 posX, 32 posY, 64, 2, 2)
    edges = np.clip(np.ceil(edges), 0, IMAGE_SIZE).astype(np.intp)
    out = table[edges[..., 0, 0], edges[..., 0, 1]]  # (32, 32, 64, 64)
    if shape == 2:  # only the heart's notch makes a second interval
        out |= table[edges[..., 1, 0], edges[..., 1, 1]]
    return out


def render_dsprites(indices=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the images at ``indices`` (default all, in order), no cache involved.

    Returns images (n, 1, 64, 64) uint8 in {0, 255}, factor classes (n, 6) int64 and
    factor values (n, 6) float64 (shape as 1, 2, 3, as in the original). Each distinct
    (shape, scale, orientation) among the indices is drawn once, for all positions.
    """
    index = np.arange(N_IMAGES) if indices is None else np.asarray(indices).reshape(-1)
    classes = index_factors(index)  # validates the indices
    table = _row_table()
    sprite = index // _SPRITE
    images = np.empty((len(index), 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for s in np.unique(sprite):
        at = np.nonzero(sprite == s)[0]
        images[at, 0] = _render_sprite(int(s), table).reshape(_SPRITE, IMAGE_SIZE, IMAGE_SIZE)[index[at] % _SPRITE]
    return images, classes, _values(classes)


def _values(classes: np.ndarray) -> np.ndarray:
    # (n, 6) classes -> (n, 6) float64 factor values.
    return np.stack([v[classes[:, j]] for j, v in enumerate(factor_values())], axis=1)


# ---- the cache: images.npy, classes.npy, values.npy and meta.json in one folder ----

def _expected(n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {"images": ((n, 1, IMAGE_SIZE, IMAGE_SIZE), np.dtype(np.uint8)),
            "classes": ((n, 6), np.dtype(np.int64)),
            "values": ((n, 6), np.dtype(np.float64))}


def _read_cache(root: Path, n: int, mmap: bool) -> tuple[np.ndarray, ...] | None:
    """The cached arrays cut to the first ``n`` images, or None when absent, stale or damaged."""
    try:
        meta = json.loads((root / "meta.json").read_text())
        have = int(meta["n"])
        if meta.get("version") != CACHE_VERSION or have < n:
            return None
        arrays = []
        for name, (shape, dtype) in _expected(have).items():
            path = root / f"{name}.npy"
            a = np.load(path, mmap_mode="c")  # header read and size-checked; data paged in lazily
            # A truncated file fails in np.load; one with the right header but wrong
            # length (or a different shape or dtype) fails here.
            if a.shape != shape or a.dtype != dtype or path.stat().st_size != a.offset + a.nbytes:
                return None
            arrays.append(a[:n])
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        return None
    images, classes, values = arrays
    # Spot check: the first, last and a middle image of each end of the set, redrawn.
    probe = np.unique([0, n // 2, n - 1])
    if not np.array_equal(np.asarray(images[probe]), render_dsprites(probe)[0]) or \
            not np.array_equal(np.asarray(classes[probe]), index_factors(probe)):
        return None
    if not mmap:
        images, classes, values = (np.array(a) for a in (images, classes, values))
    return images, classes, values


def _write_cache(root: Path, n: int) -> None:
    """Draw the first ``n`` images into ``root``, each file written atomically; meta.json last."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # the cache is invalid until meta.json is back
    table = _row_table()
    sprites = -(-n // _SPRITE)
    bar = progress_bar(sprites, "dSprites", unit="sprite")
    try:
        with atomic_path(root / "images.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 1, IMAGE_SIZE, IMAGE_SIZE))
            for s in range(sprites):
                lo, hi = s * _SPRITE, min(n, (s + 1) * _SPRITE)
                out[lo:hi, 0] = _render_sprite(s, table).reshape(_SPRITE, IMAGE_SIZE, IMAGE_SIZE)[: hi - lo]
                if bar is not None:
                    bar.update(1)
            out.flush()
            del out
    finally:
        if bar is not None:
            bar.close()
    classes = index_factors(np.arange(n))
    for name, array in (("classes", classes), ("values", _values(classes))):
        with atomic_path(root / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, array)  # to the open file: np.save would add ".npy" to the temporary name
    write_json(root / "meta.json", {"version": CACHE_VERSION, "n": n, "factor_names": list(FACTOR_NAMES),
                                    "factor_sizes": list(FACTOR_SIZES)})


def load_dsprites(root: str | os.PathLike | None = None, *, limit: int | None = None,
                  mmap: bool = True, log: Callable[[str], None] | None = print
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dSprites as (images (N, 1, 64, 64) uint8 0/255, classes (N, 6) int64, values (N, 6) float64).

    The arrays are cached in ``root`` (default ``cache_dir() / "dsprites"``), drawn on
    first use (about 3 GB of images) and drawn again when the cache is missing,
    truncated, of another shape or dtype, or from another version of this drawing.
    ``limit`` keeps the first ``limit`` images (note: in the original's order these are
    all squares; for the cache's own tests; ``data.limit`` takes a random subset of
    all of them instead); a cache holding at least that many is reused. ``mmap`` maps the
    images copy-on-write instead of reading 3 GB into memory. ``log`` gets one line before
    the images are drawn (None: silent).
    """
    n = N_IMAGES if limit is None else int(limit)
    if not 0 < n <= N_IMAGES:
        raise DataError(f"dSprites limit must be in 1..{N_IMAGES}, got {limit}")
    root = Path(root) if root is not None else cache_dir() / "dsprites"
    found = _read_cache(root, n, mmap)
    if found is None:
        if log is not None:
            announce(log, f"drawing {n:,} dSprites images ({size_text(n * IMAGE_SIZE * IMAGE_SIZE)})",
                     why="the first use here; nothing is downloaded", cost="once, seconds to minutes",
                     where=f"cached in {root} for every later use")
        try:
            _write_cache(root, n)
        except OSError as e:
            raise DataError(f"cannot write the dSprites cache in {root}: {e.strerror or e}") from None
        found = _read_cache(root, n, mmap)
        if found is None:
            raise DataError(f"the dSprites cache in {root} is unreadable right after writing it")
    return found


def load_for_config(cfg: DataConfig) -> tuple:
    """``DATASETS["dsprites"]``: every image for training, no test split.

    As in the disentanglement literature, dSprites is evaluated on its training
    images (there is no held-out split; ``data.val`` may still carve one out).
    Labels are the shape (0 square, 1 ellipse, 2 heart) so class-based tools work;
    the full factor classes (N, 6), their names and sizes ride along as ``ImageSet.factors``,
    ``.factor_names`` and ``.factor_sizes``. The cache lives
    in ``data_dir/dsprites`` when a data_dir is given, else in ``cache_dir()/dsprites``.
    """
    root = Path(cfg.data_dir).expanduser() / "dsprites" if cfg.data_dir else None
    images, classes, _ = load_dsprites(root)
    labels = FactorLabels(classes, FACTOR_NAMES, FACTOR_SIZES)
    return (images, classes[:, 1], None, labels), None, list(SHAPE_NAMES)


__all__ = ["FACTOR_NAMES", "FACTOR_SIZES", "N_IMAGES", "SHAPE_NAMES", "factor_index", "factor_values",
           "index_factors", "load_dsprites", "load_for_config", "render_dsprites"]
