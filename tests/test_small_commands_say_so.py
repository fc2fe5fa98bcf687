"""The smaller commands say what they did instead of silently doing something else: an --n
larger than the split, an option that does not apply, a judge of another data set, a judge
folder that is a run (whose eval.json training a judge there would replace)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import cli_error, run_main


def ok(capsys, *args) -> str:
    rc, out, err = run_main(capsys, *args)
    assert rc == 0, out + err
    return out


def test_export_says_when_n_is_more_than_the_split(trained_run, capsys, tmp_path):
    out = ok(capsys, "export", trained_run.run_dir, "--what", "latents", "--n", 500, "--out", tmp_path / "z.csv")
    assert "note: the val split holds 64 images; exported all 64, not 500" in out
    with open(tmp_path / "z.csv") as f:
        assert len(list(csv.DictReader(f))) == 64
    out = ok(capsys, "export", trained_run.run_dir, "--what", "latents", "--n", 10, "--out", tmp_path / "z.csv")
    assert "note:" not in out  # labelled, and n fits


def test_export_of_an_unlabelled_split_says_the_label_column_is_empty(tmp_path, capsys):
    from vaelab.api import train
    from vaelab.configure import build_config

    x = (np.random.default_rng(0).random((40, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "x.npz", x=x)  # no labels
    cfg = build_config(None, None, ["data.name=npz", f"data.path={tmp_path / 'x.npz'}", "data.val=none",
                                    "model.kind=ae", "model.arch=mlp", "model.hidden=[8]", "model.latent_dim=2",
                                    "train.epochs=1", "train.batch_size=20", "train.device=cpu",
                                    "train.progress=false"])
    run = train(cfg, tmp_path / "run", evaluate_after=False, log=lambda *_: None)
    out = ok(capsys, "export", run.run_dir, "--what", "latents", "--out", tmp_path / "z.csv")
    assert "note: the train split has no labels; the label column is empty" in out
    with open(tmp_path / "z.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["label"] for r in rows} == {""}


def test_inpaint_says_when_n_is_more_than_the_split(trained_run, capsys, tmp_path):
    out = ok(capsys, "inpaint", trained_run.run_dir, "--method", "single", "--n", 1000, "--no-judge",
             "--out", tmp_path / "o")
    assert "note: the val split holds 64 images; inpainting all 64, not 1000" in out
    assert json.loads((tmp_path / "o" / "inpaint_eval.json").read_text())["n"] == 64


def test_plot_refuses_an_option_the_picture_does_not_take(trained_run, capsys, tmp_path):
    msg = cli_error(capsys, "plot", trained_run.run_dir, "--kind", "scatter", "--radius", 2, "--from", 1,
                    "--out", tmp_path / "s.png")
    assert "--radius, --from does not apply to --kind scatter" in msg
    assert not (tmp_path / "s.png").exists()
    out = ok(capsys, "plot", trained_run.run_dir, "--kind", "recon", "--n", 100, "--out", tmp_path / "r.png")
    assert "note: the val split holds 64 images; plotted all of them, not 100" in out
    ok(capsys, "plot", trained_run.run_dir, "--kind", "traverse", "--radius", 2, "--steps", 3,
       "--out", tmp_path / "t.png")  # options it takes


def test_a_judge_of_another_data_set_is_refused(shapes_judge, tmp_path):
    from vaelab.config import DataConfig
    from vaelab.errors import VaelabError
    from vaelab.evaluation.judge import get_judge

    _, folder, _ = shapes_judge
    with pytest.raises(VaelabError, match=r"the judge in .* was trained on shapes, not mnist; pass another judge"):
        get_judge(DataConfig(name="mnist"), folder)
    assert get_judge(DataConfig(name="npz", path="/elsewhere/x.npz"), folder).meta["dataset"] == "shapes"  # kept


def test_a_run_directory_is_not_made_a_judge_folder(trained_run, capsys, tmp_path):
    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    run.joinpath("eval.json").write_text('{"loss": 1.0}\n')
    msg = cli_error(capsys, "inpaint", run, "--method", "single", "--n", 4, "--judge", run, "--out", tmp_path / "o")
    assert f"{run} is a run directory, not a judge folder" in msg
    assert run.joinpath("eval.json").read_text() == '{"loss": 1.0}\n' and not (run / "judge.safetensors").exists()


def test_latents_csv_of_a_vq_vae_has_a_header_as_wide_as_its_rows(shapes_npz, tmp_path, capsys):
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vq-vae", "model.arch=conv",
        "model.latent=conv", "model.channels=8,8", "model.codebook_size=16", "train.epochs=1",
        "train.batch_size=64", "train.device=cpu", "train.progress=false"])
    run = train(cfg, tmp_path / "vq", evaluate_after=False, log=lambda *_: None)
    ok(capsys, "export", run.run_dir, "--what", "latents", "--n", 3, "--out", tmp_path / "z.csv")
    lines = (tmp_path / "z.csv").read_text().splitlines()
    grid = run.posterior(run.split("val").batch(slice(0, 1))).indices.numel()  # the code grid, e.g. 7x7
    assert lines[0].split(",") == ["row_id", "label"] + [f"code{i}" for i in range(grid)]  # was latent_dim wide
    assert all(len(line.split(",")) == 2 + grid for line in lines)
