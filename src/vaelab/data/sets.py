"""Image sets: the images of one split, handed out as float batches by index.

Two kinds with one interface (``__len__``, ``shape``, ``batch(index, device)``, ``subset``,
``to``, ``float``, ``shuffled``, ``y``, ``paths``, ``device``):

- ``ImageSet``: a uint8 (N, C, H, W) torch tensor in memory, the fast path. One byte per
  pixel; ``batch`` converts just the batch to float.
- ``MemmapImageSet``: rows of one or more uint8 (N_i, C, H, W) memory-mapped arrays (a
  folder cache, see ``cache.py``) for data that does not fit in memory. ``batch`` reads
  just the batch's rows, in file order, from the page cache or the disk.

``TensorSet`` holds rows that are not images (code indices) with the part of that interface
the trainer reads.

``shuffled(perm)`` gives one epoch's order: the in-memory set gathers the permuted
tensor once (then every batch is a contiguous slice), the memmap set returns a lazy view.
The loop draws ``perm`` itself, from the random stream it seeds per epoch.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch

from vaelab.errors import DataError


def _index_array(index, n: int) -> np.ndarray:
    """A slice, tensor, list or array of positions -> int64 NumPy positions in 0..n-1."""
    if isinstance(index, slice):
        return np.arange(*index.indices(n), dtype=np.int64)
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    return np.asarray(index, dtype=np.int64).reshape(-1)


def _pick_paths(paths: list[str] | None, idx: np.ndarray) -> list[str] | None:
    return [paths[i] for i in idx.tolist()] if paths else None


@dataclass(frozen=True)
class FactorLabels:
    """Ground-truth factors of a data source, as a loader hands them over (the 4th item of a
    split): each image's class per factor, and what the factors are. The disentanglement
    scores read the names and sizes from here, so no tool needs to know which data set it is."""

    classes: np.ndarray  # (N, F) int: each image's class of each factor
    names: tuple[str, ...]  # (F,) the factors' names
    sizes: tuple[int, ...]  # (F,) how many classes each factor has in the whole data set


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
    # With ``factors``, when the source says: the factors' names and their number of classes in
    # the whole data set (``FactorLabels``); None where a loader gave bare classes.
    factor_names: tuple[str, ...] | None = None
    factor_sizes: tuple[int, ...] | None = None
    memory_mapped: ClassVar[bool] = False  # one tensor in memory

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def batch(self, index, device: torch.device | str | None = None) -> torch.Tensor:
        """Float images in [0, 1] for ``index`` (a slice or index tensor). A float ``x`` (rows
        of features shaped (N, 1, 1, F), already scaled by the caller) is returned as it is."""
        xb = self.x[index]
        if device is not None:
            xb = xb.to(device, non_blocking=True)
        return xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()

    def float(self) -> torch.Tensor:
        return self.batch(slice(None))

    def subset(self, index) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.long)
        paths = [self.paths[i] for i in index.tolist()] if self.paths else None
        pick = lambda t: None if t is None else t[index.to(t.device)]
        return replace(self, x=pick(self.x), y=pick(self.y), paths=paths, factors=pick(self.factors))

    def to(self, device) -> ImageSet:
        move = lambda t: None if t is None else t.to(device)
        return replace(self, x=move(self.x), y=move(self.y), factors=move(self.factors))

    def shuffled(self, perm: torch.Tensor) -> ImageSet:
        """This epoch's images (and labels) in the order ``perm`` (N,), gathered once (uint8, one
        copy), so each batch is then a contiguous slice with no per-step gather. With dynamic
        binarisation each image is a fresh Bernoulli draw from its grey levels (the torch RNG,
        which the loop seeds per epoch)."""
        view = replace(self.subset(perm), binarize="none")
        if self.binarize == "dynamic":
            view.x = bernoulli_uint8(view.x)
        return view


@dataclass
class TensorSet:
    """Rows of any tensor, handed out as they are: data that are not images (a VQ-VAE's code
    indices (N, h, w) for its PixelCNN prior), with the interface the trainer reads
    (``__len__``, ``shuffled(perm)``, ``batch(index)``, ``y``)."""

    x: torch.Tensor  # (N, ...) of any dtype
    y: torch.Tensor | None = None  # (N,) int64 labels, or None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def batch(self, index, device: torch.device | str | None = None) -> torch.Tensor:
        """The rows ``index`` (a slice or index tensor), unconverted."""
        xb = self.x[index]
        return xb if device is None else xb.to(device, non_blocking=True)

    def subset(self, index) -> TensorSet:
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorSet(self.x[index.to(self.x.device)], None if self.y is None else self.y[index.to(self.y.device)])

    def to(self, device) -> TensorSet:
        return TensorSet(self.x.to(device), None if self.y is None else self.y.to(device))

    def shuffled(self, perm: torch.Tensor) -> TensorSet:
        """This epoch's rows (and labels) in the order ``perm`` (N,), gathered once."""
        return self.subset(perm)


