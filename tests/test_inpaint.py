"""Inpainting: mask specs, the three methods, and the evaluation (on tiny synthetic shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.api import Run
from vaelab.configure import build_config
from vaelab.errors import DataError, VaelabError
from vaelab.latent.inpaint import METHODS, evaluate_inpainting, inpaint, masked_mse, optimise_codes, parse_mask
from vaelab.training.loop import fit


def _tiny_run(shapes_npz, kind: str, epochs: int = 20):
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=none", f"model.kind={kind}", "model.arch=mlp",
        "model.hidden=64", "model.latent_dim=6", f"train.epochs={epochs}", "train.batch_size=32",
        "train.lr=0.005", "train.device=cpu", "train.progress=false", "train.precision=fp32"])
    r = fit(cfg, None, log=lambda s: None)  # no run directory: no per-epoch checkpoint writes
    return Run(config=r.config, model=r.model, _splits=r.splits)


@pytest.fixture(scope="module")
def runs(shapes_npz):
    return {kind: _tiny_run(shapes_npz, kind) for kind in ("ae", "vae")}


# ------------------------------------------------------------------------------------ masks
def _box(mask2d: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = mask2d.nonzero(as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_center_10_is_the_classic_patch():
    m = parse_mask("center:10", (1, 28, 28))(3)
    assert m.shape == (3, 1, 28, 28) and m.dtype == torch.bool
    assert int(m[0].sum()) == 100 and _box(m[0, 0]) == (10, 19, 10, 19)
    assert torch.equal(m[0], m[2])


@pytest.mark.parametrize("spec,size,box", [
    ("center:4", (8, 8), (3, 6, 3, 6)),  # margins 2 and 2 -> one pixel down/right, as center:10 on 28
    ("center:5", (28, 28), (12, 16, 12, 16)),  # margins 11 and 12
    ("center:3x5", (9, 10), (4, 6, 3, 7)),  # margins 6 (-> 4 above, 2 below) and 5 (3 and 2)
    ("center:28", (28, 28), (0, 27, 0, 27)),  # the whole image: never past the edge
    ("centre:27", (28, 28), (1, 27, 1, 27)),
])
def test_center_patches(spec, size, box):
    m = parse_mask(spec, size)(1)
    assert _box(m[0, 0]) == box
    h, w = box[1] - box[0] + 1, box[3] - box[2] + 1
    assert int(m.sum()) == h * w  # a full rectangle


def test_random_patches_are_seeded_in_bounds_and_differ_per_image():
    b = parse_mask("random:8", (1, 28, 28))
    m = b(50, seed=7)
    assert torch.equal(m, b(50, seed=7)) and not torch.equal(m, b(50, seed=8))
    assert (m.flatten(1).sum(1) == 64).all()
    for i in range(50):
        r0, r1, c0, c1 = _box(m[i, 0])
        assert (r1 - r0, c1 - c0) == (7, 7) and r0 >= 0 and c0 >= 0 and r1 <= 27 and c1 <= 27
    corners = {_box(m[i, 0])[::2] for i in range(50)}
    assert len(corners) > 10


def test_halves():
    size = (1, 6, 5)
    top, bottom, left, right = (parse_mask(s, size)(2)[0, 0] for s in ("top", "bottom", "left", "right"))
    assert top[:3].all() and not top[3:].any()
    assert bottom[3:].all() and not bottom[:3].any()
    assert left[:, :2].all() and not left[:, 2:].any()
    assert right[:, 3:].all() and not right[:, :3].any()  # odd width: the middle column stays known


def test_file_mask(tmp_path):
    a = np.zeros((28, 28), np.uint8)
    a[2:5, 20:27] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    m = parse_mask(f"file:{tmp_path / 'm.png'}", (1, 28, 28))(4)
    assert m.shape == (4, 1, 28, 28) and torch.equal(m[3, 0], torch.from_numpy(a > 127))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match="20x20 but the images are 28x28"):
        parse_mask(f"file:{tmp_path / 'small.png'}", (1, 28, 28))
    with pytest.raises(DataError, match="does not exist"):
        parse_mask(f"file:{tmp_path / 'nope.png'}", (1, 28, 28))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad.png is not an image Pillow can read \(PNG, JPEG, BMP, ...\)"):
        parse_mask(f"file:{tmp_path / 'bad.png'}", (1, 28, 28))


@pytest.mark.parametrize("spec,match", [
    ("center:29", "larger than the 28x28 images"), ("random:30", "larger than"), ("center:10x29", "larger than"),
    ("circle:3", "unknown mask 'circle:3'"), ("", "unknown mask"), ("center:abc", "positive integer"),
    ("center:0", "positive integer"), ("center", "positive integer"), ("top:4", "takes no size"),
    ("file:", "give the mask image"),
])
def test_bad_mask_specs(spec, match):
    with pytest.raises(VaelabError, match=match):
        parse_mask(spec, (1, 28, 28))


# ------------------------------------------------------------------------------------ methods
@pytest.fixture(scope="module")
def batch(runs):
    x = runs["ae"].split("train").batch(slice(0, 64))
    # centre patches hide shape pixels in most images; random ones vary per image
    return x, parse_mask("center:10", x.shape[1:])(64)


@pytest.mark.parametrize("kind", ["ae", "vae"])
@pytest.mark.parametrize("method", list(METHODS))
def test_methods_keep_known_pixels_exactly(runs, batch, kind, method):
    x, m = batch
    kw = {"steps": 30} if method == "latent-opt" else {}
    y = inpaint(runs[kind], x, m, method=method, **kw)
    assert y.shape == x.shape and y.dtype == torch.float32
    known = ~m.expand_as(x)
    assert torch.equal(y[known], x[known])
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    assert not torch.equal(y[~known], torch.zeros_like(y[~known]))  # something was painted in


@pytest.mark.parametrize("kind", ["ae", "vae"])
@pytest.mark.parametrize("method,kw", [("iterative", {"iterations": 20}), ("latent-opt", {"steps": 150})])
def test_iterative_and_latent_opt_beat_the_masked_input(runs, batch, kind, method, kw):
    x, m = batch
    y = inpaint(runs[kind], x, m, method=method, **kw)
    masked = x.masked_fill(m, 0.0)
    assert masked_mse(y, x, m) < 0.6 * masked_mse(masked, x, m)


def test_single_is_one_reconstruction_of_the_zero_filled_image(runs, batch):
    x, m = batch
    run = runs["vae"]
    expected = torch.where(m, run.reconstruct(x.masked_fill(m, 0.0)), x)
    assert torch.allclose(inpaint(run, x, m, method="single"), expected, atol=1e-6)
    # one iteration of `iterative` is `single`; zero iterations returns the masked input
    assert torch.allclose(inpaint(run, x, m, method="iterative", iterations=1), expected, atol=1e-6)
    assert torch.equal(inpaint(run, x, m, method="iterative", iterations=0), x.masked_fill(m, 0.0))


@torch.no_grad()
def _objective(model, z, x, m):
    """The MAP objective written out by hand: BCE summed over known pixels + 0.5 |z|^2."""
    p = model.decode(z).clamp(1e-6, 1 - 1e-6)
    bce = -(x * p.log() + (1 - x) * (1 - p).log())
    return float((bce * (~m)).flatten(1).sum(1).mean() + 0.5 * z.square().sum(1).mean())


def test_latent_opt_minimises_the_known_pixel_objective(runs, batch):
    x, m = batch
    model = runs["vae"].model
    z0 = optimise_codes(model, x, m, steps=0)
    assert torch.allclose(z0, model.encode(x.masked_fill(m, 0.0)))  # starts at the encoder's mean
    objectives = [_objective(model, optimise_codes(model, x, m, steps=s), x, m) for s in (0, 25, 150)]
    assert objectives[0] > objectives[1] > objectives[2]
    # the pixels it paints are the decoder's output at the optimised codes
    z = optimise_codes(model, x, m, steps=25)
    assert torch.allclose(inpaint(model, x, m, method="latent-opt", steps=25),
                          torch.where(m, model.decode(z), x), atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # weights unfrozen again


def test_latent_opt_ignores_hidden_pixels(runs, batch):
    """Whatever the hidden pixels hold, the codes fitted to the known ones are the same."""
    x, m = batch
    model = runs["ae"].model
    noisy = torch.where(m, torch.rand_like(x), x)
    a = optimise_codes(model, x, m, steps=20, init_iterations=0)
    b = optimise_codes(model, noisy, m, steps=20, init_iterations=0)
    assert torch.allclose(a, b, atol=1e-5)


def test_chunking_does_not_change_the_result(runs, batch):
    x, m = batch
    a = inpaint(runs["ae"], x, m, method="iterative", iterations=5)
    b = inpaint(runs["ae"], x, m, method="iterative", iterations=5, batch_size=7)
    assert torch.allclose(a, b, atol=1e-5)


def test_mask_spec_string_and_broadcast_mask(runs, batch):
    x, _ = batch
    a = inpaint(runs["ae"], x, "random:6", method="single", seed=3)
    b = inpaint(runs["ae"], x, parse_mask("random:6", x.shape[1:])(len(x), seed=3), method="single")
    assert torch.equal(a, b)
    one = parse_mask("top", x.shape[1:])(1)
    assert torch.equal(inpaint(runs["ae"], x, one, method="single"),
                       inpaint(runs["ae"], x, one.expand(len(x), -1, -1, -1), method="single"))


def test_bad_method_and_mask_shape(runs, batch):
    x, m = batch
    with pytest.raises(VaelabError, match="unknown inpainting method 'magic'; known: single, iterative, latent-opt"):
        inpaint(runs["ae"], x, m, method="magic")
    with pytest.raises(DataError, match="does not fit images"):
        inpaint(runs["ae"], x, m[:, :, :20], method="single")


def test_masked_mse_counts_hidden_pixels_only():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    m = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    m[:, :, :2] = True
    y[:, :, :2] = 0.5  # hidden: error 0.25 each
    y[:, :, 2:] = 1.0  # known: ignored
    assert masked_mse(y, x, m) == pytest.approx(0.25)


# ------------------------------------------------------------------------------------ evaluation
class RecordingJudge:
    """Predicts class 0 for every image and remembers what it was shown."""

    meta = {"dataset": "fake"}

    def __init__(self):
        self.seen = []

    def predict(self, x):
        self.seen.append(x.clone())
        return torch.zeros(len(x), dtype=torch.long)


def test_evaluate_inpainting(runs, tmp_path):
    run = runs["vae"]
    judge = RecordingJudge()
    r = evaluate_inpainting(run, mask="center:10", n=40, method="iterative", judge=judge, seed=0,
                            out=tmp_path / "o", log=lambda s: None, iterations=10)
    data = run.split("train")
    x = data.batch(slice(0, 40))
    m = parse_mask("center:10", x.shape[1:])(40)
    filled = inpaint(run, x, m, method="iterative", iterations=10)
    assert r["masked_mse"] == pytest.approx(masked_mse(filled, x, m), rel=1e-6)
    assert r["masked_mse_input"] == pytest.approx(masked_mse(x.masked_fill(m, 0), x, m), rel=1e-6)
    assert r["masked_mse"] < r["masked_mse_input"]
    acc0 = float((data.y[:40] == 0).float().mean())
    assert r["judge_accuracy"] == r["judge_accuracy_masked"] == r["judge_accuracy_original"] == pytest.approx(acc0)
    shown_filled, shown_masked, shown_orig = judge.seen
    assert torch.allclose(shown_filled, filled, atol=1e-6)
    assert torch.equal(shown_masked, x.masked_fill(m, 0)) and torch.equal(shown_orig, x)
    assert (r["n"], r["method"], r["mask"], r["seed"], r["split"]) == (40, "iterative", "center:10", 0, "train")
    assert r["hidden_fraction"] == pytest.approx(100 / 784)
    saved = json.loads((tmp_path / "o" / "inpaint_eval.json").read_text())
    assert saved == {**json.loads(json.dumps(r)), "checkpoint_id": run.checkpoint_id}  # the weights it used
    assert (tmp_path / "o" / "inpaint.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_without_judge(runs):
    r = evaluate_inpainting(runs["ae"], mask="bottom", n=10, method="single", use_judge=False)
    assert "judge_accuracy" not in r and r["n"] == 10 and 0 < r["ssim"] <= 1
    assert set(r["not_applicable"]) == {"judge_accuracy"} and None not in r.values()
