"""Run directories written before the model contract (format vaelab-1) load and evaluate
to the numbers the old code wrote in their eval.json (tests/fixtures/make_v1_runs.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vaelab.api import Run
from vaelab.training import checkpoint

V1 = Path(__file__).parent / "fixtures" / "v1_runs"
RUNS = ["mlp-vae-bce-predictor", "mlp-vae-euclidean", "conv-vae-same", "conv-ae-tanh-mse"]
# Computed deterministically from the weights: must match to float rounding.
EXACT = ["mse", "ssim", "psnr", "kl", "predictor", "predictor_accuracy", "active_units"]


def v1_run(tmp_path: Path, name: str) -> Path:
    """A copy of the old run with its data path pointing at the fixture's shapes.npz."""
    dst = tmp_path / name
    shutil.copytree(V1 / name, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["data"]["path"] = str(V1 / "shapes.npz")
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_evaluates_to_its_old_numbers(tmp_path, name):
    old = json.loads((V1 / name / "eval.json").read_text())
    run = Run.load(v1_run(tmp_path, name), device="cpu")
    new = run.evaluate(split="val", iw_samples=old["iw_samples"] or 0, seed=old["seed"])
    for k in EXACT:
        if k in old:
            assert new[k] == pytest.approx(old[k], rel=1e-5, abs=1e-7), k
    if "kl_per_dim" in old:
        assert new["kl_per_dim"] == pytest.approx(old["kl_per_dim"], rel=1e-5, abs=1e-7)
    # One posterior draw per image, from the same seeded stream as before.
    for k in ("loss", "recon"):
        assert new[k] == pytest.approx(old[k], rel=1e-5), k
    if old["iw_samples"]:
        # Gaussian likelihoods now include their normalising constant (nll_iw is in nats);
        # the Bernoulli one has none. Everything else about the estimate is unchanged.
        offset = run.model.nll_offset()
        assert new["nll_iw"] == pytest.approx(old["nll_iw"] + offset, rel=1e-5)
        assert (offset == 0) == (run.config.model.loss == "bce")
    assert {k for k, v in old.items() if v is not None} <= set(new)  # a null field is now left out


def test_old_runs_keep_their_family_and_parts(tmp_path):
    vae = Run.load(v1_run(tmp_path, "mlp-vae-bce-predictor"), device="cpu")
    ae = Run.load(v1_run(tmp_path, "conv-ae-tanh-mse"), device="cpu")
    m = vae.config.model
    assert (m.kind, m.posterior, m.prior, m.objective, m.condition) == ("vae", "gaussian", "normal", "elbo", "none")
    assert {"density", "predictor", "continuous", "prior"} <= vae.capabilities
    m = ae.config.model
    assert (m.kind, m.posterior, m.prior, m.objective) == ("ae", "point", "none", "recon")
    assert "density" not in ae.capabilities and "prior" not in ae.capabilities


def test_an_old_run_resumes(tmp_path):
    """A v1 checkpoint (weights, optimizer) continues training under today's names."""
    from vaelab.configure import build_config
    from vaelab.training.loop import fit

    run_dir = tmp_path / "run"
    cfg = build_config(None, None, ["data.name=npz", f"data.path={V1 / 'shapes.npz'}", "data.val=none",
                                    "model.hidden=16", "model.latent_dim=2", "train.epochs=1", "train.batch_size=64",
                                    "train.device=cpu", "train.progress=false"])
    res = fit(cfg, run_dir, log=lambda *_: None)
    # Rewrite the resume file as vaelab-1 wrote it: old parameter names, old format tag.
    tensors, meta = checkpoint._load(run_dir / checkpoint.RESUME)
    old = {}
    for k, v in tensors.items():
        for new, was in (("model.posterior_head.mu.", "model.mu."), ("model.posterior_head.logvar.", "model.logvar.")):
            if k.startswith(new):
                k = was + k[len(new):]
        old[k] = v
    meta["format"] = "vaelab-1"
    checkpoint._save(run_dir / checkpoint.RESUME, old, meta)
    more = fit(cfg.copy().__class__.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 2}}),
               run_dir, resume=True, log=lambda *_: None)
    assert len(more.history) == 2
    torch.testing.assert_close(more.history[0]["train_loss"], res.history[0]["train_loss"])


# ---------------------------------------------------------------- runs written before parts owned their options
FLAT = Path(__file__).parent / "fixtures" / "flat_runs"  # tests/fixtures/make_flat_runs.py (commit cae6f31)
FLAT_RUNS = {
    # name: the options its flat config.json gave, as today's sections read them
    "iwae-k3": {"iwae": {"k": 3}},
    "tcvae-beta3": {"tcvae": {"alpha": 0.5, "beta": 3.0, "gamma": 1.0, "estimator": "mws", "kl_warmup": 0.0}},
    "hvae-two-layers": {"gaussian2": {"latent_dims": [3, 2], "hidden2": [8]},
                        "elbo": {"beta": 1.0, "kl_warmup": 0.5, "capacity": None, "capacity_gamma": 1000.0}},
    "vq-ema": {"vq": {"codebook_size": 8, "commitment": 0.5, "ema": True, "decay": 0.9}},
}


def flat_run(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(FLAT / name, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["data"]["path"] = str(V1 / "shapes.npz")
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("name", sorted(FLAT_RUNS))
def test_a_run_with_flat_options_loads_into_sections_and_evaluates_to_its_numbers(tmp_path, name):
    old = json.loads((FLAT / name / "eval.json").read_text())
    saved = json.loads((FLAT / name / "config.json").read_text())["model"]
    assert not any(isinstance(v, dict) for v in saved.values())  # the old, flat layout
    run = Run.load(flat_run(tmp_path, name), device="cpu")
    m = run.config.model
    assert run.config.to_dict()["model"].items() >= FLAT_RUNS[name].items()
    # the options of parts the run does not use are gone; its body's flat fields are its section
    assert set(m.options) == set(FLAT_RUNS[name]) | {m.arch}
    body = {f: saved[f] for f in ("hidden", "decoder_hidden", "channels", "kernel_size", "strides", "dense",
                                  "final_kernel", "padding") if f in m.opts(m.arch).__dataclass_fields__}
    assert len(body) >= 2 and run.config.to_dict()["model"][m.arch].items() >= body.items()
    new = run.evaluate(split="val", iw_samples=old.get("iw_samples") or 0, seed=old["seed"])
    numbers = {k for k, v in old.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} - {"seed", "n"}
    assert numbers >= {"loss", "mse"} and len(numbers) >= 6
    for k in sorted(numbers):
        assert new[k] == pytest.approx(old[k], rel=1e-5, abs=1e-7), k
    if "kl_per_dim" in old:
        assert new["kl_per_dim"] == pytest.approx(old["kl_per_dim"], rel=1e-5, abs=1e-7)
