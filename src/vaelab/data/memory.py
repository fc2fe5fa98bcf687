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
    """Bytes still available: /proc/meminfo's MemAvailable, capped by this process's
    control-group memory limits (cgroup v2 or v1, at every level up to the root)."""
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
    headroom = cgroup_headroom()
    if headroom is not None:
        avail = min(avail, headroom)
    return max(avail, 0)


# cgroup v2: (mount points under /sys/fs/cgroup, the file that marks one, limit, usage); v1 likewise
_CGROUP_V2 = (("", "unified"), "cgroup.controllers", "memory.max", "memory.current")
_CGROUP_V1 = (("memory",), "memory.usage_in_bytes", "memory.limit_in_bytes", "memory.usage_in_bytes")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= 1 << 60 else value  # v1 writes "no limit" as a page-rounded 2^63 - 1


def cgroup_headroom(proc_cgroup: str | Path = "/proc/self/cgroup", mount: str | Path = "/sys/fs/cgroup") -> int | None:
    """The least (limit - usage) over the memory control groups this process sits in, from
    its own group up to the root; None when no level sets a limit. A container or a
    systemd slice caps memory this way, below what /proc/meminfo reports, and a set sized
    by MemAvailable alone would be killed there instead of read from its memory map."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            subdirs, marker, limit_file, usage_file = _CGROUP_V2
        elif "memory" in controllers.split(","):
            subdirs, marker, limit_file, usage_file = _CGROUP_V1
        else:
            continue
        for root in (Path(mount) / d for d in subdirs):
            group = root / rel.lstrip("/")
            if not (root / marker).is_file() or not group.is_dir():
                continue
            while True:  # the group and each parent: a parent's limit binds its children too
                limit = _read_int(group / limit_file)
                if limit is not None:
                    used = _read_int(group / usage_file) or 0
                    best = limit - used if best is None else min(best, limit - used)
                if group == root:
                    break
                group = group.parent
    return best


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
