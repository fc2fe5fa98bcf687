"""A judge records what it was trained on (data set, class names, a fingerprint of the folder's
files, image options) and its epochs. A cached judge that does not match is trained again with
a note; a judge in a folder given with --out/--judge is refused in one line saying what differs.
Before: the cache was keyed by the folder's path only, and --epochs/--image-size were ignored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, cli_error, run_main
from conftest import save_image as save
from PIL import Image

from vaelab.config import DataConfig
from vaelab.errors import VaelabError


def _folder(root: Path, classes=("a", "b"), n: int = 6, seed: int = 0) -> Path:
    """Grey 12x12 images, ``n`` per class folder, each class a different brightness."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        for i in range(n):
            a = rng.integers(0, 40, (12, 12), dtype=np.uint8) + np.uint8(60 * k)
            save(root / cls / f"{i}.png", Image.fromarray(a, "L"))
    return root


def _quiet(_):
    pass


def test_vaelab_judge_refuses_a_judge_in_out_trained_with_other_options(tmp_path, capsys):
    root = _folder(tmp_path / "imgs")
    base = ("judge", "--data", "folder", "--data-path", root, "--out", tmp_path / "j1")
    rc, out, err = run_main(capsys, *base, "--image-size", 8, "--epochs", 1)
    assert rc == 0, err
    rec = json.loads((tmp_path / "j1" / "eval.json").read_text())
    assert rec["epochs"] == 1 and rec["trained_on"]["image_size"] == 8 and rec["trained_on"]["classes"] == ["a", "b"]
    msg = cli_error(capsys, *base, "--image-size", 8, "--epochs", 3)
    assert "1 training epochs, not 3" in msg and f"--epochs 3 --out {tmp_path / 'j1'} --retrain" in msg
    msg = cli_error(capsys, *base, "--image-size", 4, "--epochs", 1)
    assert "image size 8, not 4" in msg and "training epochs" not in msg
    rc, out, err = run_main(capsys, *base, "--image-size", 8, "--epochs", 1)  # the same options: reused
    assert rc == 0, err
    assert "training the judge" not in out
    rc, out, err = run_main(capsys, *base, "--image-size", 4, "--epochs", 2, "--retrain")
    assert rc == 0, err
    rec = json.loads((tmp_path / "j1" / "eval.json").read_text())
    assert rec["epochs"] == 2 and rec["shape"] == [1, 4, 4]


def test_the_cached_judge_of_a_folder_that_gained_a_class_is_trained_again(tmp_path, monkeypatch):
    from vaelab.evaluation.judge import get_judge

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs")
    data = DataConfig(name="folder", path=str(root), image_size=8)
    assert get_judge(data, epochs=1, log=_quiet).meta["classes"] == 2
    lines: list[str] = []
    get_judge(data, log=lines.append)
    assert lines == []  # unchanged: the cached judge, whatever its epochs
    _folder(root, classes=("c",), seed=1)  # a third class folder, at the same path
    j = get_judge(data, epochs=1, log=lines.append)
    assert lines[0].startswith("note: the cached judge in ") and "classes a, b, not a, b, c as now" in lines[0]
    assert lines[0].endswith("training it again")
    assert j.meta["classes"] == 3 and j.meta["trained_on"]["classes"] == ["a", "b", "c"]
    # a file modified in place (same names, same classes) counts too
    save(root / "a" / "0.png", Image.fromarray(np.zeros((12, 12), np.uint8), "L"))
    lines.clear()
    get_judge(data, epochs=1, log=lines.append)
    assert "18 files that have changed since" in lines[0]
    lines.clear()
    get_judge(data, log=lines.append)
    assert lines == []


def test_a_cached_folder_judge_that_predates_the_record_is_trained_again(tmp_path, monkeypatch):
    from vaelab.evaluation.judge import get_judge, judge_key, load_judge, save_judge

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = DataConfig(name="folder", path=str(_folder(tmp_path / "imgs")), image_size=8)
    old = get_judge(data, epochs=1, log=_quiet)
    del old.meta["trained_on"]
    folder = tmp_path / "cache" / "vaelab" / "judge" / judge_key(data)
    save_judge(old, folder)
    lines: list[str] = []
    get_judge(data, log=lines.append)
    assert "does not record which files it was trained on" in lines[0]
    assert "trained_on" in load_judge(folder).meta


def test_a_judge_of_another_folder_is_refused_by_eval_samples(tmp_path, capsys):
    from vaelab.evaluation.judge import get_judge

    other = _folder(tmp_path / "other", classes=("x", "y", "z"), n=4)
    get_judge(DataConfig(name="folder", path=str(other), image_size=8), tmp_path / "j", epochs=1, log=_quiet)
    root = _folder(tmp_path / "imgs")
    rc, _, err = run_main(capsys, "train", "--data", "folder", "--data-path", root, "--image-size", 8, "--epochs", 1,
                          "--no-eval", "--set", "model.latent_dim=2", "--set", "model.hidden=[8]",
                          "--set", "data.val=none", "--out", tmp_path / "run")
    assert rc == 0, err
    msg = cli_error(capsys, "eval-samples", tmp_path / "run", "--n", 8, "--judge", tmp_path / "j")
    assert f"the judge in {tmp_path / 'j'} does not fit folder {root}: classes x, y, z, not a, b as now" in msg
    assert "pass another judge folder" in msg and "--retrain" in msg
    assert not (tmp_path / "run" / "samples_eval.json").exists()


def test_an_npz_judge_notices_a_changed_file_and_the_record_has_no_nulls(tmp_path):
    from vaelab.evaluation.judge import get_judge

    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    data = DataConfig(name="npz", path=str(tmp_path / "d.npz"))
    j = get_judge(data, tmp_path / "j", epochs=1, log=_quiet)
    rec = json.loads((tmp_path / "j" / "eval.json").read_text())["trained_on"]
    assert None not in rec.values() and rec["data"] == "npz" and j.meta["trained_on"] == rec
    np.savez(tmp_path / "d.npz", x=x[:30], y=np.arange(30) % 2)
    with pytest.raises(VaelabError) as e:
        get_judge(data, tmp_path / "j", log=_quiet)
    assert "\n" not in str(e.value) and "files that have changed since" in str(e.value)


def test_a_given_judge_folder_names_the_fix_in_one_line(tmp_path, capsys):
    root = _folder(tmp_path / "imgs")
    rc, _, err = run_main(capsys, "judge", "--data", "folder", "--data-path", root, "--image-size", 8,
                          "--epochs", 1, "--out", tmp_path / "j")
    assert rc == 0, err
    line = assert_one_line_error(*run_main(capsys, "judge", "--data", "folder", "--data-path", root,
                                           "--image-size", 8, "--set", "data.background=black", "--epochs", 1,
                                           "--out", tmp_path / "j"))
    assert "background #ffffff, not #000000" in line
    assert "--set data.background=black --epochs 1" in line
