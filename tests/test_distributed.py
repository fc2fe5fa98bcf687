"""Multi-process training: how batches are shared and losses scaled (pure), a single process
left untouched, `--nproc` refusals, and real 2-process CPU runs (gloo): `vaelab train --nproc 2`
and `torchrun -m vaelab train` against one process, a killed rank, and the resumed run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, cli_error, subprocess_env
from vaelab.configure import build_config
from vaelab.training import distributed
from vaelab.training.distributed import Ranks
from vaelab.training.loop import fit

SRC = Path(__file__).resolve().parent.parent / "src"
CORES = len(os.sched_getaffinity(0))
two_cores = pytest.mark.skipif(CORES < 2, reason=f"--nproc 2 needs 2 CPU cores; this machine gives {CORES}")


# ---------------------------------------------------------------------------- the arithmetic
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shares_cover_each_global_batch_exactly_once(world):
    for start, stop in [(0, 32), (32, 64), (96, 101), (0, 4), (10, 17)]:
        shares = [Ranks(r, world).part(start, stop) for r in range(world)]
        got = [i for s in shares for i in range(s.start, s.stop)]
        assert got == list(range(start, stop))  # in order, no gaps, no overlap
        sizes = [s.stop - s.start for s in shares]
        assert max(sizes) - min(sizes) <= 1


def test_scaled_rank_losses_average_to_the_global_mean_gradient():
    w = torch.randn(5, requires_grad=True)
    x = torch.randn(11, 5)
    per_image = lambda rows: (x[rows] @ w).square()  # noqa: E731
    (want,) = torch.autograd.grad(per_image(slice(0, 11)).mean(), w)
    for world in (2, 3):
        grads = []
        for r in range(world):
            ranks = Ranks(r, world)
            (g,) = torch.autograd.grad(ranks.batch_loss(per_image(ranks.part(0, 11)), 11), w)
            grads.append(g)
        torch.testing.assert_close(torch.stack(grads).mean(0), want)  # what DDP's average gives


def test_a_single_process_gets_no_plumbing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    model = torch.nn.Linear(2, 2)
    with distributed.session("cpu") as (ranks, device):
        assert ranks == Ranks() and ranks.main and device == torch.device("cpu")
        assert not torch.distributed.is_initialized()
        assert ranks.wrap(model, device) is model
        t = torch.ones(3)
        assert ranks.sum(t) is t
        state = torch.get_rng_state()
        ranks.seed(123)
        assert torch.equal(torch.get_rng_state(), state)
        assert ranks.part(64, 100) == slice(64, 100)
        assert ranks.main_first(lambda: 7) == 7


def test_too_few_images_per_rank_is_refused():
    from vaelab.training.loop import _check_shares
    from vaelab.errors import ConfigError

    _check_shares(257, 64, Ranks(0, 1))  # alone: any batch is fine
    with pytest.raises(ConfigError, match="every batch needs at least 2 images.*leaves 1 in the smallest"):
        _check_shares(257, 64, Ranks(0, 2))


# ---------------------------------------------------------------------------- refusals
def test_nproc_more_than_the_cores_is_one_line(capsys, shapes_npz, tmp_path):
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--device", "cpu",
                    "--nproc", CORES + 1, "--out", tmp_path / "r")
    assert f"--nproc {CORES + 1} is more than the {CORES} CPU cores here: at most one process per CPU core" in msg
    assert not (tmp_path / "r").exists()
    assert "--nproc must be at least 1" in cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz,
                                                     "--device", "cpu", "--nproc", 0, "--out", tmp_path / "r")


def test_nproc_under_torchrun_is_refused(capsys, monkeypatch, shapes_npz, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--nproc", 2, "--out", tmp_path)
    assert "--nproc starts the processes itself; under torchrun leave it out" in msg


# ---------------------------------------------------------------------------- real processes
TINY = ["--data", "npz", "--val", "none", "--set", "model.arch=mlp", "--set", "model.hidden=32",
        "--latent-dim", "2", "--batch-size", "32", "--device", "cpu", "--set", "train.precision=fp32"]


def _env() -> dict[str, str]:
    return subprocess_env(PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _vaelab(*args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _single(shapes_npz, *overrides) -> float:
    """The final training loss of the run TINY describes, in this process."""
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=none", "model.arch=mlp", "model.hidden=32",
        "model.latent_dim=2", "train.batch_size=32", "train.device=cpu", "train.precision=fp32",
        "train.progress=false", *overrides])
    return fit(cfg, None, log=lambda s: None).history[-1]["train_loss"]


@two_cores
def test_two_processes_train_the_same_autoencoder_as_one(shapes_npz, tmp_path):
    # An autoencoder draws no noise: with the same global batch, two processes compute the same
    # steps as one, up to the order of the floating-point sums.
    run = tmp_path / "ae"
    r = _vaelab("train", *TINY, "--data-path", shapes_npz, "--kind", "ae", "--epochs", 3, "--seed", 4,
                "--no-eval", "--out", run, "--nproc", 2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("epoch 3/3") == 1 and "2 processes" in r.stdout  # rank 0 alone logs
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    two = float(_history(run)[-1]["train_loss"])
    one = _single(shapes_npz, "model.kind=ae", "train.epochs=3", "train.seed=4")
    assert two == pytest.approx(one, rel=1e-4)


def test_torchrun_trains_a_vae_like_one_process_and_rank_0_evaluates(shapes_npz, tmp_path):
    run = tmp_path / "vae"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vaelab", "train", *TINY, "--data-path", str(shapes_npz), "--kind", "vae", "--epochs", "4",
           "--seed", "2", "--iw-samples", "2", "--out", str(run)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run saved in") == 1 and r.stdout.count("epoch 4/4") == 1
    assert json.loads((run / "eval.json").read_text())["n"] == 256  # evaluated once, by rank 0
    assert (run / "figures" / "reconstructions.png").is_file()
    two = float(_history(run)[-1]["train_loss"])
    # Only the posterior noise differs from one process with the same seed (each rank draws its
    # own): the gap stays within the spread of single-process runs over seeds.
    one, *others = [_single(shapes_npz, "model.kind=vae", "train.epochs=4", f"train.seed={s}") for s in (2, 3, 4)]
    spread = max(one, *others) - min(one, *others)
    assert abs(two - one) <= spread, (two, one, others)


# Run vaelab's command line as `python -m vaelab` does, then write down which threads the process
# still has (threads-RANK.json beside this script).
_THREADS_AT_EXIT = """
import atexit, json, os, runpy, sys
from pathlib import Path
out = Path(__file__).with_name(f"threads-{os.environ['RANK']}.json")
def report():
    names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    out.write_text(json.dumps(names))
