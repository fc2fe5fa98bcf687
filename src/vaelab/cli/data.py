"""``vaelab data ...``: commands on data sets (prepare an image folder's cache)."""

from __future__ import annotations

import click

from vaelab.cli.options import _echo


@click.group()
def data() -> None:
    """Prepare image folders for training."""


@data.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--image-size", type=int, help="Resize every image to this square size (after the crop).")
@click.option("--crop", help="Centre crop before resizing: center:148 or center:HxW.")
@click.option("--background", default="white", show_default=True,
              help="What transparent pixels show: white, black or #rrggbb.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="1 (grey) or 3 (RGB); default 1 only when every "
              "image is grey.")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out (listed in the cache manifest).")
@click.option("--workers", type=click.IntRange(min=0), help="Decoding processes (0 = this process; default: one per "
              "core, up to 8).")
def prepare(folder, image_size, crop, background, channels, skip_bad, workers) -> None:
    """Decode FOLDER once into a memory-mappable cache (beside it, or in the user cache).

    `vaelab train --data folder --data-path FOLDER` with the same options (--image-size,
    --set data.crop=..., data.background=..., data.channels=..., data.skip_bad=true) then
    reuses it. A folder holding train/ and test/ is prepared split by split. An existing
    cache is checked in full (sizes and SHA-256) and rebuilt if anything changed.
    """
    from vaelab.data.cache import prepare_splits

    caches = prepare_splits(folder, log=_echo, image_size=image_size, crop=crop, background=background,
                            channels=None if channels is None else int(channels), skip_bad=skip_bad,
                            workers=workers, verify=True)
    for split, c in caches.items():
        n, shape = c.images.shape[0], tuple(c.images.shape[1:])
        classes = f"{len(c.classes)} classes" if c.classes else "no classes"
        where = folder if split == "all" else f"{folder}/{split}"
        done = "decoded" if c.built else "cache checked"
        _echo(f"{where}: {n:,} images, {classes}, shape {shape}, {len(c.skipped)} skipped; "
              f"cache {c.path} ({done} in {c.seconds:.1f}s)")
