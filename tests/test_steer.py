"""Label predictor on the latent mean, steering codes towards a class, and steer-bench."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli_error, model_config, run_main, save_shapes

import vaelab
from vaelab.configure import build_config
from vaelab.errors import ConfigError, DataError, VaelabError
from vaelab.latent.steer import (
    draw_pairs,
    frame_steps,
    steer,
    steer_benchmark,
    success_rate,
)
from vaelab.models import build_model
from vaelab.training import checkpoint
from vaelab.training.loop import fit


def quiet(*_):
    pass


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shapes1k(tmp_path_factory) -> Path:
    """1,024 labelled shapes (4 classes): enough for the predictor to generalise."""
    return save_shapes(tmp_path_factory.mktemp("shapes1k") / "shapes.npz", 1024, seed=5)


def pred_config(npz: Path, *overrides: str):
    mlp = [] if "model.arch=conv" in overrides else ["model.hidden=64"]  # an mlp option, refused on conv
    base = ["data.name=npz", f"data.path={npz}", "data.val=0.25", "model.kind=vae", "model.arch=mlp",
            *mlp, "model.latent_dim=8", "model.predictor_weight=30", "model.predictor_hidden=32,32",
            "train.epochs=15", "train.batch_size=64", "train.lr=3e-3", "train.device=cpu", "train.progress=false",
            "train.eval_batch_size=256"]
    return build_config(None, None, base + list(overrides))


@pytest.fixture(scope="module")
def pred_run(tmp_path_factory, shapes1k):
    """An mlp VAE (latent 8) with a label predictor, trained on the shapes; eval.json written (about 2 s)."""
    run_dir = tmp_path_factory.mktemp("runs") / "pred"
    run = vaelab.train(pred_config(shapes1k), run_dir, evaluate_after=False, log=quiet)
    run.evaluate(iw_samples=0, save=True)  # eval.json, as `vaelab train` writes it (without the figures)
    return run


@pytest.fixture
def judge_dir(shapes_judge):
    """The session's judge of the synthetic shapes (conftest), saved in a folder."""
    return shapes_judge[1]


# ---------------------------------------------------------------------------- config
def test_predictor_config_defaults_and_validation():
    m = model_config()
    assert m.predictor_weight == 0.0 and m.predictor_hidden == [64, 64] and m.num_classes is None
    cfg = build_config(None, None, ["model.predictor_weight=5", "model.predictor_hidden=32,16", "model.num_classes=10"])
    assert (cfg.model.predictor_weight, cfg.model.predictor_hidden, cfg.model.num_classes) == (5.0, [32, 16], 10)
    for bad, words in (("model.predictor_weight=-1", "predictor_weight must be >= 0"),
                       ("model.predictor_weight=.nan", "predictor_weight must be >= 0"),
                       ("model.predictor_hidden=[]", "predictor_hidden must be one or more positive widths"),
                       ("model.predictor_hidden=64,0", "predictor_hidden must be one or more positive widths"),
                       ("model.num_classes=1", "num_classes must be at least 2"),
                       ("model.predictor_weight=abc", "predictor_weight must be float")):
        with pytest.raises(ConfigError, match=words):
            build_config(None, None, [bad])


def test_building_a_predictor_needs_num_classes():
    with pytest.raises(ConfigError, match="num_classes is unset"):
        build_model(model_config(input_shape=[1, 28, 28], predictor_weight=1.0))


