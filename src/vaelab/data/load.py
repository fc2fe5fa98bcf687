"""load_data: a data set as described by a ``DataConfig``, filtered and split.

Sources are a registry ``DATASETS`` {name: loader}; a loader returns the train part, the
test part (or None) and the class names, each part (x uint8 (N, C, H, W), y or None,
paths or None). Image folders come back memory-mapped from their cache; ``load_data``
copies them into memory when they fit (``data.in_memory``) and keeps them mapped
(``MemmapImageSet``) when not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data import memory
from vaelab.data.download import locate
from vaelab.data.idx import read_idx_pair
from vaelab.data.images import read_array
from vaelab.data.sets import (
    FactorLabels,
    ImageSet,
    MemmapImageSet,
    Splits,
    bernoulli_uint8,
    concat,
)
from vaelab.errors import DataError

Log = Callable[[str], None]


def _idx_loader(name: str) -> Callable[[DataConfig, Log], tuple]:
    def load(cfg: DataConfig, log: Log):
        files = locate(name, cfg.data_dir, download=cfg.download)
        xtr, ytr = read_idx_pair(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
        xte, yte = read_idx_pair(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
        return (xtr[:, None], ytr, None), (xte[:, None], yte, None), [str(i) for i in range(10)]
    load.__doc__ = "28x28 grey images of 10 classes, train and test splits (IDX files in --data-dir, downloaded when missing)."
    return load


def _folder_loader(cfg: DataConfig, log: Log):
    """An image folder (--data-path; class sub-folders, train/ and test/ if any), decoded once into a cache."""
    from vaelab.data.cache import prepare_splits

    if not cfg.path:
        raise DataError("data.name=folder needs --data-path (data.path) pointing at an image folder")
    caches = prepare_splits(cfg.path, log=log, image_size=cfg.image_size, crop=cfg.crop, background=cfg.background,
                            channels=cfg.channels, skip_bad=cfg.skip_bad)
    parts = {k: (c.images, c.labels, c.paths) for k, c in caches.items()}
    first = next(iter(caches.values()))
    return parts.get("all", parts.get("train")), parts.get("test"), first.classes


def _array_loader(cfg: DataConfig, log: Log):
    """Images from a .npz (x or images, labels from y or labels) or .npy file (--data-path)."""
    if not cfg.path:
        raise DataError("data.name=npz needs --data-path (data.path) pointing at a .npz or .npy file")
    x, y, classes = read_array(cfg.path)
    return (x, y, None), None, classes


def _dsprites(cfg: DataConfig, log: Log | None = None):
    """dSprites: 737,280 binary 64x64 shapes with known factors (generated, not downloaded)."""
    from vaelab.data.dsprites import (
        load_for_config,  # imported when asked for: it draws 737,280 images once
    )

    return load_for_config(cfg)


# Registry: adding a data source is one function and one entry.
DATASETS: dict[str, Callable[[DataConfig, Log], tuple]] = {
    "mnist": _idx_loader("mnist"),
    "fashion-mnist": _idx_loader("fashion-mnist"),
    "folder": _folder_loader,
    "npz": _array_loader,
    "dsprites": _dsprites,
}


def _keep_mapped(cfg: DataConfig, parts: list) -> bool:
    """Whether memory-mapped parts stay mapped (True) or are read into memory (False)."""
    mapped = [p[0] for p in parts if p is not None and isinstance(p[0], np.memmap)]
    if not mapped or cfg.in_memory == "false":
        return bool(mapped)
    nbytes = sum(x.nbytes for x in mapped)
    if memory.fits_in_memory(nbytes):
        return False
    if cfg.in_memory == "true":
        n, need = sum(len(x) for x in mapped), memory.size_text(memory.memory_needed(nbytes))
        raise DataError(f"data.in_memory=true, but {n:,} images {tuple(mapped[0].shape[1:])} need {need} in memory "
                        f"(with an epoch's shuffled copy) and {memory.size_text(memory.available_memory())} is "
                        "available; set data.in_memory=auto to read batches from the memory-mapped cache that "
                        f"`vaelab data prepare {cfg.path}` writes")
    return True


def _to_set(part, name: str, mapped: bool) -> ImageSet | MemmapImageSet:
    x, y, paths, *more = part  # a loader may add a 4th item: FactorLabels, or bare (N, F) factor classes
    yt = None if y is None else torch.from_numpy(np.array(y, dtype=np.int64))
    if mapped and isinstance(x, np.memmap):
        return MemmapImageSet([x], yt, name, paths)
    # np.array copies a memmap into memory (np.ascontiguousarray would keep the mapping).
    x = np.array(x) if isinstance(x, np.memmap) else np.ascontiguousarray(x)
    labels = more[0] if more else None
    known = isinstance(labels, FactorLabels)
    classes = labels.classes if known else labels
    factors = None if classes is None else torch.from_numpy(np.asarray(classes, dtype=np.int64))
    return ImageSet(torch.from_numpy(x), yt, name, paths, factors=factors,
                    factor_names=tuple(labels.names) if known else None,
                    factor_sizes=tuple(int(v) for v in labels.sizes) if known else None)


def resolve_classes(wanted: list, names: list[str] | None, where: str,
                    option: str = "data.classes (--classes)") -> list[int]:
    """``data.classes`` entries (or another ``option``'s) -> label indices. A class's name picks
    it; a number picks the class of that name when there is one (folders 0..9), else that label."""
    out = []
    for c in wanted:
        text = str(c)
        if names is not None and text in names:
            out.append(names.index(text))
        elif text.lstrip("-").isdigit():
            out.append(int(text))
        elif names is None:
            raise DataError(f"{option} names class {text!r}, but {where} has no class names "
                            "(image folders with class sub-folders and .npz files with string labels do); give "
                            "label numbers such as 3,5")
        else:
            raise DataError(f"unknown class {text!r} in {option}; {where} has: {', '.join(names)}")
    return out


def load_data(cfg: DataConfig, log: Log | None = None, seed: int = 0) -> Splits:
    """Load, filter and split a data set as described by ``cfg``; notes go to ``log`` and
    ``Splits.notes``. ``seed`` draws the subset ``data.limit`` keeps: runs pass their
    ``train.seed``, so a run and everything that reloads its data see the same images."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {cfg.name!r}; known: {', '.join(DATASETS)}")
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if log:
            log(text)

    train_part, test_part, classes = DATASETS[cfg.name](cfg, note)
    mapped = _keep_mapped(cfg, [train_part, test_part])
    train = _to_set(train_part, "train", mapped)
    test = _to_set(test_part, "test", mapped) if test_part is not None else None
    wanted = None if cfg.classes is None else resolve_classes(cfg.classes, classes, cfg.path or cfg.name)
    if wanted is not None:
        train = _keep_classes(train, wanted)
        # The test set keeps every class: one-class models are judged on all of it.
    if cfg.train_split == "train+test":
        if test is None:
            where = f"{cfg.name} {cfg.path}" if cfg.path else cfg.name
            raise DataError(f"data.train_split=train+test (a preset's, or yours) trains on the test split too, and "
                            f"{where} has none (a folder has one in test/); pass --set data.train_split=train")
        extra = _keep_classes(test, wanted) if wanted is not None else test
        train = concat(train, extra, "train")
    if cfg.limit is not None and cfg.limit < len(train):
        # A seeded random subset, kept in the source's order, for every source: some are
        # ordered (dSprites by factor, its first N all small squares; folders by class),
        # and one rule for all (MNIST's shuffled digits too) keeps data.limit meaning one thing.
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:cfg.limit]
        train = train.subset(keep.sort().values)
    val = None
    if cfg.val == "test":
        val = test
        if test is None:  # the default meets a source without a test split: say so
            note(f"no validation split: {cfg.path or cfg.name} has no test split (data.val=test); "
                 "--val 0.1 holds out a tenth of the training images")
    elif cfg.val != "none":
        # A fixed, seeded hold-out: the same images every run of this config.
        n_val = max(1, round(float(cfg.val) * len(train)))
        if n_val >= len(train):
            raise DataError(f"data.val={cfg.val} leaves no training images out of {len(train)}")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))
        val = train.subset(perm[:n_val])
        val.name = "val"
        train = train.subset(perm[n_val:].sort().values)
    if len(train) == 0:
        raise DataError(f"no training images left after filtering {cfg.name} (classes={cfg.classes})")
    splits = Splits(train=train, val=val, test=test, classes=classes, notes=notes)
    return binarized(splits, cfg.binarize) if cfg.binarize != "none" else splits


