"""nll_iw from a subset of the images (issue 21's cheaper evaluation): the difference estimate
of the whole split's mean, checked against a direct computation and by Monte Carlo over
seeds; the subset is seeded; the CLI's --iw-images and its refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, run_main

from vaelab.data.sets import ImageSet
from vaelab.errors import ConfigError
from vaelab.evaluation.evaluate import evaluate, iw_log_likelihood, iw_subset


@pytest.fixture(scope="module")
def model_and_data(trained_run):
    data = trained_run.split(trained_run.default_split())
    # 200 images: the test split of the shapes repeated, each copy a fresh binarisation
    x = data.x.repeat(4, 1, 1, 1)[:200]
    g = torch.Generator().manual_seed(0)
    x = ((torch.rand(x.shape, generator=g) * 255) < x.float()).to(torch.uint8) * 255
    return trained_run.model, ImageSet(x=x, y=None, name="shapes")


def test_the_subset_is_seeded_and_has_its_size():
    a, b, c = iw_subset(100, 30, 1), iw_subset(100, 30, 1), iw_subset(100, 30, 2)
    assert a.dtype == torch.bool and int(a.sum()) == 30
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert iw_subset(100, None, 1) is None and iw_subset(100, 100, 1) is None and iw_subset(100, 500, 1) is None
    with pytest.raises(ConfigError, match="2 or more"):
        iw_subset(100, 1, 0)


def test_as_many_images_as_there_are_is_the_exact_evaluation(model_and_data):
    model, data = model_and_data
    full = evaluate(model, data, iw_samples=4, seed=3, batch_size=64)
    same = evaluate(model, data, iw_samples=4, seed=3, batch_size=64, iw_images=len(data))
    assert same == full
    assert "nll_iw_stderr" not in full and "nll_iw_images" not in full


def test_the_estimate_is_the_full_loss_plus_the_subsets_mean_gap(model_and_data):
    """Direct computation: one batch holding every image, so the generator's draws are
    known: the loss pass, then the importance samples of the chosen rows."""
    model, data = model_and_data
    n, m, k, seed = len(data), 50, 4, 7
    got = evaluate(model, data, iw_samples=k, seed=seed, batch_size=n, iw_images=m)
    x = data.batch(slice(None))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        loss = model(x, None, generator=gen, dataset_size=n)["loss"].double()
        pick = iw_subset(n, m, seed)
        nll = model.nll_offset() - iw_log_likelihood(model, x[pick], None, k, gen)
    gap = nll - loss[pick]
    assert got["nll_iw_images"] == m
    assert got["nll_iw"] == pytest.approx(float(loss.mean() + gap.mean()), rel=1e-9)
    assert got["nll_iw_stderr"] == pytest.approx(float(gap.std()) / math.sqrt(m) * math.sqrt(1 - m / n), rel=1e-9)
    assert got["loss"] == pytest.approx(float(loss.mean()), rel=1e-6)


def test_the_estimate_is_unbiased_and_its_stderr_is_its_spread(model_and_data):
    """Monte Carlo over 40 seeds: the subset estimates average to the full evaluation's
    nll_iw (itself averaged over the same seeds), and their spread matches the stated
    standard error (which also carries the importance samples' noise)."""
    model, data = model_and_data
    seeds = range(40)
    full = torch.tensor([evaluate(model, data, iw_samples=4, seed=s, batch_size=100)["nll_iw"] for s in seeds])
    sub = [evaluate(model, data, iw_samples=4, seed=s, batch_size=100, iw_images=40) for s in seeds]
    est = torch.tensor([r["nll_iw"] for r in sub])
    stderr = torch.tensor([r["nll_iw_stderr"] for r in sub]).mean()
    spread = (est - full).std()
    assert abs(float(est.mean() - full.mean())) < 4 * float(spread) / math.sqrt(len(seeds))
    assert 0.6 < float(spread / stderr) < 1.6, (float(spread), float(stderr))


def test_train_estimates_from_a_subset_and_eval_from_all(tmp_path, shapes_npz, capsys):
    run = tmp_path / "run"
    common = ["--set", "data.name=npz", "--set", f"data.path={shapes_npz}", "--set", "data.val=0.25",
              "--set", "model.kind=vae", "--set", "model.arch=mlp", "--set", "model.hidden=[16]",
              "--set", "model.latent_dim=2", "--epochs", "1", "--set", "train.progress=false"]
    rc, out, err = run_main(capsys, "train", "--out", run, "--iw-images", "20", *common)
    assert rc == 0, out + err
    ev = json.loads((run / "eval.json").read_text())
    assert ev["nll_iw_images"] == 20 and ev["n"] > 20 and ev["nll_iw_stderr"] > 0
    assert "nll_iw_stderr" in out
    rc, out, err = run_main(capsys, "eval", run, "--iw-samples", "10")
    assert rc == 0, out + err
    ev = json.loads((run / "eval.json").read_text())
    assert "nll_iw_images" not in ev and "nll_iw_stderr" not in ev and math.isfinite(ev["nll_iw"])


@pytest.mark.parametrize("value", ["1", "0", "-5", "many"])
def test_iw_images_below_two_or_not_a_number_is_refused_in_one_line(trained_run, value, capsys):
    rc, out, err = run_main(capsys, "eval", trained_run.run_dir, "--iw-images", value)
    line = assert_one_line_error(rc, out, err)
    assert "--iw-images" in line and "2 or more" in line


def test_iw_images_with_no_eval_is_refused(tmp_path, shapes_npz, capsys):
    rc, out, err = run_main(capsys, "train", "--out", tmp_path / "r", "--no-eval", "--iw-images", "50",
                            "--set", "data.name=npz", "--set", f"data.path={shapes_npz}")
    assert "--no-eval" in assert_one_line_error(rc, out, err)
    assert not (tmp_path / "r").exists()


def test_iw_images_where_no_nll_iw_is_estimated_is_refused(tmp_path, shapes_npz, capsys, trained_run):
    """No option ignored: --iw-images on a model without a density, or beside --iw-samples 0."""
    data = ["--set", "data.name=npz", "--set", f"data.path={shapes_npz}"]
    rc, out, err = run_main(capsys, "train", "--preset", "mlp-ae", "--out", tmp_path / "ae", "--iw-images", "50",
                            *data)
    assert "--iw-images sets nll_iw, and the ae model has no density" in assert_one_line_error(rc, out, err)
    rc, out, err = run_main(capsys, "train", "--preset", "mlp-vae", "--out", tmp_path / "v", "--iw-images", "50",
                            "--iw-samples", "0", *data)
    assert "--iw-samples 0 skips nll_iw" in assert_one_line_error(rc, out, err)
    assert not (tmp_path / "ae").exists() and not (tmp_path / "v").exists()
    rc, out, err = run_main(capsys, "eval", trained_run.run_dir, "--iw-images", "50", "--iw-samples", "0")
    assert "--iw-samples 0 skips nll_iw" in assert_one_line_error(rc, out, err)
