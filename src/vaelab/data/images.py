"""The user's own images: folders of PNG/JPEG files and .npz/.npy arrays.

Everything is returned as uint8 (N, C, H, W) plus optional int64 labels, the same
form as the IDX data sets, so one code path serves all data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaelab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def list_images(folder: Path) -> tuple[list[Path], list[str] | None]:
    """Image files under ``folder``; class names from sub-folders when present."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files = [f for d in subdirs for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        return files, [d.name for d in subdirs]
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return files, None


def load_folder(folder: str | Path, image_size: int | None = None,
                channels: int | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str]]:
    """Load a folder of images as (x uint8 (N, C, H, W), labels or None, class names, file paths)."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    files, classes = list_images(folder)
    if not files:
        raise DataError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays, labels, sizes = [], [], {}
    for f in files:
        try:
            with Image.open(f) as im:
                if channels is None:
                    channels = 1 if im.mode in ("L", "1", "I", "I;16", "F", "LA") else 3
                im = im.convert("L" if channels == 1 else "RGB")
                if image_size is not None:
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            raise DataError(f"cannot read image {f}: {e.__class__.__name__}; remove or replace it") from None
        sizes.setdefault(a.shape[:2], f)
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataError(f"images in {folder} have mixed sizes ({s1[1]}x{s1[0]} in {f1.name}, "
                            f"{s2[1]}x{s2[0]} in {f2.name}); pass --image-size N to resize them all")
        arrays.append(a.reshape(a.shape[0], a.shape[1], -1).transpose(2, 0, 1))
        if classes is not None:
            labels.append(classes.index(f.relative_to(folder).parts[0]))
    x = np.stack(arrays)
    y = np.asarray(labels, dtype=np.int64) if classes is not None else None
    return x, y, classes, [str(f) for f in files]


def to_uint8_nchw(a: np.ndarray, where: str) -> np.ndarray:
    """Accept (N, H, W), (N, H, W, C) or (N, C, H, W); uint8 0-255 or float 0-1."""
    if a.ndim >= 1 and a.shape[0] == 0:
        raise DataError(f"{where} holds no images")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {a.shape}")
    if a.shape[1] not in (1, 3):
        raise DataError(f"{where}: images must have 1 or 3 channels, got shape {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DataError(f"{where}: float images must lie in [0, 1] (got {a.min():.3g}..{a.max():.3g})")
        return np.ascontiguousarray(np.rint(a * 255).astype(np.uint8))
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"{where}: integer images must lie in 0..255")
        return np.ascontiguousarray(a.astype(np.uint8))
    raise DataError(f"{where}: unsupported image dtype {a.dtype}")


def load_array(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``.npz`` (keys x/images and optional y/labels) or ``.npy`` (images only)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array file {path} does not exist")
    try:
        # allow_pickle=False: an .npz from a stranger must never run code.
        obj = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as .npy/.npz: {str(e).splitlines()[0]}") from None
    if isinstance(obj, np.ndarray):
        return to_uint8_nchw(obj, str(path)), None
    with obj:
        keys = set(obj.files)
        xkey = next((k for k in ("x", "images", "x_train", "arr_0") if k in keys), None)
        if xkey is None:
            raise DataError(f"{path} has no image array; name it 'x' or 'images' (found {sorted(keys)})")
        ykey = next((k for k in ("y", "labels", "y_train") if k in keys), None)
        try:  # .npz members are read lazily: a pickled member is refused here
            xa = obj[xkey]
            ya = obj[ykey] if ykey else None
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
        x = to_uint8_nchw(xa, f"{path}[{xkey}]")
        y = ya.astype(np.int64).reshape(-1) if ya is not None else None
    if y is not None and len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y