# Fixed seeds: every run of a data set sees the same binary evaluation images.
BINARIZE_SEEDS = {"train": 1, "val": 2, "test": 3}


def binarized(splits: Splits, mode: str) -> Splits:
    """Evaluation splits drawn once with fixed seeds; the training split drawn once
    ("static") or marked for a fresh draw every epoch ("dynamic")."""
    if any(isinstance(s, MemmapImageSet) for s in (splits.train, splits.val, splits.test)):
        raise DataError("data.binarize needs the images in memory, and these are read from a memory-mapped "
                        "cache; set data.binarize=none")

    def once(s: ImageSet | None, name: str) -> ImageSet | None:
        if s is None:
            return None
        return replace(s, x=bernoulli_uint8(s.x, torch.Generator().manual_seed(BINARIZE_SEEDS[name])))

    train = once(splits.train, "train") if mode == "static" else replace(splits.train, binarize="dynamic")
    # val may be the test split itself (data.val=test): draw it once, as test.
    test = once(splits.test, "test")
    val = test if splits.val is splits.test else once(splits.val, "val")
    return replace(splits, train=train, val=val, test=test)


def _keep_classes(s, classes: list[int]):
    if s.y is None:
        raise DataError("data.classes needs labelled data (sub-folders per class, or labels in the .npz)")
    mask = torch.isin(s.y, torch.tensor(classes, device=s.y.device))
    out = s.subset(mask.nonzero().flatten())
    out.name = s.name
    return out
