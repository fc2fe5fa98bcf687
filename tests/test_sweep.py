"""Sweeps: grid expansion, results, resume after failed or killed trials, workers, Ray, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import cli_error, run_main
from vaelab.sweep import runner as sw
from vaelab.errors import ConfigError, VaelabError


def _base(shapes_npz) -> list[str]:
    return ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vae", "model.arch=mlp",
            "model.hidden=32", "train.batch_size=64", "train.device=cpu"]


def _spec(shapes_npz, grid: dict, epochs: int = 1, **kw) -> sw.SweepSpec:
    return sw.SweepSpec(trials=sw.expand_grid(grid), base=_base(shapes_npz), epochs=epochs, **kw)


def _quiet(*_):
    pass


# ------------------------------------------------------------------------------ grid
def test_split_values_respects_brackets_and_semicolons():
    assert sw.split_values("1,2,4") == ["1", "2", "4"]
    assert sw.split_values("[32],[512,128]") == ["[32]", "[512,128]"]
    assert sw.split_values("512,128;64") == ["512,128", "64"]


def test_parse_grid_gives_typed_values_and_expands_every_combination():
    grid = sw.parse_grid(["model.latent_dim=1,2,4", "model.loss=bce,mse", "model.hidden=[512],[512,256]",
                          "train.lr=1e-3,0.01"])
    assert grid["model.latent_dim"] == [1, 2, 4]
    assert grid["model.loss"] == ["bce", "mse"]
    assert grid["model.hidden"] == [[512], [512, 256]]
    assert grid["train.lr"] == [0.001, 0.01]
    trials = sw.expand_grid(grid)
    assert len(trials) == 3 * 2 * 2 * 2
    assert len({t.id for t in trials}) == len(trials)
    assert trials[0].params == {"model.latent_dim": 1, "model.loss": "bce", "model.hidden": [512], "train.lr": 0.001}
    assert trials[0].id == "latent_dim=1,loss=bce,hidden=512,lr=0.001"
    assert trials[-1].dir == "trials/latent_dim=4,loss=mse,hidden=512-256,lr=0.01"


@pytest.mark.parametrize("bad, words", [
    ("model.latent_dim", "must look like"),
    ("model.nope=1,2", "unknown option"),
    ("latent_dim=1,2", "must be data.X, model.X, train.X or model.PART.X"),
    ("model.iwae.kk=1,2", "unknown option model.iwae.kk of iwae; its options: k"),
    ("model.latent_dim=", "no values"),
])
def test_bad_grid_is_one_clear_error(bad, words):
    with pytest.raises(ConfigError, match=words):
        sw.parse_grid([bad])


def test_same_key_twice_is_refused():
    with pytest.raises(ConfigError, match="twice"):
        sw.parse_grid(["model.latent_dim=1", "model.latent_dim=2"])


def test_workers_times_threads_never_exceeds_cores():
    for cores in (1, 2, 4, 16):
        for workers in (1, 2, 3, 4, 8):
            t = sw.worker_threads(workers, cores)
            assert t >= 1 and (workers * t <= cores or t == 1)
    assert sw.worker_threads(1, 2) == 2 and sw.worker_threads(2, 2) == 1


def test_bad_values_are_caught_before_any_training(tmp_path, shapes_npz):
    spec = _spec(shapes_npz, {"model.latent_dim": [2, 0]})
    with pytest.raises(ConfigError, match="latent_dim must be at least 1"):
        sw.run_sweep(spec, tmp_path / "s", log=_quiet)
    assert not (tmp_path / "s" / "trials").exists()


def test_a_sweep_of_images_too_small_for_ssim_finishes_and_says_its_loss(tmp_path):
    """8x8 images have no SSIM (an 11x11 window): each trial's line gives what it has."""
    import numpy as np
    from conftest import make_shapes

    x, y = make_shapes(64, size=8, seed=0)
    np.savez(tmp_path / "small.npz", x=x, y=y)
    lines = []
    rows = sw.run_sweep(_spec(tmp_path / "small.npz", {"model.latent_dim": [2]}), tmp_path / "s", log=lines.append)
    assert rows[0]["status"] == "done" and rows[0].get("ssim") is None  # an empty cell in results.csv
    assert any(line.startswith("[1/1] latent_dim=2: loss ") and "ssim" not in line for line in lines), lines


