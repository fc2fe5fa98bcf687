"""The user's own images: folders of PNG/JPEG/... files and .npz/.npy arrays.

Folders are decoded by ``decode.py`` and cached by ``cache.py`` (``load_folder`` is there);
this module lists them and reads arrays.
Everything is returned as uint8 (N, C, H, W) plus optional int64 labels, the same
form as the IDX data sets, so one code path serves all data.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from vaelab.data import memory
from vaelab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _image_files(d: str) -> list[str]:
    """Image files under ``d`` (recursively), relative, "/"-separated, hidden names skipped
    (.vaelab-cache, macOS "._x.png" forks), in the order of sorted path components."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        rel = os.path.relpath(dirpath, d).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        out += [prefix + n for n in filenames
                if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return sorted(out, key=lambda r: r.split("/"))


def list_image_files(folder: str | Path) -> tuple[list[str], list[str] | None]:
    """Image files under ``folder`` as "/"-separated paths relative to it, and the class names
    (sub-folders) when there are any: then only files inside class folders count.
    Strings, not Paths: a folder may hold a million files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        return [f"{c}/{r}" for c in subdirs for r in _image_files(str(folder / c))], subdirs
    with os.scandir(folder) as it:  # DirEntry.is_file() needs no stat call on most systems
        files = sorted(e.name for e in it if e.is_file() and not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    return files, None


def list_images(folder: Path) -> tuple[list[Path], list[str] | None]:
    """Image files under ``folder`` (hidden ones skipped); class names from sub-folders when present."""
    rels, classes = list_image_files(folder)
    return [Path(folder) / r for r in rels], classes


def nchw(a: np.ndarray, where: str, expected: tuple[int, int, int] | None = None, flat: bool = False) -> np.ndarray:
    """The images of ``a`` as (N, C, H, W) (a view where it can be), from (N, H, W), (N, H, W, C)
    or (N, C, H, W) with 1 or 3 channels; ``expected`` (C, H, W), the shape a model takes,
    settles which axis holds the channels (and with ``flat``, reads grey rows (N, H * W)). What could be
    one image without its batch axis, such as (64, 64, 3), is refused rather than read as 64
    grey images 3 pixels wide."""
    shape = tuple(a.shape)
    if a.ndim >= 1 and shape[0] == 0:
        raise DataError(f"{where} holds no images")
    if expected is not None:
        c, h, w = expected
        if a.ndim == 4 and shape[1:] == (c, h, w):
            return a
        if a.ndim == 4 and shape[1:] == (h, w, c):
            return a.transpose(0, 3, 1, 2)
        if a.ndim == 3 and c == 1 and shape[1:] == (h, w):
            return a[:, None]
        if flat and a.ndim == 2 and c == 1 and shape[1] == h * w:
            return a.reshape(-1, 1, h, w)
        if shape in ((c, h, w), (h, w, c), (h, w)):
            raise DataError(f"{where} has shape {shape}: one image without its batch axis; give a batch of "
                            f"images, e.g. x[None] (shape (1, {', '.join(map(str, shape))}))")
        raise DataError(f"{where}: the model takes images of shape (C, H, W) = {tuple(expected)} (or (H, W, C)"
                        f"{', or (H, W)' if c == 1 else ''}{' or flat rows of H * W' if flat and c == 1 else ''}), "
                        f"given as a batch: got {shape}")
    if a.ndim == 3:
        if shape[-1] in (3, 4) and shape[0] not in (3, 4) and min(shape[:2]) >= 8:
            raise DataError(f"{where} has shape {shape}: one colour image (H, W, C)? Give a batch of images "
                            "(N, H, W, C), e.g. x[None]; grey images (N, H, W) are not 3 or 4 pixels wide")
        a = a[:, None]
    elif a.ndim == 4:
        if shape[-1] in (1, 3) and shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {shape}")
    if a.shape[1] not in (1, 3):
        raise DataError(f"{where}: images must have 1 or 3 channels, got shape {shape}")
    return a


def _check_unit(a: np.ndarray, where: str, hint: str = "") -> None:
    """Float images are intensities in [0, 1], finite."""
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise DataError(f"{where}: float images must lie in [0, 1] (got {a.min():.3g}..{a.max():.3g}){hint}")


def _check_levels(a: np.ndarray, where: str) -> None:
    """Integer images are grey levels 0..255. Integers that are all 0 or 1 are a mask or
    binarised images given the wrong type: as grey levels they would be black, without a word."""
    lo, hi = a.min(), a.max()
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: integer images must lie in 0..255 (got {lo}..{hi}); scale them to "
                        "uint8, or to floats in [0, 1]")
    if hi == 1:
        raise DataError(f"{where}: integer images hold only 0 and 1, which as grey levels 0..255 are black; "
                        "give them as bool or floats in [0, 1] (white = 1), or multiply by 255")


def to_uint8_nchw(a: np.ndarray, where: str) -> np.ndarray:
    """Accept (N, H, W), (N, H, W, C) or (N, C, H, W) (``nchw``); uint8 or integers 0-255,
    bool (True is white) or float 0-1."""
    a = nchw(a, where)
    if a.dtype == np.bool_:  # binary images (binarised MNIST, masks): True is white
        return np.ascontiguousarray(a.astype(np.uint8) * 255)
    if np.issubdtype(a.dtype, np.floating):
        _check_unit(a, where)
        return np.ascontiguousarray(np.rint(a * 255).astype(np.uint8))
    if np.issubdtype(a.dtype, np.integer):
        _check_levels(a, where)
        return np.ascontiguousarray(a.astype(np.uint8))
    raise DataError(f"{where}: unsupported image dtype {a.dtype}")


def as_float_images(X, where: str = "x", expected: tuple[int, int, int] | None = None,
                    flat: bool = False) -> torch.Tensor:
    """Images a user hands over (a tensor, an array, a list of arrays or PIL images) as float32
    (N, C, H, W) in [0, 1] on the CPU, read as ``nchw`` reads layouts: uint8 and integers are
    grey levels 0..255, bool is black and white, floats must already lie in [0, 1]. Anything
    else (NaN, 0..255 floats, a shape the model does not take) is refused in one line."""
    if isinstance(X, torch.Tensor):
        t = X.detach().cpu()
        a = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    else:
        try:
            a = np.asarray(X)
        except (ValueError, TypeError) as e:
            raise DataError(f"{where}: cannot read it as an array of images ({str(e).splitlines()[0]})") from None
    a = nchw(a, where, expected, flat)
    if a.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if np.issubdtype(a.dtype, np.floating):
        _check_unit(a, where, "; divide 0..255 grey levels by 255")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if np.issubdtype(a.dtype, np.integer):
        _check_levels(a, where)
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / 255.0)
    raise DataError(f"{where}: unsupported image dtype {a.dtype} (give uint8, bool or floats in [0, 1])")


X_KEYS = ("x", "images", "x_train", "arr_0")
Y_KEYS = ("y", "labels", "y_train")


def _stored_header(path: Path) -> tuple[tuple, np.dtype] | None:
    """(shape, dtype) of the image array in an .npy/.npz, read from its header alone;
    None when it cannot be read that way (the full load then says what is wrong)."""
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                return _npy_header(f)
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            key = next((k + ".npy" for k in X_KEYS if k + ".npy" in names), None)
            if key is None:
                return None
            with z.open(key) as f:
                return _npy_header(f)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _npy_header(f) -> tuple[tuple, np.dtype] | None:
    fmt = np.lib.format
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
    if read is None:
        return None
    shape, _, dtype = read(f)
    return (shape, dtype) if len(shape) >= 1 else None


def _check_fits(path: Path) -> None:
    """A one-line error, before reading, for an array too big to hold in memory."""
    header = _stored_header(path)
    if header is None:
        return
    shape, dtype = header
    n_pixels = int(np.prod(shape, dtype=np.float64))
    # The stored array, then the uint8 copy and an epoch's shuffled copy of it.
    need = n_pixels * dtype.itemsize + memory.memory_needed(n_pixels)
    if need > memory.IN_MEMORY_FRACTION * memory.available_memory():
        raise DataError(f"{path} holds {shape[0]:,} images of {tuple(shape[1:])} {dtype}: about "
                        f"{memory.size_text(need)} in memory, but {memory.size_text(memory.available_memory())} "
                        "is available; .npz/.npy data is loaded whole, so save the images as a folder and run "
                        "`vaelab data prepare DIR` to train from a memory-mapped cache")


def read_labels(a: np.ndarray, n: int, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Labels as class numbers (N,) int64, and the class names when they are strings.

    Accepted: non-negative integers (also as whole floats, or (N, 1)); one-hot rows (N, K); strings
    or bytes, numbered in sorted order (as folder names are). Anything else is refused in one line:
    a negative or fractional label would index a class that does not exist."""
    if a.ndim == 2 and a.shape[0] == n and a.shape[1] > 1:
        if np.isin(a, (0, 1)).all() and (a.sum(axis=1) == 1).all():
            return a.argmax(axis=1).astype(np.int64), None
        raise DataError(f"{where}: labels of shape {a.shape} are not one-hot rows; give one class per image, (N,)")
    a = a.reshape(-1)
    if a.dtype.kind in "US":
        names = a.astype(str)
        classes = sorted(set(names.tolist()))
        return np.searchsorted(np.array(classes), names).astype(np.int64), classes
    if a.dtype.kind == "b":
        return a.astype(np.int64), None
    if a.dtype.kind not in "iuf":
        raise DataError(f"{where}: labels of dtype {a.dtype} cannot be read; give integers or strings")
    if a.size and not (np.isfinite(a).all() and (a == np.round(a)).all() and a.min() >= 0):
        bad = a[~(np.isfinite(a) & (a == np.round(a)) & (a >= 0))][0]
        raise DataError(f"{where}: labels must be class numbers 0, 1, 2, ... (found {bad}); renumber them, or give "
                        "class names as strings")
    return a.astype(np.int64), None


