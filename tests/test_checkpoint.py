"""Checkpoints: safetensors only, never unpickled; mismatches are one clear error; Run API round trip."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vaelab.training import checkpoint
from vaelab.api import Run
from vaelab.configure import build_config
from vaelab.errors import CheckpointError
from vaelab.training.loop import fit, make_optimizer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shapes_npz) -> Path:
    """A 1-epoch mlp VAE (784-32-2) on the synthetic shapes, with a 0.25 validation split."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.hidden=32", "model.latent_dim=2",
        "train.epochs=1", "train.batch_size=64", "train.device=cpu", "train.progress=false"])
    fit(cfg, run, log=lambda *_: None)
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


class Boom:
    """Unpickling this creates ``path``: proof that the file was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _write_pickle(path: Path, marker: Path, how: str) -> None:
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": Boom(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "torch.save-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    assert not marker.exists()  # writing it ran nothing


PICKLES = ["torch.save", "torch.save-legacy", "pickle-0", "pickle-2", "pickle-4", "pickle-5"]


def test_marker_payload_really_runs_when_unpickled(tmp_path):
    """The check below is meaningful: loading these files the unsafe way creates the marker."""
    marker = tmp_path / "marker"
    for how in PICKLES:
        f = tmp_path / f"{how}.bin"
        _write_pickle(f, marker, how)
        if how.startswith("torch"):
            torch.load(f, weights_only=False)
        else:
            pickle.loads(f.read_bytes())
        assert marker.exists(), how
        marker.unlink()


@pytest.mark.parametrize("how", PICKLES)
def test_pickle_weights_are_refused_unread(run_copy, tmp_path, how):
    marker = tmp_path / "PWNED"
    _write_pickle(run_copy / checkpoint.WEIGHTS, marker, how)
    with pytest.raises(CheckpointError) as e:
        Run.load(run_copy, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and str(run_copy / checkpoint.WEIGHTS) in msg
    assert not marker.exists()


@pytest.mark.parametrize("how", PICKLES)
def test_pickle_resume_checkpoint_is_refused_unread(run_copy, tmp_path, how):
    marker = tmp_path / "PWNED"
    _write_pickle(run_copy / checkpoint.RESUME, marker, how)
    cfg = checkpoint.load_config(run_copy)
    cfg.train.epochs = 2
    with pytest.raises(CheckpointError) as e:
        fit(cfg, run_copy, resume=True, log=lambda *_: None)
    assert str(run_copy / checkpoint.RESUME) in str(e.value)
    assert not marker.exists()


def _safetensors_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


GARBAGE = {
    "empty": lambda real: b"",
    "text": lambda real: b"hello, these are not weights\n" * 3,
    "random": lambda real: bytes(range(256)) * 4,
    "truncated": lambda real: real[: len(real) // 2],
    "bad-json-header": lambda real: _safetensors_header(b"{not json at all") + b"\x00" * 64,
    "header-longer-than-file": lambda real: struct.pack("<Q", 10**9) + b"{}",
    "zip-not-torch": lambda real: b"PK\x03\x04" + b"\x00" * 60,
}


@pytest.mark.parametrize("kind", list(GARBAGE))
@pytest.mark.parametrize("which", [checkpoint.WEIGHTS, checkpoint.RESUME])
def test_garbage_checkpoints_are_refused(run_copy, kind, which):
    real = (run_copy / which).read_bytes()
    (run_copy / which).write_bytes(GARBAGE[kind](real))
    with pytest.raises(CheckpointError) as e:
        if which == checkpoint.WEIGHTS:
            checkpoint.load_model(run_copy)
        else:
            cfg = checkpoint.load_config(run_copy)
            model = __import__("vaelab").build_model(cfg.model)
            checkpoint.load_resume(run_copy, model, make_optimizer(model, cfg))
    msg = str(e.value)
    assert "\n" not in msg and which in msg


def test_missing_weights(run_copy):
    (run_copy / checkpoint.WEIGHTS).unlink()  # its resume checkpoint is there: a training that stopped
    with pytest.raises(CheckpointError, match=r"has no model.safetensors: its training stopped before it saved "
                                              r"them .*vaelab train --resume"):
        Run.load(run_copy, device="cpu")
    (run_copy / checkpoint.RESUME).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        Run.load(run_copy, device="cpu")


def test_mismatched_weights_are_one_clear_error(run_copy):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["model"]["mlp"]["hidden"] = [16]  # the saved weights are for hidden=[32]
    (run_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        Run.load(run_copy, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.safetensors" in msg and "config.json" in msg


def test_mismatched_weights_say_what_mismatches(run_copy):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["model"]["mlp"]["hidden"] = [16]
    (run_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        Run.load(run_copy, device="cpu")
    msg = str(e.value)
    assert "size mismatch" in msg or "encoder.1.weight" in msg, msg


def test_weights_with_missing_and_extra_tensors(run_copy):
    t = load_file(str(run_copy / checkpoint.WEIGHTS))
    t.pop("posterior_head.mu.weight")
    t["surprise"] = torch.zeros(1)
    save_file(t, str(run_copy / checkpoint.WEIGHTS))
    with pytest.raises(CheckpointError, match="does not match"):
        Run.load(run_copy, device="cpu")


def test_resume_checkpoint_from_another_model(run_copy, tmp_path, shapes_npz):
    other = tmp_path / "other"
    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=none", "model.hidden=8",
                                    "model.latent_dim=2", "train.epochs=1", "train.batch_size=128",
                                    "train.device=cpu"])
    fit(cfg, other, log=lambda *_: None)
    shutil.copy(other / checkpoint.RESUME, run_copy / checkpoint.RESUME)
    cfg = checkpoint.load_config(run_copy)
    cfg.train.epochs = 2
    with pytest.raises(CheckpointError) as e:
        fit(cfg, run_copy, resume=True, log=lambda *_: None)
    assert "does not match this model" in str(e.value) and "\n" not in str(e.value)


def test_not_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Run.load(tmp_path / "nowhere", device="cpu")
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="not a vaelab run"):
        Run.load(tmp_path / "d", device="cpu")
    (tmp_path / "d" / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not a valid run config"):
        Run.load(tmp_path / "d", device="cpu")
    (tmp_path / "d" / "config.json").write_text(json.dumps({"model": {"latent_dim": 0}}))
    with pytest.raises(CheckpointError, match="latent_dim"):
        Run.load(tmp_path / "d", device="cpu")


def test_weights_metadata_holds_the_config(trained_run):
    from safetensors import safe_open

    with safe_open(str(trained_run / checkpoint.WEIGHTS), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == json.loads((trained_run / "config.json").read_text())


# ---------------------------------------------------------------------------- Run API round trip
def test_run_load_and_use(trained_run, shapes_arrays):
    run = Run.load(trained_run, device="cpu")
    assert "density" in run.capabilities and not run.model.training
    saved = load_file(str(trained_run / checkpoint.WEIGHTS))
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, saved[k]), k

    x = torch.from_numpy(shapes_arrays[0][:10, None].astype("float32") / 255)
    z = run.encode(x, batch_size=3)
    assert z.shape == (10, 2)
    q = run.posterior(x, batch_size=4)
    torch.testing.assert_close(z, q.mean)
    assert q.logvar.shape == (10, 2)
    # by hand, through the layers
    with torch.no_grad():
        torch.testing.assert_close(z, run.model.posterior_head.mu(run.model.encoder(x)))
    imgs = run.decode(z)
    assert imgs.shape == (10, 1, 28, 28) and imgs.min() >= 0 and imgs.max() <= 1
    torch.testing.assert_close(run.reconstruct(x, batch_size=7), imgs)
    s1, s2, s3 = run.sample_prior(5, seed=1), run.sample_prior(5, seed=1), run.sample_prior(5, seed=2)
    assert s1.shape == (5, 1, 28, 28) and torch.equal(s1, s2) and not torch.equal(s1, s3)


def test_run_evaluate_and_history(run_copy):
    run = Run.load(run_copy, device="cpu")
    r = run.evaluate(split="val", iw_samples=4)
    assert r["split"] == "val" and r["n"] == 64 and r["iw_samples"] == 4
    assert not (run_copy / "eval.json").exists()  # evaluating writes nothing unless asked
    assert run.evaluate(split="val", iw_samples=4, save=True) == r  # the same seed, the same numbers
    assert json.loads((run_copy / "eval.json").read_text()) == {**r, "checkpoint_id": run.checkpoint_id}
    assert [row["epoch"] for row in run.history()] == [1]  # numbers, as fit's own history
    with pytest.raises(Exception, match="no test split"):
        run.evaluate(split="test")


def test_saves_are_atomic(run_copy, monkeypatch):
    """A save that fails half-way leaves the previous file intact and no temp file."""
    import vaelab.tensorfiles as ck

    before = (run_copy / checkpoint.WEIGHTS).read_bytes()
    cfg, model = checkpoint.load_model(run_copy)

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", failing_save)
    with pytest.raises(OSError):
        checkpoint.save_weights(run_copy, model, cfg)
    assert (run_copy / checkpoint.WEIGHTS).read_bytes() == before
    assert not list(run_copy.glob(".*.tmp"))


def test_safetensors_whose_header_length_starts_with_pickle_byte_loads(tmp_path):
    """A real safetensors file whose 8-byte header length has 0x80 as its low byte (the first
    byte of a pickle) is still a safetensors file: it must load, not be refused as a pickle."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    for pad in range(300):
        save_file({"w": torch.arange(3.0)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    tensors, meta = checkpoint._load(path)
    assert torch.equal(tensors["w"], torch.arange(3.0)) and meta["pad"]
