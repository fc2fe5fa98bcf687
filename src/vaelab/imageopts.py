"""How images are read, as options: size, centre crop, background for transparency.

Parsed and checked here, at the bottom of the package, so that the config validates them
(``DataConfig``) and the decoder uses them (``vaelab.data.decode``) from one definition.
"""

from __future__ import annotations

import re

from vaelab.errors import ConfigError

NAMED_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
MAX_IMAGE_SIZE = 4096  # a larger square image is almost surely a typo (and 64 MiB per RGB image)
MAX_CROP = 65536


def check_image_size(size: int | None) -> int | None:
    if size is not None and not (isinstance(size, int) and 1 <= size <= MAX_IMAGE_SIZE):
        raise ConfigError(f"data.image_size (--image-size) must be between 1 and {MAX_IMAGE_SIZE} pixels, "
                          f"got {size!r}")
    return size


def parse_crop(text: str | None) -> tuple[int, int] | None:
    """``center:148`` -> (148, 148); ``center:160x120`` -> (height 160, width 120)."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"center:(\d+)(?:x(\d+))?", str(text).strip())
    h, w = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    if not (1 <= h <= MAX_CROP and 1 <= w <= MAX_CROP):
        raise ConfigError(f"data.crop (--crop) must look like center:148 or center:HxW (e.g. center:160x120), "
                          f"sides 1..{MAX_CROP}, got {text!r}")
    return h, w


def parse_background(text: str) -> tuple[int, int, int]:
    """``white``, ``black`` or ``#rrggbb`` -> an (r, g, b) tuple of 0..255."""
    t = str(text).strip().lower()
    if t in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[t]
    if re.fullmatch(r"#[0-9a-f]{6}", t):
        return int(t[1:3], 16), int(t[3:5], 16), int(t[5:7], 16)
    raise ConfigError(f"data.background (--background) must be white, black or #rrggbb (e.g. #808080), "
                      f"got {text!r}")