# ---------------------------------------------------------------------------- training
def test_predictor_trains_and_reports_accuracy(pred_run):
    run_dir = pred_run.run_dir
    cfg = checkpoint.load_config(run_dir)
    assert cfg.model.num_classes == 4  # filled in from the labels 0-3
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["split"] == "val" and ev["n"] == 256
    assert ev["predictor_accuracy"] > 0.55, ev  # chance is 0.25

    # eval.json against an independent computation on the posterior means
    val = pred_run.split("val")
    with torch.no_grad():
        logits = pred_run.model.predictor(pred_run.model.posterior(val.float()).mean)
    assert ev["predictor_accuracy"] == pytest.approx(float((logits.argmax(1) == val.y).float().mean()), abs=1e-6)
    assert ev["predictor"] == pytest.approx(float(F.cross_entropy(logits, val.y)), rel=1e-4)
    # eval's loss is the VAE's own loss, without the predictor term
    assert ev["loss"] == pytest.approx(ev["recon"] + ev["kl"], rel=1e-5)

    rows = history(run_dir)
    assert {"train_predictor", "val_predictor"} <= set(rows[0])
    for r in rows:
        v = {k: float(x) for k, x in r.items()}
        # the training loss is recon + beta * kl + predictor_weight * cross-entropy
        assert v["train_loss"] == pytest.approx(v["train_recon"] + v["train_kl"] + 30 * v["train_predictor"], rel=1e-4)
        assert v["val_loss"] == pytest.approx(v["val_recon"] + v["val_kl"] + 30 * v["val_predictor"], rel=1e-4)
    assert float(rows[-1]["train_predictor"]) < float(rows[0]["train_predictor"])


@pytest.mark.parametrize("arch", [
    ("model.kind=vae", "model.arch=conv", "model.channels=4,8"),
    ("model.kind=ae", "model.arch=mlp"),
    ("model.kind=ae", "model.arch=conv", "model.channels=4,8", "model.latent=conv"),
])
def test_predictor_on_conv_vaes_and_autoencoders(tmp_path, tiny_config, arch):
    cfg = tiny_config(*arch, "model.predictor_weight=2", "model.predictor_hidden=8,8", "train.epochs=1",
                      "data.val=0.25", "model.loss=mse", "model.output_activation=sigmoid")
    res = fit(cfg, tmp_path / "r", log=quiet)
    row = history(tmp_path / "r")[0]
    assert {"train_predictor", "val_predictor"} <= set(row)
    assert res.model.predictor[-1].out_features == 4
    assert res.model.predictor[0].in_features == res.config.model.latent_dim
    ev = vaelab.evaluate(res.model, res.splits.val, split="val")
    assert 0 <= ev["predictor_accuracy"] <= 1


def test_predictor_needs_labels(tmp_path, shapes_arrays, capsys):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=shapes_arrays[0])
    err = cli_error(capsys, "train", "--data", "npz", "--data-path", path, "--epochs", "1", "--val", "none",
                    "--set", "model.predictor_weight=1", "--out", tmp_path / "r")
    assert "needs labelled training data" in err and "predictor_weight=0" in err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_num_classes_smaller_than_the_labels(tiny_config):
    with pytest.raises(ConfigError, match="num_classes is 3 but the data has labels up to 3"):
        fit(tiny_config("model.predictor_weight=1", "model.num_classes=3"), None, log=quiet)


# ---------------------------------------------------------------------------- the path without a predictor
# Final (train_loss, val_loss) after 2 epochs, measured with the code before the predictor
# existed (fp32, one thread): a model without a predictor must train exactly as before.
PINNED = {"mlp": (538.5036010742188, 531.7611799240112), "conv": (595.9856567382812, 595.1638612747192)}


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_no_predictor_trains_exactly_as_before(tiny_config, arch):
    extra = ("model.channels=4,8",) if arch == "conv" else ()
    res = fit(tiny_config(f"model.arch={arch}", "data.val=0.25", "train.precision=fp32", *extra), None, log=quiet)
    assert (res.history[-1]["train_loss"], res.history[-1]["val_loss"]) == pytest.approx(PINNED[arch], rel=1e-5)
    assert res.model.predictor is None and not res.model.has_predictor
    assert not any(k.startswith("predictor") for k in res.model.state_dict())
    assert not any("predictor" in k for k in res.history[-1])
    assert res.config.model.num_classes is None


