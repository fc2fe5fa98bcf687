"""Training: the run directory, determinism, exact resume, divergence, KL warm-up, evaluation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab import api
from vaelab.training import checkpoint
from vaelab.configure import config_from_dict
from vaelab.errors import CheckpointError, ConfigError, TrainingDiverged
from vaelab.evaluation.evaluate import evaluate, iw_log_likelihood
from vaelab.models import LatentModel
from vaelab.training.loop import fit, resolve_device

# 784-32-(2, 2)-32-784, written out by hand
TINY_PARAMS = (784 * 32 + 32) + 2 * (32 * 2 + 2) + (2 * 32 + 32) + (32 * 784 + 784)


def quiet(*_):
    pass


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ---------------------------------------------------------------------------- the run directory
def test_fit_writes_the_run_directory(tmp_path, tiny_config):
    cfg = tiny_config("data.val=0.25")
    run = tmp_path / "run"
    logs: list[str] = []
    res = fit(cfg, run, log=logs.append)
    for name in ("config.json", "model.safetensors", "checkpoint.safetensors", "history.csv", "summary.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))  # no temp files left behind

    with open(run / "history.csv") as f:
        header = next(csv.reader(f))
    assert header[:4] == ["epoch", "train_loss", "val_loss", "seconds"]
    assert set(header[4:]) == {"lr", "train_recon", "train_kl", "val_recon", "val_kl"}
    rows = read_history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        vals = {k: float(v) for k, v in r.items()}
        assert all(math.isfinite(v) for v in vals.values())
        # beta = 1, no warm-up: the loss is its two parts
        assert vals["train_loss"] == pytest.approx(vals["train_recon"] + vals["train_kl"], rel=1e-5)
        assert vals["val_loss"] == pytest.approx(vals["val_recon"] + vals["val_kl"], rel=1e-5)
        assert vals["seconds"] > 0

    summary = json.loads((run / "summary.json").read_text())
    assert summary["params"] == TINY_PARAMS
    assert summary["epochs"] == 2
    assert summary["train_seconds"] > 0
    assert summary["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in rows), abs=0.01)
    assert summary["final_train_loss"] == pytest.approx(float(rows[-1]["train_loss"]))

    saved = config_from_dict(json.loads((run / "config.json").read_text()))
    assert saved == res.config and saved.model.input_shape == [1, 28, 28]
    assert cfg.model.input_shape is None  # fit() resolves a copy; the caller's config is left alone

    # model.safetensors holds the final weights
    assert_same_tensors(tensors(run / "model.safetensors"), {k: v.cpu() for k, v in res.model.state_dict().items()})

    # the validation loss is the mean per-image loss over the 64 held-out images (seeded sample)
    val = res.splits.val
    assert len(val) == 64 and len(res.splits.train) == 192
    with torch.no_grad():
        out = res.model(val.float(), generator=torch.Generator().manual_seed(cfg.train.seed))
    assert float(rows[-1]["val_loss"]) == pytest.approx(float(out["loss"].double().mean()), rel=1e-5)
    assert any("epoch 2/2" in line for line in logs)


def test_train_applies_overrides_and_flags_to_a_given_config(tmp_path, tiny_config):
    """api.train(RunConfig, overrides=..., extra=...) trains what they say: neither is dropped
    because the config came built (it once used the RunConfig as it was, silently)."""
    cfg = tiny_config()  # 2 epochs, batch 64
    run = api.train(cfg, tmp_path / "run", overrides=["train.epochs=1"], extra={"train": {"batch_size": 32}},
                    evaluate_after=False, log=quiet)
    assert [int(r["epoch"]) for r in read_history(tmp_path / "run")] == [1]
    assert (run.config.train.epochs, run.config.train.batch_size) == (1, 32)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"] == 1
    assert cfg.train.epochs == 2  # the caller's config is not changed
    with pytest.raises(ConfigError, match="model.iwae"):  # and an override is checked as on the command line
        api.train(cfg, tmp_path / "bad", overrides=["model.iwae.k=5"], evaluate_after=False, log=quiet)


def test_training_reduces_the_loss(tmp_path, tiny_config):
    rows = fit(tiny_config("train.epochs=3", "train.batch_size=32"), tmp_path / "r", log=quiet).history
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_fit_without_run_dir_and_with_given_splits(tiny_config):
    cfg = tiny_config("train.epochs=1")
    splits = vaelab.load_data(cfg.data)
    small = splits.train.subset(torch.arange(64))
    res = fit(cfg, None, splits=vaelab.Splits(train=small, val=None, test=None), log=quiet)
    assert len(res.history) == 1 and res.run_dir is None and len(res.splits.train) == 64


def test_autoencoder_history_has_no_kl(tmp_path, tiny_config):
    cfg = tiny_config("model.kind=ae", "model.arch=conv", "model.channels=4,8", "model.dense=[]",
                      "model.loss=mse", "train.epochs=1", "data.val=0.25")
    fit(cfg, tmp_path / "ae", log=quiet)
    row = read_history(tmp_path / "ae")[0]
    assert set(row) == {"epoch", "train_loss", "val_loss", "seconds", "lr", "train_recon", "val_recon"}
    assert float(row["train_loss"]) == pytest.approx(float(row["train_recon"]))


# ---------------------------------------------------------------------------- determinism and resume
def test_same_seed_same_weights(tmp_path, tiny_config):
    fit(tiny_config(), tmp_path / "a", log=quiet)
    fit(tiny_config(), tmp_path / "b", log=quiet)
    fit(tiny_config("train.seed=2"), tmp_path / "c", log=quiet)
    a, b, c = (tensors(tmp_path / x / "model.safetensors") for x in "abc")
    assert_same_tensors(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters


def test_resume_gives_exactly_the_straight_run(tmp_path, tiny_config):
    # KL warm-up over 3 epochs crosses the resume point; a validation split runs each epoch.
    extra = ("data.val=0.25", "train.kl_warmup_epochs=3")
    fit(tiny_config("train.epochs=4", *extra), tmp_path / "straight", log=quiet)
    fit(tiny_config("train.epochs=2", *extra), tmp_path / "resumed", log=quiet)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["epochs"] == 2
    cfg = checkpoint.load_config(tmp_path / "resumed")
    cfg.train.epochs = 4
    logs: list[str] = []
    fit(cfg, tmp_path / "resumed", resume=True, log=logs.append)
    assert any("resuming" in line and "after epoch 2" in line for line in logs)

    assert_same_tensors(tensors(tmp_path / "straight" / "model.safetensors"),
                        tensors(tmp_path / "resumed" / "model.safetensors"))
    # optimizer state too (Adam moments and step counts)
    assert_same_tensors(tensors(tmp_path / "straight" / "checkpoint.safetensors"),
                        tensors(tmp_path / "resumed" / "checkpoint.safetensors"))
    hs, hr = read_history(tmp_path / "straight"), read_history(tmp_path / "resumed")
    assert [r["epoch"] for r in hr] == ["1", "2", "3", "4"]
    for a, b in zip(hs, hr):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["epochs"] == 4


def test_resume_without_a_checkpoint(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        fit(tiny_config(), tmp_path / "empty", resume=True, log=quiet)


# ---------------------------------------------------------------------------- divergence
def test_nan_loss_raises_and_keeps_the_epoch_1_checkpoint(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config("train.epochs=3")  # 256 images / batch 64: 4 steps per epoch
    run = tmp_path / "run"
    real_forward = LatentModel.forward
    calls = {"n": 0}
    snapshot: dict[str, bytes] = {}

    def forward(self, x, y=None, *, generator=None, progress=1.0, dataset_size=None):
        calls["n"] += 1
        out = real_forward(self, x, y, generator=generator, progress=progress, dataset_size=dataset_size)
        if calls["n"] == 5:  # first step of epoch 2: epoch 1 is on disk now
            for name in ("model.safetensors", "checkpoint.safetensors", "history.csv", "config.json"):
                snapshot[name] = (run / name).read_bytes()
        if calls["n"] >= 6:  # second step of epoch 2 goes NaN
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(LatentModel, "forward", forward)
    with pytest.raises(TrainingDiverged) as e:
        fit(cfg, run, log=quiet)
    msg = str(e.value)
    assert "\n" not in msg and "epoch 2" in msg and "nan" in msg.lower()
    assert "epoch 1" in msg and str(run) in msg  # says which checkpoint is kept, and where
    monkeypatch.setattr(LatentModel, "forward", real_forward)

    for name, blob in snapshot.items():
        assert (run / name).read_bytes() == blob, f"{name} changed after the divergence"
    assert not (run / "summary.json").exists()
    assert len(read_history(run)) == 1
    # still loadable, and it is exactly a 1-epoch run
    _, model = checkpoint.load_model(run)
    fit(tiny_config("train.epochs=1"), tmp_path / "one", log=quiet)
    assert_same_tensors({k: v for k, v in model.state_dict().items()}, tensors(tmp_path / "one" / "model.safetensors"))
    # and training continues from it
    cfg2 = checkpoint.load_config(run)
    cfg2.train.epochs = 2
    fit(cfg2, run, resume=True, log=quiet)
    fit(tiny_config("train.epochs=2"), tmp_path / "two", log=quiet)
    assert_same_tensors(tensors(run / "model.safetensors"), tensors(tmp_path / "two" / "model.safetensors"))


def test_nan_in_the_first_epoch(tiny_config, monkeypatch):
    monkeypatch.setattr(LatentModel, "forward", lambda self, x, y=None, *, generator=None, progress=1.0, dataset_size=None:
                        {"loss": torch.full((len(x),), float("inf"), requires_grad=True)})
    with pytest.raises(TrainingDiverged, match="became inf at epoch 1"):
        fit(tiny_config(), None, log=quiet)


def test_the_loss_is_read_back_once_per_interval_not_per_step(tiny_config, monkeypatch):
    """A per-step .item() stalls a GPU; the loop syncs once per CHECK_EVERY steps (and at an epoch's end)."""
    from vaelab.training import trainer as loop

    reads = []
    real = loop._check_finite
    monkeypatch.setattr(loop, "_check_finite", lambda s, e, st, rd: (reads.append(st), real(s, e, st, rd)))
    monkeypatch.setattr(loop, "CHECK_EVERY", 3)
    fit(tiny_config("train.epochs=2", "train.batch_size=16"), None, log=quiet)  # 16 steps per epoch
    assert reads == [2, 5, 8, 11, 14, 15] * 2


def test_exploding_learning_rate_diverges(tmp_path, tiny_config):
    cfg = tiny_config("model.loss=mse", "model.output_activation=none", "model.kind=ae", "train.lr=1.0e+12",
                      "train.epochs=3")
    with pytest.raises(TrainingDiverged):
        fit(cfg, tmp_path / "boom", log=quiet)


# ---------------------------------------------------------------------------- KL warm-up
def test_kl_warmup_schedule_and_loss(tmp_path, tiny_config, monkeypatch):
    """train.kl_warmup_epochs becomes model.elbo.kl_warmup, a fraction of training; the loop passes
    the objective its progress, so the KL weight ramps per step as it did per epoch."""
    from vaelab.models.objectives import kl_weight

    real_forward = LatentModel.forward
    weights: list[float] = []

    def forward(self, x, y=None, *, generator=None, progress=1.0, dataset_size=None):
        if self.training:
            weights.append(kl_weight(self.cfg, progress))
        return real_forward(self, x, y, generator=generator, progress=progress, dataset_size=dataset_size)

    monkeypatch.setattr(LatentModel, "forward", forward)
    warm_cfg = tiny_config("train.epochs=3", "train.kl_warmup_epochs=2")
    assert warm_cfg.model.opts("elbo").kl_warmup == pytest.approx(2 / 3)
    warm = fit(warm_cfg, tmp_path / "w", log=quiet).history
    steps = 4
    expected = [min(1.0, ((e - 1) + s / steps) / 2) for e in (1, 2, 3) for s in range(steps)]
    assert weights == pytest.approx(expected)
    assert weights[0] == 0.0 and weights[-1] == 1.0

    weights.clear()
    plain = fit(tiny_config("train.epochs=3"), tmp_path / "p", log=quiet).history
    assert weights == [1.0] * 12
    # with warm-up the reported loss puts less than full weight on the KL
    assert warm[0]["train_loss"] < warm[0]["train_recon"] + warm[0]["train_kl"] - 1e-3
    assert plain[0]["train_loss"] == pytest.approx(plain[0]["train_recon"] + plain[0]["train_kl"], rel=1e-5)
    assert warm[0]["train_loss"] != plain[0]["train_loss"]


# ---------------------------------------------------------------------------- errors
def test_input_shape_must_match_the_data(tiny_config):
    cfg = tiny_config("model.input_shape=[1, 14, 14]")
    with pytest.raises(ConfigError, match="input_shape"):
        fit(cfg, None, log=quiet)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


# ---------------------------------------------------------------------------- evaluation
def test_evaluate_numbers(tmp_path, tiny_config):
    res = fit(tiny_config("train.epochs=1"), None, log=quiet)
    data = res.splits.train.subset(torch.arange(100))
    r = evaluate(res.model, data, iw_samples=10, seed=3, batch_size=40)
    assert r["n"] == 100 and r["split"] == "test" and r["seed"] == 3 and r["iw_samples"] == 10
    assert r["loss"] == pytest.approx(r["recon"] + r["kl"], rel=1e-5)
    x = data.float()
    with torch.no_grad():
        q = res.model.posterior(x)
        mu, lv = q.mean, q.logvar
        x_hat = res.model.decode(mu).numpy()
    err = ((x_hat - x.numpy()) ** 2).reshape(100, -1).mean(1)
    assert r["mse"] == pytest.approx(float(err.mean()), rel=1e-5)
    assert r["psnr"] == pytest.approx(float((10 * np.log10(1 / err)).mean()), rel=1e-5)
    assert 0 < r["ssim"] <= 1
    assert math.isfinite(r["nll_iw"])
    assert isinstance(r["active_units"], int) and 0 <= r["active_units"] <= 2
    kl_dims = (0.5 * (mu ** 2 + lv.exp() - 1 - lv)).mean(0)
    assert r["kl_per_dim"] == pytest.approx(kl_dims.tolist(), rel=1e-5)
    assert sum(r["kl_per_dim"]) == pytest.approx(r["kl"], rel=1e-4)  # analytic KL per image, two ways
    # same seed, same numbers; the batch size does not matter
    r2 = evaluate(res.model, data, iw_samples=10, seed=3, batch_size=100)
    assert r2["mse"] == pytest.approx(r["mse"], rel=1e-6)
    assert evaluate(res.model, data, iw_samples=10, seed=3, batch_size=40) == r
    assert "nll_iw" not in evaluate(res.model, data, iw_samples=0)


def test_evaluate_nll_iw_is_the_estimate_with_its_own_encoder_pass(tiny_config):
    """evaluate() hands the batch's posterior to the importance-weighted pass (one encoder
    pass fewer); the numbers must be those of the estimate that encodes again, bit for bit."""
    res = fit(tiny_config("train.epochs=1"), None, log=quiet)
    data = res.splits.train.subset(torch.arange(90))
    r = evaluate(res.model, data, iw_samples=7, seed=5, batch_size=40)
    gen = torch.Generator().manual_seed(5)
    total = 0.0
    with torch.no_grad():
        for i in range(0, 90, 40):
            x = data.batch(slice(i, i + 40), "cpu")
            res.model(x, None, generator=gen, dataset_size=90)  # the draw evaluate's loss takes first
            total += float(iw_log_likelihood(res.model, x, None, 7, gen).sum())
    assert r["nll_iw"] == res.model.nll_offset() - total / 90


def test_api_train_writes_eval_and_figures(tmp_path, tiny_config):
    run = vaelab.train(tiny_config("train.epochs=1", "data.val=0.25"), tmp_path / "run", iw_samples=3, log=quiet)
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["split"] == "val" and ev["n"] == 64 and ev["iw_samples"] == 3 and "nll_iw" in ev
    for name in ("loss.png", "reconstructions.png", "samples_prior.png"):
        assert (tmp_path / "run" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert run.history()[0]["epoch"] == 1
    # summary.json's timing: the parts of the process, adding up to its age at the end
    t = json.loads((tmp_path / "run" / "summary.json").read_text())["timing"]
    assert t["epochs_s"] == pytest.approx(float(run.history()[0]["seconds"]), abs=0.002)
    inside = t["data_s"] + t["setup_s"] + t["epochs_s"] + t["val_s"] + t["checkpoint_s"]
    assert t["val_s"] > 0 and t["checkpoint_s"] > 0 and inside <= t["fit_s"] + 0.005
    assert t["fit_s"] - inside < 0.05 * t["fit_s"] + 0.05  # little of fit() is left unaccounted for
    parts = t["startup_s"] + t["fit_s"] + t["eval_s"] + t["figures_s"]
    assert t["startup_s"] > 0 and t["eval_s"] > 0 and t["figures_s"] > 0
    assert parts == pytest.approx(t["process_s"], rel=0.05, abs=0.1)


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_mixed_precision_training_follows_fp32(tiny_config, arch):
    """Regression: bf16 autocast wrapped around a whole epoch kept using the first step's
    cached bf16 weights, so the loss stayed flat (then went inf). Mixed precision must
    track fp32 training step for step, up to bf16 rounding."""
    extra = (("model.arch=conv", "model.channels=[8,16]", "model.dense=[16]", "model.final_kernel=3")
             if arch == "conv" else ("model.arch=mlp", "model.hidden=[64]"))
    losses = {}
    for precision in ("fp32", "mixed"):
        result = fit(tiny_config(*extra, "train.epochs=3", "train.lr=0.003", f"train.precision={precision}"),
                     None, log=quiet)
        losses[precision] = [row["train_loss"] for row in result.history]
    fp32, mixed = losses["fp32"], losses["mixed"]
    assert fp32[-1] < 0.9 * fp32[0]  # the setting learns at all
    assert mixed[-1] < 0.9 * mixed[0]
    assert abs(mixed[-1] - fp32[-1]) < 0.03 * fp32[-1]


# ---------------------------------------------------------------------------- schedules and resume
def test_learning_rate_schedules():
    from vaelab.training.schedules import iwae_epochs, iwae_stage, lr_at

    assert [iwae_stage(e) for e in (1, 2, 4, 5, 13, 14, 40, 41)] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert iwae_epochs(8) == 3280 and iwae_epochs(6) == 364
    assert lr_at("iwae", 1e-3, 5, 3280) == pytest.approx(1e-3 * 10 ** (-2 / 7))
    assert lr_at("constant", 0.1, 7, 10) == 0.1
    assert lr_at("cosine", 0.1, 1, 10) == pytest.approx(0.1)
    assert lr_at("cosine", 0.1, 6, 10) == pytest.approx(0.05)  # half-way
    assert lr_at("cosine", 0.1, 10, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_the_schedule_sets_the_optimizer_and_history_records_it(tiny_config):
    res = fit(tiny_config("train.epochs=5", "train.lr_schedule=iwae"), None, log=quiet)
    assert [r["lr"] for r in res.history] == pytest.approx([1e-3 * 10 ** (-i / 7) for i in (0, 1, 1, 1, 2)])
    cos = fit(tiny_config("train.epochs=2", "train.lr_schedule=cosine", "train.batch_size=128"), None, log=quiet)
    # per step: the last step of epoch 2 (step 2 of 2) is at t = 3/4 of the run
    assert cos.history[-1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.75)))


def test_resume_with_a_new_learning_rate_trains_at_it(tmp_path, tiny_config):
    """Regression: `vaelab train --resume RUN --lr 1e-4` wrote the new rate into config.json, then
    the optimizer state loaded after it restored the old rate, and the run went on at that."""
    from vaelab.config import RunConfig, apply_overrides

    run = tmp_path / "run"
    fit(tiny_config("train.epochs=1", "train.lr=0.001"), run, log=quiet)
    cfg = RunConfig.from_dict(apply_overrides(checkpoint.load_config(run).to_dict(),
                                              overrides=["train.epochs=2", "train.lr=1e-4"]))
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    torch.optim.Adam.step = step
    try:
        res = fit(cfg, run, resume=True, log=quiet)
    finally:
        torch.optim.Adam.step = real_step
    assert seen and set(seen) == {1e-4}
    assert res.history[-1]["lr"] == 1e-4 and checkpoint.load_config(run).train.lr == 1e-4
    # the Adam moments carried over: not a fresh optimizer
    tensors, _ = checkpoint._load(run / "checkpoint.safetensors")
    assert int(tensors["optim.0.step"]) == 8  # 4 steps per epoch, 2 epochs


def test_a_minibatch_objective_is_validated_on_batches_of_the_training_size(tmp_path, tiny_config):
    """beta-TCVAE estimates q(z) from the batch, so its loss depends on the batch size: val_loss is
    computed on batches of train.batch_size (the estimator train_loss uses), not eval_batch_size."""
    from vaelab.training.callbacks import evaluate_losses

    cfg = tiny_config("model.kind=beta-tcvae", "model.tcvae.beta=6", "model.tcvae.estimator=mws", "data.val=0.25",
                      "train.epochs=2", "train.batch_size=16", "train.lr=0.01")
    run = vaelab.train(cfg, tmp_path / "run", evaluate_after=False, log=quiet)
    val_loss = float(run.history()[-1]["val_loss"])
    val = run.split("val")
    assert len(val) == 64 and cfg.train.eval_batch_size == 128
    seed = cfg.train.seed
    at_train = evaluate_losses(run.model, val, 16, torch.device("cpu"), seed)["loss"]
    at_eval = evaluate_losses(run.model, val, 128, torch.device("cpu"), seed)["loss"]
    assert abs(at_train - at_eval) > 1e-2  # the batch size changes the estimate ...
    assert val_loss == pytest.approx(at_train, abs=1e-4)  # ... and val_loss is the training-size one
    from vaelab.models.objectives import OBJECTIVES

    assert run.model.objective.minibatch and not OBJECTIVES["elbo"].minibatch  # a VAE's: eval_batch_size
