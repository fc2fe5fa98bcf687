"""The vaelab command: end to end in subprocesses, the rest in-process through vaelab.cli.main.

Every error a user can cause must end in exactly one stderr line starting with
'vaelab: error:', exit code 2, and no traceback.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, cli_error, make_idx_dataset, run_main, subprocess_env
from vaelab.config import preset_names

PNG = b"\x89PNG\r\n\x1a\n"


def vaelab_subprocess(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True, text=True,
                          env=env or subprocess_env(), cwd=cwd, timeout=180)




TRAIN_TINY = ["--set", "model.hidden=32", "--latent-dim", "2", "--epochs", "1"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, shapes_npz) -> Path:
    """A run trained by the real command in a subprocess."""
    out = tmp_path_factory.mktemp("cli") / "run"
    r = vaelab_subprocess("train", "--data", "npz", "--data-path", shapes_npz, *TRAIN_TINY, "--iw-samples", "5",
                          "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    out.joinpath("train.stdout").write_text(r.stdout)
    return out


@pytest.fixture
def run_copy(cli_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(cli_run, dst)
    return dst


# ---------------------------------------------------------------------------- end to end (subprocess)
def test_help():
    r = vaelab_subprocess("--help")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    for cmd in ("train", "eval", "reconstruct", "sample", "info", "presets", "download"):
        assert cmd in r.stdout


def test_train_writes_a_complete_run(cli_run):
    for name in ("config.json", "model.safetensors", "checkpoint.safetensors", "history.csv", "summary.json",
                 "eval.json", "figures/loss.png", "figures/reconstructions.png", "figures/samples_prior.png"):
        assert (cli_run / name).is_file(), name
    cfg = json.loads((cli_run / "config.json").read_text())
    assert cfg["data"]["name"] == "npz" and cfg["model"]["mlp"]["hidden"] == [32] and cfg["model"]["latent_dim"] == 2
    assert cfg["train"]["epochs"] == 1
    ev = json.loads((cli_run / "eval.json").read_text())
    assert ev["split"] == "train" and ev["n"] == 256 and ev["iw_samples"] == 5
    stdout = (cli_run / "train.stdout").read_text()
    assert f"run saved in {cli_run}" in stdout and "nll_iw" in stdout


def test_eval_subprocess(run_copy):
    (run_copy / "eval.json").unlink()
    r = vaelab_subprocess("eval", run_copy, "--iw-samples", "5", "--split", "train")
    assert r.returncode == 0, r.stdout + r.stderr
    ev = json.loads((run_copy / "eval.json").read_text())
    assert ev["iw_samples"] == 5 and ev["n"] == 256 and np.isfinite(ev["nll_iw"])
    assert "nll_iw" in r.stdout and f"wrote {run_copy / 'eval.json'}" in r.stdout


def test_unknown_preset_subprocess(tmp_path):
    r = vaelab_subprocess("train", "--preset", "no-such-preset", "--out", tmp_path / "x")
    msg = assert_one_line_error(r.returncode, r.stdout, r.stderr)
    assert "no-such-preset" in msg and "mlp-vae" in msg


def test_eval_on_a_directory_that_is_not_a_run_subprocess(tmp_path):
    r = vaelab_subprocess("eval", tmp_path)
    msg = assert_one_line_error(r.returncode, r.stdout, r.stderr)
    assert "not a vaelab run" in msg and str(tmp_path) in msg


class Boom:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_checkpoint_subprocess(run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"mu.weight": torch.zeros(2, 32), "evil": Boom(marker)}, run_copy / "model.safetensors")
    r = vaelab_subprocess("eval", run_copy, "--split", "train", "--iw-samples", "0")
    msg = assert_one_line_error(r.returncode, r.stdout, r.stderr)
    assert "pickle" in msg and "model.safetensors" in msg
    assert not marker.exists()


# ---------------------------------------------------------------------------- commands (in-process)
def test_presets_lists_all(capsys):
    rc, out, _ = run_main(capsys, "presets")
    assert rc == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    by_name = {line.split()[0]: line for line in lines}
    assert "652,824 params" in by_name["mlp-vae"] and "134,165 params" in by_name["conv-vae"]


def test_version(capsys):
    rc, out, _ = run_main(capsys, "--version")
    assert rc == 0 and "0.1.0" in out


def test_reconstruct(run_copy, tmp_path, capsys):
    out = tmp_path / "g.png"
    rc, stdout, err = run_main(capsys, "reconstruct", run_copy, "--n", "4", "--out", out, "--split", "train")
    assert rc == 0, err
    assert out.read_bytes()[:8] == PNG and f"wrote {out}" in stdout
    w, h = Image.open(out).size
    assert w > 0 and h > 0


def test_sample(run_copy, tmp_path, capsys):
    (run_copy / "figures" / "samples_prior.png").unlink()
    rc, stdout, err = run_main(capsys, "sample", run_copy, "--n", "9", "--seed", "3")
    assert rc == 0, err
    assert (run_copy / "figures" / "samples_prior.png").read_bytes()[:8] == PNG
    rc, _, err = run_main(capsys, "sample", run_copy, "--n", "4", "--out", tmp_path / "s.png")
    assert rc == 0 and (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_info(run_copy, capsys):
    rc, out, err = run_main(capsys, "info", run_copy)
    assert rc == 0, err
    assert out.startswith(f"run {run_copy}: vae/mlp (gaussian posterior, normal prior, elbo objective), "
                          "latent 2, loss bce, data npz")
    assert "summary.json:" in out and "eval.json:" in out and "params" in out and "nll_iw" in out


def test_eval_in_process(run_copy, capsys):
    rc, out, err = run_main(capsys, "eval", run_copy, "--split", "train", "--iw-samples", "0", "--seed", "4")
    assert rc == 0, err
    ev = json.loads((run_copy / "eval.json").read_text())
    assert ev["seed"] == 4 and "nll_iw" not in ev


@pytest.mark.parametrize("cmd", ["eval", "reconstruct"])
def test_default_split_works_on_a_run_without_test_split(run_copy, tmp_path, capsys, cmd):
    extra = ["--iw-samples", "5"] if cmd == "eval" else ["--n", "4", "--out", tmp_path / "g.png"]
    rc, out, err = run_main(capsys, cmd, run_copy, *extra)
    assert rc == 0, err
    if cmd == "eval":  # no test or validation split: the training split, and eval.json says so
        ev = json.loads((run_copy / "eval.json").read_text())
        assert ev["split"] == "train" and ev["n"] == 256 and ev["seen_in_training"] is True
    else:
        assert Image.open(tmp_path / "g.png").size[0] > 100


def test_resume_continues_a_run(run_copy, capsys):
    rc, out, err = run_main(capsys, "train", "--resume", run_copy, "--epochs", "2", "--no-eval")
    assert rc == 0, err
    assert "resuming" in out
    assert json.loads((run_copy / "summary.json").read_text())["epochs"] == 2


def test_resume_that_reshapes_the_model_names_the_change_and_keeps_the_run(run_copy, capsys):
    before = {f: (run_copy / f).read_bytes() for f in ("config.json", "checkpoint.safetensors", "model.safetensors")}
    latent = json.loads(before["config.json"])["model"]["latent_dim"]
    msg = cli_error(capsys, "train", "--resume", run_copy, "--epochs", "2", "--no-eval",
                    "--set", f"model.latent_dim={latent + 1}")
    assert f"cannot resume with model.latent_dim {latent} -> {latent + 1}" in msg and "--out" in msg
    assert {f: (run_copy / f).read_bytes() for f in before} == before
    rc, _, err = run_main(capsys, "train", "--resume", run_copy, "--epochs", "2", "--no-eval")
    assert rc == 0, err


def test_overwrite(run_copy, shapes_npz, capsys):
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, *TRAIN_TINY, "--out", run_copy)
    assert "already holds a run" in msg and "--overwrite" in msg and "--resume" in msg
    args = ("train", "--data", "npz", "--data-path", shapes_npz, *TRAIN_TINY, "--set", "model.hidden=16",
            "--out", run_copy, "--overwrite", "--no-eval")
    # --overwrite removes only a run's content: a file vaelab did not write (the fixture's log) stops it
    assert "files vaelab did not write (train.stdout)" in cli_error(capsys, *args)
    assert (run_copy / "figures").is_dir()
    (run_copy / "train.stdout").unlink()
    rc, _, err = run_main(capsys, *args)
    assert rc == 0, err
    assert json.loads((run_copy / "config.json").read_text())["model"]["mlp"]["hidden"] == [16]
    assert not (run_copy / "figures").exists() and not (run_copy / "eval.json").exists()  # the old run's, gone


# ---------------------------------------------------------------------------- errors (in-process)
def test_latent_dim_zero(shapes_npz, tmp_path, capsys):
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--latent-dim", "0",
                    "--out", tmp_path / "r")
    assert "latent_dim" in msg
    assert not (tmp_path / "r").exists()


def test_unknown_loss(shapes_npz, tmp_path, capsys):
    # --loss is a click Choice: click's own usage error, exit code 2
    rc, out, err = run_main(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--loss", "foo",
                            "--out", tmp_path / "r")
    assert rc == 2 and "Traceback" not in out + err
    assert "Invalid value for '--loss'" in err
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--set", "model.loss=foo",
                    "--out", tmp_path / "r")
    from vaelab.models import LIKELIHOODS

    names = ", ".join(sorted(LIKELIHOODS))  # every registered likelihood, so a new entry does not break this
    assert f"model.loss must be one of {names}, got 'foo'" in msg and not (tmp_path / "r").exists()
    assert {"bce", "mse", "euclidean"} <= set(LIKELIHOODS)
    assert "model.loss" in msg and "foo" in msg


def test_missing_data_offline(tmp_path, no_data_env, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = cli_error(capsys, "train", "--data", "mnist", "--data-dir", empty, "--set", "data.download=false",
                    *TRAIN_TINY, "--out", tmp_path / "r")
    assert str(empty / "mnist") in msg and "train-images-idx3-ubyte.gz" in msg


def test_corrupt_idx(tmp_path, no_data_env, capsys):
    make_idx_dataset(tmp_path / "data", "mnist", n_train=8, n_test=4)
    bad = tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-30])  # truncated gzip
    msg = cli_error(capsys, "train", "--data", "mnist", "--data-dir", tmp_path / "data", "--set",
                    "data.download=false", *TRAIN_TINY, "--out", tmp_path / "r")
    assert str(bad) in msg


def test_wrong_magic_idx(tmp_path, no_data_env, capsys):
    make_idx_dataset(tmp_path / "data", "fashion-mnist", n_train=8, n_test=4, gz=False)
    bad = tmp_path / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x99\x01" + bad.read_bytes()[4:])
    msg = cli_error(capsys, "train", "--data", "fashion-mnist", "--data-dir", tmp_path / "data", "--set",
                    "data.download=false", *TRAIN_TINY, "--out", tmp_path / "r")
    assert str(bad) in msg and "not an IDX file" in msg


def test_mixed_size_image_folder(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(folder / "b.png")
    msg = cli_error(capsys, "train", "--data", "folder", "--data-path", folder, *TRAIN_TINY, "--out", tmp_path / "r")
    assert "mixed sizes" in msg and "a.png" in msg and "b.png" in msg


def test_eval_on_missing_directory(tmp_path, capsys):
    msg = cli_error(capsys, "eval", tmp_path / "nowhere")
    assert "does not exist" in msg


def test_pickle_checkpoint_in_process(run_copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    torch.save({"evil": Boom(marker)}, run_copy / "checkpoint.safetensors")
    msg = cli_error(capsys, "train", "--resume", run_copy, "--epochs", "2", "--no-eval")
    assert "checkpoint.safetensors" in msg and "pickle" in msg
    assert not marker.exists()
    torch.save({"evil": Boom(marker)}, run_copy / "model.safetensors")
    for cmd in (["sample", run_copy], ["reconstruct", run_copy, "--split", "train"], ["eval", run_copy]):
        msg = cli_error(capsys, *cmd)
        assert "model.safetensors" in msg
    assert not marker.exists()


def test_other_usage_errors(run_copy, shapes_npz, tmp_path, capsys):
    assert "say what to train" in cli_error(capsys, "train", "--out", tmp_path / "r")
    assert "--resume" in cli_error(capsys, "train", "--resume", run_copy, "--preset", "mlp-vae")
    assert "--iw-samples" in cli_error(capsys, "eval", run_copy, "--iw-samples", "-1")
    assert "--n" in cli_error(capsys, "reconstruct", run_copy, "--n", "0")
    assert "--n" in cli_error(capsys, "sample", run_copy, "--n", "0")
    assert "--classes" in cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--classes", "a,b",
                                    "--out", tmp_path / "r")
    assert "no test split" in cli_error(capsys, "eval", run_copy, "--split", "test")
    assert "unknown split" in cli_error(capsys, "eval", run_copy, "--split", "holdout")
    if not torch.cuda.is_available():
        assert "CUDA" in cli_error(capsys, "sample", run_copy, "--device", "cuda")
    # resume of a directory with no run
    msg = cli_error(capsys, "train", "--resume", tmp_path / "none", "--epochs", "1")
    assert str(tmp_path / "none") in msg


def test_non_numeric_override(shapes_npz, tmp_path, capsys):
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--set", "model.latent_dim=abc",
                    "--out", tmp_path / "r")
    assert "model.latent_dim must be int, got 'abc'" in msg


def test_scientific_learning_rate_reaches_the_optimizer(shapes_npz, tmp_path, capsys):
    rc, out, err = run_main(capsys, "train", "--data", "npz", "--data-path", shapes_npz, *TRAIN_TINY,
                            "--set", "train.lr=1e-4", "--no-eval", "--out", tmp_path / "r")
    assert rc == 0, err
    with open(tmp_path / "r" / "history.csv") as f:
        assert [float(row["lr"]) for row in csv.DictReader(f)] == [1e-4]  # the rate the epoch trained at


def test_small_learning_rate_flag(shapes_npz, tmp_path, capsys):
    rc, out, err = run_main(capsys, "train", "--data", "npz", "--data-path", shapes_npz, *TRAIN_TINY,
                            "--lr", "0.00001", "--no-eval", "--out", tmp_path / "r")
    assert rc == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["lr"] == 1e-5
