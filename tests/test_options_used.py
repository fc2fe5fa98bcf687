"""No option silently ignored: an option the chosen parts do not read is refused in one line.

The class-level checks: every CLI flag of `train` maps to a config field; every option of
the table ``vaelab.configure.unused_options`` (vaelab.config's, and the model fields the parts
declare they read) is refused when set explicitly where it is not
read; the presets rely on no unread option. Then the cases one by one: a data path without
a source that reads it, folder options on other sources, family options, plot options.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import cli_error, make_shapes, run_main, write_idx_file

from vaelab.config import DataConfig, RunConfig, preset_names
from vaelab.configure import (
    build_config,
    check_options_used,
    config_from_dict,
    unused_options,
)
from vaelab.errors import ConfigError, VaelabError


# ---------------------------------------------------------------- the CLI flags map to fields
def test_every_train_flag_maps_to_a_config_field():
    from vaelab.cli.options import COMMON_FLAGS
    from vaelab.cli.run import train
    from vaelab.models import PARTS
    from vaelab.models.options import aliases

    params = {p.name for p in train.params}
    sections = {s: {f.name for f in dataclasses.fields(cls)} for s, cls in
                (("data", DataConfig), ("model", type(RunConfig().model)), ("train", type(RunConfig().train)))}
    sections["model"] |= set(aliases(PARTS))  # --beta: the old flat name of elbo's and tcvae's beta
    for flag, (section, name) in COMMON_FLAGS.items():
        assert flag in params, f"--{flag} is in COMMON_FLAGS but not an option of train"
        assert name in sections[section], f"--{flag} maps to {section}.{name}, which is no config field"
    # the train options that are not config fields are handled by the command itself
    own = {"preset", "config_file", "overrides", "out", "resume", "overwrite", "iw_samples", "iw_images", "no_eval",
           "classes",
           "nproc", "log_to", "tracking_uri", "experiment"}  # the loggers: callbacks, not config
    assert params - set(COMMON_FLAGS) == own


def test_every_train_flag_field_is_read_outside_the_config_and_cli():
    """A static check that no flag maps to a dead field: each field is read (``.field``) by
    some module other than config.py and the CLI (data loading, models, objectives, the loop)."""
    import re
    from pathlib import Path

    import vaelab
    from vaelab.cli.options import COMMON_FLAGS

    root = Path(vaelab.__file__).parent
    code = "\n".join(p.read_text() for p in root.rglob("*.py") if p.name != "config.py" and "cli" not in p.parts)
    for flag, (section, name) in COMMON_FLAGS.items():
        assert re.search(rf"\.{name}\b", code), f"--{flag} ({section}.{name}) is read nowhere"


def test_the_table_names_existing_fields():
    fields = {f"{s}.{f.name}" for s, cls in (("data", DataConfig), ("model", type(RunConfig().model)),
                                             ("train", type(RunConfig().train))) for f in dataclasses.fields(cls)}
    for base in (None, "mlp-ae", "conv-vae", "celeba-vae", "iwae-paper"):
        table = unused_options(build_config(base))
        assert table and set(table) <= fields


@pytest.mark.parametrize("preset", preset_names())
def test_presets_rely_on_no_unread_option(preset):
    cfg = build_config(preset)
    check_options_used(cfg)  # every non-default value of the preset is read
    assert cfg.data.name in ("mnist", "folder")


# ---------------------------------------------------------------- every unread option, set explicitly
BASES = [
    ("mlp-ae", []),  # autoencoder, mlp, mnist: no KL, no conv, no folder options
    ("conv-vae", []),  # VAE, conv: no mlp options, no iwae/tcvae/mmd options
    ("fc-ae-rgb64", ["data.path=/nowhere/images"]),  # a folder: no data_dir, download, in_memory is read
    (None, ["data.path=/nowhere/x.npz", "model.kind=vq-vae", "model.arch=conv", "model.latent=conv"]),
]


@pytest.mark.parametrize("preset,base", BASES)
def test_each_unread_option_set_explicitly_is_refused(preset, base):
    cfg = build_config(preset, overrides=base)
    table = unused_options(cfg)
    assert len(table) >= 8
    check_options_used(cfg)  # at their defaults and not set by the user: fine
    for key, why in table.items():
        section, name = key.split(".")
        default = next(f for f in dataclasses.fields(type(getattr(RunConfig(), section))) if f.name == name)
        value = default.default_factory() if default.default is dataclasses.MISSING else default.default
        if value is None:  # an explicit null clears an option: allowed (tested below)
            continue
        with pytest.raises(ConfigError) as e:  # set by the user (build_config passes these keys), at its default
            check_options_used(cfg, {key})
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{key}=") and "is not used" in msg and why in msg, msg
    # the whole way, through --set, for the first of them
    key = next(k for k in table if k not in ("data.path", "data.data_dir") and getattr(
        getattr(cfg, k.split(".")[0]), k.split(".")[1]) is not None)
    value = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
    with pytest.raises(ConfigError, match=f"^{key}="):
        build_config(preset, overrides=base + [f"{key}={json.dumps(value)}"])


def test_an_explicit_null_clears_a_preset_option():
    cfg = build_config("celeba-vae", overrides=["data.path=x.npz", "data.image_size=null", "data.channels=null"])
    assert cfg.data.name == "npz" and cfg.data.image_size is None
    with pytest.raises(ConfigError, match="data.image_size applies to image folders"):  # the preset's 64 is not read
        build_config("celeba-vae", overrides=["data.path=x.npz"])


def test_a_non_default_unread_value_is_refused_by_fit_too(tiny_config, tmp_path):
    from vaelab.training.loop import fit

    cfg = tiny_config("model.kind=ae")
    cfg.model.options["beta"] = 4.0  # the API path: a RunConfig changed by hand, never through build_config
    with pytest.raises(ConfigError, match=r"model.beta=4.0 is not used: it is an option of the objective elbo "
                                          r"\(model.elbo.beta\) or the objective tcvae \(model.tcvae.beta\), and "
                                          r"model.objective is recon; leave it out"):
        fit(cfg, tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_read_options_pass():
    cfg = build_config("mlp-vae", overrides=["model.beta=4", "model.objective=tcvae", "model.tc_alpha=2",
                                             "train.lr_schedule=exponential", "train.lr_gamma=0.9"])
    assert cfg.model.opts("tcvae").alpha == 2 and cfg.model.opts("tcvae").beta == 4 and cfg.train.lr_gamma == 0.9
    cfg = build_config("mlp-vae", overrides=["model.objective=elbo", "model.capacity=5", "model.capacity_gamma=100"])
    assert cfg.model.opts("elbo").capacity_gamma == 100
    with pytest.raises(ConfigError, match="model.elbo.capacity_gamma=100.0 is not used: .*model.elbo.capacity is "
                                          "not set"):
        build_config("mlp-vae", overrides=["model.capacity_gamma=100"])


# ---------------------------------------------------------------- data.path and the source
def test_a_path_names_its_source(tmp_path):
    assert DataConfig().name == "mnist"
    assert DataConfig(path="a/b.npz").name == "npz" and DataConfig(path="a/b.NPY").name == "npz"
    assert DataConfig(path=str(tmp_path)).name == "folder"
    # a preset's mnist gives way to a path given without a source, through every door
    assert build_config("conv-vae", extra={"data": {"path": str(tmp_path)}}).data.name == "folder"
    assert build_config("conv-vae", overrides=[f"data.path={tmp_path}/x.npz"]).data.name == "npz"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"data: {{path: {tmp_path}/x.npy}}\n")
    assert build_config(None, str(yaml_file)).data.name == "npz"
    assert RunConfig.from_dict({"data": {"path": "x.npz"}}).data.name == "npz"


@pytest.mark.parametrize("kw,message", [
    ({"name": "mnist", "path": "imgs"}, "data.path (--data-path) imgs is not read by data.name=mnist; give data.name"),
    ({"name": "dsprites", "path": "x.npz"}, "is not read by data.name=dsprites; give data.name=npz"),
    ({"name": "folder", "path": "x.npz"}, "x.npz is a .npz or .npy file, and data.name=folder reads an image folder"),
    ({"name": "mnist", "image_size": 32}, "data.image_size applies to image folders (data.name=folder) only"),
    ({"name": "npz", "path": "x.npz", "crop": "center:20"}, "data.crop applies to image folders"),
    ({"name": "mnist", "skip_bad": True}, "data.skip_bad applies to image folders"),
    ({"path": "imgs", "data_dir": "/data"}, "data.data_dir (--data-dir) is not read by data.name=folder"),
    ({"path": "imgs", "download": False}, "data.download=false applies to mnist and fashion-mnist only"),
    ({"name": "mnist", "in_memory": "false"}, "data.in_memory=false does not apply to data.name=mnist"),
])
def test_data_options_the_source_does_not_read(kw, message):
    cfg = DataConfig(**kw)  # a saved run's config.json still loads ...
    with pytest.raises(ConfigError) as e:
        cfg.check_used()  # ... but no config with it is made or trained
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_options_used(RunConfig(data=cfg))


def test_explicit_mnist_with_a_path_is_one_line(capsys, tmp_path):
    line = cli_error(capsys, "train", "--preset", "mlp-vae", "--data", "mnist", "--data-path", tmp_path,
                     "--out", tmp_path / "run")
    assert f"data.path (--data-path) {tmp_path} is not read by data.name=mnist" in line
    assert not (tmp_path / "run").exists()


def test_train_infers_npz_and_says_which_source_and_path(capsys, tmp_path, shapes_npz):
    rc, out, err = run_main(capsys, "train", "--preset", "mlp-ae", "--data-path", shapes_npz, "--val", "0.25",
                            "--limit", 100, "--epochs", 1, "--no-eval", "--out", tmp_path / "run")
    assert rc == 0, err
    start = next(line for line in out.splitlines() if line.startswith("model ae/mlp"))
    assert f"data npz {shapes_npz} (data.limit: a seeded random subset): 75 training images (1, 28, 28)" in start
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert saved["name"] == "npz" and saved["path"] == str(shapes_npz)


# ---------------------------------------------------------------- CLI: one line naming the option
CLI_CASES = [
    (["train", "--preset", "mlp-vae", "--image-size", "32"], "data.image_size"),
    (["train", "--preset", "deep-ae", "--beta", "1"], "model.beta=1.0 is not used"),
    (["train", "--preset", "mlp-ae", "--set", "model.kl_warmup=0.5"], "model.kl_warmup=0.5 is not used"),
    (["train", "--preset", "mlp-vae", "--beta", "4", "--set", "model.capacity=25"],
     "model.elbo.beta=4.0 is not used: model.elbo.capacity replaces the KL weight"),
    (["train", "--preset", "mlp-vae", "--set", "model.k=5"], ("model.k=5 is not used: it is an option of the "
                                                               "objective iwae (model.iwae.k), and model.objective is elbo")),
    # the example: a TypeError in the posterior before; now one line when the config is built
    (["train", "--preset", "mlp-vae", "--kind", "hvae"], ("model.posterior=gaussian2 needs the sizes of its two "
                                                          "layers: --set model.gaussian2.latent_dims=[z1,z2]")),
    (["train", "--preset", "mlp-vae", "--kind", "hvae", "--prior", "vamp", "--set", "model.latent_dims=[4,2]"],
     "model.prior=vamp needs a diagonal-Gaussian posterior"),
    (["train", "--preset", "mlp-vae", "--set", "model.iwae.k=5"], ("model.iwae holds options of the objective iwae, "
                                                                   "and model.objective is elbo")),
    (["train", "--preset", "conv-vae", "--set", "model.hidden=64"], "model.hidden=64 is not used"),
    (["train", "--preset", "mlp-vae", "--set", "model.channels=8,16"], "model.channels=[8, 16] is not used"),
    (["train", "--preset", "mlp-vae", "--set", "train.lr_gamma=0.9"], "train.lr_gamma=0.9 is not used"),
    (["train", "--preset", "mlp-vae", "--set", "train.kl_warmup_epochs=2", "--set", "model.kind=ae"],
     "train.kl_warmup_epochs=2.0 is not used"),
    (["train", "--preset", "mlp-vae", "--set", "data.background=white"], "data.background=white is not used"),
    (["train", "--preset", "cvae", "--set", "model.condition_dim=8"], "model.condition_dim=8 is not used"),
    (["train", "--preset", "mlp-vae", "--set", "model.vamp_components=10"], "model.vamp_components=10 is not used"),
    (["train", "--preset", "mlp-vae", "--data", "fashion-mnist", "--set", "model.codebook_size=8"],
     "model.codebook_size=8 is not used"),
]


@pytest.mark.parametrize("args,named", CLI_CASES, ids=[" ".join(a[3:]) for a, _ in CLI_CASES])
def test_cli_refuses_unread_train_options(capsys, tmp_path, args, named):
    line = cli_error(capsys, *args, "--out", tmp_path / "run")
    assert named in line
    assert not (tmp_path / "run").exists()


def test_npz_val_test_given_explicitly_is_refused(capsys, tmp_path, shapes_npz):
    line = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--val", "test",
                     "--out", tmp_path / "run")
    assert "data.val=test is not used: data.name=npz has no test split" in line


def test_run_commands_refuse_options_not_read(capsys, trained_run, tmp_path):
    run = trained_run.run_dir
    # a run reading data.path (npz) has no data_dir to relocate
    assert "data.data_dir (--data-dir) is not read by data.name=npz" in cli_error(capsys, "eval", run,
                                                                                   "--data-dir", tmp_path)
    # plot: each kind reads some options
    assert "--n does not apply to --kind loss" in cli_error(capsys, "plot", run, "--kind", "loss", "--n", 5)
    assert "--dims does not apply to --kind tsne" in cli_error(capsys, "plot", run, "--kind", "tsne",
                                                               "--dims", "0,1")
    assert "--seed does not apply to --kind traverse" in cli_error(capsys, "plot", run, "--kind", "traverse",
                                                                   "--seed", 3)
    # samplers: --scale is not the prior's, --class not an unconditional sampler's
    assert "--scale does not apply to --sampler prior" in cli_error(capsys, "sample", run, "--scale", 0.5)
    assert "sampler prior is unconditional; use class-gaussian or class-gmm for --class" in cli_error(
        capsys, "sample", run, "--class", 1, "--out", tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()
    # detect: --samples are the elbo / iwnll scores' posterior draws
    assert "--samples (posterior draws) applies to the elbo and iwnll scores, not to --score mse" in cli_error(
        capsys, "detect", run, "--input", tmp_path, "--score", "mse", "--samples", 5)


def test_plot_in_python_refuses_an_option_its_kind_does_not_read(trained_run, tmp_path):
    from vaelab.latent.pictures import plot, plot_options

    assert plot_options("loss") == frozenset() and "dims" in plot_options("scatter")
    with pytest.raises(ConfigError, match="plot loss does not use n; it reads none"):
        plot(trained_run, "loss", tmp_path / "l.png", n=5)
    assert plot(trained_run, "scatter", tmp_path / "s.png", dims=(0, 1)).is_file()


def test_anomaly_bench_refuses_holdout_with_a_test_split_and_samples_without_draws(tmp_path):
    from vaelab.anomaly.one_class import one_class_benchmark

    idx = tmp_path / "idx"
    xtr, ytr = make_shapes(40, seed=1)
    xte, yte = make_shapes(20, seed=2)
    for stem, a in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr.astype(np.uint8)),
                    ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte.astype(np.uint8))):
        write_idx_file(idx / "mnist" / f"{stem}.gz", a)
    with pytest.raises(VaelabError, match=r"holdout \(--holdout\) applies to data without a test split"):
        one_class_benchmark("mnist", [0], data_dir=str(idx), holdout=0.3, log=lambda s: None)
    with pytest.raises(VaelabError, match=r"samples \(--samples\) are posterior draws .* score mse draws none"):
        one_class_benchmark("mnist", [0], data_dir=str(idx), score="mse", samples=5, log=lambda s: None)


# ---------------------------------------------------------------- scores that cannot be computed
def test_auroc_with_one_class_refuses():
    from vaelab.evaluation.metrics import auroc

    assert auroc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    with pytest.raises(VaelabError, match="AUROC needs normal and anomalous images, and these 3 have no anomalous"):
        auroc(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]))
    with pytest.raises(VaelabError, match="these 2 have no normal one"):
        auroc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_evaluation_options_not_read_are_refused(capsys, trained_run, tmp_path):
    from vaelab.api import Run

    line = cli_error(capsys, "train", "--preset", "mlp-ae", "--iw-samples", 5, "--out", tmp_path / "ae")
    assert "--iw-samples estimates nll_iw, and the ae model has no density" in line
    line = cli_error(capsys, "train", "--preset", "mlp-vae", "--iw-samples", 5, "--no-eval", "--out", tmp_path / "v")
    assert "--iw-samples sets the final evaluation, and --no-eval skips it" in line
    assert "--no-generate draws none" in cli_error(capsys, "report", trained_run.run_dir, "--no-generate",
                                                   "--data-dir", tmp_path)
    assert not (trained_run.run_dir / "report.html").exists()
    assert "--judge names the judge" in cli_error(capsys, "inpaint", trained_run.run_dir, "--no-judge",
                                                  "--judge", tmp_path)
    # a VAE has a density: --iw-samples is read (the evaluation runs and records it), in a copy of the run
    import shutil

    run = shutil.copytree(trained_run.run_dir, tmp_path / "copy")
    rc, _, err = run_main(capsys, "eval", run, "--iw-samples", 3, "--split", "val")
    assert rc == 0, err
    assert json.loads((run / "eval.json").read_text())["iw_samples"] == 3
    assert "density" in Run.load(run).capabilities


def test_a_saved_config_with_an_unread_option_still_loads():
    # runs trained before these checks (a preset's mnist and an ignored --data-path) stay loadable
    saved = {"data": {"name": "mnist", "path": "imgs", "image_size": 32}, "model": {"kind": "ae", "beta": 4.0}}
    cfg = config_from_dict(saved, strict=False)  # as a run directory's config.json is read
    # the autoencoder never read beta: it is dropped, as an option of no part of this model
    assert cfg.data.name == "mnist" and cfg.data.path == "imgs" and set(cfg.model.options) == {"mlp"}
    with pytest.raises(ConfigError, match="data.path"):  # but training it again is refused
        check_options_used(cfg)
