"""Multi-process training on torch.distributed: the plumbing ``fit`` uses, kept out of the loop.

Started by torchrun (``torchrun --nproc-per-node N -m vaelab train ...``) or by ``launch``
(``vaelab train --nproc N``, torchrun's own launcher called in this process), every
process runs the same ``fit``; ``session`` joins them (gloo on CPU, NCCL on CUDA) and
says which one this is (``Ranks``). A process started any other way is rank 0 of 1, and
then nothing here does anything: no process group, no DDP wrapper, no extra syncs.

How the work is split, so that a run with the same global batch trains the same model:

- ``train.batch_size`` is the global batch. Every rank draws the same epoch permutation
  (the loop seeds it per epoch) and takes a contiguous share of each global batch
  (``Ranks.part``); the shares together are exactly the single-process batch.
- ``Ranks.batch_loss`` scales the rank's summed loss so that DistributedDataParallel's
  average over ranks is the mean over the global batch, whatever the shares' sizes.
- After the shuffle each rank reseeds its own stream (``Ranks.seed``): the posterior
  noise of different images must not repeat across ranks.
- ``Ranks.sum`` adds the per-image loss sums of all ranks: once per logging interval
  (the loop's finiteness check, so every rank stops together on a NaN), the last of
  which is the epoch's total.
- Rank 0 alone writes files (``Ranks.main``) and reads data first (``main_first``), so a
  data cache is built once.

A process that dies ends the job: its peers fail at their next collective (or get
torchrun's SIGTERM) and stop with ``RankFailed``; ``launch`` names the rank that failed
first and how. Checkpoints are written atomically by rank 0, so the last one survives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from vaelab.errors import ConfigError, VaelabError
from vaelab.training.precision import resolve_device


class RankFailed(VaelabError):
    """A process of a multi-process run failed, or stopped because another one did."""


# How a rank that stopped because of another one words it; ``launch`` looks past these
# to the rank that failed first.
_CONSEQUENCE = re.compile(r"rank \d+ of \d+ stopped: ")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """The process that logs and writes files."""
        return self.rank == 0

    def part(self, start: int, stop: int) -> slice:
        """This rank's contiguous share of the global batch [start, stop) (shares differ by at most one)."""
        if self.world == 1:
            return slice(start, stop)
        m = stop - start
        return slice(start + m * self.rank // self.world, start + m * (self.rank + 1) // self.world)

    def batch_loss(self, per_image: torch.Tensor, batch: int) -> torch.Tensor:
        """The loss to differentiate for this rank's per-image losses, out of a global ``batch``:
        the batch mean when alone; with DDP averaging gradients over ranks, sum * world / batch."""
        if self.world == 1:
            return per_image.mean()
        return per_image.sum() * (self.world / batch)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (a new tensor); ``t`` itself when alone."""
        if self.world == 1:
            return t
        total = t.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def seed(self, seed: int) -> None:
        """Give each rank its own random stream from here on (nothing when alone)."""
        if self.world > 1:
            torch.manual_seed(seed * 1_000_003 + 7919 * (self.rank + 1))

    def main_first(self, fn: Callable):
        """``fn()`` on rank 0, then on the others (a data cache rank 0 builds is then reused)."""
        if self.world == 1:
            return fn()
        if self.main:
            out = fn()
            dist.barrier()
            return out
        dist.barrier()
        return fn()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the loop calls: DDP over ``model`` when there are several ranks."""
        if self.world == 1:
            return model
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # No buffer broadcast before every forward (a collective per step): vaelab's buffers are
        # constants set identically on every rank, and BatchNorm statistics stay per rank
        # (rank 0's are saved). forward_sync_buffers is that switch's newer name.
        quiet = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                 else "broadcast_buffers")
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **{quiet: False})

    def stopped(self, why: str) -> RankFailed:
        return RankFailed(f"rank {self.rank} of {self.world} stopped: {why}")


