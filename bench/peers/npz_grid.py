#!/usr/bin/env python3
"""Tile the first images of one or more pythae_zoo .npz files into a PNG, to look at them.

    /work/peers/pythae-venv/bin/python bench/peers/npz_grid.py bench/out/pythae/vae \
        --out bench/out/pythae/vae/grid.png

Given a family folder, it stacks one row block per file (samples_prior, samples_gmm,
recon_test, recon_test_sampled; those present), ``--n`` images each, 20 to a row, with a
thin separator between blocks. Needs numpy and Pillow only.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ORDER = ["samples_prior", "samples_gmm", "recon_test", "recon_test_sampled"]


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    n, _, h, w = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * h, cols * w), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = img[0]
    return canvas


def main():
    p = argparse.ArgumentParser()
    p.add_argument("paths", nargs="+", help="family folders or .npz files")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--n", type=int, default=40, help="images per file")
    p.add_argument("--cols", type=int, default=20)
    p.add_argument("--scale", type=int, default=2)
    args = p.parse_args()
    files = []
    for path in map(Path, args.paths):
        if path.is_dir():
            files += [path / f"{name}.npz" for name in ORDER if (path / f"{name}.npz").exists()]
        else:
            files.append(path)
    blocks = []
    for f in files:
        images = np.load(f)["images"][:args.n]
        blocks.append(tile(images, args.cols))
        blocks.append(np.full((4, blocks[-1].shape[1]), 128, np.uint8))
        print(f"{f}: {len(images)} shown, dtype {images.dtype}, mean pixel {images.mean():.1f}")
    img = Image.fromarray(np.concatenate(blocks[:-1]))
    img = img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(f"wrote {args.out} ({img.width}x{img.height})")


if __name__ == "__main__":
    main()
