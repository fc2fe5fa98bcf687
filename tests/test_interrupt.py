"""Ctrl-C while training: one line naming the last checkpoint and the command that continues, exit
code 130, and `--resume` goes on from that epoch."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import subprocess_env

SRC = Path(__file__).resolve().parent.parent / "src"
TINY = ["--data", "npz", "--val", "none", "--set", "model.arch=mlp", "--set", "model.hidden=32", "--latent-dim", "2",
        "--batch-size", "32", "--device", "cpu", "--set", "train.precision=fp32", "--no-eval"]


def _env() -> dict[str, str]:
    return subprocess_env(PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _ctrl_c_reaches_python() -> None:
    """For the child: SIGINT as at a terminal. A job that a non-interactive shell starts in the
    background (CI may run the suite so) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: the test's Ctrl-C would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_ctrl_c_names_the_checkpoint_and_resume_continues_from_it(shapes_npz, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vaelab", "train", *TINY, "--data-path", str(shapes_npz), "--epochs", "1000",
           "--out", str(run)]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_ctrl_c_reaches_python)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "history.csv").is_file() and _history(run)):  # a first checkpoint is written
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    from vaelab.training.checkpoint import saved_epoch

    saved = saved_epoch(run)
    assert p.returncode == 130, err
    assert saved is not None and saved >= 1
    assert err.strip().splitlines() == [(f"vaelab: interrupted; the last checkpoint (epoch {saved}) is in {run}: "
                                         f"vaelab train --resume {run} to continue")]
    assert not [f.name for f in run.iterdir() if f.name.endswith(".tmp")]

    r = subprocess.run([sys.executable, "-m", "vaelab", "train", "--resume", str(run), "--epochs", str(saved + 1),
                        "--no-eval"], check=False, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"resuming {run} after epoch {saved}" in r.stdout
    assert [int(row["epoch"]) for row in _history(run)] == list(range(1, saved + 2))
