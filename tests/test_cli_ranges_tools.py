"""Out-of-range and conflicting options of inpaint, steer, steer-bench, detect and export --onnx:
each is refused in one line (exit 2) before any work, and the values at the edge of the range
are taken and mean what they say."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_error, make_shapes, run_main
from PIL import Image

from vaelab.errors import DataError, VaelabError


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def pred_run(tmp_path_factory, shapes_npz):
    """A tiny VAE with a label predictor (1 epoch): enough to steer, not to steer well."""
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vae", "model.arch=mlp",
        "model.hidden=32", "model.latent_dim=4", "model.predictor_weight=1", "model.predictor_hidden=8",
        "train.epochs=1", "train.batch_size=64", "train.device=cpu", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "pred", evaluate_after=False, log=quiet)


@pytest.fixture
def input_npy(tmp_path) -> Path:
    path = tmp_path / "in.npy"
    np.save(path, make_shapes(12, seed=3)[0])  # (12, 28, 28) uint8
    return path


def mask_png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------ steer / steer-bench
BAD_OBJECTIVE = [
    (("--lr", "nan"), "--lr must be positive and finite (Adam's step size, default 0.05), got nan"),
    (("--lr", "-1"), "--lr must be positive and finite (Adam's step size, default 0.05), got -1"),
    (("--lr", "0"), "--lr must be positive and finite"),
    (("--lr", "inf"), "--lr must be positive and finite (Adam's step size, default 0.05), got inf"),
    (("--prior-weight", "nan"), ("--prior-weight must be >= 0 and finite (0 turns the prior term off; "
                                 "default 0.3), got nan")),
    (("--prior-weight", "inf"), "--prior-weight must be >= 0 and finite"),
    (("--prior-weight", "-1"), "--prior-weight must be >= 0 and finite"),
    (("--temperature", "inf"), ("--temperature must be positive and finite (1 = the predictor's own "
                                "probability; default 5), got inf")),
    (("--temperature", "nan"), "--temperature must be positive and finite"),
    (("--temperature", "0"), "--temperature must be positive and finite"),
    (("--steps", "-5"), "--steps must be at least 1, got -5"),
]


def _steps(args) -> list:
    """--steps 5 (quick), unless the case gives --steps itself (an option given twice is refused)."""
    return [] if "--steps" in args else ["--steps", 5]


@pytest.mark.parametrize("args, words", BAD_OBJECTIVE)
def test_steer_refuses_bad_objective_values(pred_run, capsys, args, words):
    assert words in cli_error(capsys, "steer", pred_run.run_dir, "--from", 0, "--to", 1, *_steps(args), *args)


@pytest.mark.parametrize("args, words", BAD_OBJECTIVE[::2])
def test_steer_bench_refuses_bad_objective_values(pred_run, capsys, tmp_path, args, words):
    assert words in cli_error(capsys, "steer-bench", pred_run.run_dir, "--pairs", 2, *_steps(args),
                              "--out", tmp_path / "b", *args)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("frames, words", [
    (1000, ("--frames 1000 is more than the 6 codes that --steps 5 passes through (the start and one per step); "
            "give --frames 6 or fewer, or more --steps")),
    (7, "--frames 7 is more than the 6 codes"),
    (1, "--frames must be at least 2 (the start and the end), got 1"),
])
def test_steer_refuses_more_frames_than_steps_give(pred_run, capsys, tmp_path, frames, words):
    assert words in cli_error(capsys, "steer", pred_run.run_dir, "--from", 0, "--to", 1, "--steps", 5,
                              "--frames", frames, "--out", tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def spy_steer(monkeypatch) -> list:
    """Record each steering result the CLI gets."""
    import vaelab.latent.steer as steer_module

    seen, real = [], steer_module.steer

    def spy(*a, **kw):
        seen.append(real(*a, **kw))
        return seen[-1]
    monkeypatch.setattr(steer_module, "steer", spy)
    return seen


@pytest.mark.parametrize("extra, frames", [
    (("--steps", 5, "--frames", 6), [0, 1, 2, 3, 4, 5]),  # the most: one frame per step count
    (("--steps", 5, "--frames", 2), [0, 5]),
    (("--steps", 3), [0, 1, 2, 3]),  # --frames left out: the default 8 is more than 3 steps give
    (("--steps", 14), [0, 2, 4, 6, 8, 10, 12, 14]),  # the default 8
    (("--steps", 5, "--prior-weight", 0, "--temperature", 1, "--lr", 0.01), [0, 1, 2, 3, 4, 5]),
])
def test_steer_takes_values_in_range(pred_run, capsys, tmp_path, monkeypatch, extra, frames):
    seen = spy_steer(monkeypatch)
    rc, out, err = run_main(capsys, "steer", pred_run.run_dir, "--from", 0, "--to", 1, *extra,
                            "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert (tmp_path / "s.png").stat().st_size > 500
    (r,) = seen
    assert r.frame_steps == frames and len(r.path_images) == len(frames)
    end = float(out.split(" -> ")[1].split(" after")[0])
    assert 0 <= end <= 1 and end == pytest.approx(float(r.end_prob[0]), abs=1e-4)


def test_steer_function_checks_its_numbers(pred_run):
    from vaelab.latent.steer import steer

    x = pred_run.split("val").batch(slice(0, 2))
    for kw, words in (({"lr": math.nan}, r"lr\) must be positive and finite, got nan"),
                      ({"prior_weight": math.nan}, "prior_weight must be >= 0 and finite, got nan"),
                      ({"temperature": math.inf}, "temperature must be positive and finite, got inf"),
                      ({"steps": 5, "frames": 7}, r"frames \(7\) must be at most steps \+ 1 \(6\)")):
        with pytest.raises(VaelabError, match=words):
            steer(pred_run, x, 1, **kw)
    assert steer(pred_run, x, 1, steps=2).frame_steps == [0, 1, 2]  # default frames: at most steps + 1
    assert steer(pred_run, x, 1, steps=0).frame_steps == [0]


# ------------------------------------------------------------------------------ inpaint
@pytest.mark.parametrize("args, words", [
    (("--lr", "nan"), "--lr must be positive and finite (Adam's step size; leave it out for the default), got nan"),
    (("--lr", "-1"), "--lr must be positive and finite (Adam's step size; leave it out for the default), got -1"),
    (("--lr", "0"), "--lr must be positive and finite"),
    (("--lr", "inf"), "--lr must be positive and finite"),
    (("--steps", "-5"), "--steps must be at least 1, got -5 (leave it out for the method's default)"),
    (("--steps", "0"), "--steps must be at least 1, got 0"),
    (("--method", "iterative", "--iterations", "0"), "--iterations must be at least 1, got 0"),
])
def test_inpaint_refuses_bad_numbers(trained_run, capsys, tmp_path, args, words):
    assert words in cli_error(capsys, "inpaint", trained_run.run_dir, "--no-judge", "--n", 4,
                              "--out", tmp_path / "o", *args)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, options", [
    (("--steps", 1, "--lr", 1e-3), {"steps": 1, "lr": 1e-3}),
    (("--method", "iterative", "--iterations", 1), {"iterations": 1}),
])
def test_inpaint_takes_the_smallest_values(trained_run, capsys, tmp_path, args, options):
    rc, _, err = run_main(capsys, "inpaint", trained_run.run_dir, "--no-judge", "--n", 4,
                          "--out", tmp_path / "o", *args)
    assert rc == 0, err
    r = json.loads((tmp_path / "o" / "inpaint_eval.json").read_text())
    assert r["options"] == options and r["masked_mse"] > 0 and r["hidden_fraction"] == pytest.approx(100 / 784)


def test_inpaint_refuses_a_mask_that_hides_nothing(trained_run, capsys, tmp_path):
    black = mask_png(tmp_path / "black.png", 0)
    msg = cli_error(capsys, "inpaint", trained_run.run_dir, "--no-judge", "--n", 4, "--mask", f"file:{black}",
                    "--out", tmp_path / "o")
    assert msg == (f"vaelab: error: mask image {black} hides no pixel (white, > 50% grey, = hidden; it is all dark): "
                   "paint the region to fill white")
    assert not (tmp_path / "o").exists()


def test_inpaint_with_every_pixel_hidden_says_so(trained_run, capsys, tmp_path):
    white = mask_png(tmp_path / "white.png", 255)
    rc, out, err = run_main(capsys, "inpaint", trained_run.run_dir, "--no-judge", "--n", 4, "--method", "single",
                            "--mask", f"file:{white}", "--out", tmp_path / "o")
    assert rc == 0, err
    assert (f"note: mask file:{white} hides every pixel: nothing of the images is known, so the inpainted images "
            "are the model's guess from nothing, and the numbers measure that guess") in out
    r = json.loads((tmp_path / "o" / "inpaint_eval.json").read_text())
    x = trained_run.split(None).batch(slice(0, 4))
    assert r["hidden_fraction"] == 1.0
    # every pixel hidden: masked_mse is the plain MSE to the images (of the zero image, for the input);
    # `single` fills in the reconstruction of the zero image
    guess = trained_run.model.reconstruct(torch.zeros_like(x)).detach()
    assert r["masked_mse_input"] == pytest.approx(float(x.double().square().mean()), rel=1e-6)
    assert r["masked_mse"] == pytest.approx(float((guess - x).double().square().mean()), rel=1e-5)


def test_inpaint_functions_refuse_empty_masks_and_bad_numbers(trained_run):
    from vaelab.latent.inpaint import inpaint, masked_mse, parse_mask

    with pytest.raises(VaelabError, match=r"mask 'top' hides no pixel of the 1x5 images; use another mask"):
        parse_mask("top", (1, 1, 5))
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(DataError, match="the mask hides no pixel"):
        masked_mse(x, x, torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    x = trained_run.split(None).batch(slice(0, 2))
    for kw, words in (({"lr": math.nan}, r"lr\) must be positive and finite, got nan"),
                      ({"lr": -1.0}, r"lr\) must be positive and finite, got -1.0"),
                      ({"steps": -1}, "steps must be >= 0, got -1")):
        with pytest.raises(VaelabError, match=words):
            inpaint(trained_run, x, "center:10", method="latent-opt", **kw)
    with pytest.raises(VaelabError, match="iterations must be >= 0, got -2"):
        inpaint(trained_run, x, "center:10", method="iterative", iterations=-2)


# ------------------------------------------------------------------------------ detect
@pytest.mark.parametrize("name, maps", [("scores_hist.png", False), ("most_anomalous.png", False),
                                        ("most_anomalous.png", True), ("anomaly_maps.png", True),
                                        ("anomaly_maps.npy", True)])
def test_detect_refuses_an_out_that_is_one_of_its_figures(trained_run, capsys, tmp_path, input_npy, name, maps):
    out = tmp_path / "d" / name
    msg = cli_error(capsys, "detect", trained_run.run_dir, "--input", input_npy, "--out", out,
                    *(["--maps"] if maps else []))
    assert msg == (f"vaelab: error: --out {out} is the {name} that detect writes beside the CSV, and the CSV would "
                   f"be replaced by it; give the CSV another name (e.g. {tmp_path / 'd' / 'scores.csv'})")
    assert not (tmp_path / "d").exists()


def test_detect_resolves_the_out_path(trained_run, capsys, tmp_path, input_npy, monkeypatch):
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    msg = cli_error(capsys, "detect", trained_run.run_dir, "--input", input_npy, "--out", "../d/./scores_hist.png")
    assert "--out ../d/scores_hist.png is the scores_hist.png that detect writes" in msg
    (tmp_path / "d" / "most_anomalous.png").write_bytes(b"old")
    (tmp_path / "d" / "link.csv").symlink_to(tmp_path / "d" / "most_anomalous.png")
    msg = cli_error(capsys, "detect", trained_run.run_dir, "--input", input_npy, "--out", "link.csv")
    assert "--out link.csv is the most_anomalous.png that detect writes" in msg
    assert (tmp_path / "d" / "most_anomalous.png").read_bytes() == b"old"


def test_detect_writes_the_csv_beside_the_figures(trained_run, capsys, tmp_path, input_npy):
    out = tmp_path / "d" / "anomaly_maps.png"  # without --maps, no file of that name is written beside it
    rc, _, err = run_main(capsys, "detect", trained_run.run_dir, "--input", input_npy, "--out", out)
    assert rc == 0, err
    assert out.read_text().splitlines()[0] == "index,score,anomaly"
    assert len(out.read_text().splitlines()) == 13
    for name in ("scores_hist.png", "most_anomalous.png"):
        assert (tmp_path / "d" / name).read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------ export --onnx
@pytest.mark.parametrize("args, words", [
    (("--sampler", "maf", "--parts", "encoder"),
     ("--sampler maf chooses what the sampler part decodes, and --parts encoder leaves the sampler part out; "
      "add sampler to --parts, or drop --sampler")),
    (("--sampler", "prior", "--parts", "encoder,decoder"),
     "--sampler prior chooses what the sampler part decodes, and --parts encoder,decoder leaves the sampler part out"),
    (("--parts", ""), ("--parts '' names no part; give a comma-separated list of encoder, decoder, scorer, "
                       "sampler, or leave --parts out for every part the model has")),
    (("--parts", " , "), "--parts ' , ' names no part"),
])
def test_export_onnx_refuses_parts_that_drop_an_option(trained_run, capsys, tmp_path, args, words):
    rc, out, err = run_main(capsys, "export", trained_run.run_dir, "--onnx", tmp_path / "o", *args)
    assert words in err and rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "fitting" not in out and out == ""  # refused before the sampler is fit
    assert not (tmp_path / "o").exists() and not (trained_run.run_dir / "samplers" / "maf.json").exists()


def test_export_onnx_function_refuses_them_too(trained_run, tmp_path):
    from vaelab.export.onnx import export_onnx

    class Fitted:  # a fitted sampler, as far as export_onnx looks
        name = "maf"

        def onnx_codes(self):
            return torch.nn.Identity()

    with pytest.raises(VaelabError, match=r"a maf sampler was given for the ONNX sampler part, and the parts asked "
                                          r"for \(encoder\) leave that part out"):
        export_onnx(trained_run, tmp_path / "o", parts=["encoder"], sampler=Fitted())
    with pytest.raises(VaelabError, match="the list of ONNX parts is empty"):
        export_onnx(trained_run, tmp_path / "o", parts=[])
    assert not (tmp_path / "o").exists()


def test_export_onnx_one_part_without_sampler(trained_run, capsys, tmp_path):
    pytest.importorskip("onnxscript")
    rc, _, err = run_main(capsys, "export", trained_run.run_dir, "--onnx", tmp_path / "o", "--parts", "encoder")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["encoder.onnx", "onnx.json"]
    assert list(json.loads((tmp_path / "o" / "onnx.json").read_text())["parts"]) == ["encoder"]
