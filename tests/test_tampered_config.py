"""A run's config.json is checked against the config its weights were saved with (embedded in
model.safetensors): an edit of the model section that keeps the tensors' shapes is refused in
one line, not loaded to give wrong numbers; the data and training sections may be edited, and
runs whose weights embed no config (or an older layout) still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_line, train_tiny

from vaelab.api import Run
from vaelab.errors import CheckpointError
from vaelab.tensorfiles import load_tensors, save_tensors
from vaelab.training import checkpoint


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory):
    """A 1-epoch VAE (mlp 784-8-2, bce, sigmoid) on 64 synthetic shapes."""
    return train_tiny(tmp_path_factory.mktemp("tampered"), "train.kl_warmup_epochs=1")


@pytest.fixture
def run_dir(tiny_run_dir, tmp_path) -> Path:
    shutil.copytree(tiny_run_dir, tmp_path / "run")
    return tmp_path / "run"


def edit(run_dir: Path, change) -> None:
    cfg = json.loads((run_dir / "config.json").read_text())
    change(cfg)
    (run_dir / "config.json").write_text(json.dumps(cfg))


def load_error(run_dir: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        Run.load(run_dir, device="cpu")
    return one_line(e)


def expected(run_dir: Path, key: str, now, was) -> str:
    return (f"{run_dir / 'config.json'} does not match the config model.safetensors was saved with: {key} is "
            f"{now!r} in config.json but {was!r} in model.safetensors; set it back to {was!r} (restore "
            "config.json) or train a new run with the change")


def test_an_untouched_run_loads(run_dir):
    run = Run.load(run_dir, device="cpu")
    assert run.config.model.loss == "bce" and run.config.model.input_shape == [1, 28, 28]


@pytest.mark.parametrize("key, value, was", [
    ("loss", "mse", "bce"),
    ("input_shape", [1, 14, 56], [1, 28, 28]),  # the same 784 pixels: the same tensor shapes
    ("latent_activation", "tanh", None),
])
def test_a_model_edit_that_keeps_the_shapes_is_refused(run_dir, key, value, was):
    edit(run_dir, lambda c: c["model"].__setitem__(key, value))
    assert load_error(run_dir) == expected(run_dir, f"model.{key}", value, was)


def test_the_first_differing_key_is_named(run_dir):
    # output_activation comes before loss in the model section; both changed, both valid together
    edit(run_dir, lambda c: c["model"].update(output_activation="none", loss="mse"))
    assert load_error(run_dir) == expected(run_dir, "model.output_activation", "none", "sigmoid")


def test_a_part_option_edit_is_refused_with_its_dotted_name(run_dir):
    edit(run_dir, lambda c: c["model"]["elbo"].__setitem__("beta", 4.0))
    assert load_error(run_dir) == expected(run_dir, "model.elbo.beta", 4.0, 1.0)


def test_an_old_flat_spelling_of_the_same_config_loads(run_dir):
    # model.hidden is the old flat name of model.mlp.hidden: the same config, normalised alike
    def flat(c):
        c["model"]["hidden"] = c["model"].pop("mlp")["hidden"]
    edit(run_dir, flat)
    assert Run.load(run_dir, device="cpu").config.model.opts("mlp").hidden == [8]


def test_data_and_train_sections_may_be_edited(run_dir, tmp_path):
    moved = tmp_path / "elsewhere.npz"
    shutil.copy(json.loads((run_dir / "config.json").read_text())["data"]["path"], moved)
    # a new data path, and more epochs: elbo.kl_warmup (derived from train) changes alike on both sides
    edit(run_dir, lambda c: (c["data"].__setitem__("path", str(moved)), c["train"].__setitem__("epochs", 4)))
    run = Run.load(run_dir, device="cpu")
    assert run.config.data.path == str(moved) and run.config.model.opts("elbo").kl_warmup == 0.25


def test_keys_missing_from_config_json_at_their_defaults_load(run_dir):
    # as an older vaelab wrote config.json: fields added since, absent, read as their defaults
    edit(run_dir, lambda c: [c["model"].pop(k) for k in ("leaky_slope", "sparsity_target", "predictor_hidden")])
    assert Run.load(run_dir, device="cpu").config.model.leaky_slope == 0.2
    # ... and a default-valued key missing from the embedded config the same
    tensors, meta = load_tensors(run_dir / "model.safetensors")
    saved = json.loads(meta["config"])
    del saved["model"]["sparsity"], saved["model"]["init"]
    save_tensors(run_dir / "model.safetensors", tensors, {**meta, "config": json.dumps(saved)})
    assert Run.load(run_dir, device="cpu").config.model.init == "torch"


def test_weights_without_an_embedded_config_still_load(run_dir):
    tensors, meta = load_tensors(run_dir / "model.safetensors")
    save_tensors(run_dir / "model.safetensors", tensors, {"format": meta["format"]})  # no "config"
    edit(run_dir, lambda c: c["model"].__setitem__("loss", "mse"))  # nothing to compare with
    assert Run.load(run_dir, device="cpu").config.model.loss == "mse"


def test_a_shape_changing_edit_still_names_the_tensors(run_dir):
    edit(run_dir, lambda c: c["model"]["mlp"].__setitem__("hidden", [16]))
    msg = load_error(run_dir)
    assert msg.startswith(f"{run_dir / 'model.safetensors'} does not match config.json: ") and "size mismatch" in msg


def test_a_config_json_without_a_model_section_names_the_file(run_dir):
    edit(run_dir, lambda c: c.pop("model"))
    assert load_error(run_dir) == (
        f"{run_dir / 'config.json'} has no model section; restore the file (every run's config.json has one, and "
        "model.safetensors cannot be rebuilt without it) or train the run again")
    edit(run_dir, lambda c: c.__setitem__("model", [1, 2]))
    assert load_error(run_dir).startswith(f"{run_dir / 'config.json'} has a model section that is not a mapping; ")


def test_a_model_section_that_builds_no_model_names_the_file(run_dir):
    edit(run_dir, lambda c: c["model"].pop("input_shape"))
    assert load_error(run_dir) == (
        f"{run_dir / 'config.json'} does not rebuild the run's model (model.input_shape is unset; it is filled in "
        "from the data when training); restore the file or train the run again")


def test_a_file_is_not_a_run_directory(run_dir, tmp_path):
    script = tmp_path / "some_file.py"
    script.write_text("print('hi')\n")
    for path in (script, run_dir / "config.json"):
        assert load_error(path) == (f"{path} is a file, not a run directory; pass the run's folder (the one holding "
                                    "config.json and model.safetensors)")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_config(tmp_path / "nowhere")


def test_a_shape_changing_edit_names_the_edited_key_and_the_fix(run_dir):
    edit(run_dir, lambda c: c["model"]["mlp"].__setitem__("hidden", [16]))
    with pytest.raises(CheckpointError) as e:
        Run.load(run_dir, device="cpu")
    msg = one_line(e)
    assert "size mismatch" in msg
    assert msg.endswith("config.json has model.mlp.hidden=[16] where they were saved with [8]; restore config.json "
                        "or train the run again")