def test_the_predictor_leaves_the_vae_initialisation_alone(tiny_config):
    base = tiny_config()
    with_pred = tiny_config("model.predictor_weight=1", "model.num_classes=4")
    for c in (base, with_pred):
        c.model.input_shape = [1, 28, 28]
    torch.manual_seed(3)
    a = build_model(base.model).state_dict()
    torch.manual_seed(3)
    b = build_model(with_pred.model).state_dict()
    assert set(b) - set(a) == {k for k in b if k.startswith("predictor.")} != set()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_with_the_predictor(pred_run):
    loaded = vaelab.Run.load(pred_run.run_dir, device="cpu")
    assert loaded.model.has_predictor and loaded.config.model.num_classes == 4
    sd, ref = loaded.model.state_dict(), pred_run.model.state_dict()
    assert sd.keys() == ref.keys() and any(k.startswith("predictor.") for k in sd)
    for k in sd:
        assert torch.equal(sd[k].cpu(), ref[k].cpu()), k
    ev = loaded.evaluate(split="val", iw_samples=0, save=False)
    assert ev["predictor_accuracy"] == json.loads((pred_run.run_dir / "eval.json").read_text())["predictor_accuracy"]


def test_old_runs_without_predictor_fields_still_load(trained_run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained_run.run_dir, old)
    d = json.loads((old / "config.json").read_text())
    for k in ("predictor_weight", "predictor_hidden", "num_classes"):
        d["model"].pop(k)
    (old / "config.json").write_text(json.dumps(d))
    run = vaelab.Run.load(old, device="cpu")
    assert not run.model.has_predictor
    assert "predictor" not in run.evaluate(iw_samples=0, save=False)


def test_resume_keeps_the_predictor(tmp_path, shapes1k):
    straight = fit(pred_config(shapes1k, "train.epochs=2"), tmp_path / "s", log=quiet)
    fit(pred_config(shapes1k, "train.epochs=1"), tmp_path / "r", log=quiet)
    cfg = checkpoint.load_config(tmp_path / "r")
    cfg.train.epochs = 2
    resumed = fit(cfg, tmp_path / "r", resume=True, log=quiet)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


# ---------------------------------------------------------------------------- steering
def test_steering_raises_the_target_probability(pred_run):
    val = pred_run.split("val")
    x, y = val.batch(slice(0, 24)), val.y[:24]
    target = (y + 1) % 4
    r = steer(pred_run, x, target, steps=60, frames=5)
    assert r.frame_steps == [0, 15, 30, 45, 60]
    assert r.path_z.shape == (5, 24, 8) and r.path_images.shape == (5, 24, 1, 28, 28)
    assert r.target_prob.shape == (5, 24) and torch.equal(r.target, target)
    assert torch.allclose(r.path_z[0], pred_run.encode(x), atol=1e-6)  # starts at the posterior mean
    assert float(r.path_images.min()) >= 0 and float(r.path_images.max()) <= 1
    # (a small, weak model: the predictor is right on ~80% of the shapes; MNIST does far better)
    assert float(r.start_prob.mean()) < 0.3 and float(r.end_prob.mean()) > 0.6
    assert (r.end_prob > r.start_prob).float().mean() >= 0.9
    # the recorded probability is the predictor's on the recorded code
    with torch.no_grad():
        p = torch.softmax(pred_run.model.predict_logits(r.final_z), 1)[torch.arange(24), target]
    assert torch.allclose(p, r.end_prob, atol=1e-6)


def test_steering_is_per_image_and_the_prior_pulls_codes_in(pred_run):
    x = pred_run.split("val").batch(slice(0, 10))
    a = steer(pred_run, x, 2, steps=20)
    b = steer(pred_run, x, 2, steps=20, batch_size=3)
    assert torch.allclose(a.path_z, b.path_z, atol=1e-5)
    strong = steer(pred_run, x, 2, steps=20, prior_weight=5.0)
    assert float(strong.final_z.norm(dim=1).mean()) < float(a.final_z.norm(dim=1).mean())
    # a softened predictor keeps pulling after the predictor is sure: a larger margin for class 2
    sharp, soft = (steer(pred_run, x, 2, steps=60, prior_weight=0.0, temperature=t) for t in (1.0, 5.0))
    with torch.no_grad():
        margin = [torch.log_softmax(pred_run.model.predict_logits(r.final_z), 1)[:, 2].mean() for r in (sharp, soft)]
    assert margin[1] > margin[0]
    zero = steer(pred_run, x, 2, steps=0)
    assert zero.frame_steps == [0] and len(zero.path_z) == 1


