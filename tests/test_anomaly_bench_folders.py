"""anomaly-bench on one labelled set (an image folder of classes, a labelled .npz): a held-out
part of the normal class against every other class; classes by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_error, make_shapes, run_main
from PIL import Image

from vaelab.anomaly.one_class import (
    DEFAULT_RECIPES,
    GREY_RECIPE,
    default_recipe,
    one_class_benchmark,
    one_class_split,
)
from vaelab.anomaly.scores import score_images
from vaelab.api import Run
from vaelab.data import ImageSet
from vaelab.evaluation import metrics

TINY = ["model.hidden=32", "model.latent_dim=4", "train.batch_size=16", "train.lr=0.005", "train.device=cpu",
        "train.progress=false", "train.precision=fp32"]
NAMES = {0: "squares", 1: "discs", 2: "pluses", 3: "bars"}


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The synthetic shapes as coloured PNGs in one sub-folder per class (named, not numbered)."""
    root = tmp_path_factory.mktemp("folder") / "shapes"
    x, y = make_shapes(120, size=16, seed=4)
    tint = np.array([[1.0, 0.3, 0.2], [0.2, 1.0, 0.4], [0.3, 0.4, 1.0], [1.0, 1.0, 0.2]])
    for i, (img, c) in enumerate(zip(x, y)):
        (root / NAMES[c]).mkdir(parents=True, exist_ok=True)
        rgb = (img[..., None] * tint[c]).astype(np.uint8)
        Image.fromarray(rgb).save(root / NAMES[c] / f"{i:03d}.png")
    return root, x, y


def test_one_class_split_holds_out_part_of_the_normal_class():
    y = torch.tensor([0, 1, 1, 0, 2, 1, 0, 1, 1, 2, 1])
    images = ImageSet(torch.arange(11, dtype=torch.uint8).view(11, 1, 1, 1).expand(11, 1, 2, 2).contiguous(), y)
    train, test, anomalous = one_class_split(images, 1, 0.34, seed=5)
    normal = set((y == 1).nonzero().flatten().tolist())
    tr, te = set(train.x[:, 0, 0, 0].tolist()), test.x[:, 0, 0, 0].tolist()
    assert len(tr) == 4 and tr <= normal  # 6 normal images: round(0.34 * 6) = 2 held out
    assert set(te) == (normal - tr) | set((y != 1).nonzero().flatten().tolist()) and te == sorted(te)
    assert (anomalous == (y[te] != 1).numpy()).all() and int((anomalous == 0).sum()) == 2
    again = one_class_split(images, 1, 0.34, seed=5)
    assert torch.equal(again[0].x, train.x)
    assert not torch.equal(one_class_split(images, 1, 0.34, seed=6)[0].x, train.x)


def test_folder_benchmark_by_class_name(shapes_folder, tmp_path):
    root, _, _ = shapes_folder
    out = tmp_path / "bench"
    r = one_class_benchmark("folder", ["discs", "3"], out=out, preset="mlp-ae", epochs=3, overrides=TINY,
                            data_path=str(root), holdout=0.25, seed=2, keep_runs=True, log=lambda s: None)
    # Class folders are sorted by name: bars 0, discs 1, pluses 2, squares 3.
    assert [(row["class"], row["name"]) for row in r["per_class"]] == [(1, "discs"), (3, "squares")]
    from vaelab.config import DataConfig
    from vaelab.data import load_data

    images = load_data(DataConfig(name="folder", path=str(root), val="none")).train
    for row in r["per_class"]:
        c = row["class"]
        n_class = int((images.y == c).sum())
        held = round(0.25 * n_class)
        assert (row["n_train"], row["n_test_normal"], row["n_test"]) == (n_class - held, held, len(images) - n_class + held)
        run = Run.load(out / "runs" / f"class-{c}", device="cpu")
        assert run.config.data.classes == [c] and run.config.data.val == "none"
        _, test, anomalous = one_class_split(images, c, 0.25, seed=2)
        s = score_images(run.model, test.float(), "ssim")  # the folder default's score, with any preset
        assert row["auroc"] == pytest.approx(metrics.auroc(s, anomalous), abs=1e-4)
    assert r["holdout"] == 0.25 and "held out, seed 2" in r["protocol"] and r["score"] == "ssim"
    md = (out / "results.md").read_text()
    assert "| 1 discs |" in md and "held out" in md
    assert json.loads((out / "results.json").read_text())["per_class"][0]["n_test_normal"] == r["per_class"][0]["n_test_normal"]


def test_folder_benchmark_command_and_errors(capsys, shapes_folder, tmp_path):
    root, _, _ = shapes_folder
    rc, out, err = run_main(capsys, "anomaly-bench", "--data", "folder", "--data-path", root, "--normal", "pluses",
                            "--preset", "mlp-ae", "--epochs", 1, "--holdout", 0.3, "--out", tmp_path / "b",
                            *[a for o in TINY for a in ("--set", o)])
    assert rc == 0, out + err
    assert "normal class 2 (pluses): AUROC" in out and "mean AUROC" in out and "(mlp-ae, score ssim" in out
    msg = cli_error(capsys, "anomaly-bench", "--data", "folder", "--data-path", root, "--normal", "faces",
                    "--out", tmp_path / "c")
    assert "unknown normal class 'faces'" in msg and "bars, discs, pluses, squares" in msg
    msg = cli_error(capsys, "anomaly-bench", "--data", "folder", "--data-path", root, "--holdout", "1.5",
                    "--out", tmp_path / "c")
    assert "--holdout must be a fraction in (0, 1), got 1.5" in msg
    msg = cli_error(capsys, "anomaly-bench", "--data", "folder", "--data-path", root, "--normal", "bars",
                    "--preset", "mlp-ae", "--score", "msssim", "--set", "train.device=cpu", "--out", tmp_path / "c")
    assert "anomaly score 'msssim' needs images of at least 48x48, got 16x16" in msg


def test_default_recipes():
    assert default_recipe("mnist") == GREY_RECIPE and GREY_RECIPE.preset == "mlp-vae"
    folder = default_recipe("folder")
    # Chosen by the emoji table (bench/README.md): the dense AE, 100 epochs, 1 - SSIM.
    assert folder is DEFAULT_RECIPES["folder"] and (folder.preset, folder.score, folder.epochs) == ("fc-ae-rgb64", "ssim", 100)
    from vaelab.configure import build_config

    build_config(folder.preset, overrides=list(folder.overrides))  # a valid recipe
