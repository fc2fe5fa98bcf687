"""CLI: judge, sample, plot, eval-samples on small data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_line_error as one_line_error, run_main


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory, shapes_npz):
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.evaluation.judge import save_judge, train_judge

    folder = tmp_path_factory.mktemp("judge")
    splits = load_data(DataConfig(name="npz", path=str(shapes_npz), val="0.25"))
    save_judge(train_judge(splits, "shapes", epochs=8, batch_size=32, log=lambda *_: None), folder)
    return folder


def test_sample_every_sampler(trained_run, tmp_path, capsys):
    run_dir = trained_run.run_dir
    for args in (["--sampler", "prior"], ["--sampler", "gmm", "--components", "2"],
                 ["--sampler", "class-gaussian", "--class", "1", "--scale", "0.5"],
                 ["--sampler", "class-gmm", "--class", "2", "--components", "2"]):
        out = tmp_path / f"{args[1]}.png"
        rc, stdout, err = run_main(capsys, "sample", run_dir, *args, "--n", 16, "--out", out, "--npz", tmp_path / "s.npz")
        assert rc == 0, err
        assert out.is_file()
        with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
            assert f["images"].shape == (16, 1, 28, 28) and f["codes"].shape == (16, 4)
    one_line_error(*run_main(capsys, "sample", run_dir, "--sampler", "class-gmm", "--n", 4))
    one_line_error(*run_main(capsys, "sample", run_dir, "--sampler", "flow", "--n", 4))
    one_line_error(*run_main(capsys, "sample", run_dir, "--sampler", "class-gaussian", "--class", "9"))


def test_plot_kinds_through_the_cli(trained_run, tmp_path, capsys):
    for kind in ("scatter", "pca", "traverse", "basis"):
        rc, out, err = run_main(capsys, "plot", trained_run.run_dir, "--kind", kind, "--out", tmp_path / f"{kind}.png")
        assert rc == 0, err
        assert (tmp_path / f"{kind}.png").is_file()
    one_line_error(*run_main(capsys, "plot", trained_run.run_dir, "--kind", "scatter", "--dims", "x,y"))
    rc, out, err = run_main(capsys, "plot", trained_run.run_dir, "--kind", "hexbin")
    assert rc == 2 and "Traceback" not in err  # click's own usage error


def test_eval_samples_writes_its_json(trained_run, judge_dir, tmp_path, capsys):
    rc, out, err = run_main(capsys, "eval-samples", trained_run.run_dir, "--sampler", "class-gaussian",
                            "--n", 64, "--judge", judge_dir, "--out", tmp_path / "ev")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    assert 0 <= r["class_accuracy"] <= 1 and r["fcd"] >= 0 and r["fcd_floor"] >= 0
    assert set(r["nn_distance"]) == {"samples_to_train", "test_to_train", "n"}
    assert (tmp_path / "ev" / "figures" / "nearest_class-gaussian.png").is_file()
    rc, out, err = run_main(capsys, "eval-samples", trained_run.run_dir, "--sampler", "prior", "--n", 64,
                            "--judge", judge_dir, "--out", tmp_path / "ev2")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev2" / "samples_eval.json").read_text())
    assert sum(r["class_histogram"]) == 64 and 0 <= r["class_entropy"] <= r["class_entropy_max"]
    bad = tmp_path / "badjudge"
    bad.mkdir()
    (bad / "judge.safetensors").write_bytes(b"not a safetensors file at all")
    (bad / "eval.json").write_text(json.dumps({"shape": [1, 28, 28], "classes": 4, "accuracy": 1.0}))
    assert "not a safetensors" in one_line_error(*run_main(capsys, "eval-samples", trained_run.run_dir,
                                                           "--judge", bad, "--n", 8))
