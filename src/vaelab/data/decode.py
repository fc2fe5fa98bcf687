"""Decode one image file into uint8 (C, H, W), the way a model should see it.

Light on purpose (PIL and NumPy only, no torch): worker processes import this module to
decode folders in parallel, and a spawned worker pays for every import it makes.

What "the way a model should see it" means here:

- EXIF orientation is applied (a phone photo stored sideways is turned upright).
- Transparency (RGBA, LA, palette or grey/RGB images with a ``transparency`` colour) is
  alpha-composited on a background colour at full resolution, before any resize, so the
  colour noise that editors leave under transparent pixels never reaches the model.
- 16-bit and 32-bit integer grey (``I;16``, ``I``) are scaled from 0..65535 to 0..255 by
  rounding, never clipped; float (``F``) images are read as intensities in [0, 1], as
  float arrays are everywhere else in vaelab; CMYK, YCbCr, palette and 1-bit images are
  converted to grey or RGB.
- Then an optional centre crop, then an optional square resize (bilinear, antialiased).

PIL's decompression-bomb limit stays on: an absurdly large image (past PIL's error limit,
about 179 megapixels) is a bad file. Between its warning and error limits (89-179 megapixels:
a panorama) the image is decoded without PIL's two-line warning, which would only interrupt
the run's one-line notes about a user's own files.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vaelab.errors import DataError

GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
INT16_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
EXIF_ORIENTATION = 0x0112

# What a corrupt, truncated or hostile file makes PIL raise: its plugins raise more than
# OSError (SyntaxError for a broken PNG chunk, struct.error for a short header, ...).
BAD_FILE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                   IndexError, TypeError, Image.DecompressionBombError, UnidentifiedImageError)


@dataclass(frozen=True)
class DecodeOptions:
    """How every image of a folder is turned into a (C, H, W) uint8 array."""

    channels: int  # 1 (grey) or 3 (RGB)
    image_size: int | None = None  # square resize after the crop
    crop: tuple[int, int] | None = None  # centre crop (height, width) before the resize
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels show this
    root: str = ""  # the data folder: an error names a file by its path relative to it


def grey_value(rgb: tuple[int, int, int]) -> int:
    """The grey level PIL's RGB -> L conversion gives this colour (ITU-R 601 luma)."""
    return int(Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0)))


