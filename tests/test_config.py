"""Configuration: presets, dotted overrides, validation."""

from __future__ import annotations

import json

import pytest

from vaelab.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_preset,
    parse_override,
    preset_names,
)
from vaelab.configure import build_config, config_from_dict
from vaelab.errors import ConfigError
from vaelab.models import build_model, count_params


def dense(*widths: int) -> int:
    """Parameters of a chain of Linear layers through ``widths``."""
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


# Parameter counts from each preset's described architecture (its YAML comment), computed
# by hand; mlp-vae and conv-vae are the published counts of the PyTorch / Keras reference models.
EXPECTED_PARAMS = {
    "mlp-vae": 652_824,  # PyTorch examples/vae
    "conv-vae": 134_165,  # keras.io/examples/generative/vae
    "mlp-ae": dense(784, 144, 72, 48, 72, 144, 784),
    "deep-ae": dense(784, 512, 256, 128, 64, 32, 64, 128, 256, 512, 784),
    "fc-ae-rgb64": dense(12288, 1024, 256, 64, 256, 1024, 12288),
    "conv-vae-deep": (conv(1, 32, 3) + conv(32, 64, 3) + conv(64, 128, 3) + dense(128 * 4 * 4, 16)
                      + 2 * dense(16, 2) + dense(2, 128 * 4 * 4)
                      + conv(128, 128, 3) + conv(128, 64, 3) + conv(64, 32, 3) + conv(32, 1, 3)),
    "conv-ae-rgb64": (conv(3, 12, 4) + conv(12, 24, 4) + conv(24, 48, 4)
                      + conv(48, 24, 4) + conv(24, 12, 4) + conv(12, 3, 4)),
    # Burda et al. 2016: 784-200-200-50 and back, two heads
    "iwae-paper": dense(784, 200, 200) + 2 * dense(200, 50) + dense(50, 200, 200, 784),
    # the second architecture: q(z1|x) 784-200-200 and two 100-unit heads, q(z2|z1) 100-100-100 and two
    # 50-unit heads, p(z1|z2) 50-100-100 and two 100-unit heads, p(x|z1) 100-200-200-784
    "iwae-paper-2l": (dense(784, 200, 200) + 2 * dense(200, 100) + dense(100, 100, 100) + 2 * dense(100, 50)
                      + dense(50, 100, 100) + 2 * dense(100, 100) + dense(100, 200, 200, 784)),
    # the mlp-vae with 10 one-hot label inputs to the encoder and to the decoder
    "cvae": dense(794, 400) + 2 * dense(400, 20) + dense(30, 400, 784),
    # conv-vae (latent 16) with 10 label channels in and the label beside the code out
    "conv-cvae": (conv(11, 32, 3) + conv(32, 64, 3) + dense(3136, 16) + 2 * dense(16, 16) + dense(26, 3136)
                  + conv(64, 64, 3) + conv(64, 32, 3) + conv(32, 1, 3)),
    # PyTorch-VAE's VanillaVAE: 5 convs with BatchNorm (2 parameters per channel), heads from 512x2x2,
    # decoder input, 4 + 1 transposed convs with BatchNorm, the final Conv 32->3 (tests/test_celeba_vae.py)
    "celeba-vae": (sum(conv(a, b, 3) + 2 * b for a, b in zip((3, 32, 64, 128, 256), (32, 64, 128, 256, 512)))
                   + 2 * dense(2048, 128) + dense(128, 2048)
                   + sum(conv(a, b, 3) + 2 * b for a, b in zip((512, 256, 128, 64, 32), (256, 128, 64, 32, 32)))
                   + conv(32, 3, 3)),
}


def test_conv_vae_reference_count_by_hand():
    # The Keras tutorial's summary: encoder 69,076 and decoder 65,089 parameters.
    encoder = conv(1, 32, 3) + conv(32, 64, 3) + dense(3136, 16) + 2 * dense(16, 2)
    decoder = dense(2, 3136) + conv(64, 64, 3) + conv(64, 32, 3) + conv(32, 1, 3)
    assert (encoder, decoder) == (69_076, 65_089)
    assert encoder + decoder == EXPECTED_PARAMS["conv-vae"]
    assert dense(784, 400) + 2 * dense(400, 20) + dense(20, 400, 784) == EXPECTED_PARAMS["mlp-vae"]


