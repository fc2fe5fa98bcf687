"""How much memory is available, and whether a data set fits in it.

Torch-free, so ``images.load_array`` can check an array's size before reading it.
"""

from __future__ import annotations

import os
from pathlib import Path

# The in-memory path holds a set plus its shuffled copy for the epoch (``shuffled``), next
# to the validation set, the model and the OS: it is taken while twice the images fit in
# this fraction of the memory available.
IN_MEMORY_FRACTION = 0.8


def available_memory() -> int:
    """Bytes still available: /proc/meminfo's MemAvailable, capped by a cgroup v2 limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return 1 << 62  # unknown: do not refuse
    try:  # a container's limit is lower than what the host reports
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(avail, 0)


def memory_needed(nbytes: int) -> int:
    """Memory the in-memory path needs for ``nbytes`` of images: them and a shuffled copy."""
    return 2 * nbytes


def fits_in_memory(nbytes: int) -> bool:
    return memory_needed(nbytes) <= IN_MEMORY_FRACTION * available_memory()


def size_text(n: int) -> str:
    """Bytes for people: 512 B, 3.0 KiB, 45.6 MiB, 12.3 GiB."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"
