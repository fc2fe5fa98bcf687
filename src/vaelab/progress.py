"""Long steps say what they do before they start, and show how far they have come.

``announce`` writes one line first (what, why, roughly how long, where the result is
kept); ``bar`` is a tqdm bar on stderr while it runs: shown on a terminal only, never with
``VAELAB_NO_PROGRESS=1`` (or a caller's own switch off). What a step logs per epoch goes
through ``write``, which lifts the bar out of the way so the two never garble a line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def enabled(setting: bool = True) -> bool:
    """Progress bars on: the caller's setting, unless VAELAB_NO_PROGRESS is set (to anything but 0)."""
    return bool(setting) and os.environ.get("VAELAB_NO_PROGRESS", "0") in ("", "0")


def bar(total: int, desc: str, on: bool = True, unit: str = "step", file=None, iterable=None):
    """A tqdm bar over ``total`` units (of ``iterable`` when given), or None when progress is off or
    ``file`` (default stderr) is not a terminal. Its right side shows the rate and the time left."""
    if not enabled(on):
        return None
    from tqdm.auto import tqdm

    out = file if file is not None else sys.stderr
    if file is None and not out.isatty():
        return None
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=out, leave=False, dynamic_ncols=True,
                mininterval=0.5)


def each(items, desc: str, on: bool = True, unit: str = "step"):
    """``items`` (a sized collection) as they are, or through a bar (``bar``'s rules) that
    advances once per item."""
    b = bar(len(items), desc, on, unit, iterable=items)
    return items if b is None else b


def write(log: Callable[[str], None], line: str) -> None:
    """``log(line)`` with any bar on the terminal cleared first and redrawn after."""
    from tqdm.auto import tqdm

    with tqdm.external_write_mode():
        log(line)


def announce(log: Callable[[str], None], what: str, *, why: str | None = None, cost: str | None = None,
             where: str | None = None) -> None:
    """One line before a long step: ``what (why): cost; where``."""
    line = what + (f" ({why})" if why else "")
    line += f": {cost}" if cost else ""
    line += f"; {where}" if where else ""
    log(line)


def duration(seconds: float) -> str:
    """A short duration: 45s, 1m24s, 2h05m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


__all__ = ["announce", "bar", "duration", "each", "enabled", "write"]