def test_preset_names():
    assert preset_names() == sorted(EXPECTED_PARAMS)


def _input_shape(cfg: RunConfig) -> list[int]:
    return [3, cfg.data.image_size, cfg.data.image_size] if cfg.data.name == "folder" else [1, 28, 28]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_presets_build_with_expected_parameter_counts(name):
    cfg = build_config(name)
    assert cfg.preset == name
    cfg.model.input_shape = _input_shape(cfg)
    if cfg.model.uses_labels:
        cfg.model.num_classes = 10  # the MNIST digits
    assert count_params(build_model(cfg.model)) == EXPECTED_PARAMS[name]
    # independent of vaelab's count_params
    model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_reference_presets_match_their_tutorials():
    m = build_config("mlp-vae")
    assert (m.model.opts("mlp").hidden, m.model.latent_dim, m.model.loss, m.train.batch_size, m.train.lr,
            m.train.epochs) == ([400], 20, "bce", 128, 0.001, 10)
    c = build_config("conv-vae")
    o = c.model.opts("conv")
    assert (o.channels, o.dense, c.model.latent_dim, o.final_kernel, c.train.epochs) == ([32, 64], [16], 2, 3, 30)
    assert c.data.train_split == "train+test" and c.data.val == "none"


# ---------------------------------------------------------------------------- overrides
@pytest.mark.parametrize("text, expected", [
    ("model.latent_dim=16", ("model", "latent_dim", 16)),
    ("train.lr=0.0005", ("train", "lr", 0.0005)),
    ("model.hidden=512,256", ("model", "hidden", [512, 256])),
    ("model.hidden=[32, 64]", ("model", "hidden", [32, 64])),
    ("model.hidden=32", ("model", "hidden", 32)),  # an alias: the body types it (test_body_options_typed)
    ("model.mlp.hidden=32,16", ("model", "mlp.hidden", [32, 16])),
    ("data.classes=3", ("data", "classes", [3])),
    ("data.classes=3,5", ("data", "classes", [3, 5])),
    ("model.kernel_size=3", ("model", "kernel_size", 3)),
    ("model.strides=2,1", ("model", "strides", [2, 1])),
    ("model.decoder_hidden=null", ("model", "decoder_hidden", None)),
    ("data.classes=null", ("data", "classes", None)),
    ("data.download=false", ("data", "download", False)),
    ("model.loss=mse", ("model", "loss", "mse")),
    ("data.path=/some/where/x.npz", ("data", "path", "/some/where/x.npz")),
    ("data.val=0.1", ("data", "val", 0.1)),
    (" model.beta = 4", ("model", "beta", 4)),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_overrides_reach_the_config():
    cfg = build_config("mlp-vae", overrides=["model.latent_dim=16", "model.hidden=512,256", "data.classes=3",
                                             "model.decoder_hidden=null", "data.val=0.1", "train.epochs=2"])
    assert cfg.model.latent_dim == 16 and cfg.model.opts("mlp").hidden == [512, 256] and cfg.data.classes == [3]
    assert cfg.model.opts("mlp").decoder_hidden is None and cfg.data.val == "0.1" and cfg.train.epochs == 2
    assert cfg.train.lr == 0.001  # untouched fields keep the preset's value


def test_precedence_preset_file_extra_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {latent_dim: 5, beta: 2.0}\ntrain: {epochs: 7, seed: 3}\n")
    cfg = build_config("mlp-vae", str(f), overrides=["train.epochs=9"], extra={"train": {"seed": 4}})
    assert cfg.model.opts("mlp").hidden == [400]  # preset
    assert cfg.model.latent_dim == 5 and cfg.model.opts("elbo").beta == 2.0  # file over preset
    assert cfg.train.seed == 4  # extra over file
    assert cfg.train.epochs == 9  # override over everything


def test_round_trip_through_json():
    cfg = build_config("conv-vae", overrides=["data.classes=1,7", "train.epochs=3"])
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert again.model.opts("elbo") == cfg.model.opts("elbo") and "elbo" in json.loads(cfg.to_json())["model"]


def test_defaults_are_valid():
    cfg = RunConfig()
    assert cfg.model.kind == "vae" and cfg.data.name == "mnist"


def test_train_plus_test_disables_test_validation():
    assert DataConfig(train_split="train+test", val="test").val == "none"
    assert DataConfig(train_split="train+test", val="0.2").val == "0.2"


# ---------------------------------------------------------------------------- bad values
BAD_OVERRIDES = {
    "model.latent_dim=0": "latent_dim",
    "model.latent_dim=-3": "latent_dim",
    "model.loss=foo": "model.loss",
    "model.kind=gan": "model.kind",
    "model.arch=transformer": "model.arch",
    "model.activation=swish": "model.activation",
    "model.output_activation=softmax": "output_activation",
    "model.beta=-1": "beta",
    "model.hidden=0": "hidden",
    "model.final_kernel=4": "final_kernel",
    "model.latent=conv": "latent",
    "model.input_shape=[28, 28]": "input_shape",
    "data.val=2": "data.val",
    "data.val=train": "data.val",
    "data.train_split=all": "train_split",
    "data.channels=2": "channels",
    "data.limit=0": "limit",
    "data.image_size=0": "image_size",
    "data.classes=[]": "classes",
    "train.epochs=-1": "epochs",
    "train.batch_size=0": "batch_size",
    "train.lr=0": "lr",
    "train.device=tpu": "device",
    "train.grad_clip=0": "grad_clip",
    "foo.bar=1": "foo.bar",
    "model.foo=1": "model.foo",
    "model=1": "model",
    "latent_dim=3": "latent_dim",
    "model.latent_dim": "section.field=value",
}


@pytest.mark.parametrize("text", list(BAD_OVERRIDES))
def test_bad_values_raise_config_error(text):
    with pytest.raises(ConfigError) as e:
        build_config("mlp-vae", overrides=[text])
    msg = str(e.value)
    assert "\n" not in msg
    assert BAD_OVERRIDES[text] in msg, msg


def test_bce_needs_sigmoid_output():
    with pytest.raises(ConfigError, match="bce needs model.output_activation=sigmoid"):
        build_config("mlp-vae", overrides=["model.output_activation=tanh"])
    cfg = build_config("mlp-vae", overrides=["model.output_activation=tanh", "model.loss=mse"])
    assert cfg.model.output_activation == "tanh"


def test_conv_list_lengths_must_match_channels():
    with pytest.raises(ConfigError, match="kernel_size has 3 entries but model.conv.channels has 2"):
        build_config("conv-vae", overrides=["model.kernel_size=[3, 3, 3]"])
    with pytest.raises(ConfigError, match=r"VAEs need a dense latent \(model.conv.latent=dense\)"):
        build_config("conv-vae", overrides=["model.latent=conv"])


def test_unknown_sections_and_fields_in_dicts_and_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config section"):
        RunConfig.from_dict({"optimizer": {"lr": 1}})
    with pytest.raises(ConfigError, match="unknown model option 'model.depth'"):
        config_from_dict({"model": {"latent": "dense", "depth": 3}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        RunConfig.from_dict({"model": [1, 2]})
    with pytest.raises(ConfigError, match="must be a mapping"):
        RunConfig.from_dict([1, 2])
    with pytest.raises(ConfigError, match="not found"):
        build_config(None, str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {latent_dim: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(None, str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(None, str(scalar))
    with pytest.raises(ConfigError, match=r"model\.mlp\.hidden must be a list of int, got 'x'"):
        config_from_dict({"model": {"hidden": "x"}})  # not a width


def test_unknown_preset():
    with pytest.raises(ConfigError) as e:
        load_preset("resnet-vae")
    assert "resnet-vae" in str(e.value) and "mlp-vae" in str(e.value)


def test_dataclasses_validate_directly():
    with pytest.raises(ConfigError):
        ModelConfig(latent_dim=0)
    with pytest.raises(ConfigError):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError):
        DataConfig(val="1.5")


# ---------------------------------------------------------------------------- known bugs
@pytest.mark.parametrize("text", ["model.latent_dim=abc", "train.lr=fast", "model.hidden=a,b", "train.epochs=x"])
def test_non_numeric_values_raise_config_error(text):
    with pytest.raises(ConfigError):
        build_config("mlp-vae", overrides=[text])


def test_non_string_device_raises_config_error():
    with pytest.raises(ConfigError):
        build_config("mlp-vae", overrides=["train.device=0"])


@pytest.mark.parametrize("text, section, name", [("train.lr=1e-4", "train", "lr"),
                                                 ("model.beta=5e-1", "model", "beta"),
                                                 ("train.weight_decay=1e-5", "train", "weight_decay")])
def test_scientific_notation_gives_floats(text, section, name):
    cfg = build_config("mlp-vae", overrides=[text])
    value = cfg.model.opts("elbo").beta if name == "beta" else getattr(getattr(cfg, section), name)
    assert isinstance(value, float), f"{section}.{name} is {value!r} ({type(value).__name__})"
    assert value == float(text.split("=")[1])


# ---------------------------------------------------------------------------- part options: sections and old names
# Every flat model option a part now owns, its section and option, and a value away from its default.
ALIASES = {
    "beta": ("elbo", "beta", 4.0), "kl_warmup": ("elbo", "kl_warmup", 0.5), "capacity": ("elbo", "capacity", 5.0),
    "k": ("iwae", "k", 7), "tc_alpha": ("tcvae", "alpha", 2.0), "tc_gamma": ("tcvae", "gamma", 3.0),
    "tc_estimator": ("tcvae", "estimator", "mws"), "mmd_weight": ("wae-mmd", "weight", 2.0),
    "mmd_kernel": ("wae-mmd", "kernel", "rbf"), "mmd_scales": ("wae-mmd", "scales", [1.0, 2.0]),
    "info_alpha": ("infovae", "alpha", 0.5), "vamp_components": ("vamp", "components", 9),
    "codebook_size": ("vq", "codebook_size", 16), "commitment": ("vq", "commitment", 0.5),
    "vq_ema": ("vq", "ema", True), "latent_dims": ("gaussian2", "latent_dims", [3, 2]),
    "hidden2": ("gaussian2", "hidden2", [8]),
    # the bodies' options (vaelab.models.bodies)
    "hidden": ("mlp", "hidden", [8, 4]), "decoder_hidden": ("mlp", "decoder_hidden", [4, 8]),
    "channels": ("conv", "channels", [4, 8]), "kernel_size": ("conv", "kernel_size", [3, 1]),
    "strides": ("conv", "strides", 1), "dense": ("conv", "dense", [16]), "final_kernel": ("conv", "final_kernel", 3),
    "padding": ("conv", "padding", "same"), "norm": ("conv", "norm", "batch"),
    "decoder_input_activation": ("conv", "decoder_input_activation", False),
    "final_layer": ("conv", "final_layer", "conv"),
}
USES = {"elbo": ["model.kind=vae"], "iwae": ["model.kind=iwae"], "tcvae": ["model.kind=beta-tcvae"],
        "wae-mmd": ["model.kind=wae"], "infovae": ["model.kind=infovae"], "vamp": ["model.kind=vamp"],
        "vq": ["model.kind=vq-vae", "model.arch=conv", "model.latent=conv"],
        "gaussian2": ["model.kind=hvae", "model.gaussian2.latent_dims=[4,4]"], "mlp": ["model.arch=mlp"],
        "conv": ["model.arch=conv", "model.conv.final_kernel=3"]}


def _opt(cfg, part, option):
    return getattr(cfg.model.opts(part), option)


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_an_old_flat_name_is_an_alias_of_its_parts_option_everywhere(old, tmp_path):
    part, option, value = ALIASES[old]
    base = [u for u in USES[part] if not u.startswith(f"model.{part}.{option}=")]  # itself given below
    base += ["model.hidden=8"] if "model.arch=conv" not in base and part != "mlp" else []
    text = json.dumps(value)
    by_set = build_config(None, overrides=[*base, f"model.{old}={text}"])  # --set model.k=7
    assert _opt(by_set, part, option) == value
    assert by_set.to_dict()["model"][part][option] == value and old not in by_set.to_dict()["model"]
    f = tmp_path / "c.yaml"  # YAML model: {k: 7}
    f.write_text(f"model: {{{old}: {text}}}\n")
    assert _opt(build_config(None, str(f), overrides=base), part, option) == value
    saved = json.loads(by_set.to_json())  # config.json as an older vaelab wrote it: flat
    flat = {(p, o): name for name, (p, o, _) in ALIASES.items()}
    saved["model"] = {k: v for k, v in saved["model"].items() if not isinstance(v, dict)} | {
        flat[p, o]: v for p, sec in saved["model"].items() if isinstance(sec, dict) for o, v in sec.items()
        if (p, o) in flat} | {"latent": saved["model"].get("conv", {}).get("latent", "dense")}
    assert _opt(config_from_dict(saved), part, option) == value
    # the new spelling, and the later layer wins whichever spelling each uses
    assert _opt(build_config(None, overrides=[*base, f"model.{part}.{option}={text}"]), part, option) == value
    other = [5, 5] if option == "latent_dims" else getattr(type(by_set.model.opts(part))(), option)  # its default
    later = build_config(None, str(f), overrides=[*base, f"model.{part}.{option}={json.dumps(other)}"])
    assert _opt(later, part, option) == other != value


def test_an_old_name_for_a_part_not_used_is_refused_or_dropped():
    with pytest.raises(ConfigError, match=r"^model.codebook_size=64 is not used: it is an option of the posterior vq "
                                          r"and the objective vq \(model.vq.codebook_size\), and model.posterior is "
                                          r"gaussian, model.objective is elbo; leave it out$"):
        build_config("mlp-vae", overrides=["model.codebook_size=64"])
    with pytest.raises(ConfigError, match="model.k=5 is not used"):  # set by the user: refused at its default too
        build_config("mlp-vae", overrides=["model.k=5"])
    # a saved run lists every old option at its default: dropped (and any value, for a run loaded to be used)
    cfg = config_from_dict({"model": {"kind": "ae", "k": 5, "beta": 1.0, "mmd_scales": [0.1]}}, strict=False)
    assert set(cfg.model.options) == {"mlp"}  # only the body's own
    with pytest.raises(ConfigError, match="model.mmd_scales=.* is not used"):
        config_from_dict({"model": {"kind": "ae", "k": 5, "mmd_scales": [0.1]}})


def test_a_presets_section_of_a_part_swapped_out():
    assert set(build_config("iwae-paper", overrides=["model.objective=elbo"]).model.options) == {"elbo", "mlp"}
    with pytest.raises(ConfigError, match=r"model.elbo holds options of the objective elbo, and model.objective is "
                                          r"recon; leave it out, or set model.objective=elbo \(model.elbo=null "
                                          r"clears a preset's\)"):
        build_config("celeba-vae", overrides=["model.kind=ae"])  # its elbo.beta=0.001 is no default
    cfg = build_config("celeba-vae", overrides=["model.kind=ae", "model.elbo=null"])
    assert cfg.model.objective == "recon" and set(cfg.model.options) == {"conv"}
    with pytest.raises(ConfigError, match="model.iwae holds options of the objective iwae"):  # the user's: refused
        build_config("iwae-paper", overrides=["model.objective=elbo", "model.iwae.k=5"])


def test_config_knows_no_model():
    import ast
    from pathlib import Path

    import vaelab.config

    tree = ast.parse(Path(vaelab.config.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith(("vaelab.models", "vaelab.configure"))}, imported
    with pytest.raises(AttributeError, match="cfg.opts"):
        build_config("mlp-vae").model.beta  # noqa: B018  (an option a part owns now)


def test_a_set_value_starting_with_hash_is_a_colour_not_a_yaml_comment(tmp_path):
    # YAML reads "#ff0000" as a comment (None); the README's data.background=#rrggbb must arrive whole.
    cfg = build_config(None, None, ["data.name=folder", f"data.path={tmp_path}", "data.background=#ff0000"])
    assert cfg.data.background == "#ff0000"
    with pytest.raises(ConfigError, match="got '#zz'"):
        build_config(None, None, ["data.name=folder", f"data.path={tmp_path}", "data.background=#zz"])


@pytest.mark.parametrize("overrides,match", [
    (["model.kind=ae", "model.corrupt=gaussian"], "model.corrupt=gaussian with model.corrupt_level=0 corrupts nothing"),
    (["model.kind=ae", "model.sparsity=l1"], "model.sparsity=l1 with model.sparsity_weight=0 adds no penalty"),
])
def test_a_corruption_or_penalty_of_strength_zero_is_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(None, None, overrides)
    strength = "model.corrupt_level=0.2" if "corrupt" in overrides[1] else "model.sparsity_weight=0.5"
    assert build_config(None, None, [*overrides, strength]).model.kind == "ae"
