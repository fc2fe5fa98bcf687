"""A run trained on an image folder decodes it with options (image size, crop, background,
skip_bad). Everything that later reads images for that run, `detect`'s --input folder and the
judge that `inpaint`, `steer` and `eval-samples` train, decodes them the same way, and a bad
file's advice names an option the command takes."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_error, run_main
from conftest import prep_folder as prep
from conftest import save_image as save
from PIL import Image

RNG = np.random.default_rng(3)


def _rgba_folder(root: Path, n: int = 6) -> Path:
    """Two classes of 12x12 RGBA images, half of each transparent: the background shows."""
    for cls in ("a", "b"):
        for i in range(n):
            a = RNG.integers(0, 256, (12, 12, 4), dtype=np.uint8)
            a[..., 3] = 0
            a[3:9, 3:9, 3] = 255
            save(root / cls / f"{i}.png", Image.fromarray(a, "RGBA"))
    return root


def _train(capsys, root: Path, out: Path, *extra) -> Path:
    rc, _, err = run_main(capsys, "train", "--data", "folder", "--data-path", root, "--image-size", 8, "--epochs", 1,
                          "--no-eval", "--set", "model.latent_dim=2", "--set", "model.hidden=[8]",
                          "--set", "data.val=none", *extra, "--out", out)
    assert rc == 0, err
    return out


def _csv_scores(path: Path) -> dict[str, float]:
    with open(path) as f:
        return {Path(r["path"]).name + r["path"].split("/")[-2]: float(r["score"]) for r in csv.DictReader(f)}


def test_detect_decodes_an_input_folder_as_the_run_was_trained(tmp_path, capsys):
    from vaelab.anomaly.scores import score_images
    from vaelab.api import Run

    root = _rgba_folder(tmp_path / "imgs")
    run_dir = _train(capsys, root, tmp_path / "run", "--set", "data.background=black")
    rc, _, err = run_main(capsys, "detect", run_dir, "--input", root, "--out", tmp_path / "s.csv")
    assert rc == 0, err  # before: the 12x12 input against the model's 8x8 was refused
    got = _csv_scores(tmp_path / "s.csv")
    run = Run.load(run_dir, device="cpu")

    def scores(background: str) -> dict[str, float]:
        c = prep(root, image_size=8, background=background, channels=3)
        s = score_images(run.model, torch.from_numpy(np.array(c.images)).float() / 255, "mse", 1, 0)
        return {Path(p).name + p.split("/")[-2]: float(v) for p, v in zip(c.paths, s)}

    black, white = scores("black"), scores("white")
    assert len(got) == 12 and got.keys() == black.keys()
    assert all(got[k] == pytest.approx(black[k], rel=1e-5) for k in got)
    assert any(abs(got[k] - white[k]) > 1e-3 * abs(white[k]) for k in got)  # the background matters


def test_detect_skips_bad_input_files_only_when_asked(tmp_path, capsys):
    root = _rgba_folder(tmp_path / "imgs", n=3)
    run_dir = _train(capsys, root, tmp_path / "run")
    new = _rgba_folder(tmp_path / "new", n=3)  # images to score, one of them unreadable
    (new / "b" / "junk.png").write_bytes(b"not an image")
    line = cli_error(capsys, "detect", run_dir, "--input", new, "--out", tmp_path / "s.csv")
    assert "b/junk.png" in line and "--skip-bad" in line
    rc, out, err = run_main(capsys, "detect", run_dir, "--input", new, "--skip-bad", "--out", tmp_path / "s.csv")
    assert rc == 0, err
    assert "b/junk.png" in out + err  # named, not silently dropped
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and not any("junk" in r["path"] for r in rows)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros((2, 8, 8, 3), np.uint8))
    assert "not a folder" in cli_error(capsys, "detect", run_dir, "--input", npz, "--skip-bad")


def test_the_judge_reads_the_runs_folder_with_its_options(tmp_path, capsys):
    from vaelab.api import Run
    from vaelab.evaluation.judge import get_judge

    root = _rgba_folder(tmp_path / "imgs", n=8)
    (root / "a" / "junk.png").write_bytes(b"not an image")
    run_dir = _train(capsys, root, tmp_path / "run", "--set", "data.skip_bad=true")
    data = Run.load(run_dir, device="cpu").config.data
    judge = get_judge(data, tmp_path / "judge", epochs=1, log=lambda _: None)  # before: stopped at junk.png
    assert judge.meta["n_train"] + judge.meta["n_test"] == 16 and judge.meta["shape"] == [3, 8, 8]


def test_the_judges_cache_key_counts_crop_and_background_and_keeps_old_keys(tmp_path):
    from vaelab.config import DataConfig
    from vaelab.evaluation.judge import judge_key

    d = DataConfig(name="folder", path=str(tmp_path), image_size=8)
    old = hashlib.sha256(f"folder:{tmp_path.resolve()}:8:None".encode()).hexdigest()[:12]
    assert judge_key(d) == f"folder-{old}"  # a judge cached before crop and background counted is still found
    keys = {judge_key(d), judge_key(DataConfig(name="folder", path=str(tmp_path), image_size=8, background="black")),
            judge_key(DataConfig(name="folder", path=str(tmp_path), image_size=8, crop="center:6"))}
    assert len(keys) == 3


def test_detect_resizes_an_input_folder_to_a_runs_square_input(tmp_path, capsys, trained_run):
    from vaelab.anomaly.scores import score_images
    from vaelab.api import Run

    run = Run.load(trained_run.run_dir, device="cpu")
    c, h, w = run.config.model.input_shape
    for i in range(3):
        save(tmp_path / "in" / f"{i}.png", Image.fromarray(RNG.integers(0, 256, (2 * h, 2 * w), dtype=np.uint8)))
    rc, _, err = run_main(capsys, "detect", trained_run.run_dir, "--input", tmp_path / "in",
                          "--out", tmp_path / "s.csv")
    assert rc == 0, err  # before: refused, the images being twice the model's size
    with open(tmp_path / "s.csv") as f:
        got = [float(r["score"]) for r in csv.DictReader(f)]
    x = torch.from_numpy(np.array(prep(tmp_path / "in", image_size=h, channels=c).images)).float() / 255
    assert got == pytest.approx(score_images(run.model, x, "mse", 1, 0).tolist(), rel=1e-5)


def test_vaelab_judge_takes_a_folders_options_and_refuses_what_it_does_not_read(tmp_path, capsys):
    from vaelab.api import Run
    from vaelab.evaluation.judge import judge_key, load_judge

    root = _rgba_folder(tmp_path / "imgs", n=4)
    run_dir = _train(capsys, root, tmp_path / "run", "--set", "data.background=black")
    rc, _, err = run_main(capsys, "judge", "--data", "folder", "--data-path", root, "--image-size", 8,
                            "--set", "data.background=black", "--epochs", 1, "--out", tmp_path / "j")
    assert rc == 0, err
    # the judge a run of the same folder and options would train for itself
    assert load_judge(tmp_path / "j").meta["dataset"] == judge_key(Run.load(run_dir, device="cpu").config.data)
    assert load_judge(tmp_path / "j").meta["shape"] == [3, 8, 8]
    common = ("judge", "--data", "folder", "--data-path", root, "--out", tmp_path / "j2")
    assert "does not read data.classes" in cli_error(capsys, *common, "--set", "data.classes=[a]")
    assert "data.* options only" in cli_error(capsys, *common, "--set", "train.epochs=1")
    assert not (tmp_path / "j2").exists()


def test_classes_are_taken_by_name_where_a_command_takes_a_class(tmp_path, capsys):
    import json

    root = _rgba_folder(tmp_path / "imgs", n=4)
    run_dir = _train(capsys, root, tmp_path / "run", "--kind", "cvae")
    assert json.loads((run_dir / "summary.json").read_text())["classes"] == ["a", "b"]
    got = {}
    for c in ("b", "1"):
        rc, _, err = run_main(capsys, "sample", run_dir, "--sampler", "prior", "--class", c, "--n", 4,
                              "--out", tmp_path / f"{c}.png", "--npz", tmp_path / f"{c}.npz")
        assert rc == 0, err
        got[c] = np.load(tmp_path / f"{c}.npz")["labels"].tolist()
    assert got["b"] == got["1"] == [1, 1, 1, 1]
    line = cli_error(capsys, "sample", run_dir, "--sampler", "prior", "--class", "zebra", "--n", 4)
    assert "'zebra'" in line and "a, b" in line
    rc, _, err = run_main(capsys, "plot", run_dir, "--kind", "interpolate", "--from", "a", "--to", "b",
                          "--out", tmp_path / "i.png")
    assert rc == 0, err
    assert "a number" in cli_error(capsys, "plot", run_dir, "--kind", "interpolate", "--between", "images",
                                   "--from", "a", "--to", "1")
    steered = _train(capsys, root, tmp_path / "steered", "--set", "model.predictor_weight=1")
    rc, out, err = run_main(capsys, "steer", steered, "--from", 0, "--to", "b", "--steps", 2, "--split", "train",
                            "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert "predictor p(class 1)" in out


def test_csv_exports_of_a_folder_run_name_each_rows_file_and_class(tmp_path, capsys):
    root = _rgba_folder(tmp_path / "imgs", n=2)
    (root / "b" / "1.png").rename(root / "b" / 'odd, "name".png')  # a comma and quotes: quoted in the CSV
    run_dir = _train(capsys, root, tmp_path / "run")
    for what in ("latents", "reconstructions"):
        rc, _, err = run_main(capsys, "export", run_dir, "--what", what, "--split", "train",
                              "--out", tmp_path / f"{what}.csv")
        assert rc == 0, err
    with open(tmp_path / "latents.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["row_id", "path", "label", "class", "mu0"]
    assert [(Path(r["path"]).relative_to(root).as_posix(), r["label"], r["class"]) for r in rows] == [
        ("a/0.png", "0", "a"), ("a/1.png", "0", "a"), ("b/0.png", "1", "b"), ('b/odd, "name".png', "1", "b")]
    with open(tmp_path / "reconstructions.csv", newline="") as f:
        rec = list(csv.reader(f))
    assert rec[0][:3] == ["row_id", "path", "orig_px0"] and len({len(r) for r in rec}) == 1
    assert rec[4][1].endswith('odd, "name".png')