# ------------------------------------------------------------------------------ a real sweep
@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory, shapes_npz):
    out = tmp_path_factory.mktemp("sweeps") / "s"
    spec = _spec(shapes_npz, {"model.latent_dim": [2, 3], "model.loss": ["bce", "euclidean"]})
    rows = sw.run_sweep(spec, out, log=_quiet)
    return out, spec, rows


def test_every_trial_is_a_run_and_results_match_its_eval(small_sweep):
    out, spec, rows = small_sweep
    assert [r["status"] for r in rows] == ["done"] * 4
    table = sw.read_results(out)
    assert list(table[0]) == ["trial", "model.latent_dim", "model.loss", "status", "loss", "mse", "ssim", "psnr",
                              "active_units", "params", "train_seconds", "error"]
    for t, row in zip(spec.trials, table):
        ev = json.loads((out / t.dir / "eval.json").read_text())
        summary = json.loads((out / t.dir / "summary.json").read_text())
        cfg = json.loads((out / t.dir / "config.json").read_text())
        assert row["trial"] == t.id
        assert int(row["model.latent_dim"]) == cfg["model"]["latent_dim"] == t.params["model.latent_dim"]
        assert row["model.loss"] == cfg["model"]["loss"] == t.params["model.loss"]
        for m in ("loss", "mse", "ssim", "psnr"):
            assert float(row[m]) == pytest.approx(ev[m], rel=1e-5)
        assert int(row["params"]) == summary["params"]
        assert cfg["train"]["epochs"] == 1
    # Different latent sizes give different parameter counts; different losses different loss values.
    assert table[0]["params"] != table[2]["params"]
    assert table[0]["loss"] != table[1]["loss"]


def test_list_values_in_the_table_and_an_empty_list_shows():
    from vaelab.sweep.results import _cell

    assert (_cell([512, 128]), _cell([]), _cell(None), _cell(0.001234567)) == ("512,128", "[]", "", "0.00123457")


def test_results_md_and_figures(small_sweep):
    out, spec, _ = small_sweep
    md = (out / "results.md").read_text()
    assert md.count("\n| latent_dim=") == 4
    assert "| model.loss |" in md  # the swept loss is not confused with the loss metric column
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == ["metrics_vs_latent_dim.png", "metrics_vs_loss.png", "reconstructions.png"]
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["params"] == ["model.latent_dim", "model.loss"]
    assert [t["dir"] for t in saved["trials"]] == [t.dir for t in spec.trials]


def test_rerun_skips_finished_trials(small_sweep, monkeypatch):
    out, spec, rows = small_sweep
    calls = []
    monkeypatch.setattr(sw, "run_trial", lambda *a, **k: calls.append(a) or {})
    again = sw.run_sweep(spec, out, log=_quiet)
    assert calls == []
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]


def test_a_different_sweep_in_the_same_folder_is_refused(small_sweep, shapes_npz):
    out, _, _ = small_sweep
    other = _spec(shapes_npz, {"model.latent_dim": [2]}, epochs=3)
    with pytest.raises(VaelabError, match="other settings"):
        sw.run_sweep(other, out, log=_quiet)


def test_a_folder_that_is_not_a_sweep_is_refused(tmp_path, shapes_npz):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(VaelabError, match="not a sweep directory"):
        sw.run_sweep(_spec(shapes_npz, {"model.latent_dim": [2]}), tmp_path / "x", log=_quiet)