def env_ranks() -> Ranks:
    """This process's place, from the variables torchrun sets (rank 0 of 1 without them)."""
    get = lambda name, default: int(os.environ.get(name, default))
    world = get("WORLD_SIZE", 1)
    return Ranks(get("RANK", 0), world, get("LOCAL_RANK", 0), get("LOCAL_WORLD_SIZE", world))


def is_main() -> bool:
    return env_ranks().main


def devices(device: torch.device) -> tuple[int, str]:
    """How many processes a node can give one device each: (count, what they are)."""
    if device.type == "cuda":
        return torch.cuda.device_count(), "GPUs"
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, "CPU cores"


def check_nproc(nproc: int, device: torch.device) -> None:
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    count, what = devices(device)
    if nproc > count:
        raise ConfigError(f"--nproc {nproc} is more than the {count} {what} here: at most one process per "
                          f"{what[:-1]}")


@contextlib.contextmanager
def session(device_name: str) -> Iterator[tuple[Ranks, torch.device]]:
    """(this process's Ranks, its device) for one training run; joins the process group
    when torchrun started several processes, and leaves it at the end: on success once
    every rank is done (``_leave_together``), and freed, so no gloo thread outlives it."""
    ranks = env_ranks()
    if ranks.world == 1:
        yield ranks, resolve_device(device_name)
        return
    device = _rank_device(device_name, ranks)
    own = not dist.is_initialized()
    if own:
        _import_before_the_group()
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    previous = _on_sigterm(ranks)
    try:
        yield ranks, device
        if own:
            _leave_together(ranks)
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        raise ranks.stopped("it lost contact with another process of the job, which stopped or was killed") from e
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if own:
            dist.destroy_process_group()


def _import_before_the_group() -> None:
    """Import, before the process group exists, what DistributedDataParallel imports lazily.

    DDP's constructor imports torch._dynamo, which imports torch.distributed.nn.functional,
    whose functions take ``group=group.WORLD`` as a default argument: imported while a group
    exists, they hold that group for the life of the process. ``destroy_process_group`` then
    frees nothing, and the group's gloo threads (gloo_tcp_loop, pt_gloo_runloop) still run while
    the interpreter shuts down, which sometimes ends a finished rank with SIGABRT ("terminate
    called without an active exception"). Imported first, the defaults hold None."""
    import torch._dynamo
    import torch.distributed.nn.functional  # noqa: F401


_sessions = 0  # process groups this process has joined: each one's leaving key is its own


def _leave_together(ranks: Ranks) -> None:
    """Wait, through the rendezvous store (no gloo or NCCL message), until every rank has
    finished its collectives: no process closes its connections while a peer may still read
    from them. Only on success: a failed rank never arrives, and torchrun stops the others."""
    global _sessions
    _sessions += 1
    store = dist.distributed_c10d._get_default_store()
    key = f"vaelab/leave/{_sessions}"
    if store.add(key, 1) == ranks.world:
        store.set(f"{key}/all", "1")
    store.wait([f"{key}/all"], dist.default_pg_timeout)  # as long as a collective may wait for rank 0's writes


def _rank_device(name: str, ranks: Ranks) -> torch.device:
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"train.device={name} names one GPU, but each of the {ranks.world} processes takes its "
                          "own (cuda:LOCAL_RANK); use --device cuda")
    count = torch.cuda.device_count()
    if ranks.local_world > count:
        raise ConfigError(f"{ranks.local_world} processes on this node but only {count} GPUs (one process per GPU)")
    return torch.device("cuda", ranks.local_rank)


def _lost_peer(e: RuntimeError) -> bool:
    # gloo reports a dead peer inside DDP's backward as a plain RuntimeError with its
    # transport's message; NCCL and the store raise DistError subclasses.
    return isinstance(e, dist.DistError) or any(s in str(e) for s in ("gloo", "Connection reset", "Connection closed"))


def _on_sigterm(ranks: Ranks):
    """torchrun stops the other processes with SIGTERM when one fails: end as an error (atomic
    writes in progress are cleaned up, one line on stderr) instead of dying mid-write."""
    def stop(signum, frame):
        raise ranks.stopped("the job was stopped (SIGTERM), as torchrun does when another process fails")

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave the default
        return None


