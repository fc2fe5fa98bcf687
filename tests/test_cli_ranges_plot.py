"""Out-of-range numbers and clashing outputs of plot, sample, eval-samples and disentanglement:
each refused in one line (exit code 2) naming the option, its range and why, before anything is
written; the values at the ends of each range are accepted and give their picture."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from conftest import cli_error, one_line, run_main

from vaelab.errors import CheckpointError, ConfigError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the shared VAE run (latent 4; 192 training, 64 validation shapes, classes 0-3)."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, dst)
    shutil.rmtree(dst / "samplers", ignore_errors=True)  # what other tests fit into the shared run: none here
    return dst


# ---------------------------------------------------------------------------------------- plot
SPLIT = "val split, which holds 64"
PLOT_REFUSED = [
    (["--kind", "scatter", "--dims", "0"], "--dims needs two latent dimensions, as 0,1, got 1 ('0')"),
    (["--kind", "scatter", "--dims", "0,0"], ("--dims 0,0 out of range: give two different dimensions of the 4-D "
                                             "latent space, 0..3")),
    (["--kind", "scatter", "--dims", "-1,0"], "--dims -1,0 out of range"),
    (["--kind", "scatter", "--dims", "0,4"], "--dims 0,4 out of range"),
    (["--kind", "scatter", "--dims", "0,1,2"], "--dims needs two latent dimensions"),
    (["--kind", "scatter", "--n", "0"], "--n must be a whole number at least 1, got 0"),
    (["--kind", "tsne", "--n", "1"], "--n must be a whole number at least 2 (t-SNE needs two codes), got 1"),
    (["--kind", "pca", "--n", "1"], "--n must be a whole number at least 2 (a covariance needs two codes)"),
    (["--kind", "recon", "--n", "1001"], ("--n must be a whole number from 1 to 1,000 (the figure has two rows per "
                                         "16 images), got 1001")),
    (["--kind", "traverse", "--index", "99999"], (f"--index must be a whole number from 0 to 63 (an image of the {SPLIT})"
                                                 ", got 99999")),
    (["--kind", "traverse", "--index", "-1"], "--index must be a whole number from 0 to 63"),
    (["--kind", "traverse", "--steps", "100000"], ("--steps must be a whole number from 2 to 100 (images per row, both "
                                                  "ends included: more are too small to tell apart, and a 2-D latent's "
                                                  "grid decodes steps x steps), got 100000")),
    (["--kind", "traverse", "--steps", "0"], "--steps must be a whole number from 2 to 100"),
    (["--kind", "traverse", "--steps", "1"], "--steps must be a whole number from 2 to 100"),
    (["--kind", "interpolate", "--steps", "-2"], "--steps must be a whole number from 2 to 100 (images per path"),
    (["--kind", "traverse", "--radius", "-1"], ("--radius must be a positive finite number (codes run from -radius "
                                               "to +radius), got -1.0")),
    (["--kind", "traverse", "--radius", "0"], "--radius must be a positive finite number"),
    (["--kind", "traverse", "--radius", "nan"], "--radius must be a positive finite number"),
    (["--kind", "traverse", "--radius", "inf"], "--radius must be a positive finite number"),
    (["--kind", "basis", "--scale", "-3"], ("--scale must be a positive finite number (the length of the decoded basis "
                                           "vectors), got -3.0")),
    (["--kind", "basis", "--scale", "0"], "--scale must be a positive finite number"),
    (["--kind", "interpolate", "--between", "images", "--from", "-1"],
     f"--from must be a whole number from 0 to 63 (an image of the {SPLIT}), got -1"),
    (["--kind", "interpolate", "--between", "images", "--to", "64"], "--to must be a whole number from 0 to 63"),
    (["--kind", "interpolate", "--between", "images", "--from", "5", "--to", "5"],
     "--from and --to are the same (5): the path would not move; give two different ones"),
    (["--kind", "interpolate", "--from", "2", "--to", "2"], "--from and --to are the same (2)"),
    (["--kind", "interpolate", "--from", "7"], ("--from: class 7 has no images in the val split; it has classes "
                                               "0, 1, 2, 3")),
    (["--kind", "pca", "--pairs", "0-11"], "--pairs 0-11: class 11 is not one of this run's classes (0, 1, 2, 3)"),
    (["--kind", "pca", "--pairs", "1-1"], "--pairs: 1-1 is not a pair of two different classes, as 4-9"),
    (["--kind", "pca", "--pairs", "0-1-2"], "--pairs: 0-1-2 is not a pair"),
    (["--kind", "pca", "--pairs", ",".join(["0-1"] * 11)], ("--pairs needs 1 to 10 class pairs (one 5-inch panel "
                                                           "each), got 11")),
    (["--kind", "tsne", "--seed", "-1"], "--seed must be a whole number from 0 to 4,294,967,295"),
    (["--kind", "scatter", "--out", "{tmp}/x.txt"], ("--out {tmp}/x.txt: matplotlib cannot write a figure as .txt; "
                                                    "give the file one of the extensions ")),
]


@pytest.mark.parametrize(("args", "message"), PLOT_REFUSED, ids=[" ".join(a)[:40] for a, _ in PLOT_REFUSED])
def test_plot_refuses_out_of_range_numbers_in_one_line(trained_run, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "p.png"]
    line = cli_error(capsys, "plot", trained_run.run_dir, *args, *out)
    assert message.replace("{tmp}", str(tmp_path)) in line, line
    assert not list(tmp_path.iterdir())  # nothing written


def test_plot_styles_n_is_a_row_per_image(trained_cvae, tmp_path, capsys):
    for n in ("-4", "0", "101"):
        line = cli_error(capsys, "plot", trained_cvae.run_dir, "--kind", "styles", "--n", n, "--out", tmp_path / "s.png")
        assert f"--n must be a whole number from 1 to 100 (the figure has a row per image), got {n}" in line
    rc, _out, err = run_main(capsys, "plot", trained_cvae.run_dir, "--kind", "styles", "--n", 1, "--out",
                            tmp_path / "s.png")
    assert rc == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_plot_accepts_the_ends_of_each_range(trained_run, tmp_path, capsys):
    from PIL import Image

    cases = {
        "steps2": ["--kind", "interpolate", "--between", "images", "--from", 0, "--to", 63, "--steps", 2],
        "steps100": ["--kind", "interpolate", "--steps", 100, "--from", 0, "--to", 3],
        "index": ["--kind", "traverse", "--index", 63, "--steps", 2, "--radius", 0.5],
        "n1": ["--kind", "scatter", "--n", 1, "--dims", "3,2"],
        "pairs": ["--kind", "pca", "--pairs", "0-3,1-2", "--n", 64],
        "basis": ["--kind", "basis", "--scale", 0.5],
        "tsne": ["--kind", "tsne", "--n", 2, "--seed", 2**32 - 1],
    }
    for name, args in cases.items():
        out = tmp_path / f"{name}.png"
        rc, stdout, err = run_main(capsys, "plot", trained_run.run_dir, *args, "--out", out)
        assert rc == 0, (name, err)
        assert stdout.strip().endswith(f"wrote {out}") and out.read_bytes()[:8] == PNG
        with Image.open(out) as im:
            assert im.size[0] > 300 and im.size[1] > 50
    # a picture of the options asked for: a path of 100 images is one long row, of 2 a short one
    with Image.open(tmp_path / "steps100.png") as im100, Image.open(tmp_path / "steps2.png") as im2:
        assert im100.size[0] / im100.size[1] > 10 and im2.size[0] / im2.size[1] < 3
    # a format matplotlib writes, by its extension
    rc, _, err = run_main(capsys, "plot", trained_run.run_dir, "--kind", "basis", "--out", tmp_path / "b.pdf")
    assert rc == 0, err
    assert (tmp_path / "b.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_in_python_checks_the_same_ranges(trained_run, tmp_path):
    from vaelab.latent.pictures import check_options, plot

    with pytest.raises(ConfigError) as e:
        plot(trained_run, "traverse", tmp_path / "t.png", steps=0)
    assert one_line(e).startswith("--steps must be a whole number from 2 to 100")
    with pytest.raises(ConfigError) as e:
        plot(trained_run, "basis", tmp_path / "b.txt")
    assert "matplotlib cannot write a figure as .txt" in one_line(e)
    assert not list(tmp_path.iterdir())
    assert check_options(trained_run, "scatter", dims="1,3", n=5) == {"dims": (1, 3), "n": 5}
    assert check_options(trained_run, "pca", pairs="0-1,2-3")["pairs"] == [(0, 1), (2, 3)]


def test_save_figure_refuses_an_unknown_format_and_a_figure_too_large(tmp_path):
    from vaelab import plots

    plt = plots._plt()
    fig, _ = plt.subplots(figsize=(3, 3), dpi=100)
    with pytest.raises(ConfigError) as e:
        plots.save_figure(fig, tmp_path / "f.docx")
    msg = one_line(e)
    assert msg.startswith(f"{tmp_path / 'f.docx'}: matplotlib cannot write a figure as .docx; give the file one of")
    assert ".png" in msg and ".pdf" in msg and ".svg" in msg
    fig, _ = plt.subplots(figsize=(700, 2), dpi=100)
    with pytest.raises(ConfigError) as e:
        plots.save_figure(fig, tmp_path / "wide.png")
    assert one_line(e) == (f"{tmp_path / 'wide.png'}: the figure would be 70,000 x 200 pixels, more than matplotlib "
                           "draws (65,536 a side); ask for fewer images")
    assert not list(tmp_path.iterdir()) and not plt.get_fignums()  # nothing written, the figures closed
    assert plots.check_figure_path(tmp_path / "a.SVG") == "svg" and plots.check_figure_path(tmp_path / "a") == "png"


# -------------------------------------------------------------------------------------- sample
def test_sample_refuses_npz_over_its_png(run_copy, tmp_path, capsys):
    same = tmp_path / "same.png"
    same.write_bytes(b"keep me")
    line = cli_error(capsys, "sample", run_copy, "--n", 4, "--out", same, "--npz", tmp_path / "." / "same.png")
    assert line == (f"vaelab: error: --npz {tmp_path / 'same.png'} is the same file as the PNG grid (--out {same}): "
                    "the one would overwrite the other; give them different paths")
    assert same.read_bytes() == b"keep me"  # nothing written
    grid = run_copy / "figures" / "samples_prior.png"
    grid.parent.mkdir(exist_ok=True)
    grid.write_bytes(before := b"an earlier grid")
    line = cli_error(capsys, "sample", run_copy, "--n", 4, "--npz", run_copy / "figures" / ".." / "figures" /
                     "samples_prior.png")
    assert "is the same file as the PNG grid (the default --out, " in line
    assert grid.read_bytes() == before
    # different paths: both written, the npz holding the images the grid shows
    rc, _out, err = run_main(capsys, "sample", run_copy, "--n", 4, "--out", same, "--npz", tmp_path / "same.npz")
    assert rc == 0, err
    assert same.read_bytes()[:8] == PNG
    with np.load(tmp_path / "same.npz") as f:
        assert f["images"].shape == (4, 1, 28, 28)


def test_sample_refuses_an_extension_matplotlib_cannot_write_before_any_work(run_copy, tmp_path, capsys):
    line = cli_error(capsys, "sample", run_copy, "--sampler", "gmm", "--components", 2, "--n", 4,
                     "--out", tmp_path / "x.txt")
    assert line.startswith(f"vaelab: error: --out {tmp_path / 'x.txt'}: matplotlib cannot write a figure as .txt; "
                           "give the file one of the extensions ")
    assert ".png" in line and ".jpg" in line
    assert not (tmp_path / "x.txt").exists() and not (run_copy / "samplers" / "gmm.json").exists()  # not fit
    rc, _, err = run_main(capsys, "sample", run_copy, "--n", 4, "--out", tmp_path / "x.svg")
    assert rc == 0, err
    assert b"<svg" in (tmp_path / "x.svg").read_bytes()[:500]


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "0", "-1"])
def test_sample_refuses_a_scale_that_is_not_positive_and_finite(run_copy, tmp_path, capsys, scale):
    line = cli_error(capsys, "sample", run_copy, "--sampler", "gmm", "--components", 2, "--scale", scale,
                     "--out", tmp_path / "s.png")
    assert line == (f"vaelab: error: --scale must be a positive finite number (it multiplies the sampler's "
                    f"covariance; below 1 trades variety for fidelity), got {float(scale)}")
    assert not (run_copy / "samplers" / "gmm.json").exists() and not (tmp_path / "s.png").exists()
    assert "--scale must be a positive finite number" in cli_error(
        capsys, "eval-samples", run_copy, "--sampler", "gmm", "--scale", scale, "--judge", tmp_path / "nojudge")
    assert not (tmp_path / "nojudge").exists()  # refused before the judge


def test_sample_n_has_an_upper_bound_from_memory(run_copy, tmp_path, capsys, monkeypatch):
    from vaelab.cli import generate

    line = cli_error(capsys, "sample", run_copy, "--n", 100_000_000, "--out", tmp_path / "s.png")
    assert line == ("vaelab: error: --n 100,000,000 is too many: sample holds the images in memory at once, at most "
                    "1 GiB of them as float32, which is 342,392 of this run's 1x28x28 images (these would take "
                    "292.1 GiB); use --n 342,392 or fewer")
    assert 342_392 == 2**30 // (28 * 28 * 4)
    line = cli_error(capsys, "eval-samples", run_copy, "--n", 100_000_000, "--judge", tmp_path / "nojudge")
    assert "--n 100,000,000 is too many: eval-samples holds the images in memory at once, at most 4 GiB" in line
    assert "use --n 1,369,568 or fewer" in line and not (tmp_path / "nojudge").exists()
    # the bound itself is accepted: a budget of 6 images here
    monkeypatch.setitem(generate.SAMPLE_MEMORY, "sample", 6 * 28 * 28 * 4)
    assert "use --n 6 or fewer" in cli_error(capsys, "sample", run_copy, "--n", 7, "--out", tmp_path / "s.png")
    rc, _, err = run_main(capsys, "sample", run_copy, "--n", 6, "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz")
    assert rc == 0, err
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (6, 1, 28, 28)


def test_sample_seed_range(run_copy, tmp_path, capsys):
    for seed in (-1, 2**32):
        assert f"--seed must be a whole number from 0 to 4,294,967,295 (numpy's and scikit-learn's seeds), got " \
               f"{seed}" in cli_error(capsys, "sample", run_copy, "--sampler", "gmm", "--components", 2,
                                      "--seed", seed, "--out", tmp_path / "s.png")
    rc, _, err = run_main(capsys, "sample", run_copy, "--sampler", "gmm", "--components", 2, "--seed", 2**32 - 1,
                          "--n", 4, "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert json.loads((run_copy / "samplers" / "gmm.json").read_text())["seed"] == 2**32 - 1


# ----------------------------------------------------------------------------- GMM components
def test_gmm_refuses_more_components_than_codes(run_copy, tmp_path, capsys):
    line = cli_error(capsys, "sample", run_copy, "--sampler", "gmm", "--components", 100000, "--out",
                     tmp_path / "s.png")
    assert line == ("vaelab: error: sampler gmm: components (--components) 100,000 is more than the 192 training "
                    "codes it is fit on (a mixture has at most one component per code); use 192 or fewer")
    assert not (run_copy / "samplers" / "gmm.json").exists() and not (tmp_path / "s.png").exists()
    line = cli_error(capsys, "sample", run_copy, "--sampler", "class-gmm", "--class", 1, "--components", 100,
                     "--out", tmp_path / "s.png")
    assert "sampler class-gmm: components (--components) 100 is more than the " in line
    assert "training codes of class " in line and ", its smallest class, it is fit on" in line
    assert not (run_copy / "samplers" / "class-gmm.json").exists()


def test_gmm_fits_exactly_the_components_it_records(tmp_path):
    from vaelab.latent.sampling import ClassGMMSampler, GMMSampler

    rng = np.random.default_rng(0)
    z = rng.standard_normal((12, 2))
    y = np.array([0] * 9 + [1] * 3)
    g = GMMSampler(components=12, covariance="diag").fit(z, seed=0)
    assert g.arrays["weights"].shape == (12,) and g.params["components"] == 12
    with pytest.raises(ConfigError) as e:
        GMMSampler(components=13).fit(z, seed=0)
    assert "13 is more than the 12 training codes" in one_line(e)
    cg = ClassGMMSampler(components=3, covariance="spherical").fit(z, y, seed=0)
    assert cg.arrays["weights"].shape == (2, 3) and (cg.arrays["weights"] > 0).all()
    with pytest.raises(ConfigError) as e:
        ClassGMMSampler(components=4).fit(z, y, seed=0)
    assert one_line(e) == ("sampler class-gmm: components (--components) 4 is more than the 3 training codes of "
                           "class 1, its smallest class, it is fit on (a mixture has at most one component per "
                           "code); use 3 or fewer")
    # a file saved before the refusal, recording more components than it holds, does not load
    g.save(tmp_path)
    meta = json.loads((tmp_path / "gmm.json").read_text())
    assert GMMSampler.load(tmp_path, "gmm").arrays["weights"].shape == (12,)
    meta["params"]["components"] = 100000
    (tmp_path / "gmm.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        GMMSampler.load(tmp_path, "gmm")
    assert "it holds 12 components, not the 100000 its settings record" in one_line(e)


# ---------------------------------------------------------------------------- disentanglement
@pytest.mark.parametrize("metrics", ["", " , ,"])
def test_disentanglement_refuses_an_empty_metric_list(tmp_path, capsys, metrics):
    saved = tmp_path / "disentanglement.json"
    saved.write_text('{"mig": 0.25}')
    line = cli_error(capsys, "disentanglement", tmp_path, "--metrics", metrics, "--n", 200)
    assert line == (f"vaelab: error: --metrics {metrics!r} names no score; give one or more of mig, dci, factorvae, "
                    "comma-separated")
    assert saved.read_text() == '{"mig": 0.25}'  # the saved scores are kept


# ------------------------------------------------------------------------------- eval-samples
def test_eval_samples_prints_a_zero_entropy_without_a_sign(trained_run, shapes_judge, tmp_path, capsys, monkeypatch):
    import torch

    from vaelab.evaluation.judge import Judge

    monkeypatch.setattr(Judge, "predict", lambda self, x: torch.zeros(len(x), dtype=torch.long))
    rc, out, err = run_main(capsys, "eval-samples", trained_run.run_dir, "--n", 16, "--judge", shapes_judge[1],
                            "--out", tmp_path / "ev")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    assert r["class_histogram"] == [16, 0, 0, 0]
    assert r["class_entropy"] == 0.0 and math.copysign(1.0, r["class_entropy"]) == 1.0
    assert "class_entropy    0.000 bits (max 2.000)" in out and "-0.000" not in out
