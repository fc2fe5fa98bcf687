"""Images in and out of the explorer: model outputs as PNG data URLs, uploads as model inputs.

Outputs: an image (C, H, W) in [0, 1] becomes uint8 by ``round(255 * x)`` and a PNG
(lossless), so the page shows exactly those bytes; the tests decode the page's picture
and compare it with the model's ``decode`` through the same rounding.

Uploads go through vaelab's own file decoder (``vaelab.data.decode``), with the run's
own options: EXIF orientation, transparency composited on the run's background, its
centre crop, then a bilinear resize to the model's input size and its channel count.
They are bounded twice: in bytes (``MAX_UPLOAD_BYTES``) and in pixels, read from the
header before any pixel is decoded (``MAX_UPLOAD_PIXELS``, stricter than PIL's own
decompression-bomb limit, which stays on as well).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vaelab.data.decode import BAD_FILE_ERRORS, DecodeOptions, decode
from vaelab.errors import DataError
from vaelab.imageopts import parse_background, parse_crop

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) floats in [0, 1] -> (H, W) or (H, W, 3) uint8, rounded to nearest."""
    a = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def png_bytes(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: a 28x28 PNG in ~0.1 ms; the bytes are tiny either way
    Image.fromarray(to_uint8(x)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(x: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(x)).decode("ascii")


def data_urls(x: torch.Tensor) -> list[str]:
    return [data_url(im) for im in x]


def error_map(x: torch.Tensor, recon: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-pixel squared error (N, 1, H, W), averaged over channels, divided by ``scale``
    (the largest value among the images shown, so they are drawn on one scale)."""
    err = ((x.float() - recon.float()) ** 2).mean(1, keepdim=True)
    return (err / max(scale, 1e-12)).clamp(0, 1)


class _Upload(io.BytesIO):
    """The uploaded bytes as a file; named in vaelab's decoder messages as what it is."""

    def __str__(self) -> str:
        return "the uploaded image"

    __repr__ = __str__


def decode_upload(data: bytes, input_shape, crop: str | None = None, background: str = "white") -> torch.Tensor:
    """An uploaded image file -> (1, C, H, W) floats in [0, 1] for a model with ``input_shape``
    (C, H, W), decoded as the run's images were (``crop``, ``background`` from its data config).
    Anything that is not a readable image of sane size is a DataError with one line."""
    if len(data) == 0:
        raise DataError("the upload is empty: drop an image file (PNG, JPEG, ...)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(f"the upload is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    c, h, w = (int(v) for v in input_shape)
    try:
        with Image.open(_Upload(data)) as im:  # reads the header only
            width, height = im.size
        if width * height > MAX_UPLOAD_PIXELS:
            raise DataError(f"the uploaded image is {width}x{height} pixels; the limit is "
                            f"{MAX_UPLOAD_PIXELS:,} pixels (e.g. 4096x4096)")
        opts = DecodeOptions(channels=c, image_size=h if h == w else None, crop=parse_crop(crop),
                             background=parse_background(background))
        a = decode(_Upload(data), opts)  # (C, H', W') uint8
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("the upload is not an image vaelab can read (not a format PIL recognises: "
                        "PNG, JPEG, GIF, BMP, TIFF, WebP, ...)") from None
    except BAD_FILE_ERRORS as e:
        text = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(f"the upload is not an image vaelab can read ({text})") from None
    if a.shape[1:] != (h, w):  # a non-square model: resize as the square case does (bilinear)
        im = Image.fromarray(a[0] if c == 1 else a.transpose(1, 2, 0))
        im = np.asarray(im.resize((w, h), Image.BILINEAR))
        a = im[None] if c == 1 else im.transpose(2, 0, 1)
    return torch.from_numpy(np.array(a, dtype=np.uint8)).float().div(255)[None]  # a writable copy
