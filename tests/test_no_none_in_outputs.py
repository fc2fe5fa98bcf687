"""No number is None or NaN: a field that does not apply is left out of a printed table and of
its JSON file, and eval.json's ``not_applicable`` says why ({field: reason})."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_main

WORDS = {"split": {"train", "val", "test"}, "seen_in_training": {"True", "False"}, "labels_inferred": {"True"},
         "device": {"cpu"}, "precision": {"mixed", "fp32"}, "torch": None, "data_memory_mapped": {"True", "False"}}


def table(stdout: str) -> dict[str, str]:
    """The ``  key  value`` rows of a printed table (notes in parentheses left aside)."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("  ") and not line.startswith("  ("):
            key, value = line.split(maxsplit=1)
            rows[key] = value
    return rows


def assert_numbers(rows: dict[str, str]) -> None:
    assert rows
    for key, value in rows.items():
        if key in WORDS:
            assert WORDS[key] is None or value in WORDS[key], (key, value)
        elif key == "kl_per_dim":
            assert all(math.isfinite(float(v)) for v in value.strip("[]").split(", ")), value
        else:
            assert math.isfinite(float(value)), (key, value)  # "None" or "nan" fails here


def no_none(obj) -> bool:
    if isinstance(obj, dict):
        return all(no_none(v) for v in obj.values())
    if isinstance(obj, list):
        return all(no_none(v) for v in obj)
    return obj is not None and not (isinstance(obj, float) and not math.isfinite(obj))


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory, shapes_npz) -> Path:
    from vaelab.api import train
    from vaelab.configure import build_config

    run_dir = tmp_path_factory.mktemp("runs") / "vq"
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=none", "model.kind=vq-vae", "model.arch=conv",
        "model.latent=conv", "model.channels=8,8", "model.codebook_size=16", "train.epochs=1",
        "train.batch_size=64", "train.device=cpu", "train.progress=false"])
    train(cfg, run_dir, evaluate_after=False, log=lambda *_: None)
    return run_dir


def test_vq_vae_eval_prints_and_writes_numbers_only(vq_run, capsys):
    # the default --iw-samples (not given) asks for nll_iw: said not to apply, in words
    rc, out, err = run_main(capsys, "eval", vq_run, "--split", "train")
    assert rc == 0, err
    assert "None" not in out and "nan" not in out
    rows = table(out)
    assert_numbers(rows)
    assert {"loss", "recon", "commit", "codebook", "mse", "perplexity", "dead_codes", "n"} <= set(rows)
    assert "iw_samples" not in rows and "nll_iw" not in rows
    assert "(nll_iw not applicable: this run's model (vq-vae: vq posterior" in out and "has no density)" in out
    ev = json.loads((vq_run / "eval.json").read_text())
    assert no_none(ev) and "iw_samples" not in ev and "nll_iw" not in ev
    assert ev["not_applicable"] == {"nll_iw": ev["not_applicable"]["nll_iw"]}
    assert ev["not_applicable"]["nll_iw"].endswith("has no density")


def test_eval_without_iw_samples_has_no_iw_field_and_no_note(trained_run, capsys, tmp_path):
    import shutil

    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    rc, out, err = run_main(capsys, "eval", run, "--iw-samples", "0")
    assert rc == 0, err
    assert_numbers(table(out))
    ev = json.loads((run / "eval.json").read_text())
    assert no_none(ev) and "iw_samples" not in ev and "not_applicable" not in ev
    assert isinstance(ev["active_units"], int) and len(ev["kl_per_dim"]) == 4


def test_one_image_and_small_images_say_what_does_not_apply():
    import torch

    from conftest import model_config
    from vaelab.data import ImageSet
    from vaelab.evaluation.evaluate import evaluate
    from vaelab.models import build_model

    model = build_model(model_config(kind="vae", arch="mlp", hidden=[8], latent_dim=2, input_shape=[1, 6, 6]))
    x = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    r = evaluate(model.eval(), ImageSet(x, None), iw_samples=3)
    assert no_none(r) and r["iw_samples"] == 3 and math.isfinite(r["nll_iw"])
    assert set(r["not_applicable"]) == {"ssim", "active_units"} and "ssim" not in r and "active_units" not in r


def test_summary_and_info_leave_out_what_does_not_apply(vq_run, capsys):
    summary = json.loads((vq_run / "summary.json").read_text())
    assert no_none(summary) and "final_val_loss" not in summary and "preset" not in summary  # no val, no preset
    assert summary["epochs"] == 1 and math.isfinite(summary["final_train_loss"])
    rc, out, err = run_main(capsys, "info", vq_run)
    assert rc == 0, err
    assert "None" not in out and "nan" not in out
    assert_numbers(table(out))


def test_train_asks_nll_iw_of_a_model_with_a_density_only(capsys, tmp_path, shapes_npz):
    """`vaelab train` without --iw-samples: 10 importance samples for a VAE, none for an
    autoencoder (no "not applicable" note it did not ask for); --iw-samples on an AE is refused."""
    base = ["--data", "npz", "--data-path", shapes_npz, "--set", "model.hidden=32", "--latent-dim", "2",
            "--epochs", "1", "--batch-size", "64"]
    rc, out, err = run_main(capsys, "train", *base, "--kind", "ae", "--out", tmp_path / "ae")
    assert rc == 0, err
    ev = json.loads((tmp_path / "ae" / "eval.json").read_text())
    assert "nll_iw" not in ev and "not_applicable" not in ev and "not applicable" not in out
    rc, out, err = run_main(capsys, "train", *base, "--kind", "vae", "--out", tmp_path / "vae")
    assert rc == 0, err
    ev = json.loads((tmp_path / "vae" / "eval.json").read_text())
    assert ev["iw_samples"] == 10 and math.isfinite(ev["nll_iw"])
    rc, out, err = run_main(capsys, "train", *base, "--kind", "ae", "--iw-samples", "5", "--out", tmp_path / "ae2")
    assert rc == 2 and "has no density" in err and not (tmp_path / "ae2").exists()
