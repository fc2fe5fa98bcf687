"""Where sweep trials run: worker processes on this machine, or Ray tasks.

``EXECUTORS`` names them. Both take ``jobs``, a list of (key, args) for one picklable top-level function, and
report each result through ``record``; a job whose process or task died is reported
through ``lost(key, reason)``, so one crash never stops the other jobs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from vaelab.errors import VaelabError

Job = tuple[str, tuple]
Record = Callable[[dict], None]
Lost = Callable[[str, str], dict]


def run_in_processes(fn: Callable[..., dict], jobs: list[Job], workers: int, threads: int, record: Record,
                     lost: Lost, address: str | None = None) -> None:
    """Worker processes on this machine, --workers at once (a Ray address does not apply)."""
    # Spawned (not forked) workers: forking a process that has started torch's thread
    # pools can deadlock. Each worker limits its own torch threads before training.
    queue, isolate = list(jobs), False
    while queue:
        with ProcessPoolExecutor(max_workers=1 if isolate else workers, mp_context=get_context("spawn"),
                                 initializer=init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(fn, *args): i for i, (_, args) in enumerate(queue)}
            broken = []
            for fut in as_completed(futures):
                try:
                    record(fut.result())
                except BrokenProcessPool:
                    broken.append(futures[fut])
            # A worker died (killed, out of memory) and took the pool with it: every
            # unfinished job failed with it. Which one killed it is unknown with several
            # workers, so run the unfinished ones again one at a time: then the first
            # unfinished job (they run in order) is the one that died.
            broken = [queue[i] for i in sorted(broken)]
            if broken and isolate:
                key = broken.pop(0)[0]
                record(lost(key, "its worker process died (killed or out of memory); re-run the sweep to retry it"))
            isolate = isolate or bool(broken)
            queue = broken


def init_worker(threads: int) -> None:
    os.environ["VAELAB_NO_PROGRESS"] = "1"
    die_with_parent()
    import torch

    torch.set_num_threads(threads)


def die_with_parent() -> None:
    """Linux: end this worker when the sweep process dies (killed, not just interrupted);
    an orphaned worker would go on training a trial that a re-run then starts again."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_on_ray(fn: Callable[..., dict], jobs: list[Job], workers: int, threads: int, record: Record, lost: Lost,
               address: str | None = None) -> None:
    """Ray tasks, on a new local instance or the cluster at --ray-address (pip install 'vaelab[ray]').

    Ray decides how many run at once from each task's ``threads`` CPUs; ``workers`` is not read."""
    try:
        import ray
    except ImportError:
        raise VaelabError("--executor ray needs Ray: pip install 'vaelab[ray]'") from None
    started = not ray.is_initialized()
    if started and address not in (None, "auto", "local"):
        _check_reachable(address)
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        if address is None:
            # Ray runs its workers at niceness 15 by default; on a machine with any other
            # load a trial then crawled (measured: 205 s instead of 10 s for a tiny trial).
            # Trials are the work here, so they get the priority local processes get.
            kwargs["_system_config"] = {"worker_niceness": 0}
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:
            raise VaelabError(f"cannot start or reach Ray at {address or 'a new local instance'}: "
                              f"{_first_line(e)}") from None
    try:
        task = ray.remote(num_cpus=threads)(fn)
        refs = {task.remote(*args): key for key, args in jobs}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                key = refs.pop(ref)
                try:
                    record(ray.get(ref))
                except Exception as e:
                    record(lost(key, f"Ray task failed: {_first_line(e)}"))
    finally:
        if started:
            ray.shutdown()


# Registry: --executor -> fn(trial function, jobs, workers, threads, record, lost, address=None).
EXECUTORS: dict[str, Callable[..., None]] = {"local": run_in_processes, "ray": run_on_ray}


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds with one line when nothing listens at a Ray address: ray.init
    itself retries an unreachable address for minutes."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise VaelabError(f"--ray-address {address!r} must look like HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise VaelabError(f"cannot reach Ray at {address} ({e.strerror or e}); start the cluster "
                          "(ray start --head) or check --ray-address") from None


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
