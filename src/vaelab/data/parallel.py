"""Worker processes and progress bars for decoding folders.

A ``ProcessPoolExecutor`` with the *spawn* start method: no forked copy of a parent that
may hold torch threads or open files, the same behaviour on Linux, macOS and Windows.
Results come back in submission order with a bounded number of tasks in flight, so a
slow early task never lets finished results pile up in memory.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

MAX_WORKERS = 8
MIN_FILES_PER_WORKER = 256  # below this a worker costs more to start (~0.3 s) than it saves


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(n_files: int) -> int:
    """0 (decode in this process) for small folders, else one worker per core, at most 8."""
    n = min(available_cores(), MAX_WORKERS, n_files // MIN_FILES_PER_WORKER)
    return n if n >= 2 else 0


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A spawn-context process pool of ``workers`` processes, or None for 0 (in-process)."""
    if workers <= 0:
        yield None
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        # On an error (a bad file, Ctrl-C) drop the queued tasks instead of finishing them.
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(pool: Executor | None, fn: Callable, items: Iterable, arg: Any) -> Iterator:
    """``fn(item, arg)`` for each item, in order; at most 2 tasks per worker in flight."""
    if pool is None:
        for item in items:
            yield fn(item, arg)
        return
    # Two tasks per worker keep every worker busy while bounding the results held in memory.
    window = 2 * getattr(pool, "_max_workers", 4)
    it = iter(items)
    pending = deque(pool.submit(fn, item, arg) for _, item in zip(range(window), it))
    while pending:
        result = pending.popleft().result()
        for item in it:  # refill one slot
            pending.append(pool.submit(fn, item, arg))
            break
        yield result


def progress_bar(total: int, desc: str, enabled: bool):
    """``vaelab.progress.bar`` over images (on stderr, on a terminal only, unless
    VAELAB_NO_PROGRESS), or a do-nothing stand-in, as a context manager either way."""
    from vaelab.progress import bar

    b = bar(total, desc, on=enabled, unit="img")
    return nullcontext(_NoBar()) if b is None else b


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass
