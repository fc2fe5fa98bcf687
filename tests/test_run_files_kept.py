"""No output option writes over a run's own training files (config.json, model.safetensors, the
checkpoint, history.csv, summary.json), nor over them through its record (OUT.json beside a CSV)."""

from __future__ import annotations

import pytest

from tests.conftest import cli_error, run_main, train_tiny
from vaelab.rundir import RunDir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return RunDir(train_tiny(tmp_path_factory.mktemp("kept")))


def _files(rd: RunDir) -> dict[str, bytes]:
    return {name: (rd.path / name).read_bytes() for name in RunDir.PRIMARY if (rd.path / name).is_file()}


@pytest.mark.parametrize("args, said", [
    (["sample", "{run}", "--n", "4", "--npz", "{run}/model.safetensors"],
     "--npz {run}/model.safetensors is the run's own model.safetensors"),
    (["export", "{run}", "--what", "latents", "--out", "{run}/history.csv"],
     "--out {run}/history.csv is the run's own history.csv"),
    (["export", "{run}", "--what", "latents", "--out", "{run}/config"],
     "the record of --out {run}/config would be the run's own config.json"),
    (["report", "{run}", "--out", "{run}/summary.json"], "--out {run}/summary.json is the run's own summary.json"),
])
def test_an_output_path_that_is_a_run_s_own_file_is_refused_and_the_run_kept(tiny_run, capsys, args, said):
    before = _files(tiny_run)
    msg = cli_error(capsys, *[a.format(run=tiny_run) for a in args])
    assert said.format(run=tiny_run) in msg and "give another path" in msg
    assert _files(tiny_run) == before
    assert not (tiny_run.path / "config").exists()


def test_a_resume_with_nothing_to_train_is_refused_and_leaves_the_run_as_it_is(tmp_path, capsys):
    """Before, `train --resume R --set data.limit=100` on a finished run trained nothing yet wrote the
    new settings into config.json, and `--epochs 1` on a 2-epoch run made config.json say 1."""
    rd = RunDir(train_tiny(tmp_path, "train.epochs=2"))
    before = _files(rd)
    msg = cli_error(capsys, "train", "--resume", rd, "--set", "data.limit=10", "--lr", "0.5", "--no-eval")
    assert f"{rd} has trained 2 epochs and no epoch is left to train with data.limit, train.lr: the run is left" in msg
    assert "give --epochs above 2 to train more" in msg
    msg = cli_error(capsys, "train", "--resume", rd, "--epochs", "1", "--no-eval")
    assert "has trained 2 epochs and train.epochs is 1" in msg
    assert _files(rd) == before
    # As it is, a resume of a run that has done its epochs finishes it again (a run killed in its
    # evaluation), and its config stays the same.
    rc, out, err = run_main(capsys, "train", "--resume", rd, "--iw-samples", "0")
    assert rc == 0, err
    assert rd.config.read_bytes() == before["config.json"] and rd.eval.is_file()


def test_vaelab_fit_into_a_trained_run_is_refused_and_keeps_it(tmp_path):
    """vaelab.fit replaced a trained run silently (a latent-20 run became latent 4, its eval.json and
    samplers left behind); vaelab.train(..., overwrite=True) is the way to replace one."""
    import vaelab
    from vaelab.configure import build_config
    from vaelab.errors import VaelabError

    rd = RunDir(train_tiny(tmp_path))
    before = _files(rd)
    cfg = build_config(None, None, ["data.name=npz", f"data.path={tmp_path / 'shapes.npz'}", "data.val=none",
                                    "model.kind=vae", "model.arch=mlp", "model.hidden=8", "model.latent_dim=4",
                                    "train.epochs=1", "train.device=cpu", "train.progress=false"])
    with pytest.raises(VaelabError, match="already holds a trained run; resume=True continues it"):
        vaelab.fit(cfg, rd.path, log=lambda *_: None)
    assert _files(rd) == before


def test_an_anomaly_detector_refit_into_its_run_dir_replaces_its_run_and_what_was_derived(tmp_path, shapes_npz):
    import numpy as np

    from vaelab.anomaly.estimator import AnomalyDetector
    from vaelab.errors import VaelabError

    x = np.load(shapes_npz)["x"][:64]
    det = AnomalyDetector(epochs=1, hidden=[8], latent_dim=2, run_dir=tmp_path / "det", device="cpu").fit(x)
    rd = RunDir(tmp_path / "det")
    (rd.path / "eval.json").write_text('{"loss": 1.0, "checkpoint_id": "0123456789abcdef"}')
    det.set_params(latent_dim=3).fit(x)
    assert not rd.eval.exists() and det.run_.config.model.latent_dim == 3  # the old run's file is gone
    (rd.path / "notes.txt").write_text("mine")
    with pytest.raises(VaelabError, match="files vaelab did not write \\(notes.txt\\)"):
        det.fit(x)
    assert (rd.path / "notes.txt").read_text() == "mine" and rd.weights.is_file()


def test_info_and_report_leave_out_a_summary_of_an_earlier_training(tmp_path, capsys):
    """A resume killed after epoch 2 of a 1-epoch run left summary.json saying 1 epoch for epoch-2
    weights, shown by info and report as the run's."""
    import csv

    rd = RunDir(train_tiny(tmp_path))
    rc, out, _ = run_main(capsys, "info", rd)
    assert rc == 0 and "summary.json:" in out and "not shown" not in out
    with open(rd.history, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(rd.history, "a", newline="") as f:  # what the stopped resume wrote: its epoch 2
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow({**rows[-1], "epoch": 2})
    rc, out, _ = run_main(capsys, "info", rd)
    assert rc == 0 and ("summary.json: not shown, it is of the training that ended at epoch 1, and history.csv goes "
                        f"on to epoch 2 (a resumed training stopped part-way: `vaelab train --resume {rd}`") in out
    rc, out, err = run_main(capsys, "report", rd, "--no-generate")
    assert rc == 0, err
    page = (rd.path / "report.html").read_text()
    assert "summary.json left out: it is of the training that ended at epoch 1" in page
    assert "Training summary" not in page


def test_overwrite_takes_a_detect_folder_inside_the_run_as_the_run_s_own(tmp_path, capsys, shapes_npz):
    """`detect --out R/detect/scores.csv` made a later `train --overwrite R` refuse the run as holding
    "files vaelab did not write (detect)"."""
    rd = RunDir(train_tiny(tmp_path))
    rc, _, err = run_main(capsys, "detect", rd, "--input", shapes_npz, "--out", rd.path / "detect" / "scores.csv")
    assert rc == 0, err and (rd.path / "detect" / "scores_hist.png").is_file()
    rc, _, err = run_main(capsys, "train", "--data", "npz", "--data-path", tmp_path / "shapes.npz", "--set",
                          "data.val=none", "--set", "model.kind=vae", "--set", "model.arch=mlp", "--set",
                          "model.hidden=8", "--latent-dim", "2", "--epochs", "1", "--device", "cpu", "--out", rd,
                          "--overwrite", "--no-eval")
    assert rc == 0, err
    assert not (rd.path / "detect").exists() and rd.weights.is_file()
