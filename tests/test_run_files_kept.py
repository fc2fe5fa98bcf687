"""No output option writes over a run's own training files (config.json, model.safetensors, the
checkpoint, history.csv, summary.json), nor over them through its record (OUT.json beside a CSV)."""

from __future__ import annotations

import pytest

from tests.conftest import cli_error, train_tiny
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
