"""Folder caches: decode an image folder once, then memory-map it on every later run.

``prepare_folder(DIR, ...)`` decodes every image (in parallel worker processes, see
``decode.py`` for what decoding does) and writes, in ``DIR/.vaelab-cache/<key>/`` or, when
DIR is read-only, in ``<user cache>/folders/<key>/``:

  images.npy     uint8 (N, C, H, W); later runs open it with ``np.load(mmap_mode="r")``
  labels.npy     int64 (N,) class indices (only for folders with class sub-folders)
  manifest.json  relative path, size and mtime of every file; class names; the options;
                 skipped bad files; notes; shape, byte size and checksums of both arrays

``<key>`` hashes the folder's absolute path and the options, so each combination of
image size, crop, background and channels has its own cache.

Validation on every use, cheap enough for 200,000 files: one ``stat`` per image file
against the manifest (an added, removed or modified file means a rebuild), then the
arrays' byte sizes (catches truncation) and a checksum. Arrays up to ``FULL_HASH_LIMIT``
are hashed whole (SHA-256 runs at ~1.5 GB/s: 256 MiB is ~0.2 s); larger ones are checked
by a SHA-256 of ``SAMPLE_BLOCKS`` evenly spaced blocks plus the first and last block
(the header and both ends), which catches truncation-and-pad, a rewritten header and most
edits but not a flipped byte between two sampled blocks. ``prepare_folder(verify=True)``
(what ``vaelab data prepare`` does) checks the full hash whatever the size.

Writes are atomic (``vaelab.io.atomic_path``) and the manifest, which holds the checksums,
is removed first and written last: a killed prepare leaves no cache that passes validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vaelab.data import decode as dec
from vaelab.data import memory
from vaelab.data.download import cache_dir
from vaelab.data.images import IMAGE_SUFFIXES, list_image_files
from vaelab.data.parallel import default_workers, ordered_map, progress_bar, worker_pool
from vaelab.errors import ConfigError, DataError
from vaelab.imageopts import check_image_size, parse_background, parse_crop
from vaelab.io import atomic_path, write_json
from vaelab.progress import announce

FORMAT = "vaelab-folder-cache-1"
CACHE_DIRNAME = ".vaelab-cache"
FULL_HASH_LIMIT = 256 << 20
SAMPLE_BLOCKS, SAMPLE_BLOCK = 128, 64 << 10
CHUNK = 64  # files per worker task: large enough to hide the inter-process round trip


@dataclass
class FolderCache:
    """A prepared folder: its images memory-mapped, plus what the manifest says."""

    images: np.ndarray  # (N, C, H, W) uint8, a read-only np.memmap
    labels: np.ndarray | None  # (N,) int64, or None without class sub-folders
    classes: list[str] | None
    paths: list[str]  # the N image files, in row order
    path: Path  # the cache folder
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"} of bad files left out
    notes: list[str] = field(default_factory=list)  # one-line remarks (mixed grey/colour, skips)
    built: bool = False  # decoded now (True) or reused
    reason: str | None = None  # why it was (re)built
    seconds: float = 0.0


def cache_options(image_size=None, crop=None, background="white", channels=None) -> dict:
    """The options that define a cache's content, validated and normalised (JSON-able).

    ``skip_bad`` is not one of them: a cache without bad files serves either setting, and
    one that left files out is refused, naming them, to a caller that did not ask for it."""
    if channels not in (None, 1, 3):
        raise ConfigError(f"data.channels (--channels) must be 1 or 3, got {channels!r}")
    check_image_size(image_size)
    c = parse_crop(crop)
    bg = parse_background(background)
    return {"image_size": image_size, "crop": None if c is None else f"center:{c[0]}x{c[1]}",
            "background": "#{:02x}{:02x}{:02x}".format(*bg), "channels": channels}


def cache_key(folder: Path, options: dict) -> str:
    raw = json.dumps({"folder": str(folder), **options}, sort_keys=True)
    size = options["image_size"] or "orig"
    return f"{folder.name}-{size}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


def candidate_dirs(folder: Path, key: str) -> list[Path]:
    """Where a cache of ``folder`` may live: beside it, then in the user cache."""
    return [folder / CACHE_DIRNAME / key, cache_dir() / "folders" / key]


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK | os.X_OK)


# ---------------------------------------------------------------- listing and checksums
def scan(folder: Path) -> tuple[list[str], list[str] | None, list[list]]:
    """Relative image paths, class names, and [relative path, size, mtime_ns] of each file."""
    rels, classes = list_image_files(folder)
    if not rels:
        raise DataError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    base = str(folder)
    listing = []
    for r in rels:
        st = os.stat(os.path.join(base, r))
        listing.append([r, st.st_size, st.st_mtime_ns])
    return rels, classes, listing


def _sampled_sha256(path: Path, size: int, blocks: int, block: int) -> str:
    """SHA-256 of ``blocks`` + 2 evenly spaced blocks of ``block`` bytes, first and last included."""
    h = hashlib.sha256()
    offsets = np.unique(np.linspace(0, max(0, size - block), blocks + 2).astype(np.int64))
    with open(path, "rb") as f:
        for off in offsets.tolist():
            f.seek(off)
            h.update(f.read(block))
    return h.hexdigest()


def _full_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def checksums(path: Path) -> dict:
    size = path.stat().st_size
    return {"file": path.name, "bytes": size, "sha256": _full_sha256(path),
            "sampled": {"blocks": SAMPLE_BLOCKS, "block": SAMPLE_BLOCK,
                        "sha256": _sampled_sha256(path, size, SAMPLE_BLOCKS, SAMPLE_BLOCK)}}


def _check_array(d: Path, meta: dict, full: bool) -> str | None:
    path = d / meta["file"]
    if not path.is_file():
        return f"{meta['file']} is missing"
    size = path.stat().st_size
    if size != meta["bytes"]:
        return f"{meta['file']} is {size:,} bytes but was written as {meta['bytes']:,} (truncated or replaced)"
    if full or size <= FULL_HASH_LIMIT:
        ok = _full_sha256(path) == meta["sha256"]
    else:
        sampled = meta["sampled"]
        ok = _sampled_sha256(path, size, sampled["blocks"], sampled["block"]) == sampled["sha256"]
    return None if ok else f"{meta['file']} does not match its checksum (edited or corrupted)"


def _describe_change(old: list[list], new: list[list]) -> str:
    a, b = {r[0]: r[1:] for r in old}, {r[0]: r[1:] for r in new}
    added, removed = len(b.keys() - a.keys()), len(a.keys() - b.keys())
    modified = sum(1 for k in a.keys() & b.keys() if a[k] != b[k])
    return f"the folder changed: {added} added, {removed} removed, {modified} modified"


def validate(d: Path, folder: Path, options: dict, listing: list[list], full: bool = False) -> tuple[dict | None, str]:
    """(manifest, "") when the cache in ``d`` is sound and current, else (None, why not)."""
    try:
        m = json.loads((d / "manifest.json").read_text())
    except FileNotFoundError:
        return None, "no cache yet"
    except (OSError, ValueError) as e:
        return None, f"its manifest is unreadable ({e.__class__.__name__})"
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("options") != options \
            or m.get("folder") != str(folder):
        return None, "its manifest is from another vaelab version or other options"
    if m["files"] != listing:
        return None, _describe_change(m["files"], listing)
    for meta in m["arrays"].values():
        why = _check_array(d, meta, full)
        if why:
            return None, why
    return m, ""


def open_cache(d: Path, m: dict, folder: Path) -> FolderCache:
    """Memory-map a validated cache."""
    images = np.load(d / m["arrays"]["images"]["file"], mmap_mode="r", allow_pickle=False)
    if images.dtype != np.uint8 or list(images.shape) != m["shape"]:
        raise DataError(f"cache {d} holds {images.dtype} {images.shape}, expected uint8 {tuple(m['shape'])}; "
                        f"delete {d} to rebuild it")
    labels = None
    if "labels" in m["arrays"]:
        labels = np.load(d / m["arrays"]["labels"]["file"], allow_pickle=False)
    bad = {s["path"] for s in m["skipped"]}
    base = str(folder)
    paths = [os.path.join(base, rel) for rel, _, _ in m["files"] if rel not in bad]
    return FolderCache(images, labels, m["classes"], paths, d, m["skipped"], m["notes"])


# ---------------------------------------------------------------- building
# Errors name a file by its path relative to the data folder (a/0.png and b/0.png differ).
def _bad_file(folder: Path, rel: str, error: str) -> DataError:
    return DataError(f"cannot read image {rel} in {folder}: {error}; remove or replace it, or leave unreadable "
                     "files out: --set data.skip_bad=true (train, sweep, anomaly-bench) or --skip-bad (data prepare, "
                     "detect)")


def _chunks(folder: Path, rels: list[str]) -> list[list[str]]:
    """Full paths of ``rels`` in chunks of ``CHUNK``: one worker task each."""
    base = str(folder)
    return [[os.path.join(base, r) for r in rels[i:i + CHUNK]] for i in range(0, len(rels), CHUNK)]


def _sort_out(folder: Path, rel: str, err: str, skip_bad: bool, skipped: list[dict]) -> None:
    """A bad file: an error, or (with skip_bad) an entry in ``skipped``."""
    if not skip_bad:
        raise _bad_file(folder, rel, err)
    skipped.append({"path": rel, "error": err})


def _choose_channels(pool, rels: list[str], folder: Path, o: dict, bg: tuple, skip_bad: bool, progress: bool,
                     skipped: list[dict], notes: list[str]) -> tuple[int, list[str]]:
    """Channels from the headers (1 only when every image is grey); the files that open."""
    greys, good, i = [], [], 0
    chunks = _chunks(folder, rels)
    with progress_bar(len(rels), f"reading headers of {folder.name}", progress) as bar:
        for chunk, results in zip(chunks, ordered_map(pool, dec.probe_chunk, chunks, bg)):
            for _, (grey, err) in zip(chunk, results):
                if err is not None:
                    _sort_out(folder, rels[i], err, skip_bad, skipped)
                else:
                    greys.append(grey)
                    good.append(rels[i])
                i += 1
            bar.update(len(chunk))
    if o["channels"] is not None:
        return o["channels"], good
    n_grey = sum(greys)
    if 0 < n_grey < len(greys):
        notes.append(f"{n_grey:,} of the {len(greys):,} images in {folder} are grey and the rest colour: "
                     "the grey ones are stored as RGB (3 channels)")
    return (1 if greys and n_grey == len(greys) else 3), good


def _mixed_sizes(folder: Path, first: tuple, rel1: str, shape: tuple, rel2: str) -> DataError:
    return DataError(f"images in {folder} have mixed sizes ({first[2]}x{first[1]} in {rel1}, "
                     f"{shape[2]}x{shape[1]} in {rel2}); pass --image-size N to resize them all")


def _decode_into(tmp: Path, pool, rels: list[str], folder: Path, opts: dec.DecodeOptions, skip_bad: bool,
                 progress: bool, skipped: list[dict]) -> list[str]:
    """Decode ``rels`` into an .npy at ``tmp``, good images in order; returns the files kept."""
    out, kept, first, i = None, [], None, 0
    chunks = _chunks(folder, rels)
    with progress_bar(len(rels), f"decoding {folder.name}", progress) as bar:
        for chunk, results in zip(chunks, ordered_map(pool, dec.decode_chunk, chunks, opts)):
            for _, (a, err) in zip(chunk, results):
                rel, i = rels[i], i + 1
                if err is not None:
                    _sort_out(folder, rel, err, skip_bad, skipped)
                    continue
                if out is None:  # the first good image fixes (C, H, W)
                    first = (a.shape, rel)
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rels), *a.shape))
                elif a.shape != first[0]:
                    raise _mixed_sizes(folder, first[0], first[1], a.shape, rel)
                out[len(kept)] = a
                kept.append(rel)
            bar.update(len(chunk))
    if out is None:
        raise DataError(f"no readable images in {folder}: all {len(skipped)} files are unreadable")
    out.flush()
    if len(kept) < len(rels):  # bad files were skipped: rewrite without the empty tail rows
        _shrink(tmp, out, len(kept))
    del out
    return kept


def _shrink(tmp: Path, full: np.ndarray, n: int) -> None:
    part = tmp.with_name(tmp.name + ".shrink")
    small = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(n, *full.shape[1:]))
    for i in range(0, n, 4096):
        small[i:min(i + 4096, n)] = full[i:min(i + 4096, n)]
    small.flush()
    del small
    os.replace(part, tmp)


def _build(d: Path, folder: Path, rels: list[str], classes: list[str] | None, listing: list[list],
           o: dict, skip_bad: bool, workers: int, progress: bool) -> tuple[dict, list[str]]:
    """Decode the folder into cache ``d``; returns (manifest, notes)."""
    skipped: list[dict] = []
    notes: list[str] = []
    bg = parse_background(o["background"])
    (d / "manifest.json").unlink(missing_ok=True)  # invalidate first: arrays change below
    with worker_pool(workers) as pool:
        channels, good = _choose_channels(pool, rels, folder, o, bg, skip_bad, progress, skipped, notes)
        if not good:
            raise DataError(f"no readable images in {folder}: all {len(rels)} files are unreadable")
        opts = dec.DecodeOptions(channels, o["image_size"], parse_crop(o["crop"]), bg, root=str(folder))
        with atomic_path(d / "images.npy") as tmp:
            kept = _decode_into(tmp, pool, good, folder, opts, skip_bad, progress, skipped)
    arrays = {"images": checksums(d / "images.npy")}
    if classes is not None:
        label = {c: i for i, c in enumerate(classes)}
        y = np.asarray([label[r.split("/", 1)[0]] for r in kept], dtype=np.int64)
        with atomic_path(d / "labels.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, y)  # through a file object: np.save(path) would append ".npy" to the name
        arrays["labels"] = checksums(d / "labels.npy")
    if skipped:
        shown = ", ".join(s["path"] for s in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        notes.append(f"skipped {len(skipped)} unreadable file(s) in {folder} ({shown}); "
                     f"all are listed in {d / 'manifest.json'}")
    shape = [len(kept), *np.load(d / "images.npy", mmap_mode="r").shape[1:]]
    m = {"format": FORMAT, "folder": str(folder), "options": o, "files": listing, "classes": classes,
         "skipped": skipped, "notes": notes, "shape": shape, "arrays": arrays}
    write_json(d / "manifest.json", m)
    return m, notes


def prepare_folder(folder: str | Path, image_size: int | None = None, crop: str | None = None,
                   background: str = "white", channels: int | None = None, skip_bad: bool = False,
                   workers: int | None = None, progress: bool | None = None, verify: bool = False,
                   log: Callable[[str], None] | None = None) -> FolderCache:
    """Decode ``folder`` into a memory-mappable cache, or reuse a current one.

    ``crop``: ``center:148`` or ``center:HxW`` (before the resize); ``background``: white,
    black or #rrggbb (under transparent pixels); ``channels``: 1, 3 or None (1 only when
    every image is grey); ``workers``: decoding processes (0 = in this process; None =
    one per core, up to 8, for folders big enough to repay starting them); ``verify``:
    check the full checksum of an existing cache whatever its size.
    """
    t0 = time.perf_counter()
    o = cache_options(image_size, crop, background, channels)
    folder = Path(os.path.abspath(folder))  # absolute, symlinks kept: the key and the paths
    rels, classes, listing = scan(folder)
    beside, user = candidate_dirs(folder, cache_key(folder, o))
    reason = "no cache yet"
    for d in (beside, user):
        m, why = validate(d, folder, o, listing, full=verify)
        if m is not None:
            if m["skipped"] and not skip_bad:  # built with skip_bad: the bad files are still there
                raise _bad_file(folder, m["skipped"][0]["path"], m["skipped"][0]["error"])
            c = open_cache(d, m, folder)
            c.seconds = time.perf_counter() - t0
            return c
        if why != "no cache yet":
            reason = why
            if log:
                log(f"cache {d} is stale ({why}); rebuilding it")
    made = [p for p in (beside.parent, beside, user) if not p.exists()]  # what a failed build takes away again
    d = beside if _writable(beside) else user
    workers = default_workers(len(rels)) if workers is None else workers
    progress = True if progress is None else progress  # the bar itself follows VAELAB_NO_PROGRESS and the terminal
    if log:
        how = f"{workers} worker processes" if workers else "in this process"
        announce(log, f"decoding the {len(rels):,} images of {folder}", why=f"{reason}; once: later runs read the cache",
                 cost=f"{how}, a bar on a terminal", where=f"cached in {d}")
    try:
        m, notes = _build(d, folder, rels, classes, listing, o, skip_bad, workers, progress)
    except BaseException:  # a bad file, Ctrl-C, a full disk: leave no empty cache folder in the user's folder
        for p in reversed(made):  # the deepest first; a folder made now holds nothing of the user's
            if p == d:
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    for note in notes:
        if log:
            log(note)
    c = open_cache(d, m, folder)
    c.built, c.reason, c.seconds = True, reason, time.perf_counter() - t0
    return c


def prepare_splits(root: str | Path, log: Callable[[str], None] | None = None, **options) -> dict[str, FolderCache]:
    """``prepare_folder`` for a data root: {"train": ..., "test": ...} when it holds train/ and
    test/ (made consistent: same channels, same class folders), else {"all": ...}."""
    root = Path(root)
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        return {"all": prepare_folder(root, log=log, **options)}
    out = {s: prepare_folder(root / s, log=log, **options) for s in ("train", "test")}
    if out["train"].images.shape[1] != out["test"].images.shape[1]:  # one split all grey, the other not
        if log:
            log(f"{root}: train/ and test/ differ in colour; both are stored as RGB (3 channels)")
        out = {s: prepare_folder(root / s, log=log, **{**options, "channels": 3}) for s in ("train", "test")}
    (_, _, h1, w1), (_, _, h2, w2) = (c.images.shape for c in out.values())
    if (h1, w1) != (h2, w2):
        raise DataError(f"images in {root} have mixed sizes ({w1}x{h1} in train/, {w2}x{h2} in test/); "
                        "pass --image-size N to resize them all")
    if out["train"].classes != out["test"].classes:
        names = [", ".join(c.classes or []) or "none" for c in out.values()]
        raise DataError(f"{root}/train and {root}/test have different class folders ({names[0]} vs {names[1]}); "
                        "make them the same")
    return out


def load_folder(folder: str | Path, image_size: int | None = None, channels: int | None = None,
                crop: str | None = None, background: str = "white", skip_bad: bool = False,
                log=None) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str]]:
    """A folder of images in memory: (x uint8 (N, C, H, W), labels or None, class names, paths).

    Decoded once into a cache (``vaelab.data.cache.prepare_folder``) and copied from it;
    ``load_data`` keeps big folders memory-mapped instead.
    """
    c = prepare_folder(folder, image_size=image_size, crop=crop, background=background, channels=channels,
                       skip_bad=skip_bad, log=log)
    if c.images.nbytes > memory.IN_MEMORY_FRACTION * memory.available_memory():
        raise DataError(f"{folder} holds {len(c.images):,} images {tuple(c.images.shape[1:])}: "
                        f"{memory.size_text(c.images.nbytes)}, more than fits in the "
                        f"{memory.size_text(memory.available_memory())} available; its cache {c.path} can be "
                        "memory-mapped instead (load_data does so for training)")
    return np.array(c.images), None if c.labels is None else np.array(c.labels), c.classes, c.paths