def test_steer_errors(pred_run, trained_run):
    x = pred_run.split("val").batch(slice(0, 2))
    with pytest.raises(VaelabError, match="target class 4 does not exist"):
        steer(pred_run, x, 4)
    with pytest.raises(VaelabError, match="2 targets for 3 images|3 targets for 2 images"):
        steer(pred_run, x, [0, 1, 2])
    with pytest.raises(VaelabError, match="steer needs a label predictor.*predictor_weight"):
        steer(trained_run, x, 1)
    with pytest.raises(DataError, match="needs images"):
        steer(pred_run, x[0], 1)
    with pytest.raises(VaelabError, match="temperature must be positive"):
        steer(pred_run, x, 1, temperature=0)


def test_frame_steps():
    assert frame_steps(100, 8) == [0, 14, 29, 43, 57, 71, 86, 100]
    assert frame_steps(3, 8) == [0, 1, 2, 3]
    assert frame_steps(10, 2) == [0, 10]


# ---------------------------------------------------------------------------- steer-bench
def test_success_rate_and_pair_drawing():
    assert success_rate(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    assert success_rate(torch.tensor([7]), torch.tensor([7])) == 1.0
    with pytest.raises(ValueError):
        success_rate(torch.tensor([1, 2]), torch.tensor([1]))
    labels = torch.arange(1000) % 10
    index, target = draw_pairs(labels, 1000, 10, seed=3)
    assert len(set(index.tolist())) == 1000  # distinct images
    assert bool((target != labels[index]).all()) and set(target.tolist()) == set(range(10))
    # each wrong class about equally often: 9 choices, 1000 / 9 = 111 expected per (label, target) column
    counts = torch.bincount((target - labels[index]) % 10, minlength=10)
    assert counts[0] == 0 and int(counts[1:].min()) > 70
    again = draw_pairs(labels, 1000, 10, seed=3)
    assert torch.equal(again[0], index) and torch.equal(again[1], target)
    with pytest.raises(VaelabError, match="pairs must be between 1 and the 1000 images"):
        draw_pairs(labels, 1001, 10)


def test_steer_bench_cli_writes_honest_numbers(pred_run, judge_dir, tmp_path, capsys):
    from vaelab.evaluation.judge import load_judge

    out = tmp_path / "bench"
    rc, text, err = run_main(capsys, "steer-bench", pred_run.run_dir, "--pairs", 40, "--steps", 50, "--seed", 4,
                             "--judge", judge_dir, "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert "success_rate" in text and "steer_eval.json" in text
    r = json.loads((out / "steer_eval.json").read_text())
    assert (out / "figures" / "steer_examples.png").stat().st_size > 1000
    assert (r["pairs"], r["steps"], r["seed"], r["split"], r["num_classes"]) == (40, 50, 4, "val", 4)
    assert (r["prior_weight"], r["temperature"], r["lr"]) == (0.3, 5.0, 0.05)  # the defaults
    rec = r["records"]
    assert len(rec) == 40 and all(p["target"] != p["label"] for p in rec)
    assert r["success_rate"] == pytest.approx(np.mean([p["judge"] == p["target"] for p in rec]))
    assert r["predictor_success_rate"] == pytest.approx(np.mean([p["predictor"] == p["target"] for p in rec]))
    assert r["target_prob_end"] > r["target_prob_start"]
    # the judge's verdicts, recomputed independently from the images the same steering gives
    val = pred_run.split("val")
    idx = torch.tensor([p["index"] for p in rec])
    assert torch.equal(val.y[idx], torch.tensor([p["label"] for p in rec]))
    final = steer(pred_run, val.batch(idx), torch.tensor([p["target"] for p in rec]), steps=50).final_images
    assert load_judge(judge_dir).predict(final).tolist() == [p["judge"] for p in rec]


def test_steer_benchmark_in_python_without_writing(pred_run, shapes_judge):
    r = steer_benchmark(pred_run, pairs=8, judge=shapes_judge[0], steps=5, log=quiet)
    assert r["pairs"] == 8 and 0 <= r["success_rate"] <= 1
    # one rate per target class drawn, never a null for a class no pair went to
    drawn = {str(p["target"]) for p in r["records"]}
    assert set(r["per_target"]) == set(r["pairs_per_target"]) == drawn
    assert sum(r["pairs_per_target"].values()) == 8
    for c, rate in r["per_target"].items():
        mine = [p["judge"] == p["target"] for p in r["records"] if str(p["target"]) == c]
        assert rate == pytest.approx(np.mean(mine))
    few = steer_benchmark(pred_run, pairs=1, judge=shapes_judge[0], steps=1, log=quiet)
    assert list(few["per_target"]) == [str(few["records"][0]["target"])]  # 1 of 4 classes: no nulls


# ---------------------------------------------------------------------------- steer CLI
def test_steer_cli_writes_the_strip(pred_run, tmp_path, capsys):
    png = tmp_path / "strip.png"
    # A val image of another class than the target, so the predictor starts well below 1.
    source = next(i for i, label in enumerate(pred_run.splits().val.y.tolist()) if label != 1)
    rc, text, err = run_main(capsys, "steer", pred_run.run_dir, "--from", source, "--to", 1, "--steps", 40,
                             "--out", png, "--device", "cpu")
    assert rc == 0, err
    assert png.stat().st_size > 1000 and "wrote" in text
    start, end = (float(v) for v in text.split("p(class 1): ")[1].split(" at the start -> ")[0:1] +
                  [text.split(" -> ")[1].split(" after")[0]])
    assert 0 <= start < end <= 1


def test_steer_cli_default_output(pred_run, capsys):
    rc, text, err = run_main(capsys, "steer", pred_run.run_dir, "--from", 0, "--to", 2, "--steps", 5, "--frames", 3)
    assert rc == 0, err
    assert (pred_run.run_dir / "figures" / "steer_0_to_2.png").is_file()


@pytest.mark.parametrize("args, words", [
    (("--from", 0, "--to", 4), "target class 4 does not exist"),
    (("--from", 0, "--to", -1), "target class -1 does not exist"),
    (("--from", 256, "--to", 1), "--from 256 is out of range: the val split has 256 images"),
    (("--from", -1, "--to", 1), "--from -1 is out of range"),
    (("--from", 0, "--to", 1, "--steps", 0), "--steps must be at least 1"),
    (("--from", 0, "--to", 1, "--prior-weight", -1), "--prior-weight must be >= 0"),
    (("--from", 0, "--to", 1, "--temperature", 0), "--temperature must be positive"),
])
def test_steer_cli_errors(pred_run, capsys, args, words):
    assert words in cli_error(capsys, "steer", pred_run.run_dir, *args)


def test_steer_commands_need_a_predictor(trained_run, capsys):
    for cmd in (("steer", trained_run.run_dir, "--from", 0, "--to", 1),
                ("steer-bench", trained_run.run_dir, "--pairs", 5)):
        err = cli_error(capsys, *cmd)
        assert "needs a label predictor" in err and "model.predictor_weight" in err


def test_steer_bench_cli_errors(pred_run, judge_dir, tmp_path, capsys):
    assert "--pairs must be at least 1" in cli_error(capsys, "steer-bench", pred_run.run_dir, "--pairs", 0)
    err = cli_error(capsys, "steer-bench", pred_run.run_dir, "--pairs", 300, "--judge", judge_dir,
                    "--out", tmp_path)
    assert "pairs must be between 1 and the 256 images" in err
    assert "does not exist" in cli_error(capsys, "steer-bench", tmp_path / "nope")
