"""Decoding throughput of image folders: ``prepare_folder`` with 0, 1 and 2 worker processes
against a plain PIL loop over the same files.

    python bench/data_bench.py                  # emoji-google-64 and a 20x augmented copy
    python bench/data_bench.py --copies 5 --repeat 1

Two folders:

* ``emoji-google-64`` from ``$VAELAB_DATA`` (1,911 real 64x64 RGBA PNGs), prepared into a
  copy under bench/out/ so nothing is written beside the shared data;
* an **augmented** copy with ``--copies`` variants of each image (horizontal flip, a shift
  of up to 6 pixels, a hue rotation; alpha kept), saved as PNG in bench/out/emoji-aug<K>/,
  made once and reused, to have enough files for a throughput figure. These are not new
  real images.

Every method reads the same files from a warm page cache (all files are read once before
timing). The plain loop is what the old ``load_folder`` did: ``Image.open(f).convert("RGB")``
(dropping alpha) into a preallocated uint8 array, serially. ``prepare_folder`` does more per
image (header survey, alpha compositing, writing, fsync-ing and hashing the .npy) and is
timed from the first file listed to the manifest written, its cache deleted before each
run, worker start-up included; ``decode_only_serial`` is its per-image decoding alone, in
this process, with nothing written. The best of ``--repeat`` runs is reported, as images per second.
Results: bench/out/data_bench.json. The machine is shared: the numbers are indicative.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from common import OUT, REPO, machine_info, machine_line, write_json


def augment(src: Path, dst: Path, copies: int) -> int:
    """Write ``copies`` flipped / shifted / hue-rotated PNG variants of every image in ``src``."""
    import numpy as np
    from PIL import Image

    files = sorted(src.glob("*/*.png"))
    done = dst / ".complete"
    if done.is_file() and done.read_text() == f"{len(files)}x{copies}":
        return len(files) * copies
    shutil.rmtree(dst, ignore_errors=True)
    rng = np.random.default_rng(0)
    for f in files:
        with Image.open(f) as im:
            rgba = np.asarray(im.convert("RGBA"))
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            a = rgba[:, ::-1] if k % 2 else rgba
            dy, dx = (int(v) for v in rng.integers(-6, 7, 2))
            a = np.roll(a, (dy, dx), axis=(0, 1))
            hsv = np.asarray(Image.fromarray(np.ascontiguousarray(a[..., :3])).convert("HSV")).copy()
            hsv[..., 0] += np.uint8(rng.integers(0, 256))  # hue rotation (uint8 wraps around)
            rgb = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
            Image.fromarray(np.dstack([rgb, a[..., 3]]), "RGBA").save(dst / f.parent.name / f"{f.stem}-{k:02d}.png")
    done.write_text(f"{len(files)}x{copies}")
    return len(files) * copies


def plain_pil(files: list[Path], size: int) -> float:
    """Seconds for the old serial loop: open, convert("RGB"), copy into one array."""
    import numpy as np
    from PIL import Image

    t0 = time.perf_counter()
    x = np.empty((len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            x[i] = np.asarray(im.convert("RGB"))
    return time.perf_counter() - t0


def decode_only(files: list[Path], size: int) -> float:
    """Seconds for vaelab's per-image decoding alone (alpha composited), serially, no cache."""
    from vaelab.data import decode as dec

    opts = dec.DecodeOptions(channels=3, image_size=size)
    t0 = time.perf_counter()
    results = dec.decode_chunk([str(f) for f in files], opts)
    seconds = time.perf_counter() - t0
    assert all(err is None for _, err in results)
    return seconds


def prepared(folder: Path, size: int, workers: int) -> float:
    from vaelab.data.cache import CACHE_DIRNAME, prepare_folder

    shutil.rmtree(folder / CACHE_DIRNAME, ignore_errors=True)
    t0 = time.perf_counter()
    c = prepare_folder(folder, image_size=size, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    assert c.built and len(c.images) == len(c.paths)
    return seconds


def reuse(folder: Path, size: int) -> float:
    from vaelab.data.cache import prepare_folder

    t0 = time.perf_counter()
    c = prepare_folder(folder, image_size=size, progress=False)
    assert not c.built
    return time.perf_counter() - t0


def _busy(n: int) -> int:
    return sum(range(n))


def cpu_headroom(n: int = 4 * 10**7) -> float:
    """How many cores two busy processes actually get here (2.0 on an idle 2-core machine):
    the context for the worker figures on a shared machine."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_busy, [10, 10]))  # start both workers first
        t0 = time.perf_counter()
        pool.submit(_busy, n).result()
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(pool.map(_busy, [n, n]))
        two = time.perf_counter() - t0
    return round(2 * one / two, 2)


def measure(folder: Path, size: int, repeat: int) -> dict:
    from vaelab.data.images import list_images

    files, _ = list_images(folder)
    for f in files:  # warm the page cache: every method reads from memory
        f.read_bytes()
    n = len(files)
    runs = {"plain_pil_serial": lambda: plain_pil(files, size),
            "decode_only_serial": lambda: decode_only(files, size),
            "prepare_folder_in_process": lambda: prepared(folder, size, 0),
            "prepare_folder_1_worker": lambda: prepared(folder, size, 1),
            "prepare_folder_2_workers": lambda: prepared(folder, size, 2)}
    out: dict = {"folder": str(folder), "images": n}
    for name, fn in runs.items():
        seconds = min(fn() for _ in range(repeat))
        out[name] = {"seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}
        print(f"  {name:<28} {seconds:7.2f} s  {n / seconds:8.0f} images/s", flush=True)
    out["cache_reuse_seconds"] = round(min(reuse(folder, size) for _ in range(repeat)), 3)
    print(f"  {'cache reuse (validation)':<28} {out['cache_reuse_seconds']:7.2f} s", flush=True)
    return out


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=20, help="augmented variants per emoji (default 20)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per method; the best is kept (default 2)")
    args = ap.parse_args()
    root = Path(os.environ.get("VAELAB_DATA") or REPO.parent / "shared" / "data") / "emoji-google-64"
    if not (root / "smileys-emotion").is_dir():
        sys.exit(f"data_bench: {root} not found; set VAELAB_DATA to the folder holding emoji-google-64/")
    os.environ.setdefault("VAELAB_NO_PROGRESS", "1")
    info = machine_info()
    emoji = OUT / "emoji-google-64"
    if not emoji.is_dir():
        shutil.copytree(root, emoji, ignore=shutil.ignore_patterns(".*"))
    aug = OUT / f"emoji-aug{args.copies}"
    t0 = time.perf_counter()
    n_aug = augment(root, aug, args.copies)
    print(f"augmented copy: {n_aug:,} PNGs in {aug} ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = {"machine": info, "command": " ".join(["python"] + sys.argv), "repeat": args.repeat,
              "note": f"emoji-aug{args.copies} is an augmented copy (flips, shifts, hue rotations) of the "
                      "real emoji set; shared machine, indicative numbers", "sets": {}}
    for name, folder in (("emoji-google-64", emoji), (f"emoji-aug{args.copies}", aug)):
        print(name, flush=True)
        result["sets"][name] = measure(folder, 64, args.repeat)
        result["sets"][name]["cores_free_for_2_processes"] = cpu_headroom()
        print(f"  {'cores two processes got':<28} {result['sets'][name]['cores_free_for_2_processes']:7.2f}")
    write_json(OUT / "data_bench.json", result)
    print(machine_line(info))
    print(f"written {OUT / 'data_bench.json'}")


if __name__ == "__main__":
    main()
