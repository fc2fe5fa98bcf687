"""What a caller hands the Python API is read the one way it means, or refused in one line:
images in every layout and dtype, codes, labels, counts and seeds; data given to ``fit``;
relative data paths; the model's train/eval mode and dtype."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import one_line

import vaelab
from vaelab.api import Run
from vaelab.data import ImageSet, Splits
from vaelab.data.images import as_float_images, to_uint8_nchw
from vaelab.errors import ConfigError, DataError, VaelabError

QUIET = lambda *_: None


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory, shapes_arrays):
    """A tiny MLP VAE on 3-channel 16 x 12 images (height and width differ, so a layout read the
    wrong way cannot pass for the right one), trained from an .npz."""
    x, y = shapes_arrays
    rng = np.random.default_rng(0)
    rgb = np.stack([x[:96, :16, :12], x[:96, 4:20, 8:20], rng.integers(0, 256, (96, 16, 12))], 1).astype(np.uint8)
    path = tmp_path_factory.mktemp("rgb") / "rgb.npz"
    np.savez(path, x=rgb, y=y[:96])
    cfg = vaelab.build_config(None, None, [
        "data.name=npz", f"data.path={path}", "data.val=none", "model.kind=vae", "model.arch=mlp", "model.hidden=32",
        "model.latent_dim=3", "train.epochs=1", "train.batch_size=32", "train.device=cpu", "train.progress=false"])
    run = vaelab.train(cfg, tmp_path_factory.mktemp("runs") / "rgb", evaluate_after=False, log=QUIET)
    return run, torch.from_numpy(rgb[:6]).float() / 255


def test_every_layout_and_dtype_of_the_same_images_gives_the_same_codes(rgb_run):
    run, x = rgb_run
    z = run.encode(x)
    assert z.shape == (6, 3)
    x8 = (x * 255).round().to(torch.uint8)
    same = [x.permute(0, 2, 3, 1), x.numpy(), x.permute(0, 2, 3, 1).numpy().astype(np.float64), x8, x8.numpy(),
            x8.permute(0, 2, 3, 1), x8.to(torch.int64), list(x.numpy())]
    for other in same:
        assert torch.equal(run.encode(other), z)
    assert torch.equal(run.reconstruct(x.permute(0, 2, 3, 1)), run.reconstruct(x))
    assert torch.equal(run.draw_codes(x8, seed=3), run.draw_codes(x, seed=3))


@pytest.mark.parametrize("bad,match", [
    (lambda x: x * 255, r"float images must lie in \[0, 1\] \(got 0\.\.255\); divide 0\.\.255 grey levels by 255"),
    (lambda x: torch.full_like(x, float("nan")), r"float images must lie in \[0, 1\] \(got nan"),
    (lambda x: (x > 0.5).to(torch.int64), "integer images hold only 0 and 1, which as grey levels 0..255 are black"),
    (lambda x: x[0], r"one image without its batch axis; give a batch of images, e.g. x\[None\]"),
    (lambda x: x[0].permute(1, 2, 0), r"has shape \(16, 12, 3\): one image without its batch axis"),
    (lambda x: x.permute(0, 1, 3, 2), (r"the model takes images of shape \(C, H, W\) = \(3, 16, 12\) \(or \(H, W, C\)\)"
                                       r", given as a batch: got \(6, 3, 12, 16\)")),
    (lambda x: x[:, :1], r"got \(6, 1, 16, 12\)"),
    (lambda x: x.flatten(1), r"got \(6, 576\)"),  # flat rows: only for grey images (no channel order to guess)
    (lambda x: x.numpy().astype(np.complex64), "unsupported image dtype complex64"),
])
def test_images_a_model_cannot_take_are_refused_in_one_line(rgb_run, bad, match):
    run, x = rgb_run
    for method in (run.encode, run.reconstruct, run.posterior):
        with pytest.raises(DataError, match=match) as e:
            method(bad(x))
        assert one_line(e).startswith("x")


def test_grey_images_read_from_every_layout(trained_run):
    x = trained_run.split("val").batch(slice(0, 5))
    z = trained_run.encode(x)
    for other in (x[:, 0], x.permute(0, 2, 3, 1), x.flatten(1), x.flatten(1).numpy(), x > 0.5):
        want = trained_run.encode(x > 0.5) if other.dtype == torch.bool else z
        assert torch.equal(trained_run.encode(other), want)
    assert torch.equal(trained_run.encode(x > 0.5), trained_run.encode((x > 0.5).float()))
    with pytest.raises(DataError, match=r"has shape \(28, 28\): one image without its batch axis"):
        trained_run.encode(x[0, 0])


def test_empty_inputs_give_empty_results_of_the_documented_shapes(trained_run):
    x = trained_run.split("val").batch(slice(0, 0))
    assert trained_run.encode(x).shape == (0, 4)
    assert trained_run.draw_codes(x).shape == (0, 4)
    assert trained_run.reconstruct(x).shape == (0, 1, 28, 28)
    assert trained_run.decode(torch.zeros(0, 4)).shape == (0, 1, 28, 28)
    assert trained_run.sample_prior(0).shape == (0, 1, 28, 28)
    assert trained_run.code_shape() == (4,)


@pytest.mark.parametrize("call,error,match", [
    (lambda r: r.decode(torch.zeros(4)), DataError, (r"z has shape \(4,\): one code without its batch axis; give a "
                                                     r"batch of codes, e\.g\. z\[None\]")),
    (lambda r: r.decode(torch.zeros(2, 9)), DataError, r"this model's codes have shape \(N, 4\), got \(2, 9\)"),
    (lambda r: r.decode(torch.zeros(2, 2)), DataError, r"codes have shape \(N, 4\), got \(2, 2\)"),
    (lambda r: r.decode(torch.full((2, 4), float("nan"))), DataError, "codes must be finite numbers"),
    (lambda r: r.decode(torch.zeros(2, 4), 1), VaelabError, "model is not conditional: its decoder reads no class"),
    (lambda r: r.sample_prior(3, y=2), VaelabError, "model is not conditional: its prior has no classes"),
    (lambda r: r.sample_prior(-1), ConfigError, "n must be a number of samples >= 0, got -1"),
    (lambda r: r.sample_prior(2.5), ConfigError, "n must be a number of samples >= 0, got 2.5"),
    (lambda r: r.sample_prior(2, seed=None), ConfigError, "seed must be a whole number, got None"),
    (lambda r: r.encode(r.split("val").batch(slice(0, 4)), batch_size=0), ConfigError,
     "batch_size must be a positive number of images, got 0"),
    (lambda r: r.encode(r.split("val").batch(slice(0, 4)), y=[1, 2]), DataError,
     "y: 2 labels for 4 images; give one label per image, or one class for all"),
    (lambda r: r.encode(r.split("val").batch(slice(0, 2)), y=[0.5, 1]), DataError, "labels must be whole class numbers"),
    (lambda r: r.evaluate(iw_samples=-1), ConfigError, "iw_samples must be None or a whole number >= 0, got -1"),
    (lambda r: r.evaluate(iw_images=1), ConfigError, "iw_images must be None or a whole number >= 2, got 1"),
])
def test_bad_codes_labels_and_counts_are_refused_in_one_line(trained_run, call, error, match):
    with pytest.raises(error, match=match) as e:
        call(trained_run)
    one_line(e)


def test_a_decoded_code_equals_the_decoding_of_its_numpy_and_list_forms(trained_run):
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    want = trained_run.decode(z)
    assert want.shape == (3, 1, 28, 28)
    assert torch.equal(trained_run.decode(z.numpy()), want)
    assert torch.allclose(trained_run.decode(z.tolist()), want)


def test_labels_of_a_conditional_model_by_number_name_array_or_one_class(trained_cvae):
    run = trained_cvae
    z = torch.zeros(4, 4)
    want = run.decode(z, torch.tensor([1, 1, 1, 1]))
    for y in (1, np.int32(1), torch.tensor(1), [1, 1, 1, 1], np.ones(4, np.int32), torch.ones(4),
              np.ones(4, np.float64)):
        assert torch.equal(run.decode(z, y), want), y
    assert run.class_names() is None  # integer labels: a class is named by its number, as --class takes it
    assert torch.equal(run.decode(z, "1"), want)
    assert torch.equal(run.decode(z, ["1"] * 4), want)
    with pytest.raises(VaelabError, match="cat"):
        run.decode(z, "cat")
    with pytest.raises(DataError, match="6 labels for 4 images"):
        run.decode(z, torch.ones(6, dtype=torch.long))
    with pytest.raises(VaelabError, match="conditional: decoding needs a class"):
        run.decode(z)
    assert run.sample_prior(4, y=1).shape == (4, 1, 28, 28)
    assert torch.equal(run.sample_prior(4, y=1, seed=2), run.sample_prior(4, y=[1, 1, 1, 1], seed=2))


def test_the_caller_s_train_mode_and_the_model_s_dtype(trained_run, tmp_path):
    run = Run.load(trained_run.run_dir, device="cpu")
    x = run.split("val").batch(slice(0, 4))
    z = run.encode(x)
    run.model.train()
    assert torch.equal(run.encode(x), z)  # eval mode inside the call
    assert run.model.training  # and the caller's mode back afterwards
    run.evaluate(iw_samples=0)
    assert run.model.training
    run.model.double()  # inputs follow the model's dtype; the numbers agree to float32's precision
    assert torch.allclose(run.encode(x).float(), z, atol=1e-5)
    assert run.decode(z).dtype == torch.float64
    with pytest.raises(VaelabError, match=r"holds torch.float64 weights, and evaluate runs in float32.*run.model.float"):
        run.evaluate(iw_samples=0)


def test_history_holds_numbers(trained_run):
    h = trained_run.history()
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert all(isinstance(r["train_loss"], float) and isinstance(r["val_loss"], float) for r in h)


def test_a_device_that_is_not_one_is_refused_in_one_line(trained_run):
    with pytest.raises(ConfigError, match="device 'bogus' is not a device; use auto, cpu, cuda or cuda:N") as e:
        Run.load(trained_run.run_dir, device="bogus")
    one_line(e)


# ----------------------------------------------------------------------------- train() and fit()
def test_train_checks_its_evaluation_arguments_before_training(tiny_config, tmp_path):
    for kw, match in (({"iw_samples": -3}, "iw_samples must be None or a whole number >= 0, got -3"),
                      ({"iw_images": -5}, "iw_images must be None or a whole number >= 2, got -5"),
                      ({"evaluate_after": False, "iw_samples": 5},
                       "iw_samples sets the final evaluation, and evaluate_after=False skips it")):
        with pytest.raises(VaelabError, match=match):
            vaelab.train(tiny_config(), tmp_path / "run", log=QUIET, **kw)
        assert not (tmp_path / "run").exists()  # refused before anything was written


def test_zero_epochs_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="train.epochs must be >= 1, got 0"):
        tiny_config("train.epochs=0")


def _splits(x, y=None) -> Splits:
    return Splits(ImageSet(x, y, "train"), None, None)


@pytest.mark.parametrize("make,match", [
    (lambda x, y: _splits(x.permute(0, 2, 3, 1).contiguous(), y),
     (r"splits.train.x has shape \(256, 28, 28, 1\): images need 1 or 3 channels on axis 1 \(channels last\? "
      r"ImageSet holds \(N, C, H, W\): x.permute\(0, 3, 1, 2\)\)")),
    (lambda x, y: _splits(x.float(), y), r"splits.train.x: float images must be finite and lie in \[0, 1\] \(got 0..25\d\)"),
    (lambda x, y: _splits(x.numpy(), y), r"splits.train.x must be a torch tensor \(N, C, H, W\), got ndarray"),
    (lambda x, y: _splits(x[:, 0], y), r"splits.train.x must hold images \(N, C, H, W\), N >= 1, got shape \(256, 28, 28\)"),
    (lambda x, y: _splits(x, y[:50]), "splits.train: 256 images but 50 labels"),
    (lambda x, y: _splits(x, y.numpy()), r"splits.train.y must be a 1-D torch tensor of class numbers"),
    (lambda x, y: _splits(x.to(torch.int32), y), "splits.train.x is torch.int32: give uint8 grey levels"),
    (lambda x, y: ImageSet(x, y), "splits must be a vaelab.Splits"),
])
def test_fit_checks_the_images_it_is_given(shapes_arrays, tiny_config, make, match):
    xa, ya = shapes_arrays
    x, y = torch.from_numpy(xa)[:, None], torch.from_numpy(ya)
    with pytest.raises(DataError, match=match) as e:
        vaelab.fit(tiny_config("train.epochs=1"), None, splits=make(x, y), log=QUIET)
    one_line(e)


def test_a_run_fit_on_given_images_asks_for_them_back(shapes_arrays, tiny_config, tmp_path):
    xa, _ = shapes_arrays
    given = _splits(torch.from_numpy(255 - xa[:100])[:, None])  # not the shapes.npz the config names
    logs = []
    vaelab.fit(tiny_config("train.epochs=1"), tmp_path / "run", splits=given, log=logs.append)
    assert any("data given to fit()" in line for line in logs)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data_given"] is True
    run = Run.load(tmp_path / "run")
    with pytest.raises(DataError, match=r"was trained on images given to vaelab.fit\(\) in Python, which its folder "
                                        r"does not hold .*pass them: vaelab.Run.load\(.*, splits=\.\.\.\)") as e:
        run.evaluate(iw_samples=0)
    one_line(e)
    run = Run.load(tmp_path / "run", splits=given)
    ev = run.evaluate(split="train", iw_samples=0)
    assert ev["n"] == 100 and ev["split"] == "train"


def test_a_relative_data_path_is_stored_absolute(shapes_npz, tmp_path, monkeypatch):
    import shutil

    shutil.copy(shapes_npz, tmp_path / "d.npz")
    monkeypatch.chdir(tmp_path)
    cfg = vaelab.build_config(None, None, ["data.path=d.npz", "data.val=none", "model.kind=ae", "model.arch=mlp",
                                           "model.hidden=16", "model.latent_dim=2", "train.epochs=1"])
    assert cfg.data.path == str(tmp_path / "d.npz")
    assert vaelab.build_config(None, None, [f"data.path={tmp_path / 'd.npz'}", "model.kind=ae",
                                            "model.hidden=16"]).data.path == str(tmp_path / "d.npz")


# ----------------------------------------------------------------------------- the reader itself
def test_a_single_colour_image_is_not_read_as_grey_images():
    with pytest.raises(DataError, match=r"has shape \(64, 64, 3\): one colour image \(H, W, C\)\? Give a batch"):
        to_uint8_nchw(np.zeros((64, 64, 3), np.uint8), "a.npz[x]")
    with pytest.raises(DataError, match="one colour image"):
        as_float_images(np.zeros((32, 32, 3), np.float32), "X")
    # small grey images that happen to be 3 or 4 pixels wide still read, as before
    assert to_uint8_nchw(np.full((6, 5, 4), 7, np.uint8), "t").shape == (6, 1, 5, 4)


def test_integer_zero_one_images_are_refused_and_bool_ones_are_white():
    with pytest.raises(DataError, match="integer images hold only 0 and 1"):
        to_uint8_nchw(np.eye(8, dtype=np.uint8)[None].repeat(2, 0), "m.npz[x]")
    assert to_uint8_nchw(np.eye(8, dtype=bool)[None].repeat(2, 0), "m").max() == 255
    assert as_float_images(np.eye(8, dtype=bool)[None].repeat(2, 0)).max() == 1.0
    assert as_float_images(np.full((2, 8, 8), 255, np.int64)).max() == 1.0


def test_sample_images_refuses_a_count_that_is_not_one(trained_run):
    from vaelab.latent.sampling import fitted_sampler, sample_images

    prior = fitted_sampler(trained_run, "prior", log=QUIET)
    assert sample_images(trained_run, prior, 3).images.shape == (3, 1, 28, 28)
    for n in (-2, 0, 2.5, True):
        with pytest.raises(ConfigError, match=f"n must be a number of samples >= 1, got {n!r}"):
            sample_images(trained_run, prior, n)


def test_a_damaged_history_is_named_not_read_as_no_history(trained_run, tmp_path):
    import shutil

    shutil.copytree(trained_run.run_dir, tmp_path / "run")
    run = Run.load(tmp_path / "run", device="cpu")
    assert len(run.history()) == 3
    (tmp_path / "run" / "history.csv").write_bytes(b"\x00garbage,\x01\nnot,a history\n")
    with pytest.raises(DataError, match=r"history.csv is not a history vaelab wrote .*; it is damaged") as e:
        run.history()
    one_line(e)
