"""The bodies own their options (model.mlp.*, model.conv.*); the old flat model fields
(model.hidden, model.channels, ...) are aliases everywhere a config is given."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import yaml
from conftest import cli_error, run_main

from vaelab.config import load_preset, preset_names
from vaelab.configure import build_config, config_from_dict, config_from_layers
from vaelab.errors import ConfigError
from vaelab.models import BODIES
from vaelab.models.bodies import ConvOptions, MlpOptions
from vaelab.sweep.runner import SweepSpec, Trial, parse_grid, trial_config

# (arch, flat overrides, the same in sections)
SPELLINGS = [
    ("mlp", ["model.hidden=512,256", "model.decoder_hidden=[128]"],
     ["model.mlp.hidden=[512, 256]", "model.mlp.decoder_hidden=128"]),
    ("conv", ["model.channels=[8,16]", "model.kernel_size=[4,3]", "model.strides=2", "model.dense=[]",
              "model.padding=same", "model.norm=batch", "model.final_kernel=3", "model.decoder_channels=[16,8]",
              "model.decoder_input_activation=false", "model.final_layer=conv"],
     ["model.conv.channels=8,16", "model.conv.kernel_size=[4, 3]", "model.conv.strides=2", "model.conv.dense=[]",
      "model.conv.padding=same", "model.conv.norm=batch", "model.conv.final_kernel=3",
      "model.conv.decoder_channels=16,8", "model.conv.decoder_input_activation=false",
      "model.conv.final_layer=conv"]),
]


@pytest.mark.parametrize("arch, flat, sections", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_flat_and_section_spellings_give_equal_configs(arch, flat, sections, tmp_path):
    preset = "mlp-vae" if arch == "mlp" else "conv-vae"
    by_flat, by_section = build_config(preset, overrides=flat), build_config(preset, overrides=sections)
    assert by_flat == by_section and by_flat.to_dict() == by_section.to_dict()
    o = by_flat.model.opts(arch)
    if arch == "mlp":
        assert (o.hidden, o.decoder_hidden) == ([512, 256], [128])
    else:
        assert (o.channels, o.kernel_size, o.padding, o.norm, o.decoder_channels, o.final_layer) == (
            [8, 16], [4, 3], "same", "batch", [16, 8], "conv")
        assert o.decoder_input_activation is False
    # a YAML file in either spelling, and CLI-flag values (extra) in the flat one
    values = {k.split(".", 1)[1]: yaml.safe_load(v) for k, v in (t.split("=", 1) for t in flat)}
    values = {k: [yaml.safe_load(x) for x in v.split(",")] if isinstance(v, str) and "," in v else v
              for k, v in values.items()}
    for model in (values, {arch: dict(values)}):
        f = tmp_path / "c.yaml"
        f.write_text(yaml.safe_dump({"model": model}))
        assert build_config(preset, str(f)).model == by_flat.model
    assert build_config(preset, extra={"model": values}).model == by_flat.model
    # the run's config.json: the section, no flat name; it reads back to the same config
    saved = json.loads(by_flat.to_json())["model"]
    assert saved[arch] == dataclasses.asdict(o) and not set(values) & set(saved)
    assert config_from_dict(json.loads(by_flat.to_json())) == by_flat


def test_the_readme_spelling_model_hidden_is_model_mlp_hidden():
    # README: --set model.hidden=512,256; a later layer wins whichever spelling each uses
    a = build_config("mlp-vae", overrides=["model.hidden=512,256"])
    b = build_config("mlp-vae", overrides=["model.mlp.hidden=512,256"])
    assert a == b and a.model.opts("mlp").hidden == [512, 256]
    assert build_config("mlp-vae", overrides=["model.hidden=32"]).model.opts("mlp").hidden == [32]  # one number
    # a flag and a --set of one field in the two spellings are one field given twice: refused, not settled by order
    with pytest.raises(ConfigError, match=r"model.mlp.hidden is given twice, as \[64\] .* and as \[16\]"):
        build_config("deep-ae", extra={"model": {"mlp": {"hidden": [64]}}}, overrides=["model.hidden=[16]"])
    c = build_config("deep-ae", extra={"model": {"mlp": {"hidden": [16]}}}, overrides=["model.hidden=[16]"])
    assert c.model.opts("mlp").hidden == [16]


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_in_the_old_flat_spelling_gives_the_same_config(name, tmp_path):
    d = load_preset(name)
    model = d["model"]
    arch = model.get("arch", "mlp")
    section = model.pop(arch, None) or {}
    flat = {**model, **section}  # the body's options as the model fields they were
    f = tmp_path / "flat.yaml"
    f.write_text(yaml.safe_dump({k: v for k, v in {**d, "model": flat}.items() if k != "preset"}))
    built = build_config(name)
    assert build_config(None, str(f)).to_dict() == {**built.to_dict(), "preset": None}
    assert dataclasses.asdict(built.model.opts(arch)) == dataclasses.asdict(BODIES[arch].options(**section))


def test_an_old_flat_config_json_with_body_fields_loads_into_its_bodys_section():
    # as vaelab wrote config.json before the bodies owned their options: every body's fields, flat
    old = {"data": {"name": "mnist"},
           "model": {"kind": "vae", "arch": "conv", "input_shape": [1, 28, 28], "latent_dim": 4, "hidden": [400],
                     "decoder_hidden": None, "channels": [8, 16], "kernel_size": 3, "strides": 2, "dense": [16],
                     "latent": "dense", "final_kernel": 3, "padding": "same", "activation": "relu",
                     "norm": "none", "decoder_channels": None, "decoder_input_activation": True,
                     "final_layer": "transpose", "beta": 1.0},
           "train": {"epochs": 2}}
    for strict in (True, False):  # the mlp's hidden=[400] is its default: dropped, not refused
        cfg = config_from_dict(json.loads(json.dumps(old)), strict=strict)
        assert set(cfg.model.options) == {"conv", "elbo"}
        o = cfg.model.opts("conv")
        assert (o.channels, o.dense, o.final_kernel, o.padding) == ([8, 16], [16], 3, "same")
        saved = cfg.to_dict()["model"]
        assert saved["conv"]["channels"] == [8, 16] and "channels" not in saved and "hidden" not in saved
    mlp = {**old, "model": {**old["model"], "arch": "mlp", "hidden": [32], "channels": [32, 64], "padding": "symmetric",
                            "dense": [], "final_kernel": None}}
    assert config_from_dict(mlp).model.opts("mlp").hidden == [32]
    # a conv field at another value than its default on an mlp run: kept out, as the run never read it
    assert set(config_from_dict({**mlp, "model": {**mlp["model"], "channels": [8]}}, strict=False).model.options) == {
        "mlp", "elbo"}


@pytest.mark.parametrize("given", ["model.padding=same", "model.channels=8,16", "model.conv.padding=same",
                                   "model.latent=conv", "model.final_layer=conv"])
def test_a_conv_option_on_an_mlp_run_is_refused_in_one_line(capsys, tmp_path, given):
    line = cli_error(capsys, "train", "--preset", "mlp-vae", "--set", given, "--out", tmp_path / "run")
    assert "model.arch is mlp" in line and "conv" in line
    assert not (tmp_path / "run").exists()
    flat = given.split("=")[0].split(".")[-1]
    if "model.conv." not in given:  # the old name, and where it lives now
        assert line.startswith(f"vaelab: error: {given.split('=')[0]}=") and f"model.conv.{flat}" in line
    # set by the user, even at its default: refused
    default = {"padding": "symmetric", "channels": "[32,64]", "latent": "dense", "final_layer": "transpose"}[flat]
    with pytest.raises(ConfigError, match="is not used|holds options of the body conv"):
        build_config("mlp-vae", overrides=[f"{given.split('=')[0]}={default}"])


@pytest.mark.parametrize("given, says", [
    ("model.hidden=0", "model.mlp.hidden widths must be positive"),
    ("model.mlp.hidden=[32, x]", "model.mlp.hidden must be a list of int, got [32, 'x']"),
    ("model.decoder_hidden=[-1]", "model.mlp.decoder_hidden widths must be positive"),
])
def test_mlp_option_values_are_checked_in_one_line(given, says):
    with pytest.raises(ConfigError, match=r"^" + re.escape(says)):
        build_config("mlp-vae", overrides=[given])


@pytest.mark.parametrize("given, says", [
    ("model.final_kernel=4", "model.conv.final_kernel must be an odd kernel size, got 4"),
    ("model.conv.kernel_size=[3, 3, 3]", "model.conv.kernel_size has 3 entries but model.conv.channels has 2"),
    ("model.strides=0", "model.conv.strides must be positive, got 0"),
    ("model.conv.channels=[]", "model.conv.channels needs at least one conv layer"),
    ("model.padding=valid", "model.conv.padding must be 'symmetric' or 'same', got 'valid'"),
    ("model.latent=grid", "model.conv.latent must be 'dense' or 'conv', got 'grid'"),
    ("model.kernel_size=big", "model.conv.kernel_size must be int, got 'big'"),
    ("model.conv.decoder_input_activation=maybe", "model.conv.decoder_input_activation must be true or false"),
    ("model.latent=conv", "model.conv.latent=conv (the feature map is the code) is for autoencoders"),
])
def test_conv_option_values_are_checked_in_one_line(given, says):
    with pytest.raises(ConfigError) as e:
        build_config("conv-vae", overrides=[given])
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_kernel_size_and_strides_take_one_value_or_one_per_layer():
    o = build_config("conv-vae", overrides=["model.kernel_size=5", "model.conv.strides=[2, 1]"]).model.opts("conv")
    assert (o.kernel_size, o.strides) == (5, [2, 1])
    assert (o.per_layer("kernel_size"), o.per_layer("strides")) == ([5, 5], [2, 1])
    assert ConvOptions().per_layer("kernel_size") == [3, 3] and MlpOptions().hidden == [400]


def test_a_sweep_grids_over_an_old_flat_name_and_a_section():
    spec = SweepSpec(trials=[], epochs=1)
    grid = parse_grid(["model.hidden=[512],[512,256]"])  # README: --grid 'model.hidden=[512],[512,256]'
    cfgs = [trial_config(spec, Trial("t", {"model.hidden": v}, "mlp-vae")) for v in grid["model.hidden"]]
    assert [c.model.opts("mlp").hidden for c in cfgs] == [[512], [512, 256]]
    grid = parse_grid(["model.conv.channels=[8],[8,16]"])
    assert grid == {"model.conv.channels": [[8], [8, 16]]}
    cfg = trial_config(spec, Trial("t", {"model.conv.channels": [8]}, "conv-vae"))
    assert cfg.model.opts("conv").channels == [8]


def test_parts_bodies_lists_each_bodys_options_with_defaults_and_help(capsys):
    rc, out, err = run_main(capsys, "parts", "bodies")
    assert rc == 0, err
    lines = [line.split() for line in out.splitlines()]
    hidden = next(words for words in lines if words[:1] == ["hidden"])
    assert hidden[:4] == ["hidden", "(list[int])", "=", "[400]"] and "hidden widths" in " ".join(hidden)
    channels = next(words for words in lines if words[:1] == ["channels"])
    assert channels[:5] == ["channels", "(list[int])", "=", "[32,", "64]"]
    rc, out, _ = run_main(capsys, "parts", "bodies", "--json")
    table = {r["name"]: {o["name"]: o for o in r["options"]} for r in json.loads(out)["bodies"]}
    assert list(table["mlp"]) == ["hidden", "decoder_hidden"] and table["mlp"]["hidden"]["default"] == [400]
    assert {f.name for f in dataclasses.fields(ConvOptions)} == set(table["conv"])
    assert table["conv"]["padding"]["default"] == "symmetric" and table["conv"]["padding"]["help"]


def test_a_program_layers_flat_names_over_a_presets_sections():
    # the detector merges a preset (sections), its own values and overrides (old flat names): each a layer
    from vaelab.anomaly.estimator import AnomalyDetector

    x = np.zeros((8, 28, 28), dtype=np.uint8)
    cfg = AnomalyDetector(preset="mlp-ae", hidden=32, overrides=["model.decoder_hidden=[8]"]).training_config(x)
    assert (cfg.model.opts("mlp").hidden, cfg.model.opts("mlp").decoder_hidden) == ([32], [8])
    cfg = AnomalyDetector(preset="mlp-ae", hidden=32, overrides=["model.hidden=[16]"]).training_config(x)
    assert cfg.model.opts("mlp").hidden == [16]  # the overrides come last
    layers = [load_preset("conv-vae"), {"model": {"channels": [8]}}, {"model": {"conv": {"channels": [4]}}}]
    assert config_from_layers(layers).model.opts("conv").channels == [4]
    assert config_from_layers(layers[:2]).model.opts("conv").channels == [8]
