"""Data: image sets per split, batches taken by index.

``load_data(DataConfig)`` returns a ``Splits`` of image sets. Images are kept as uint8
(N, C, H, W) and converted to float [0, 1] per batch by ``batch``, so a whole data set
costs one byte per pixel and no per-item Python runs in the training loop. Sets that do
not fit in memory stay memory-mapped (``MemmapImageSet``, read per batch).

Modules: ``load`` (the registry of sources, ``load_data``), ``sets`` (``ImageSet``,
``MemmapImageSet``, ``TensorSet``, ``Splits``), ``cache`` (``prepare_folder``: image folders
decoded once into memory-mappable caches), ``decode`` (one image file -> array), ``images`` (listing
folders, .npz/.npy arrays), ``idx``, ``download``.

Names are imported on first use (PEP 562): worker processes that decode images import
``vaelab.data.decode`` without paying for torch.
"""

from __future__ import annotations

import importlib

_API = {
    "DATASETS": "vaelab.data.load", "load_data": "vaelab.data.load", "resolve_classes": "vaelab.data.load",
    "ImageSet": "vaelab.data.sets", "MemmapImageSet": "vaelab.data.sets", "Splits": "vaelab.data.sets",
    "TensorSet": "vaelab.data.sets",
    "FolderCache": "vaelab.data.cache", "prepare_folder": "vaelab.data.cache",
}

__all__ = ["DATASETS", "FolderCache", "ImageSet", "MemmapImageSet", "Splits", "TensorSet", "load_data",
           "prepare_folder", "resolve_classes"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'vaelab.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