# ------------------------------------------------------------------------------ failures and resume
def test_failed_trial_is_recorded_others_go_on_and_rerun_retries_only_it(tmp_path, shapes_npz, monkeypatch):
    from vaelab import api

    out = tmp_path / "s"
    spec = _spec(shapes_npz, {"model.latent_dim": [2, 3, 4]})
    real_train = api.train
    trained = []

    def flaky(config, run_dir, **kw):
        trained.append(Path(run_dir).name)
        if Path(run_dir).name == "latent_dim=3" and fail[0]:
            raise RuntimeError("disk on fire\nsecond line")
        return real_train(config, run_dir, **kw)

    fail = [True]
    monkeypatch.setattr(api, "train", flaky)
    rows = sw.run_sweep(spec, out, log=_quiet)
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["error"] == "RuntimeError: disk on fire"
    table = sw.read_results(out)
    assert table[1]["status"] == "failed" and table[1]["loss"] == "" and "disk on fire" in table[1]["error"]
    assert "disk on fire" in (out / "results.md").read_text()

    fail[0] = False
    trained.clear()
    rows = sw.run_sweep(spec, out, log=_quiet)
    assert trained == ["latent_dim=3"]
    assert [r["status"] for r in rows] == ["done"] * 3


def test_a_real_training_failure_is_recorded(tmp_path, shapes_npz):
    # The config is valid, but the data disagree with it: the trial fails when it trains.
    spec = _spec(shapes_npz, {"model.input_shape": [[1, 28, 28], [1, 32, 32]]})
    rows = sw.run_sweep(spec, tmp_path / "s", log=_quiet)
    assert [r["status"] for r in rows] == ["done", "failed"]
    assert "input_shape" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert json.loads((tmp_path / "s" / spec.trials[1].dir / "trial.json").read_text())["status"] == "failed"


def test_a_trial_killed_mid_training_resumes_from_its_checkpoint(tmp_path, shapes_npz):
    from vaelab.training.loop import fit

    out = tmp_path / "s"
    spec = _spec(shapes_npz, {"model.latent_dim": [2]}, epochs=2)
    trial = spec.trials[0]
    # Simulate a kill after epoch 1: the trial's directory holds a checkpoint, no trial.json.
    sw._claim(out, spec)
    cfg = sw.trial_config(spec, trial)
    cfg.train.epochs = 1
    fit(cfg, out / trial.dir, log=_quiet)
    (out / trial.dir / "config.json").write_text(json.dumps(
        {**json.loads((out / trial.dir / "config.json").read_text()),
         "train": {**cfg.to_dict()["train"], "epochs": 2}}))
    rows = sw.run_sweep(spec, out, log=_quiet)
    assert rows[0]["status"] == "done"
    assert "resuming" in (out / trial.dir / "train.log").read_text()
    with open(out / trial.dir / "history.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_a_second_sweep_on_the_same_folder_is_refused_while_one_runs(tmp_path, shapes_npz):
    out = tmp_path / "s"
    spec = _spec(shapes_npz, {"model.latent_dim": [2]})
    with sw._exclusive(out):  # what a running sweep holds
        with pytest.raises(VaelabError, match="another vaelab sweep is running"):
            sw.run_sweep(spec, out, log=_quiet)
    assert sw.run_sweep(spec, out, log=_quiet)[0]["status"] == "done"


def test_workers_end_when_the_sweep_process_is_killed(tmp_path):
    """A killed sweep leaves no orphan worker training on (a re-run would train it twice)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "worker.pid"
    script = f"""
import os, time
from multiprocessing import get_context
from concurrent.futures import ProcessPoolExecutor
from vaelab.sweep.executors import init_worker as _init_worker
def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(60)
if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(1,)) as p:
        p.submit(work, {str(pidfile)!r}).result()
