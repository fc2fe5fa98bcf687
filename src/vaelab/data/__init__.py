"""Data: one in-memory tensor per split, batches taken by index.

``load_data(DataConfig)`` returns a ``Splits`` of ``ImageSet`` s. Images are kept
as uint8 (N, C, H, W) and converted to float [0, 1] per batch by ``ImageSet.batch``,
so a whole data set costs one byte per pixel and no per-item Python runs in the
training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data.download import locate
from vaelab.data.dsprites import load_for_config as _dsprites_loader
from vaelab.data.idx import read_idx_pair
from vaelab.data.images import load_array, load_folder
from vaelab.errors import DataError


@dataclass
class ImageSet:
    x: torch.Tensor  # (N, C, H, W) uint8 images (or float rows (N, 1, 1, F), see ``batch``)
    y: torch.Tensor | None  # (N,) int64 labels, or None
    name: str = ""
    paths: list[str] | None = None  # file paths, for image folders
    # "dynamic": x holds grey levels and every epoch draws fresh binary images from them
    # (``shuffled``); evaluation splits are binarised once when loaded ("none" here).
    binarize: str = "none"
    factors: torch.Tensor | None = None  # (N, F) int64 ground-truth factor classes (dsprites), or None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def batch(self, index, device: torch.device | str | None = None) -> torch.Tensor:
        """Float images in [0, 1] for ``index`` (a slice or index tensor). A float ``x`` (rows
        of features shaped (N, 1, 1, F), already scaled by the caller) is returned as it is."""
        xb = self.x[index]
        if device is not None:
            xb = xb.to(device, non_blocking=True)
        return xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()

    def float(self) -> torch.Tensor:
        return self.batch(slice(None))

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        paths = [self.paths[i] for i in index.tolist()] if self.paths else None
        return replace(self, x=self.x[index], y=None if self.y is None else self.y[index], paths=paths,
                       factors=None if self.factors is None else self.factors[index])

    def to(self, device) -> "ImageSet":
        return replace(self, x=self.x.to(device), y=None if self.y is None else self.y.to(device),
                       factors=None if self.factors is None else self.factors.to(device))

    def shuffled(self, perm: torch.Tensor) -> "ImageSet":
        """This epoch's training images in the order ``perm`` (N,), as one gathered tensor:
        one uint8 gather per epoch (cheap), then each batch is a contiguous slice, so the
        hot loop does no per-step index work. With dynamic binarisation, each image is a
        fresh Bernoulli draw from its grey levels (the torch RNG, which the loop seeds per epoch)."""
        x = self.x[perm]
        if self.binarize == "dynamic":
            x = bernoulli_uint8(x)
        return ImageSet(x, None if self.y is None else self.y[perm], self.name,
                        factors=None if self.factors is None else self.factors[perm])


def bernoulli_uint8(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary images (0 or 255) drawn pixel by pixel with P(on) = grey level / 255."""
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return ((u * 255) < x).to(torch.uint8) * 255


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    classes: list[str] | None = None

    def get(self, name: str) -> ImageSet:
        s = {"train": self.train, "val": self.val, "test": self.test}.get(name, "unknown")
        if s == "unknown":
            raise DataError(f"unknown split {name!r}; use train, val or test")
        if s is None:
            raise DataError(f"this run has no {name} split (data.val / data.train_split decide which exist)")
        return s


