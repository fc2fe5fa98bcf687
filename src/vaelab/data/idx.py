"""IDX file reader (the MNIST format), gzip or raw.

Format: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, then
one big-endian uint32 per dimension, then the data. We check every part, so a
truncated or corrupt file fails with one line naming it instead of a reshape error.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({e}); delete it and download again") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, where: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{where} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{where} has a truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) * dtype.itemsize
    body = memoryview(raw)[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"{where} is truncated or corrupt: header says {dims} "
                        f"({expected} bytes of data) but the file holds {len(body)}")
    # astype copies: the result is writable and native-endian.
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_pair(images: str | Path, labels: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64, checked to agree."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3:
        raise DataError(f"{images} should hold images (N, H, W) but has shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{labels} should hold labels (N,) but has shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; "
                        "the files do not belong together")
    return x, y.astype(np.int64)
