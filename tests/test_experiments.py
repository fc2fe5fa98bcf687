"""Built-in experiments: every trial is a valid config; a tiny real run writes results and a report."""

from __future__ import annotations

import pytest

from conftest import cli_error, run_main
from vaelab.sweep import experiments
from vaelab.sweep.runner import read_results, trial_config


@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
@pytest.mark.parametrize("quick", [False, True])
def test_every_trial_builds_a_valid_held_out_config(name, quick):
    spec = experiments.get(name).spec(quick=quick)
    assert spec.epochs == (experiments.QUICK_EPOCHS if quick else experiments.get(name).epochs)
    for t in spec.trials:
        cfg = trial_config(spec, t)
        # Trained on the training split, measured on the test split nobody trained on.
        assert cfg.data.train_split == "train" and cfg.data.val == "test"
        assert cfg.data.limit == (10000 if quick else None)
        for key, value in t.params.items():
            section, field = key.split(".")
            if key in ("model.hidden", "model.channels"):  # old flat names: the body's options
                assert getattr(cfg.model.opts(cfg.model.arch), field) == value
            else:
                assert getattr(getattr(cfg, section), field) == value


def test_the_studies_sweep_what_they_say():
    ex = experiments.EXPERIMENTS
    assert [t.params["model.latent_dim"] for t in ex["latent-dim"].trials] == [1, 2, 4, 6, 8, 10]
    assert [len(t.params["model.channels"]) for t in ex["depth"].trials] == [1, 2, 3, 4]
    assert [t.params["model.loss"] for t in ex["loss"].trials] == ["bce", "mse", "euclidean"]
    arch = {t.id: trial_config(ex["architecture"].spec(), t).model for t in ex["architecture"].trials}
    assert (arch["mlp-vae"].arch, arch["conv-vae"].arch) == ("mlp", "conv")
    assert [len(arch[f"ae-{n}-hidden"].opts("mlp").hidden) * 2 + 1 for n in (1, 5, 9)] == [1, 5, 9]
    assert arch["ae-5-hidden"].opts("mlp").hidden == [512, 128] and arch["ae-5-hidden"].latent_dim == 32


def test_a_tiny_real_experiment_writes_results_and_report(tmp_path, shapes_npz, capsys):
    # The experiment's own models and settings, on the small shapes set instead of MNIST.
    sets = ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "data.limit=192", "train.batch_size=64"]
    rc, out, err = run_main(capsys, "experiment", "loss", "--quick", *[a for s in sets for a in ("--set", s)],
                            "--epochs", "1", "--out", tmp_path / "loss")
    assert rc == 0, err
    rows = read_results(tmp_path / "loss")
    assert [r["model.loss"] for r in rows] == ["bce", "mse", "euclidean"]
    assert all(r["status"] == "done" for r in rows)
    assert (tmp_path / "loss" / "report.html").stat().st_size > 10_000
    assert "report.html" in out


def test_list_and_unknown_experiment(capsys):
    rc, out, _ = run_main(capsys, "experiment", "--list")
    assert rc == 0 and all(name in out for name in experiments.EXPERIMENTS)
    assert "unknown experiment 'nope'" in cli_error(capsys, "experiment", "nope")