def _idx_loader(name: str) -> Callable[[DataConfig], tuple]:
    def load(cfg: DataConfig):
        files = locate(name, cfg.data_dir, download=cfg.download)
        xtr, ytr = read_idx_pair(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
        xte, yte = read_idx_pair(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
        return (xtr[:, None], ytr, None), (xte[:, None], yte, None), [str(i) for i in range(10)]
    return load


def _folder_loader(cfg: DataConfig):
    if not cfg.path:
        raise DataError("data.name=folder needs --data-path (data.path) pointing at an image folder")
    root = Path(cfg.path)
    if (root / "train").is_dir() and (root / "test").is_dir():
        xtr, ytr, classes, ptr = load_folder(root / "train", cfg.image_size, cfg.channels)
        xte, yte, _, pte = load_folder(root / "test", cfg.image_size, cfg.channels)
        return (xtr, ytr, ptr), (xte, yte, pte), classes
    x, y, classes, paths = load_folder(root, cfg.image_size, cfg.channels)
    return (x, y, paths), None, classes


def _array_loader(cfg: DataConfig):
    if not cfg.path:
        raise DataError("data.name=npz needs --data-path (data.path) pointing at a .npz or .npy file")
    x, y = load_array(cfg.path)
    return (x, y, None), None, None


# Registry: adding a data source is one function and one entry.
DATASETS: dict[str, Callable[[DataConfig], tuple]] = {
    "mnist": _idx_loader("mnist"),
    "fashion-mnist": _idx_loader("fashion-mnist"),
    "folder": _folder_loader,
    "npz": _array_loader,
    "dsprites": _dsprites_loader,
}


def _to_set(part, name: str) -> ImageSet:
    x, y, paths, *factors = part  # a loader may add a 4th item: (N, F) factor classes
    f = factors[0] if factors else None
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x)),
                    None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64)), name, paths,
                    factors=None if f is None else torch.from_numpy(np.asarray(f, dtype=np.int64)))


def load_data(cfg: DataConfig) -> Splits:
    """Load, filter and split a data set as described by ``cfg``."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {cfg.name!r}; known: {', '.join(DATASETS)}")
    train_part, test_part, classes = DATASETS[cfg.name](cfg)
    train = _to_set(train_part, "train")
    test = _to_set(test_part, "test") if test_part is not None else None
    if cfg.classes is not None:
        train = _keep_classes(train, cfg.classes)
        # The test set keeps every class: one-class models are judged on all of it.
    if cfg.train_split == "train+test":
        if test is None:
            raise DataError(f"data.train_split=train+test needs a test split, and {cfg.name} has none")
        extra = _keep_classes(test, cfg.classes) if cfg.classes is not None else test
        cat = lambda a, b: None if a is None or b is None else torch.cat([a, b])  # noqa: E731
        train = ImageSet(torch.cat([train.x, extra.x]), cat(train.y, extra.y), "train",
                         factors=cat(train.factors, extra.factors))
    if cfg.limit is not None:
        train = train.subset(torch.arange(min(cfg.limit, len(train))))
    val: ImageSet | None = None
    if cfg.val == "test":
        val = test
    elif cfg.val != "none":
        # A fixed, seeded hold-out: the same images every run of this config.
        n_val = max(1, int(round(float(cfg.val) * len(train))))
        if n_val >= len(train):
            raise DataError(f"data.val={cfg.val} leaves no training images out of {len(train)}")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))
        val = train.subset(perm[:n_val])
        val.name = "val"
        train = train.subset(perm[n_val:].sort().values)
    if len(train) == 0:
        raise DataError(f"no training images left after filtering {cfg.name} (classes={cfg.classes})")
    splits = Splits(train=train, val=val, test=test, classes=classes)
    return binarized(splits, cfg.binarize) if cfg.binarize != "none" else splits


# Fixed seeds: every run of a data set sees the same binary evaluation images.
BINARIZE_SEEDS = {"train": 1, "val": 2, "test": 3}


def binarized(splits: Splits, mode: str) -> Splits:
    """Evaluation splits drawn once with fixed seeds; the training split drawn once
    ("static") or marked for a fresh draw every epoch ("dynamic")."""
    def once(s: ImageSet | None, name: str) -> ImageSet | None:
        if s is None:
            return None
        g = torch.Generator().manual_seed(BINARIZE_SEEDS[name])
        return replace(s, x=bernoulli_uint8(s.x, g))

    train = splits.train
    if mode == "static":
        train = once(train, "train")
    else:
        train = replace(train, binarize="dynamic")
    # val may be the test split itself (data.val=test): draw it once, as test.
    test = once(splits.test, "test")
    val = test if splits.val is splits.test else once(splits.val, "val")
    return Splits(train=train, val=val, test=test, classes=splits.classes)


def _keep_classes(s: ImageSet, classes: list[int]) -> ImageSet:
    if s.y is None:
        raise DataError("data.classes needs labelled data (sub-folders per class, or labels in the .npz)")
    mask = torch.isin(s.y, torch.tensor(classes))
    out = s.subset(mask.nonzero().flatten())
    out.name = s.name
    return out


__all__ = ["DATASETS", "ImageSet", "Splits", "load_data"]