"""
    (tmp_path / "parent.py").write_text(script)  # a file: spawned workers re-import __main__ from it
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")])
    try:
        for _ in range(600):
            if (pidfile.is_file() and pidfile.read_text()) or parent.poll() is not None:
                break
            time.sleep(0.1)
        worker = int(pidfile.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(100):
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived the killed sweep process")
    finally:
        parent.kill()


# ------------------------------------------------------------------------------ executors
def _dies_on_zero(x: int) -> dict:
    """A job for worker processes: the one given 0 kills its own worker, like an OOM kill."""
    import os

    if x == 0:
        os._exit(9)
    return {"trial": f"job{x}", "status": "done"}


def test_a_worker_that_dies_is_recorded_lost_and_the_other_jobs_finish():
    from vaelab.sweep import executors

    rows, lost = [], []

    def on_lost(key, reason):
        lost.append(key)
        return {"trial": key, "status": "failed", "error": reason}

    jobs = [("job1", (1,)), ("job0", (0,)), ("job2", (2,))]
    executors.run_in_processes(_dies_on_zero, jobs, workers=2, threads=1, record=rows.append, lost=on_lost)
    assert lost == ["job0"]
    assert sorted(r["trial"] for r in rows) == ["job0", "job1", "job2"]
    assert [r["status"] for r in rows if r["trial"] != "job0"] == ["done", "done"]
    assert "worker process died" in next(r["error"] for r in rows if r["trial"] == "job0")


def test_the_ray_executor_takes_the_registrys_call(monkeypatch):
    """EXECUTORS["ray"] is called as every executor is (fn, jobs, workers, threads, record, lost,
    address=); a stand-in for Ray runs each task in this process, so no Ray is needed."""
    import sys
    import types

    from vaelab.sweep import executors

    calls: dict = {}
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False
    fake.init = lambda address=None, **kw: calls.setdefault("init", address)
    fake.shutdown = lambda: calls.setdefault("shutdown", True)
    fake.wait = lambda refs, num_returns=1: (refs[:1], refs[1:])
    fake.get = lambda ref: ref()

    def remote(num_cpus):
        calls["num_cpus"] = num_cpus
        return lambda fn: types.SimpleNamespace(remote=lambda *args: lambda: fn(*args))

    fake.remote = remote
    monkeypatch.setitem(sys.modules, "ray", fake)
    rows = []
    jobs = [("a", (1,)), ("b", (2,))]
    executors.EXECUTORS["ray"](lambda x: {"trial": f"t{x}"}, jobs, 2, 3, rows.append, None, address=None)
    assert sorted(r["trial"] for r in rows) == ["t1", "t2"]
    assert calls == {"num_cpus": 3, "init": None, "shutdown": True}


def test_worker_processes_give_the_same_results_as_one_process(tmp_path, shapes_npz, small_sweep):
    _, _, rows = small_sweep
    spec = _spec(shapes_npz, {"model.latent_dim": [2, 3], "model.loss": ["bce", "euclidean"]})
    par = sw.run_sweep(spec, tmp_path / "p", workers=2, log=_quiet)
    assert [r["status"] for r in par] == ["done"] * 4
    # Same seed, same machine: the same numbers whichever process trained the trial.
    for a, b in zip(rows, par):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    cfg = json.loads((tmp_path / "p" / spec.trials[0].dir / "config.json").read_text())
    assert cfg["train"]["threads"] == sw.worker_threads(2)


def test_ray_executor_runs_trials_as_ray_tasks(tmp_path, shapes_npz):
    pytest.importorskip("ray", reason="Ray not installed: pip install 'vaelab[ray]' to test the Ray executor")
    spec = _spec(shapes_npz, {"model.latent_dim": [2, 3]})
    lines = []
    # Two one-thread tasks at once: never more threads than the two cores CI has.
    rows = sw.run_sweep(spec, tmp_path / "r", executor="ray", workers=2, log=lines.append)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert "(ray, 2 workers x 1 thread)" in lines[0]
    assert (tmp_path / "r" / "results.csv").is_file()
    for t in spec.trials:
        assert (tmp_path / "r" / t.dir / "model.safetensors").is_file()
    import ray

    assert not ray.is_initialized()  # the instance the sweep started is shut down


def test_an_unreachable_ray_cluster_is_one_line_in_seconds(tmp_path, shapes_npz, capsys):
    pytest.importorskip("ray", reason="Ray not installed: pip install 'vaelab[ray]' to test the Ray executor")
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = [a for x in _base(shapes_npz) for a in ("--set", x)]
    t0 = time.perf_counter()
    err = cli_error(capsys, "sweep", "--preset", "mlp-vae", *sets, "--grid", "model.latent_dim=2", "--epochs", "1",
                    "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", tmp_path / "s")
    assert "cannot reach Ray at 127.0.0.1:" in err and time.perf_counter() - t0 < 30
    assert "must look like" in cli_error(capsys, "sweep", "--preset", "mlp-vae", *sets, "--grid",
                                         "model.latent_dim=2", "--executor", "ray", "--ray-address", "nohost",
                                         "--out", tmp_path / "s2")


def test_unknown_executor_and_bad_workers(tmp_path, shapes_npz):
    spec = _spec(shapes_npz, {"model.latent_dim": [2]})
    with pytest.raises(ConfigError, match="executor"):
        sw.run_sweep(spec, tmp_path / "a", executor="slurm", log=_quiet)
    with pytest.raises(ConfigError, match="workers"):
        sw.run_sweep(spec, tmp_path / "a", workers=0, log=_quiet)
    with pytest.raises(ConfigError, match="--ray-address applies to --executor ray"):  # not silently ignored
        sw.run_sweep(spec, tmp_path / "a", executor="local", ray_address="127.0.0.1:1", log=_quiet)
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------ CLI
def test_cli_sweep_prints_the_table_and_writes_results(tmp_path, shapes_npz, capsys):
    sets = [a for s in _base(shapes_npz) for a in ("--set", s)]
    rc, out, err = run_main(capsys, "sweep", "--preset", "mlp-vae", *sets, "--grid", "model.latent_dim=2,3",
                            "--epochs", "1", "--out", tmp_path / "s")
    assert rc == 0, err
    assert "| latent_dim=2 | 2 | done |" in out and "wrote" in out
    assert len(sw.read_results(tmp_path / "s")) == 2


def test_cli_sweep_with_a_failed_trial_exits_1_with_one_line(tmp_path, shapes_npz, capsys):
    sets = [a for s in _base(shapes_npz) for a in ("--set", s)]
    rc, out, err = run_main(capsys, "sweep", "--preset", "mlp-vae", *sets, "--epochs", "1",
                            "--grid", "model.input_shape=[1,28,28],[1,32,32]", "--out", tmp_path / "s")
    assert rc == 1
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == [err.strip()] and "1 of 2 trials failed" in err


@pytest.mark.parametrize("args, words", [
    (["--preset", "mlp-vae"], "--grid"),
    (["--grid", "model.latent_dim=2"], "--preset"),
    (["--preset", "mlp-vae", "--grid", "model.latent_dim"], "must look like"),
    (["--preset", "nope", "--grid", "model.latent_dim=2"], "unknown preset"),
])
def test_cli_sweep_errors(tmp_path, capsys, args, words):
    assert words in cli_error(capsys, "sweep", *args, "--out", tmp_path / "s")


def test_a_sweep_grids_over_a_parts_option_in_either_spelling():
    """model.beta (elbo's beta by its old name) and model.iwae.k (a part's section) are grid keys."""
    grid = sw.parse_grid(["model.beta=1,4", "model.iwae.k=2,3"])
    assert grid == {"model.beta": [1, 4], "model.iwae.k": [2, 3]}
    spec = sw.SweepSpec(trials=sw.expand_grid({"model.iwae.k": grid["model.iwae.k"]}), preset="mlp-vae",
                        base=["model.objective=iwae"])
    assert [sw.trial_config(spec, t).model.opts("iwae").k for t in spec.trials] == [2, 3]
    spec = sw.SweepSpec(trials=sw.expand_grid({"model.beta": grid["model.beta"]}), preset="mlp-vae")
    assert [sw.trial_config(spec, t).model.opts("elbo").beta for t in spec.trials] == [1.0, 4.0]