atexit.register(report)
sys.argv[0] = "vaelab"
runpy.run_module("vaelab", run_name="__main__")
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists the threads through /proc")
def test_a_finished_rank_leaves_no_process_group_threads_running(shapes_npz, tmp_path):
    # A process group that outlives destroy_process_group keeps gloo's threads running while the
    # interpreter shuts down, and a finished rank then sometimes dies with SIGABRT ("terminate
    # called without an active exception"). Every rank must end with its main thread alone.
    script = tmp_path / "threads_at_exit.py"
    script.write_text(_THREADS_AT_EXIT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           "train", *TINY, "--data-path", str(shapes_npz), "--kind", "vae", "--epochs", "1", "--no-eval",
           "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = {rank: json.loads((tmp_path / f"threads-{rank}.json").read_text()) for rank in (0, 1)}
    assert all(len(names) == 1 for names in reports.values()), reports  # the main thread; no gloo_* threads


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _rank_of(pid: int) -> str | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((kv[5:].decode() for kv in env if kv.startswith(b"RANK=")), None)


@two_cores
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the rank processes through /proc")
def test_a_killed_rank_ends_the_job_and_the_run_resumes(shapes_npz, tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vaelab", "train", *TINY, "--data-path", str(shapes_npz), "--kind", "vae",
           "--epochs", "500", "--no-eval", "--out", str(run), "--nproc", "2"]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "history.csv").is_file() and len(_history(run)) >= 2):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.02)
        ranks = {_rank_of(c): c for c in _children(p.pid)}
        os.kill(ranks["1"], signal.SIGKILL)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    line = assert_one_line_error(p.returncode, out, err)
    saved = json.loads(json.loads(_metadata(run / "checkpoint.safetensors"))["state"])["epoch"]
    assert saved >= 2
    assert line == (f"vaelab: error: rank 1 of 2 (pid {ranks['1']}) was killed by SIGKILL; the job stopped; "
                    f"the last checkpoint (epoch {saved}) is in {run}: continue with "
                    f"`vaelab train --nproc 2 --resume {run}`")
    assert not [f.name for f in run.iterdir() if f.name.endswith(".tmp")]

    r = _vaelab("train", "--resume", run, "--epochs", saved + 1, "--no-eval", "--nproc", 2)
    assert r.returncode == 0, r.stderr
    assert f"resuming {run} after epoch {saved}" in r.stdout
    rows = _history(run)
    assert [int(row["epoch"]) for row in rows] == list(range(1, saved + 2))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def _metadata(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.dumps(f.metadata())
