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
            "stdout": proc.stdout, "log": str(log.relative_to(REPO))}


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


def summarize(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


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
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": commit, "src_dirty": dirty,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


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


def pick(text: str, known, what: str) -> list[str]:
    """The comma-separated names in ``text``, each checked against ``known`` (an unknown one
    ends the benchmark with the list of known names)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names
