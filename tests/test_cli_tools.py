"""The inpaint, detect, anomaly-bench and export commands, in-process through vaelab.cli.main.

Every error a user can cause ends in one stderr line 'vaelab: error: ...' and exit code 2.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_error, make_shapes, run_main, save_shapes, write_idx_file
from vaelab import api
from vaelab.anomaly.scores import score_images, threshold_at
from vaelab.api import Run
from vaelab.configure import build_config


def ok(capsys, *args) -> str:
    rc, out, err = run_main(capsys, *args)
    assert rc == 0, out + err
    return out


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shapes_npz) -> Path:
    """A tiny VAE trained on the synthetic shapes, saved as a run directory."""
    out = tmp_path_factory.mktemp("tools") / "run"
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=none", "model.kind=vae", "model.arch=mlp",
        "model.hidden=48", "model.latent_dim=4", "train.epochs=12", "train.batch_size=32", "train.lr=0.005",
        "train.device=cpu", "train.progress=false"])
    api.train(cfg, out, evaluate_after=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def test_npz(tmp_path_factory) -> Path:
    return save_shapes(tmp_path_factory.mktemp("inputs") / "new.npz", 40, seed=5)


def test_commands_are_registered(capsys):
    out = ok(capsys, "--help")
    for cmd in ("inpaint", "detect", "anomaly-bench", "export"):
        assert cmd in out


# ------------------------------------------------------------------------------------ inpaint
def test_inpaint_command(capsys, run_dir, tmp_path):
    judge = tmp_path / "judge"
    out = ok(capsys, "inpaint", run_dir, "--mask", "center:10", "--n", 60, "--method", "iterative",
             "--iterations", 10, "--judge", judge)
    res = json.loads((run_dir / "inpaint-iterative" / "inpaint_eval.json").read_text())
    for key in ("masked_mse", "ssim", "judge_accuracy", "judge_accuracy_masked", "judge_accuracy_original"):
        assert isinstance(res[key], float) and key in out
    assert (res["n"], res["method"], res["mask"], res["seed"], res["options"]) == (60, "iterative", "center:10", 0,
                                                                                 {"iterations": 10})
    assert res["masked_mse"] < res["masked_mse_input"]
    assert (run_dir / "inpaint-iterative" / "inpaint.png").read_bytes()[:4] == b"\x89PNG"
    assert (judge / "judge.safetensors").is_file()  # trained once, into --judge


def test_inpaint_latent_opt_to_out(capsys, run_dir, tmp_path):
    out = ok(capsys, "inpaint", run_dir, "--mask", "random:8", "--n", 20, "--method", "latent-opt", "--steps", 30,
             "--no-judge", "--seed", 4, "--out", tmp_path / "o")
    res = json.loads((tmp_path / "o" / "inpaint_eval.json").read_text())
    assert "judge_accuracy" not in res and res["seed"] == 4 and res["options"] == {"steps": 30}
    assert res["not_applicable"] == {"judge_accuracy": "the judge was turned off (--no-judge)"}
    assert "None" not in out and "(judge_accuracy not applicable: the judge was turned off (--no-judge))" in out


@pytest.mark.parametrize("args,match", [
    (["--mask", "center:30"], "mask 'center:30' (30x30) is larger than the 28x28 images"),
    (["--mask", "blob:3"], "unknown mask 'blob:3'; use center:K"),
    (["--method", "magic"], "'--method': 'magic' is not one of 'single', 'iterative', 'latent-opt'"),
    (["--method", "single", "--steps", "5"], "--steps does not apply to --method single"),
    (["--n", "0"], "--n must be at least 1"),
])
def test_inpaint_errors(capsys, run_dir, tmp_path, args, match):
    msg = cli_error(capsys, "inpaint", run_dir, "--no-judge", "--out", tmp_path / "x", *args)
    assert match in msg
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ detect
def test_detect_npz(capsys, run_dir, test_npz, tmp_path):
    out = ok(capsys, "detect", run_dir, "--input", test_npz, "--score", "mse", "--contamination", 0.1,
             "--out", tmp_path / "scores.csv")
    rows = read_csv(tmp_path / "scores.csv")
    assert list(rows[0]) == ["index", "score", "anomaly", "label"] and len(rows) == 40
    assert [int(r["index"]) for r in rows] == list(range(40))
    assert [int(r["label"]) for r in rows] == np.load(test_npz)["y"].tolist()
    # the threshold is the 0.9 quantile of the run's own training scores
    run = Run.load(run_dir, device="cpu")
    threshold = threshold_at(score_images(run.model, run.split("train").float(), "mse"), 0.1)
    x = np.load(test_npz)["x"][:, None] / 255.0
    scores = score_images(run.model, torch.from_numpy(x).float(), "mse")
    assert np.allclose([float(r["score"]) for r in rows], scores, rtol=1e-5)
    assert [int(r["anomaly"]) for r in rows] == (scores > threshold).astype(int).tolist()
    assert f"{threshold:.6g}" in out
    for name in ("scores_hist.png", "most_anomalous.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_detect_folder_and_idx(capsys, run_dir, tmp_path):
    x, y = make_shapes(6, seed=9)
    for i, a in enumerate(x):
        sub = tmp_path / "imgs" / ("squares" if y[i] == 0 else "other")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(sub / f"{i}.png")
    ok(capsys, "detect", run_dir, "--input", tmp_path / "imgs", "--score", "iwnll", "--samples", 3,
       "--out", tmp_path / "f" / "s.csv")
    rows = read_csv(tmp_path / "f" / "s.csv")
    assert list(rows[0]) == ["path", "score", "anomaly", "label"] and len(rows) == 6
    assert {r["label"] for r in rows} <= {"squares", "other"}
    assert all(Path(r["path"]).is_file() for r in rows)
    write_idx_file(tmp_path / "idx" / "t10k-images-idx3-ubyte", x)
    write_idx_file(tmp_path / "idx" / "t10k-labels-idx1-ubyte", y.astype(np.uint8))
    ok(capsys, "detect", run_dir, "--input", tmp_path / "idx" / "t10k-images-idx3-ubyte", "--score", "elbo",
       "--out", tmp_path / "i.csv")
    rows = read_csv(tmp_path / "i.csv")
    assert list(rows[0]) == ["index", "score", "anomaly", "label"]
    assert [int(r["label"]) for r in rows] == y.tolist()


def test_detect_errors(capsys, run_dir, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((3, 32, 32), np.uint8))
    msg = cli_error(capsys, "detect", run_dir, "--input", tmp_path / "big.npy", "--out", tmp_path / "s.csv")
    assert "expects images of shape (C, H, W) = (1, 28, 28), found (1, 32, 32)" in msg
    (tmp_path / "empty").mkdir()
    msg = cli_error(capsys, "detect", run_dir, "--input", tmp_path / "empty", "--out", tmp_path / "s.csv")
    assert "holds no images" in msg and "empty" in msg
    msg = cli_error(capsys, "detect", run_dir, "--input", tmp_path / "big.npy", "--score", "l2")
    assert "'--score': 'l2' is not one of 'mse', 'bce', 'ssim', 'elbo', 'iwnll'" in msg
    msg = cli_error(capsys, "detect", run_dir, "--input", tmp_path / "nope.npz", "--out", tmp_path / "s.csv")
    assert "does not exist" in msg
    msg = cli_error(capsys, "detect", run_dir, "--input", tmp_path / "big.npy", "--contamination", "0.7")
    assert "contamination must be in (0, 0.5]" in msg
    assert not (tmp_path / "s.csv").exists()


# ------------------------------------------------------------------------------------ anomaly-bench
def test_anomaly_bench_command(capsys, tmp_path):
    root = tmp_path / "data"
    for stem, seed, n in (("train", 1, 160), ("t10k", 2, 80)):
        x, y = make_shapes(n, seed=seed)
        write_idx_file(root / "mnist" / f"{stem}-images-idx3-ubyte.gz", x)
        write_idx_file(root / "mnist" / f"{stem}-labels-idx1-ubyte.gz", y.astype(np.uint8))
    out = ok(capsys, "anomaly-bench", "--data", "mnist", "--data-dir", root, "--normal", "1,3,1", "--epochs", 1,
             "--preset", "mlp-ae", "--set", "model.hidden=32", "--set", "train.device=cpu", "--out", tmp_path / "b")
    rows = read_csv(tmp_path / "b" / "results.csv")
    assert [r["class"] for r in rows] == ["1", "3", "mean"]  # 1 named twice: run once, counted once in the mean
    assert all(0 <= float(r["auroc"]) <= 1 for r in rows)
    assert "mean AUROC" in out and "normal class 1" in out
    for name in ("results.md", "results.json", "roc.png"):
        assert (tmp_path / "b" / name).is_file()
    msg = cli_error(capsys, "anomaly-bench", "--data-dir", root, "--normal", "one", "--out", tmp_path / "c")
    assert "unknown normal class 'one'; " in msg and "has: 0, 1, 2" in msg
    msg = cli_error(capsys, "anomaly-bench", "--data-dir", root, "--score", "nope", "--out", tmp_path / "c")
    assert "'--score': 'nope' is not one of" in msg


# ------------------------------------------------------------------------------------ export
def test_export_command(capsys, run_dir, tmp_path):
    out = ok(capsys, "export", run_dir, "--what", "reconstructions")
    rows = read_csv(run_dir / "reconstructions.csv")
    assert len(rows) == 100 and list(rows[0])[:3] == ["row_id", "orig_px0", "recon_px0"]
    assert "wrote 100 rows x 1569 columns" in out
    ok(capsys, "export", run_dir, "--what", "latents", "--split", "train", "--out", tmp_path / "codes.csv",
       "--chunk-size", 50)
    rows = read_csv(tmp_path / "codes.csv")
    assert len(rows) == 256 and list(rows[0]) == ["row_id", "label", "mu0", "mu1", "mu2", "mu3",
                                                  "logvar0", "logvar1", "logvar2", "logvar3"]
    assert "--n must be at least 1" in cli_error(capsys, "export", run_dir, "--n", 0, "--out", tmp_path / "z.csv")
    assert "unknown split 'dev'" in cli_error(capsys, "export", run_dir, "--split", "dev", "--out", tmp_path / "z.csv")
    assert not (tmp_path / "z.csv").exists()
