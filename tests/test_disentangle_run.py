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
    from vaelab.config import build_config
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
