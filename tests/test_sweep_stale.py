"""A re-run sweep reports the numbers of each trial's current weights, never stale ones.

trial.json records the checkpoint id of the weights its numbers describe; a trial trained on
after the sweep (``vaelab train --resume``) is read again from its eval.json, or evaluated again
when that eval.json belongs to other weights, with a note naming the trial."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
from conftest import run_main

from vaelab.rundir import ID_FIELD, RunDir
from vaelab.sweep import runner as sw


def _spec(shapes_npz) -> sw.SweepSpec:
    base = ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vae", "model.arch=mlp",
            "model.hidden=16", "train.batch_size=64", "train.device=cpu"]
    return sw.SweepSpec(trials=sw.expand_grid({"model.latent_dim": [2, 3]}), base=base, epochs=1)


def _results(out) -> dict[str, dict]:
    with open(out / "results.csv") as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


@pytest.fixture
def sweep(tmp_path, shapes_npz):
    spec, out = _spec(shapes_npz), tmp_path / "sw"
    sw.run_sweep(spec, out, log=lambda *_: None)
    return spec, out


def test_a_finished_trial_records_the_checkpoint_id_of_its_weights(sweep):
    spec, out = sweep
    for t in spec.trials:
        rd = RunDir(out / t.dir)
        saved = json.loads((rd.path / "trial.json").read_text())
        assert saved[ID_FIELD] == rd.checkpoint_id() == json.loads(rd.eval.read_text())[ID_FIELD]
        assert saved["eval_split"] == "val"


def test_a_trial_trained_on_is_reported_with_its_new_numbers(sweep, capsys):
    spec, out = sweep
    trained_on, other = spec.trials
    old = _results(out)
    first_id = json.loads((out / trained_on.dir / "trial.json").read_text())[ID_FIELD]
    rc, _, err = run_main(capsys, "train", "--resume", out / trained_on.dir, "--epochs", 3)
    assert rc == 0, err
    ev = json.loads(RunDir(out / trained_on.dir).eval.read_text())
    assert float(old[trained_on.id]["loss"]) != pytest.approx(ev["loss"], rel=1e-5)  # the weights changed

    other_eval = RunDir(out / other.dir).eval.stat().st_mtime_ns
    lines: list[str] = []
    rows = sw.run_sweep(spec, out, log=lines.append)
    new = _results(out)
    for m in ("loss", "mse", "ssim", "psnr"):  # the numbers follow the weights
        assert float(new[trained_on.id][m]) == pytest.approx(ev[m], rel=1e-5)
    assert rows[0]["loss"] == ev["loss"]
    assert new[other.id] == old[other.id]  # the other trial is untouched, and not evaluated again
    assert RunDir(out / other.dir).eval.stat().st_mtime_ns == other_eval
    notes = [line for line in lines if line.startswith("note:")]
    assert notes == [(f"note: trial {trained_on.id}: its weights changed since the sweep recorded it (checkpoint "
                     f"{first_id}, now {ev[ID_FIELD]}); numbers read again from its eval.json (of "
                     f"the current weights): loss {ev['loss']:.4g}, ssim {ev['ssim']:.4g} "
                     f"(was loss {float(old[trained_on.id]['loss']):.4g})")]
    assert json.loads((out / trained_on.dir / "trial.json").read_text())[ID_FIELD] == ev[ID_FIELD]
    assert f"| {ev['loss']:.2f} |" in (out / "results.md").read_text()
    # the next re-run has nothing to refresh
    lines.clear()
    sw.run_sweep(spec, out, log=lines.append)
    assert not [line for line in lines if line.startswith("note:")]
    assert _results(out) == new


def test_a_trial_whose_eval_json_is_of_other_weights_is_evaluated_again(sweep, capsys):
    spec, out = sweep
    t = spec.trials[0]
    rd = RunDir(out / t.dir)
    rc, _, err = run_main(capsys, "train", "--resume", rd.path, "--epochs", 2, "--no-eval")
    assert rc == 0, err
    assert rd.stale(rd.eval) is not None  # eval.json still holds the numbers of the old weights
    stale_loss = json.loads(rd.eval.read_text())["loss"]
    lines: list[str] = []
    sw.run_sweep(spec, out, log=lines.append)
    ev = json.loads(rd.eval.read_text())
    assert ev[ID_FIELD] == rd.checkpoint_id() and ev["split"] == "val"  # evaluated again, as the sweep does
    assert ev["loss"] != pytest.approx(stale_loss, rel=1e-5)
    assert float(_results(out)[t.id]["loss"]) == pytest.approx(ev["loss"], rel=1e-5)
    note = next(line for line in lines if line.startswith(f"note: trial {t.id}: "))
    assert "evaluated again (eval.json did not belong to the current weights)" in note
    assert rd.stale(rd.figure("reconstructions")) is None  # its figures show the current weights too


def test_a_trial_json_without_an_id_is_checked_once_and_then_records_one(sweep):
    spec, out = sweep
    t = spec.trials[1]
    path = out / t.dir / "trial.json"
    saved = json.loads(path.read_text())
    del saved[ID_FIELD]
    saved["loss"] = 1e9  # an old trial.json whose numbers are not those of the weights
    path.write_text(json.dumps(saved))
    lines: list[str] = []
    sw.run_sweep(spec, out, log=lines.append)
    ev = json.loads(RunDir(out / t.dir).eval.read_text())
    assert float(_results(out)[t.id]["loss"]) == pytest.approx(ev["loss"], rel=1e-5)
    assert json.loads(path.read_text())[ID_FIELD] == RunDir(out / t.dir).checkpoint_id()
    assert any(line.startswith(f"note: trial {t.id}: its trial.json records no checkpoint id (made by an older "
                               "vaelab); numbers read again from its eval.json") for line in lines), lines


def test_a_trial_whose_weights_cannot_be_read_is_failed_not_shown_with_old_numbers(sweep):
    spec, out = sweep
    t = spec.trials[0]
    weights = RunDir(out / t.dir).weights
    weights.write_bytes(b"not safetensors")
    os.utime(weights)
    lines: list[str] = []
    rows = sw.run_sweep(spec, out, log=lines.append)
    row = _results(out)[t.id]
    assert row["status"] == "failed" and row["loss"] == ""
    assert row["error"].startswith("its weights changed since the sweep recorded it (checkpoint ")
    assert "evaluating it failed: " in row["error"]
    assert row["error"].endswith(f"; to train this trial again, remove {out / t.dir} and re-run the sweep")
    assert rows[0]["status"] == "failed"
    assert any(line.startswith(f"note: trial {t.id}: its weights changed") for line in lines)
    shutil.rmtree(out / t.dir)  # as the error says: the trial is trained again
    retry = sw.run_sweep(spec, out, log=lambda *_: None)[0]
    assert retry["status"] == "done", retry
    ev = json.loads(RunDir(out / t.dir).eval.read_text())
    assert float(_results(out)[t.id]["loss"]) == pytest.approx(ev["loss"], rel=1e-5)
