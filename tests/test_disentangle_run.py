"""vaelab disentanglement: a run trained on (a slice of) dSprites, scored against its factors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli_error, run_main


@pytest.fixture(scope="module")
def dsprites_run(tmp_path_factory, monkeypatch_module):
    """A tiny VAE on 300 dSprites images drawn without the 3 GB cache (load_dsprites patched)."""
    from vaelab.api import train
    from vaelab.configure import build_config
    from vaelab.data import dsprites as ds

    rng = np.random.default_rng(0)
    # 20 random (shape, scale, orientation) sprites at 15 random positions each: every factor varies,
    # and only 20 sprites are drawn (each is drawn at all 1,024 positions at once)
    sprites = rng.choice(ds.N_IMAGES // 1024, 20, replace=False)
    idx = (sprites[:, None] * 1024 + rng.choice(1024, (20, 15))).ravel()
    monkeypatch_module.setattr(ds, "load_dsprites", lambda root=None, **kw: ds.render_dsprites(np.sort(idx)))
    cfg = build_config(None, None, ["data.name=dsprites", "data.val=none", "model.kind=vae", "model.arch=mlp",
                                    "model.hidden=[64]", "model.latent_dim=4", "train.epochs=1",
                                    "train.batch_size=64", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "ds", evaluate_after=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_scores_are_written_and_equal_the_metric_on_the_codes(dsprites_run, capsys):
    from vaelab.evaluation.disentanglement import mig

    rc, out, err = run_main(capsys, "disentanglement", dsprites_run.run_dir, "--n", 200, "--metrics", "mig,factorvae")
    assert rc == 0, err
    r = json.loads((dsprites_run.run_dir / "disentanglement.json").read_text())
    assert r["n"] == 200 and 0 <= r["mig"] <= 1 and 0 <= r["factorvae"] <= 1
    import torch

    data = dsprites_run.split("train")
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:200].sort().values
    codes = dsprites_run.encode(data.batch(rows)).double().numpy()
    assert r["mig"] == pytest.approx(mig(codes, data.factors[rows].numpy())["mig"])
    # By name; colour never varies in dSprites: no gap, left out and said why (no null in the file).
    assert list(r["mig_per_factor"]) == ["shape", "scale", "orientation", "posX", "posY"]
    assert r["not_applicable"] == {"mig_per_factor.color": "the factor never varies in the scored images"}
    assert r["active_units"] == int((codes.var(0, ddof=1) > 0.01).sum())  # Burda et al.'s count, by hand


def test_refusals(dsprites_run, trained_run, capsys):
    assert "need ground-truth factors" in cli_error(capsys, "disentanglement", trained_run.run_dir)
    assert "unknown disentanglement score" in cli_error(capsys, "disentanglement", dsprites_run.run_dir,
                                                        "--metrics", "sap")


def test_n_larger_than_the_split_is_said(dsprites_run, capsys):
    rc, out, err = run_main(capsys, "disentanglement", dsprites_run.run_dir, "--n", 1000, "--metrics", "mig")
    assert rc == 0, err
    assert "note: the train split holds 300 images; scoring all of them, not 1,000" in out
    assert json.loads((dsprites_run.run_dir / "disentanglement.json").read_text())["n"] == 300


def test_a_factor_held_at_one_value_is_refused_not_null(tmp_path, monkeypatch, capsys):
    """The first images of dSprites (what data.limit used to keep) are squares of one scale:
    MIG and the FactorVAE score of shape and scale cannot be computed, and say so in one line."""
    from vaelab.api import train
    from vaelab.configure import build_config
    from vaelab.data import dsprites as ds

    idx = np.arange(0, 40 * 1024, 137)  # shape 0 (square), scale 0; every orientation and position varies
    monkeypatch.setattr(ds, "load_dsprites", lambda root=None, **kw: ds.render_dsprites(idx))
    cfg = build_config(None, None, ["data.name=dsprites", "data.val=none", "model.kind=vae", "model.hidden=[32]",
                                    "model.latent_dim=3", "train.epochs=1", "train.progress=false"])
    run = train(cfg, tmp_path / "squares", evaluate_after=False, log=lambda *_: None)
    for metric in ("mig", "factorvae", "dci"):
        line = cli_error(capsys, "disentanglement", run.run_dir, "--n", 100, "--metrics", metric)
        assert "factor shape takes one of its 3 values in all 100 samples, so no score of it can be computed" in line
    assert not (run.run_dir / "disentanglement.json").exists()


def test_scores_refuse_a_factor_absent_from_the_rows():
    from vaelab.errors import VaelabError
    from vaelab.evaluation.disentanglement import dci, factor_vae_score, mig

    rng = np.random.default_rng(0)
    factors = np.stack([np.zeros(60, int), rng.integers(0, 4, 60), np.zeros(60, int)], axis=1)
    codes = rng.normal(size=(60, 3))
    # without n_values a constant factor is left out (dSprites' colour): the gap is NaN
    assert np.isnan(mig(codes, factors)["gaps"][2])
    # told that factor 2 has 5 values in the data, its absence is an error, named
    for fn in (mig, dci, factor_vae_score):
        with pytest.raises(VaelabError, match="factor size takes one of its 5 values in all 60 samples"):
            fn(codes, factors, n_values=[1, 4, 5], names=["colour", "pos", "size"])
    # factor 0 has one value in the data too: left out as before
    assert mig(codes, factors[:, :2], n_values=[1, 4])["mig"] >= 0
