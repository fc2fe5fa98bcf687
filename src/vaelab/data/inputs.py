"""What a caller hands the Python API (``vaelab.Run``'s methods), read into what a model takes:
images, codes and labels. Each is checked once, here, and refused in one line that says what
was given and what to give; ``Run`` only says which model the values must fit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vaelab.config import is_whole
from vaelab.data.images import as_float_images
from vaelab.errors import ConfigError, DataError

LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def is_empty(x) -> bool:
    """True for an empty batch; a scalar is not empty (its reader then says what it should be)."""
    try:
        return len(x) == 0
    except TypeError:
        return False


def chunks(n: int, batch_size: int):
    """(start, stop) of the batch_size chunks of n items; batch_size must be a whole number >= 1."""
    if not (is_whole(batch_size) and batch_size >= 1):
        raise ConfigError(f"batch_size must be a positive number of images, got {batch_size!r}")
    return ((i, min(i + batch_size, n)) for i in range(0, n, batch_size))


def read_images(x, shape: tuple[int, ...], dtype: torch.dtype, where: str = "x") -> torch.Tensor:
    """``x`` as float (N, *shape) images in ``dtype``: a float32 batch of that shape where it is,
    anything else read on the CPU by ``as_float_images`` (layouts, grey levels, bool masks).
    A model of feature rows (shape (1, 1, F)) takes any finite (N, F) or (N, 1, 1, F) floats."""
    shape = tuple(shape)
    if len(shape) == 3 and shape[:2] == (1, 1):
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
        t = t.reshape(len(t), *shape) if t.dim() == 2 and t.shape[1:] == shape[2:] else t
        if tuple(t.shape[1:]) != shape or not torch.is_floating_point(t) or not torch.isfinite(t).all():
            raise DataError(f"{where}: the model takes finite rows of {shape[2]} features, (N, {shape[2]}), "
                            f"got {tuple(t.shape)} {t.dtype}")
        return t.to(dtype)
    if (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape[1:]) == shape
            and x.dim() == 4 and len(x)):  # a batch as ImageSet gives it: checked where it is (a CUDA
        # batch is not copied to the CPU and back), in one pass
        lo, hi = torch.aminmax(x)
        if not (torch.isfinite(lo) and torch.isfinite(hi) and lo >= 0 and hi <= 1):
            raise DataError(f"{where}: float images must lie in [0, 1] (got {lo:.3g}..{hi:.3g}); divide "
                            "0..255 grey levels by 255")
        return x.to(dtype)
    return as_float_images(x, where, shape, flat=True).to(dtype)


def read_codes(z, shape: tuple[int, ...], dtype: torch.dtype, where: str = "z") -> torch.Tensor:
    """A batch of finite codes of one code's ``shape`` ((D,), or (D, h, w) for a VQ-VAE), in ``dtype``."""
    shape = tuple(shape)
    t = z if isinstance(z, torch.Tensor) else torch.as_tensor(np.asarray(z, dtype=np.float64))
    if tuple(t.shape) == shape:
        raise DataError(f"{where} has shape {tuple(t.shape)}: one code without its batch axis; give a batch "
                        f"of codes, e.g. z[None]")
    if tuple(t.shape[1:]) != shape:
        raise DataError(f"{where}: this model's codes have shape (N, {', '.join(map(str, shape))}), got "
                        f"{tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.double()
    if not torch.isfinite(t).all():
        raise DataError(f"{where}: codes must be finite numbers; it holds NaN or infinity")
    return t.to(dtype)


def read_labels(y, n: int, where: str, class_index: Callable[[str, str], int]) -> torch.Tensor | None:
    """Labels for n images, as (n,) int64 on the CPU: None; one class for all of them (a label
    number, or a class name); or n of them (numbers or names). ``class_index(name, where)`` turns a
    class name into its label number (``Run.class_index``)."""
    if y is None:
        return None
    if isinstance(y, str):
        y = class_index(y, where)
    elif isinstance(y, (list, tuple)) and any(isinstance(v, str) for v in y):
        y = [class_index(v, where) if isinstance(v, str) else v for v in y]
    try:
        t = (y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))).detach().cpu()
    except (ValueError, TypeError, RuntimeError) as e:
        raise DataError(f"{where}: labels must be class numbers, got {type(y).__name__} "
                        f"({str(e).splitlines()[0]})") from None
    if t.dim() == 0:  # one class for every image
        t = t.reshape(1).expand(n)
    whole = torch.is_floating_point(t) and bool(torch.isfinite(t).all() and (t == t.round()).all())
    if t.dim() != 1 or not (whole or t.dtype in LABEL_DTYPES):
        raise DataError(f"{where}: labels must be whole class numbers, one per image (N,), got "
                        f"{tuple(t.shape)} {t.dtype}")
    if len(t) != n:
        raise DataError(f"{where}: {len(t)} labels for {n} images; give one label per image, or one class for all")
    return t.long()
