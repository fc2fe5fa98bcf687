"""Shared helpers for the benchmark scripts: paths, data check, subprocess timing, machine info."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"
# The vector extensions that decide CPU speed here: AVX2 (fp32), AVX512, and bf16 in hardware.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def data_root(prog: str) -> Path:
    """$VAELAB_DATA, else ../shared/data from the repository root; exit with a message if MNIST is absent."""
    root = Path(os.environ.get("VAELAB_DATA") or REPO.parent / "shared" / "data").resolve()
    missing = [f for f in MNIST_FILES if not (root / "mnist" / f).is_file()]
    if missing:
        sys.exit(f"{prog}: MNIST not found: {root / 'mnist'} lacks {', '.join(missing)}. "
                 "Set VAELAB_DATA to the folder that holds mnist/ (the four IDX .gz files).")
    return root


def emoji_dir(prog: str, holds: str = "smileys-emotion") -> Path:
    """$VAELAB_DATA/emoji-google-64 (else ../shared/data's); exit with a message where it lacks
    the category folder ``holds``."""
    root = Path(os.environ.get("VAELAB_DATA") or REPO.parent / "shared" / "data").resolve() / "emoji-google-64"
    if not (root / holds).is_dir():
        sys.exit(f"{prog}: {root} has no {holds}/; set VAELAB_DATA to the folder holding emoji-google-64/")
    return root


QUIET_LOAD = 0.3  # a timing counts only when the 1-minute load average at its start is below this


def load_note(load_start: float) -> str:
    """What to print after the machine line: nothing, or that the seconds are not a timing."""
    return "" if load_start < QUIET_LOAD else " (under load: the seconds are not a timing)"


def child_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VAELAB_DATA"] = str(root)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_timed(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd`` from the repository root; wall time is perf_counter around subprocess.run."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n# exit {proc.returncode}, {wall:.3f}s\n"
                   f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        sys.exit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}\n(full log: {log})")
    return {"wall_s": round(wall, 3), "loadavg_1min_before": round(load_before, 2),
            "loadavg_1min_after": round(loadavg1(), 2), "stdout": proc.stdout,
            "log": str(log.relative_to(REPO) if log.is_relative_to(REPO) else log)}


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


def summarize(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def loadavg1() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def cpu_flags() -> set[str]:
    """The CPU's feature flags, read as vaelab's auto precision reads them (empty where none are listed)."""
    from vaelab.training.precision import cpu_flags as read

    return set(read() or ())


def auto_precision() -> str | None:
    """What vaelab's train.precision=auto picks on this machine's CPU (None if vaelab is absent)."""
    try:
        import torch

        from vaelab.training.precision import resolve_precision
    except ImportError:
        return None
    return resolve_precision("auto", torch.device("cpu"))


def machine_info() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    return {
        "cpu_model": cpu, "nproc": nproc, "cpu_count": os.cpu_count(),
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags], "auto_precision_cpu": auto_precision(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": commit, "src_dirty": dirty,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def machine_line(info: dict, precision: str | None = None, threads: int | None = None,
                 load: tuple[float, float] | None = None) -> str:
    """One line to print beside every timing: CPU model, its vector extensions, threads,
    precision and the 1-minute load average at start and at end (``load``; default: at
    ``machine_info()`` and now)."""
    ext = info.get("vector_extensions")
    ext = " ".join(ext) if ext else "none of " + "/".join(VECTOR_FLAGS) if ext is not None else "not recorded"
    prec = precision or (f"{info['auto_precision_cpu']} (auto)" if info.get("auto_precision_cpu") else "not recorded")
    start, end = load if load else (info["loadavg_at_start"][0], loadavg1())  # default: at start, and now
    end = f" -> {end:.2f} at end" if end is not None else ""
    return (f"machine: {info['cpu_model']} [{ext}], {info['nproc']} cores, "
            f"{threads or info['torch_threads']} threads, precision {prec}, torch {info['torch']}, "
            f"load average (1 min) {start:.2f} at start{end}")


def write_json(path: Path, data: dict) -> None:
    """Atomically (vaelab.io's): a benchmark killed mid-write leaves the old file, not half a new one."""
    from vaelab.io import write_json as atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic(path, data)


def cached_json(path: Path, field: str, now, sources: list[Path]) -> dict | None:
    """The JSON cached in ``path`` while it was made from what ``now`` identifies (its ``field``
    records that: a checkpoint id, input hashes), else None. One written before the field was
    recorded counts when it is newer than every one of ``sources``, and gets the field."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if field not in saved:
        newest = max((s.stat().st_mtime for s in sources if s.is_file()), default=0)
        if path.stat().st_mtime < newest:
            return None
        write_json(path, saved := {**saved, field: now})
    return saved if saved[field] == now else None


def merged_rows(old: dict, new: dict, settings: tuple[str, ...], key) -> list[dict]:
    """A results table's rows after a call: ``new``'s, after those of ``old`` (the file already
    there) whose ``key(row)`` the call did not produce, when both tables were made with the same
    ``settings`` (else ``new``'s alone). A call that scores some models (or one more seed) then
    adds its rows to the table instead of replacing the others'."""
    if any(old.get(k) != new.get(k) for k in settings):
        return new["rows"]
    ran = {key(r) for r in new["rows"]}
    return [r for r in old.get("rows", []) if key(r) not in ran] + new["rows"]


def run_vaelab(args: list[str], env: dict[str, str], log: Path) -> float:
    """``python -m vaelab ARGS`` from the repository root, its output appended to ``log``;
    its wall time in seconds. A failure ends the benchmark with the command and the log."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ vaelab {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "vaelab", *args], cwd=REPO, env=env, stdout=f,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        sys.exit(f"vaelab {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


_EVALUATE = (
    "import json, sys, time, torch\n"
    "torch.set_num_threads(int(sys.argv[4]))\n"
    "from vaelab.api import Run\n"
    "run = Run.load(sys.argv[1], device='cpu')\n"
    "n = int(sys.argv[3])\n"
    "if n:\n"
    "    s = run.splits(); s.test = s.test.subset(torch.arange(min(n, len(s.test))))\n"
    "t0 = time.perf_counter()\n"
    "r = run.evaluate(split='test', iw_samples=int(sys.argv[2]), seed=0)\n"
    "r['eval_seconds'] = round(time.perf_counter() - t0, 1)\n"
    "print(json.dumps(r))\n")


def evaluate_test(run_dir: Path, cache: Path, k: int, n: int, threads: int, env: dict[str, str]) -> dict:
    """``Run.evaluate`` of ``run_dir`` on its test split (its first ``n`` images; 0: all) with
    ``k`` importance samples, in a child process of ``threads`` torch threads, with its
    seconds as ``eval_seconds``; the result is cached in ``cache`` with the weights' checkpoint id,
    and read from it while the run holds those weights (a run trained again is evaluated again)."""
    from vaelab.rundir import ID_FIELD, RunDir

    rd = RunDir(run_dir)
    now = rd.checkpoint_id()
    if (result := cached_json(cache, ID_FIELD, now, [rd.weights])) is not None:
        return result
    if cache.is_file():
        print(f"{cache} was made from other weights than {rd.weights} now holds; evaluating again", flush=True)
    proc = subprocess.run([sys.executable, "-c", _EVALUATE, str(run_dir), str(k), str(n), str(threads)],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"evaluation of {run_dir} failed:\n{proc.stderr[-2000:]}")
    result = {**json.loads(proc.stdout.strip().splitlines()[-1]), ID_FIELD: now}
    write_json(cache, result)  # atomic: a kill mid-write leaves no half file to read next time
    return result


def pick(text: str, known, what: str) -> list[str]:
    """The comma-separated names in ``text``, each checked against ``known`` (an unknown one
    ends the benchmark with the list of known names)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names