def _palette_is_grey(im: Image.Image) -> bool:
    pal = im.palette
    if pal is None or pal.mode not in ("RGB", "RGBA"):
        return False
    k = len(pal.mode)
    raw = np.frombuffer(bytes(pal.palette), np.uint8)
    rgb = raw[: len(raw) // k * k].reshape(-1, k)[:, :3]
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _has_alpha(im: Image.Image) -> bool:
    """An alpha channel, a transparent colour (``transparency``) or a palette with alpha."""
    return (im.mode in ALPHA_MODES or "transparency" in im.info
            or (im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"))


def is_grey(im: Image.Image, background: tuple[int, int, int]) -> bool:
    """Whether ``im`` (opened, not decoded) becomes a grey image on ``background``.

    Judged from the header only (mode, palette), so a whole folder is surveyed cheaply.
    A grey image with transparency turns colour on a coloured background.
    """
    grey = im.mode in GREY_MODES or (im.mode == "P" and _palette_is_grey(im))
    if grey and _has_alpha(im):
        grey = background[0] == background[1] == background[2]
    return grey


@contextmanager
def _open(path: str):
    """``Image.open`` without PIL's DecompressionBombWarning (its error limit still applies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            yield im


def probe(path: str, background: tuple[int, int, int]) -> tuple[bool | None, str | None]:
    """(is_grey, None) for a readable header, or (None, error) for a file PIL cannot open."""
    try:
        with _open(path) as im:
            return is_grey(im, background), None
    except BAD_FILE_ERRORS as e:
        return None, _describe(e)


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__


def _scale_int16(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by rounding (x * 255 / 65535); ``I`` values outside are clipped."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _scale_float(a: np.ndarray, name) -> np.ndarray:
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"float image {name} has values outside [0, 1] "
                         f"({np.nanmin(a):.3g}..{np.nanmax(a):.3g}); vaelab reads float images as 0..1")
    return np.rint(a * 255).astype(np.uint8)


def _pixels(im: Image.Image, name) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour (H, W, 1 or 3) uint8 and alpha (H, W) uint8 or None, from any PIL mode."""
    mode = im.mode
    if mode in INT16_MODES:
        return _scale_int16(np.asarray(im))[..., None], None
    if mode == "F":
        return _scale_float(np.asarray(im, dtype=np.float64), name)[..., None], None
    if mode == "P":
        grey = _palette_is_grey(im)
        target = ("LA" if grey else "RGBA") if _has_alpha(im) else ("L" if grey else "RGB")
    elif mode in ("1", "L", "LA", "La"):
        target = "LA" if _has_alpha(im) else "L"
    else:  # RGB, RGBA, RGBa, PA, CMYK, YCbCr, LAB, HSV, RGBX, ...
        target = "RGBA" if _has_alpha(im) else "RGB"
    if mode != target:
        im = im.convert(target)
    a = np.asarray(im)
    if a.ndim == 2:
        return a[..., None], None
    if im.mode in ("LA", "RGBA"):
        return a[..., :-1], a[..., -1]
    return a, None


def composite(colour: np.ndarray, alpha: np.ndarray | None, background: tuple[int, ...]) -> np.ndarray:
    """``colour`` (H, W, C) over ``background`` (C values) with ``alpha`` (H, W), in uint8.

    out = round((colour * alpha + background * (255 - alpha)) / 255), in integers so the
    result is exact and the same on every machine. The sum is <= 255 * 255, so uint16
    holds it, and the rounded division by 255 is done as ((t + (t >> 8)) >> 8) with
    t = sum + 128, which equals round(sum / 255) exactly on that range (Blinn's identity).
    """
    if alpha is None or alpha.min() == 255:  # opaque: nothing to blend
        return colour
    a = alpha.astype(np.uint16)[..., None]
    t = colour.astype(np.uint16)
    t *= a
    t += np.asarray(background, np.uint16) * (255 - a)
    t += 128
    t += t >> 8
    t >>= 8
    return t.astype(np.uint8)


def _to_channels(colour: np.ndarray, alpha: np.ndarray | None, opts: DecodeOptions) -> np.ndarray:
    """Composite on the background and give ``opts.channels`` channels: (H, W, C)."""
    if opts.channels == 3:
        if colour.shape[-1] == 1:
            colour = np.repeat(colour, 3, axis=-1)
        return composite(colour, alpha, opts.background)
    if colour.shape[-1] == 3:  # colour folded to grey after compositing, as PIL converts
        rgb = composite(colour, alpha, opts.background)
        return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
    return composite(colour, alpha, (grey_value(opts.background),))


def _centre_crop(im: Image.Image, crop: tuple[int, int], name: str) -> Image.Image:
    h, w = crop
    if h > im.height or w > im.width:
        raise DataError(f"crop center:{h}x{w} is larger than image {name} ({im.height}x{im.width}); "
                        "choose a smaller --crop")
    # Offsets rounded as torchvision's CenterCrop rounds them, so crops match its pipelines.
    top, left = round((im.height - h) / 2.0), round((im.width - w) / 2.0)
    return im.crop((left, top, left + w, top + h))


def decode(path: str, opts: DecodeOptions) -> np.ndarray:
    """The image at ``path`` as uint8 (C, H, W). PIL's errors for a bad file propagate;
    a crop larger than the image is a DataError (a wrong option, not a bad file)."""
    with _open(path) as im:
        im.load()
        if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
            im = ImageOps.exif_transpose(im)
        # An error names the file relative to the data folder (a/0.png, not /data/set/a/0.png).
        name = os.path.relpath(path, opts.root) if opts.root and isinstance(path, str) else path
        if opts.crop is not None:
            im = _centre_crop(im, opts.crop, f"{name} in {opts.root}" if opts.root else str(name))
        out = _to_channels(*_pixels(im, name), opts)  # (H, W, C)
    if opts.image_size is not None and out.shape[:2] != (opts.image_size, opts.image_size):
        size = (opts.image_size, opts.image_size)
        if out.shape[-1] == 1:
            out = np.asarray(Image.fromarray(out[..., 0]).resize(size, Image.BILINEAR))[..., None]
        else:
            out = np.asarray(Image.fromarray(out).resize(size, Image.BILINEAR))
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def decode_chunk(paths: list[str], opts: DecodeOptions) -> list[tuple[np.ndarray | None, str | None]]:
    """Decode several files (one worker task): per file (array, None) or (None, error)."""
    out: list[tuple[np.ndarray | None, str | None]] = []
    for p in paths:
        try:
            out.append((decode(p, opts), None))
        except BAD_FILE_ERRORS as e:
            out.append((None, _describe(e)))
    return out


def probe_chunk(paths: list[str], background: tuple[int, int, int]) -> list[tuple[bool | None, str | None]]:
    """Header survey of several files (one worker task): per file (is_grey, error)."""
    return [probe(p, background) for p in paths]
