"""Command-line mistakes that used to pass without a word, or end in a traceback: a flag and a
--set that disagree, a sweep's grid value --set again, a zero --limit, damaged JSON beside a
run, --iw-images larger than the split, a --data-dir that is not there, output paths through a
file, an unfinished run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import cli_error, run_main

from vaelab.configure import build_config
from vaelab.errors import ConfigError, DataError


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, dst)
    return dst


@pytest.mark.parametrize("extra,overrides,key,a,b", [
    ({"train": {"epochs": 1}}, ["train.epochs=2"], "train.epochs", 1, 2),
    ({"model": {"latent_dim": 4}}, ["model.latent_dim=8"], "model.latent_dim", 4, 8),
    ({"model": {"elbo": {"beta": 2.0}}}, ["model.beta=4"], "model.elbo.beta", 2.0, 4),
])
def test_a_flag_and_a_set_that_disagree_are_refused(extra, overrides, key, a, b):
    with pytest.raises(ConfigError, match=rf"{key} is given twice, as {a!r} \(a flag, or a sweep's grid value\) "
                                          rf"and as {b!r} \(--set {key}=\.\.\.\); give it once"):
        build_config("mlp-vae", None, overrides, extra)


def test_a_flag_and_a_set_that_agree_are_one_value():
    cfg = build_config("mlp-vae", None, ["train.epochs=3", "train.lr=1e-3"], {"train": {"epochs": 3, "lr": 0.001}})
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.001


def test_train_refuses_a_flag_and_a_set_of_one_field(capsys, tmp_path):
    err = cli_error(capsys, "train", "--preset", "mlp-ae", "--epochs", "1", "--set", "train.epochs=2",
                    "--out", str(tmp_path / "r"))
    assert "train.epochs is given twice, as 1" in err
    assert not (tmp_path / "r").exists()


def test_a_sweep_refuses_a_grid_field_set_again_and_a_zero_limit(capsys, tmp_path):
    err = cli_error(capsys, "sweep", "--preset", "mlp-ae", "--grid", "model.latent_dim=2,4", "--set",
                    "model.latent_dim=8", "--epochs", "1", "--limit", "64", "--out", str(tmp_path / "a"))
    assert "model.latent_dim is given twice, as 2" in err
    err = cli_error(capsys, "sweep", "--preset", "mlp-ae", "--grid", "model.latent_dim=2,4", "--epochs", "1",
                    "--limit", "0", "--out", str(tmp_path / "b"))
    assert "data.limit must be a positive number of images" in err


@pytest.mark.parametrize("name,text,match", [
    ("summary.json", "{oops", r"summary.json does not read as JSON .*it is damaged"),
    ("summary.json", "[]", r"summary.json holds a JSON list, not the mapping vaelab writes"),
    ("eval.json", "[1,2", r"eval.json does not read as JSON"),
])
def test_info_names_a_damaged_json_file(capsys, run_copy, name, text, match):
    (run_copy / "eval.json").write_text(json.dumps({"loss": 1.0, "checkpoint_id": "x"}))
    (run_copy / name).write_text(text)
    rc, out, err = run_main(capsys, "info", str(run_copy))
    if name == "eval.json":  # unreadable, it cannot record the weights: left out, and said why
        assert rc == 0 and "eval.json: not shown, it does not read as a JSON mapping (a damaged file)" in out
    else:
        assert rc == 2 and err.count("\n") == 1
        import re
        assert re.search(match, err), err


def test_report_names_a_summary_that_is_not_a_mapping(capsys, run_copy):
    (run_copy / "summary.json").write_text("[]")
    err = cli_error(capsys, "report", str(run_copy), "--no-generate")
    assert "summary.json holds a JSON list, not the mapping vaelab writes" in err


def test_eval_says_when_iw_images_is_the_whole_split_and_what_it_costs(capsys, run_copy):
    rc, out, err = run_main(capsys, "eval", str(run_copy), "--iw-samples", "4", "--iw-images", "99999")
    assert rc == 0, err
    assert "note: --iw-images 99,999 is not fewer than the 64 val images: nll_iw is estimated from all of them" in out
    assert "nll_iw decodes 4 posterior samples for each of 64 images" in out
    assert "about 5 times the work of one pass" in out  # 1 + 4 * 64 / 64
    assert "nll_iw_stderr" not in json.loads((run_copy / "eval.json").read_text())
    rc, out, err = run_main(capsys, "eval", str(run_copy), "--iw-samples", "4", "--iw-images", "16")
    assert rc == 0, err
    assert "for each of 16 images" in out and "about 2 times the work of one pass" in out  # 1 + 4 * 16 / 64


def test_reconstruct_refuses_more_images_than_the_split_holds(capsys, run_copy):
    err = cli_error(capsys, "reconstruct", str(run_copy), "--n", "100")
    assert "--n 100: the val split holds 64 images; give --n 64 or fewer" in err


def test_a_data_dir_that_is_not_a_folder_is_refused_even_with_vaelab_data_set(tmp_path, monkeypatch):
    from vaelab.data.download import locate

    monkeypatch.setenv("VAELAB_DATA", str(tmp_path))
    (tmp_path / "afile").write_text("x")
    for bad, what in ((tmp_path / "missing", "does not exist"), (tmp_path / "afile", "is a file, not a folder")):
        with pytest.raises(DataError, match=rf"data.data_dir \(--data-dir\) {bad} {what}; give the folder"):
            locate("mnist", str(bad), download=False)
    with pytest.raises(DataError, match=f"mnist not found; place .* in {tmp_path / 'empty' / 'mnist'}"):
        (tmp_path / "empty").mkdir()
        locate("mnist", str(tmp_path / "empty"), download=False)  # the only place looked in


def test_an_output_path_through_a_file_names_the_file(capsys, run_copy, tmp_path):
    (tmp_path / "afile").write_text("x")
    err = cli_error(capsys, "sample", str(run_copy), "--n", "4", "--out", str(tmp_path / "afile" / "x.png"))
    assert f"cannot write {tmp_path / 'afile' / 'x.png'}: {tmp_path / 'afile'} is a file, not a folder" in err


def test_a_run_that_stopped_before_its_weights_says_how_to_continue(capsys, run_copy):
    (run_copy / "model.safetensors").unlink()
    (run_copy / "checkpoint.safetensors").write_bytes(b"")  # there: its presence is what counts here
    err = cli_error(capsys, "sample", str(run_copy), "--n", "4")
    assert f"{run_copy} has no model.safetensors: its training stopped before it saved them" in err
    assert f"vaelab train --resume {run_copy}" in err


@pytest.mark.parametrize("lr", ["nan", "inf", "-1"])
def test_fit_prior_names_a_bad_lr_before_anything(capsys, tmp_path, lr):
    err = cli_error(capsys, "fit-prior", str(tmp_path / "no-run"), "--lr", lr)
    assert f"--lr must be positive and finite (Adam's step size), got {float(lr)}" in err


@pytest.mark.parametrize("args,twice", [
    (["train", "--preset", "mlp-ae", "--epochs", "1", "--epochs", "2"], "--epochs"),
    (["sample", "RUN", "--n", "2", "--n=5"], "--n"),
    (["data", "prepare", "DIR", "--image-size", "8", "--image-size=9"], "--image-size"),
])
def test_an_option_given_twice_is_refused_not_settled_by_order(capsys, tmp_path, args, twice):
    args = [str(tmp_path) if a in ("RUN", "DIR") else a for a in args]
    assert cli_error(capsys, *args) == f"vaelab: error: {twice} is given twice; give it once"


def test_options_meant_to_repeat_and_values_that_look_like_options_pass():
    from vaelab.cli import repeated_option

    assert repeated_option(["train", "--set", "train.lr=0.1", "--set", "train.epochs=1", "--no-eval"]) is None
    assert repeated_option(["sweep", "--grid", "model.latent_dim=2,4", "--grid", "train.lr=0.1,0.01"]) is None
    assert repeated_option(["sample", "run", "--out", "--n", "--n", "3"]) is None  # "--n" as --out's value
    assert repeated_option(["nosuchcommand", "--n", "1", "--n", "2"]) is None  # click names the command


def test_info_says_damaged_weights_are_damaged_not_retrained(capsys, run_copy):
    rc, out, err = run_main(capsys, "eval", str(run_copy), "--iw-samples", "0")
    assert rc == 0, err
    w = run_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    rc, out, err = run_main(capsys, "info", str(run_copy))
    assert rc == 0, err
    assert f"eval.json: not shown, {w} does not read as safetensors (a damaged file)" in out


def test_detect_refuses_a_seed_for_a_score_that_draws_nothing(capsys, run_copy, tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((4, 28, 28), np.uint8))
    err = cli_error(capsys, "detect", str(run_copy), "--input", str(tmp_path / "x.npy"), "--score", "mse", "--seed", "3",
                    "--out", str(tmp_path / "s.csv"))
    assert "--seed seeds the posterior draws of the elbo and iwnll scores; --score mse draws nothing" in err
    assert not (tmp_path / "s.csv").exists()
    rc, _, err = run_main(capsys, "detect", str(run_copy), "--input", str(tmp_path / "x.npy"), "--score", "elbo",
                            "--seed", "3", "--out", str(tmp_path / "s.csv"))
    assert rc == 0, err
    assert (tmp_path / "s.csv").read_text().startswith("index,score,anomaly")


def test_a_class_sampler_without_class_is_refused_before_it_is_fit(capsys, run_copy):
    import shutil as sh

    sh.rmtree(run_copy / "samplers", ignore_errors=True)
    err = cli_error(capsys, "sample", str(run_copy), "--sampler", "class-gaussian", "--n", "4")
    assert "sampler class-gaussian is class-conditional: pass --class C" in err
    assert not (run_copy / "samplers" / "class-gaussian.json").exists()
