"""CLI: judge, sample, plot, eval-samples on small data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_line_error as one_line_error, run_main


@pytest.fixture
def judge_dir(shapes_judge):
    return shapes_judge[1]


def test_sample_every_sampler(trained_run, tmp_path, capsys):
    import torch

    run_dir = trained_run.run_dir
    for args in (["--sampler", "prior"], ["--sampler", "gmm", "--components", "2"],
                 ["--sampler", "class-gaussian", "--class", "1", "--scale", "0.5"],
                 ["--sampler", "class-gmm", "--class", "2", "--components", "2"]):
        out = tmp_path / f"{args[1]}.png"
        rc, stdout, err = run_main(capsys, "sample", run_dir, *args, "--n", 16, "--out", out, "--npz", tmp_path / "s.npz")
        assert rc == 0, err
        assert out.is_file()
        with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
            images, codes = f["images"], f["codes"]
        assert images.shape == (16, 1, 28, 28) and codes.shape == (16, 4)
        # the images are the decoder's pictures of the saved codes (uint8 rounding)
        decoded = trained_run.decode(torch.from_numpy(codes)).numpy()
        assert np.abs(images / 255.0 - decoded).max() <= 0.5 / 255 + 1e-6
    # the prior sampler draws N(0, I) with the seed: the same numpy codes as drawing them by hand
    run_main(capsys, "sample", run_dir, "--sampler", "prior", "--n", 16, "--seed", 3, "--out", tmp_path / "p.png",
             "--npz", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        expect = torch.randn((16, 4), generator=torch.Generator().manual_seed(3)).numpy()
        np.testing.assert_allclose(f["codes"], expect, rtol=1e-6)
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


def test_eval_samples_writes_its_json(trained_run, judge_dir, shapes_judge, tmp_path, capsys):
    """The numbers in samples_eval.json, recomputed here from the judge's own outputs."""
    import math

    import torch

    from vaelab.evaluation.metrics import frechet_distance
    from vaelab.latent.sampling import fitted_sampler

    judge = shapes_judge[0]
    rc, out, err = run_main(capsys, "eval-samples", trained_run.run_dir, "--sampler", "class-gaussian",
                            "--n", 64, "--judge", judge_dir, "--out", tmp_path / "ev")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    # the same samples, drawn by hand: 16 per class, class k with seed k
    s = fitted_sampler(trained_run, "class-gaussian")
    z = torch.cat([torch.from_numpy(s.sample(16, cls=c, seed=c)).float() for c in range(4)])
    asked = torch.arange(4).repeat_interleave(16)
    imgs = trained_run.decode(z)
    assert r["class_accuracy"] == pytest.approx(float((judge.predict(imgs) == asked).float().mean()))
    f_s = judge.features(imgs).double().numpy()
    test = trained_run.split("val").float()
    f_t = judge.features(test).double().numpy()
    fcd = frechet_distance(f_s.mean(0), np.cov(f_s, rowvar=False), f_t.mean(0), np.cov(f_t, rowvar=False))
    assert r["fcd"] == pytest.approx(fcd, rel=1e-6) and r["fcd"] > r["fcd_floor"] > 0
    assert set(r["nn_distance"]) == {"samples_to_train", "test_to_train", "n"}
    assert (tmp_path / "ev" / "figures" / "nearest_class-gaussian.png").is_file()
    rc, out, err = run_main(capsys, "eval-samples", trained_run.run_dir, "--sampler", "prior", "--n", 64,
                            "--judge", judge_dir, "--out", tmp_path / "ev2")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev2" / "samples_eval.json").read_text())
    hist = np.bincount(judge.predict(trained_run.sample_prior(64, seed=0)).numpy(), minlength=4)
    assert r["class_histogram"] == hist.tolist()
    p = hist[hist > 0] / 64
    assert r["class_entropy"] == pytest.approx(float(-(p * np.log2(p)).sum())) and r["class_entropy_max"] == 2.0
    assert math.isfinite(r["fcd"])
    bad = tmp_path / "badjudge"
    bad.mkdir()
    (bad / "judge.safetensors").write_bytes(b"not a safetensors file at all")
    (bad / "eval.json").write_text(json.dumps({"shape": [1, 28, 28], "classes": 4, "accuracy": 1.0}))
    assert "not a safetensors" in one_line_error(*run_main(capsys, "eval-samples", trained_run.run_dir,
                                                           "--judge", bad, "--n", 8))