def bernoulli_uint8(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary images (0 or 255) drawn pixel by pixel with P(on) = grey level / 255."""
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return ((u * 255) < x).to(torch.uint8) * 255


def _mapping(part: np.ndarray) -> mmap.mmap | None:
    """The mmap under a NumPy memmap (numpy keeps it as ``_mmap``), or None for other arrays."""
    mm = getattr(part, "_mmap", None)
    return mm if isinstance(mm, mmap.mmap) else None


def _advise(part: np.ndarray, advice: str, row: int = 0, rows: int = 0) -> None:
    """madvise a memmap, or ``rows`` of it from ``row``; a no-op where the OS has no such advice."""
    mm, flag = _mapping(part), getattr(mmap, advice, None)
    if mm is None or flag is None:
        return
    try:
        if rows == 0:
            mm.madvise(flag)
            return
        row_bytes = part.strides[0]
        start = part.offset % mmap.ALLOCATIONGRANULARITY + row * row_bytes  # numpy maps from a granule
        aligned = start - start % mmap.PAGESIZE
        mm.madvise(flag, aligned, min(len(mm) - aligned, rows * row_bytes + start - aligned))
    except (OSError, ValueError):
        pass


@dataclass(eq=False)  # holds arrays: compare by identity
class MemmapImageSet:
    """Rows ``rows`` of the memory-mapped arrays ``parts`` (concatenated), read per batch."""

    parts: list[np.ndarray]  # uint8 (N_i, C, H, W) memmaps, one per source (e.g. train/ and test/)
    y: torch.Tensor | None  # (N,) int64 labels of the selected rows, or None
    name: str = ""
    paths: list[str] | None = None
    rows: np.ndarray | None = None  # (N,) int64 rows of the concatenated parts; None = all, in order
    target: torch.device | None = None  # where batches go when ``batch`` is given no device
    offsets: np.ndarray = field(init=False, repr=False)  # (len(parts) + 1,) first row of each part
    memory_mapped: ClassVar[bool] = True  # read from the cache per batch

    def __post_init__(self) -> None:
        shapes = {tuple(p.shape[1:]) for p in self.parts}
        if len(shapes) != 1 or any(p.dtype != np.uint8 or p.ndim != 4 for p in self.parts):
            raise DataError(f"memory-mapped image parts must all be uint8 (N, C, H, W) of one shape, got {shapes}")
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)
        # Training gathers shuffled rows, so the kernel's readahead (128 KiB and more around
        # each fault) reads many rows a batch does not need; where the cache does not fit in
        # memory those pages evict the ones still to come and an epoch rereads the file many
        # times (measured: 300 MB/s of reads for a 1.3 GiB cache in a 512 MiB cgroup). Random
        # advice reads just the pages touched; sequential slices ask for theirs ahead (below).
        for p in self.parts:
            _advise(p, "MADV_RANDOM")

    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.parts[0].shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.target or torch.device("cpu")

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.shape))

    def _rows_of(self, index) -> np.ndarray:
        idx = _index_array(index, len(self))
        return idx if self.rows is None else self.rows[idx]

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), C, H, W) in the order of ``rows``, read in file order."""
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            k = int(np.searchsorted(self.offsets, rows[0], side="right")) - 1
            if rows[-1] < self.offsets[k + 1]:  # one run within one part: a plain slice
                lo = int(rows[0] - self.offsets[k])
                _advise(self.parts[k], "MADV_WILLNEED", lo, len(rows))  # one read-ahead of the run
                return np.array(self.parts[k][lo:lo + len(rows)])
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        part_of = np.searchsorted(self.offsets, srt, side="right") - 1
        pieces = [self.parts[k][srt[part_of == k] - self.offsets[k]] for k in np.unique(part_of).tolist()]
        data = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        out = np.empty_like(data)
        out[order] = data  # undo the sort: row i of the batch is rows[i]
        return out

    def batch(self, index, device: torch.device | str | None = None) -> torch.Tensor:
        """Float images in [0, 1] for ``index`` (a slice, index tensor, list or array)."""
        xb = torch.from_numpy(self._gather(self._rows_of(index)))
        device = device if device is not None else self.target
        if device is not None:
            xb = xb.to(device, non_blocking=True)
        return xb.float().div_(255.0)

    def float(self) -> torch.Tensor:
        return self.batch(slice(None))

    def subset(self, index) -> MemmapImageSet:
        idx = _index_array(index, len(self))
        y = None if self.y is None else self.y[torch.from_numpy(idx).to(self.y.device)]
        return replace(self, y=y, paths=_pick_paths(self.paths, idx), rows=self._rows_of(idx))

    def to(self, device) -> MemmapImageSet:
        """Batches go to ``device``; the images stay mapped (the labels move)."""
        return replace(self, y=None if self.y is None else self.y.to(device), target=torch.device(device))

    def shuffled(self, perm: torch.Tensor) -> MemmapImageSet:
        """This epoch's order ``perm`` (N,) as a lazy view: each batch reads its own rows."""
        return self.subset(perm)

    def in_memory(self) -> ImageSet:
        """All selected rows read into an in-memory ``ImageSet``."""
        x = torch.from_numpy(self._gather(self._rows_of(slice(None))))
        return ImageSet(x, self.y, self.name, self.paths).to(self.device)


def concat(a, b, name: str) -> ImageSet | MemmapImageSet:
    """``a`` then ``b`` as one set (both in memory, or both mapped: stays lazy)."""
    y = None if a.y is None or b.y is None else torch.cat([a.y, b.y.to(a.y.device)])
    fa, fb = getattr(a, "factors", None), getattr(b, "factors", None)
    factors = None if fa is None or fb is None else torch.cat([fa, fb.to(fa.device)])
    paths = a.paths + b.paths if a.paths and b.paths else None
    if isinstance(a, MemmapImageSet) and isinstance(b, MemmapImageSet):
        shift = a.offsets[-1]
        rows = np.concatenate([a._rows_of(slice(None)), b._rows_of(slice(None)) + shift])
        return MemmapImageSet(a.parts + b.parts, y, name, paths, rows, a.target)
    a = a.in_memory() if isinstance(a, MemmapImageSet) else a
    b = b.in_memory() if isinstance(b, MemmapImageSet) else b
    same = factors is not None and (a.factor_names, a.factor_sizes) == (b.factor_names, b.factor_sizes)
    return ImageSet(torch.cat([a.x, b.x.to(a.x.device)]), y, name, paths, factors=factors,
                    factor_names=a.factor_names if same else None, factor_sizes=a.factor_sizes if same else None)


def check_given(splits: Splits) -> None:
    """Splits a caller built in Python (``vaelab.fit(config, splits=...)``), checked once before
    training as the loaders' data are checked: ``ImageSet`` holds uint8 (or bool, or float in
    [0, 1]) images (N, C, H, W) with 1 or 3 channels, or float feature rows (N, 1, 1, F), and
    labels (N,) of whole numbers. A layout read the wrong way (channels last, say) would train
    a model of the wrong images to the end without a word."""
    if not isinstance(splits, Splits):
        raise DataError(f"splits must be a vaelab.Splits(train, val, test), got {type(splits).__name__}")
    for name in ("train", "val", "test"):
        s = getattr(splits, name)
        if s is None and name != "train":
            continue
        where = f"splits.{name}"
        if not isinstance(s, (ImageSet, MemmapImageSet)):
            raise DataError(f"{where} must be a vaelab.ImageSet, got {type(s).__name__}")
        if isinstance(s, MemmapImageSet):
            continue  # built by the folder cache, which checked it
        x = s.x
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{where}.x must be a torch tensor (N, C, H, W), got {type(x).__name__} "
                            "(torch.from_numpy(x), or vaelab.data.images.to_uint8_nchw for other layouts)")
        if x.dim() != 4 or len(x) == 0:
            raise DataError(f"{where}.x must hold images (N, C, H, W), N >= 1, got shape {tuple(x.shape)}")
        rows = torch.is_floating_point(x) and tuple(x.shape[1:3]) == (1, 1)  # feature rows (N, 1, 1, F)
        if not rows and x.shape[1] not in (1, 3):
            last = " (channels last? ImageSet holds (N, C, H, W): x.permute(0, 3, 1, 2))" \
                if x.shape[-1] in (1, 3) else ""
            raise DataError(f"{where}.x has shape {tuple(x.shape)}: images need 1 or 3 channels on axis 1{last}")
        if torch.is_floating_point(x):
            lo, hi = torch.aminmax(x.float())
            if not (torch.isfinite(lo) and torch.isfinite(hi)) or (not rows and (lo < 0 or hi > 1)):
                raise DataError(f"{where}.x: float images must be finite and lie in [0, 1] (got {lo:.3g}..{hi:.3g}); "
                                "give uint8 grey levels, or divide them by 255")
        elif x.dtype not in (torch.uint8, torch.bool):
            raise DataError(f"{where}.x is {x.dtype}: give uint8 grey levels 0..255, bool, or floats in [0, 1]")
        y = s.y
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.dim() != 1 or torch.is_floating_point(y) or y.dtype == torch.bool:
                raise DataError(f"{where}.y must be a 1-D torch tensor of class numbers (int64), got "
                                f"{type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
            if len(y) != len(x):
                raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
            if len(y) and y.min() < 0:
                raise DataError(f"{where}.y: class numbers must be >= 0, got {int(y.min())}")


@dataclass
class Splits:
    train: ImageSet | MemmapImageSet
    val: ImageSet | MemmapImageSet | None
    test: ImageSet | MemmapImageSet | None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)  # one-line remarks from loading (skipped files, ...)

    def get(self, name: str) -> ImageSet | MemmapImageSet:
        s = {"train": self.train, "val": self.val, "test": self.test}.get(name, "unknown")
        if s == "unknown":
            raise DataError(f"unknown split {name!r}; use train, val or test")
        if s is None:
            raise DataError(f"this run has no {name} split (data.val / data.train_split decide which exist)")
        return s
