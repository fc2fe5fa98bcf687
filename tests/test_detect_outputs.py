"""What ``vaelab detect`` leaves beside its CSV, and where it refuses to write.

A detect that rewrites an earlier detect's CSV removes the companions that earlier one wrote
and this one does not (its anomaly maps), with one note; an --out that is (or whose record
would be) a run's own training file is refused in one line before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cli_error, make_shapes, run_main, train_tiny

from vaelab.rundir import ID_FIELD, RunDir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-epoch run, and two inputs of 6 and 4 images."""
    root = tmp_path_factory.mktemp("detect")
    run = train_tiny(root)
    x, _ = make_shapes(10, seed=3)
    np.savez(root / "a.npz", x=x[:6])
    np.savez(root / "b.npz", x=x[6:])
    return run, root / "a.npz", root / "b.npz"


def _detect(capsys, run, inp, out, *args) -> str:
    rc, stdout, err = run_main(capsys, "detect", run, "--input", inp, "--out", out, *args)
    assert rc == 0, stdout + err
    return stdout


def _notes(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("note:")]


def test_a_detect_without_maps_removes_the_maps_of_the_earlier_detect_at_its_path(tiny, capsys, tmp_path):
    run, a, b = tiny
    d = tmp_path / "d"
    out = d / "scores.csv"
    (d / "mine.txt").parent.mkdir()
    (d / "mine.txt").write_text("keep me")
    assert not _notes(_detect(capsys, run, a, out, "--maps"))
    assert np.load(d / "anomaly_maps.npy").shape == (6, 28, 28)
    stdout = _detect(capsys, run, b, out)
    assert _notes(stdout) == [(f"note: removed {d / 'anomaly_maps.npy'}, {d / 'anomaly_maps.png'}, left beside {out} "
                              "by the earlier detect that this one replaces (this one writes no maps; add --maps "
                              "for new ones)")]
    assert not (d / "anomaly_maps.npy").exists() and not (d / "anomaly_maps.png").exists()
    assert sorted(p.name for p in d.iterdir()) == ["mine.txt", "most_anomalous.png", "scores.csv", "scores_hist.png"]
    assert out.read_text().splitlines()[0] == "index,score,anomaly" and len(out.read_text().splitlines()) == 5
    assert (d / "mine.txt").read_text() == "keep me"
    # with --maps again: the maps are written anew, nothing to remove
    assert not _notes(_detect(capsys, run, a, out, "--maps"))
    assert np.load(d / "anomaly_maps.npy").shape == (6, 28, 28)


def test_maps_beside_a_new_csv_or_a_csv_detect_did_not_write_are_left_alone(tiny, capsys, tmp_path):
    run, a, b = tiny
    d = tmp_path / "d"
    _detect(capsys, run, a, d / "first.csv", "--maps")
    stdout = _detect(capsys, run, b, d / "second.csv")  # another CSV: not the earlier detect's path
    assert not _notes(stdout)
    assert np.load(d / "anomaly_maps.npy").shape == (6, 28, 28)
    (d / "user.csv").write_text("name,value\nx,1\n")  # a file detect did not write
    assert not _notes(_detect(capsys, run, b, d / "user.csv"))
    assert (d / "anomaly_maps.npy").is_file() and (d / "anomaly_maps.png").is_file()


def test_inside_a_run_the_maps_record_goes_with_the_maps(tmp_path, capsys, tiny):
    _, a, b = tiny
    run = train_tiny(tmp_path)
    out = run / "det" / "scores.csv"
    _detect(capsys, run, a, out, "--maps")
    record = run / "det" / "anomaly_maps.npy.json"
    assert json.loads(record.read_text())[ID_FIELD] == RunDir(run).checkpoint_id()
    stdout = _detect(capsys, run, b, out)
    assert _notes(stdout) == [(f"note: removed {run / 'det' / 'anomaly_maps.npy'}, {run / 'det' / 'anomaly_maps.png'}, "
                              f"{record}, left beside {out} by the earlier detect that this one replaces (this one "
                              "writes no maps; add --maps for new ones)")]
    assert not record.exists()
    assert json.loads((run / "det" / "scores.csv.json").read_text()) == {
        "file": "scores.csv", ID_FIELD: RunDir(run).checkpoint_id()}


@pytest.mark.parametrize("name", ["history.csv", "summary.json", "config.json", "model.safetensors"])
def test_detect_refuses_to_write_over_a_run_s_own_files(tmp_path, capsys, tiny, name):
    _, a, _ = tiny
    run = train_tiny(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    target = run / name
    msg = cli_error(capsys, "detect", run, "--input", a, "--out", target)
    assert msg == (f"vaelab: error: --out {target} is the run's own {name}, which its training wrote; writing there "
                   "would lose the run: give another path")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing written beside it
    # refused before any work: a missing input is not even read
    assert "is the run's own" in cli_error(capsys, "detect", run, "--input", tmp_path / "nope.npz", "--out", target)


def test_detect_refuses_an_out_whose_record_would_be_a_run_s_own_file(tmp_path, capsys, tiny):
    _, a, _ = tiny
    run = train_tiny(tmp_path)
    summary = (run / "summary.json").read_bytes()
    msg = cli_error(capsys, "detect", run, "--input", a, "--out", run / "summary")
    assert msg == (f"vaelab: error: the record of --out {run / 'summary'} would be the run's own summary.json, which "
                   "its training wrote; writing there would lose the run: give another path")
    assert (run / "summary.json").read_bytes() == summary and not (run / "summary").exists()


def test_detect_in_python_refuses_too(tmp_path, tiny):
    from vaelab.anomaly.scores import detect
    from vaelab.api import Run
    from vaelab.errors import ConfigError

    run_dir = train_tiny(tmp_path)
    history = (run_dir / "history.csv").read_text()
    with pytest.raises(ConfigError, match="is the run's own history.csv"):
        detect(Run.load(run_dir, device="cpu"), tiny[1], out=run_dir / "history.csv")
    assert (run_dir / "history.csv").read_text() == history