def load_array(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``.npz`` (keys x/images and optional y/labels) or ``.npy`` (images only)."""
    x, y, _ = read_array(path)
    return x, y


def read_array(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """``load_array``, and the class names when the labels are strings (else None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array file {path} does not exist")
    _check_fits(path)
    try:
        # allow_pickle=False: an .npz from a stranger must never run code.
        obj = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as .npy/.npz: {str(e).splitlines()[0]}") from None
    if isinstance(obj, np.ndarray):
        return to_uint8_nchw(obj, str(path)), None, None
    with obj:
        keys = set(obj.files)
        xkeys, ykeys = [k for k in X_KEYS if k in keys], [k for k in Y_KEYS if k in keys]
        if not xkeys:
            raise DataError(f"{path} has no image array; name it 'x' or 'images' (found {sorted(keys)})")
        for found, what in ((xkeys, "images"), (ykeys, "labels")):
            if len(found) > 1:
                raise DataError(f"{path} holds {len(found)} arrays that could be its {what} ({', '.join(found)}); "
                                "keep one")
        xkey, ykey = xkeys[0], (ykeys or [None])[0]
        try:  # .npz members are read lazily: a pickled member is refused here
            xa = obj[xkey]
            ya = obj[ykey] if ykey else None
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
        x = to_uint8_nchw(xa, f"{path}[{xkey}]")
        y, classes = read_labels(ya, len(x), f"{path}[{ykey}]") if ya is not None else (None, None)
    if y is not None and len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y, classes