# ------------------------------------------------------------------------------ the launcher
def launch(command: list[str], nproc: int, note: Callable[[], str] = lambda: "") -> None:
    """Run ``command`` (a ``python -m vaelab train ...`` line) as ``nproc`` processes on this
    node through torchrun's launcher (``elastic_launch``, a standalone rendezvous).

    The processes' stdout comes through as it is; their stderr is kept per rank and, when
    the job fails, the rank that failed first is named in one line (``RankFailed``), with
    ``note()`` (where the last checkpoint is) appended. Each process gets cores / nproc
    threads unless OMP_NUM_THREADS is set."""
    from torch.distributed.elastic.multiprocessing.api import (
        DefaultLogsSpecs,
        SignalException,
        Std,
    )
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = max(1, devices(torch.device("cpu"))[0] // nproc)
    with tempfile.TemporaryDirectory(prefix="vaelab-ranks-") as logs, _env(OMP_NUM_THREADS=str(threads)):
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                              logs_specs=DefaultLogsSpecs(log_dir=logs, redirects=Std.ERR), shutdown_timeout=10)
        logging.disable(logging.CRITICAL)  # the launcher's own records; what matters is said below
        try:
            elastic_launch(config, command[0])(*command[1:])
            _forward(_stderr_of(logs, 0))
        except ChildFailedError as e:
            raise _root_cause(e, logs, nproc, note()) from None
        except SignalException as e:  # the launcher itself was signalled; it has stopped the processes
            if e.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise RankFailed(f"the job was stopped by {signal.Signals(e.sigval).name}{note()}") from None
        finally:
            logging.disable(logging.NOTSET)


def _root_cause(e, logs: str, nproc: int, note: str) -> RankFailed:
    """One line about the rank that failed first: killed by a signal, its own vaelab error,
    or a crash (whose traceback is printed above the line)."""
    failures = sorted(e.failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    errors = {rank: _error_line(_stderr_of(logs, f.local_rank)) for rank, f in failures}
    killed = [(r, f) for r, f in failures if f.exitcode < 0 and f.signal_name() != "SIGTERM"]
    if killed:
        rank, f = killed[0]
        return RankFailed(f"rank {rank} of {nproc} (pid {f.pid}) was killed by {f.signal_name()}; the job stopped{note}")
    own = [(r, line) for r, line in errors.items() if line and not _CONSEQUENCE.match(line)]
    if own:
        rank, line = own[0]
        return RankFailed(line if nproc == 1 else f"rank {rank} of {nproc}: {line}")
    rank, f = failures[0]
    text = _stderr_of(logs, f.local_rank)
    if f.exitcode > 0 and not errors[rank]:
        _forward(text)  # a crash: its traceback, then the line
        return RankFailed(f"rank {rank} of {nproc} exited with code {f.exitcode} (its traceback is above){note}")
    how = f"was stopped by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
    return RankFailed(f"rank {rank} of {nproc} {how}; the job stopped{note}")


def _stderr_of(logs: str, local_rank: int) -> str:
    paths = sorted(Path(logs).glob(f"**/attempt_*/{local_rank}/stderr.log"))
    return paths[-1].read_text(errors="replace") if paths else ""


def _error_line(text: str) -> str | None:
    lines = [ln[len("vaelab: error: "):] for ln in text.splitlines() if ln.startswith("vaelab: error: ")]
    return lines[-1] if lines else None


def _forward(text: str) -> None:
    if text.strip():
        sys.stderr.write(text if text.endswith("\n") else text + "\n")


@contextlib.contextmanager
def _env(**defaults: str) -> Iterator[None]:
    """Set environment variables the child processes inherit, where unset; restore afterwards."""
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


__all__ = ["RankFailed", "Ranks", "check_nproc", "devices", "env_ranks", "is_main", "launch", "session"]
