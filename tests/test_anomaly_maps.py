"""Per-pixel anomaly maps: squared errors by hand, smoothing against scipy.ndimage, detect --maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_error, model_config, run_main
from scipy import ndimage

from vaelab import api
from vaelab.anomaly.maps import error_maps, smooth_maps, smoothing_matrix
from vaelab.anomaly.scores import score_images
from vaelab.configure import build_config
from vaelab.models import build_model


@pytest.mark.parametrize("n, sigma", [(28, 1.0), (64, 2.5), (7, 1.5), (5, 3.0), (3, 4.0)])
def test_smoothing_matrix_is_scipys_gaussian_filter1d(n, sigma):
    # (5, 3.0) and (3, 4.0): the kernel reaches past the whole side, so it reflects more than once.
    v = np.random.default_rng(n).random((n, 4))
    ours = smoothing_matrix(n, sigma).double().numpy() @ v
    np.testing.assert_allclose(ours, ndimage.gaussian_filter1d(v, sigma, axis=0), atol=1e-6)


@pytest.mark.parametrize("shape, sigma", [((3, 64, 64), 2.0), ((2, 28, 40), 1.0), ((1, 9, 13), 0.7)])
def test_smoothed_maps_equal_scipys_gaussian_filter_and_keep_their_sum(shape, sigma):
    maps = np.random.default_rng(1).random(shape) ** 4  # speckled, as squared errors are
    ours = smooth_maps(torch.from_numpy(maps).float(), sigma).numpy()
    ref = ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma))  # each map alone
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # 'reflect' folds the kernel's mass back inside the image: the total error is kept.
    np.testing.assert_allclose(ours.sum((1, 2)), maps.sum((1, 2)), rtol=1e-5)


def tanh_model():
    torch.manual_seed(0)
    return build_model(model_config(kind="ae", arch="conv", input_shape=[3, 16, 16], channels=[4, 8], latent_dim=5,
                                   output_activation="tanh", loss="mse"))


def test_error_map_is_the_squared_error_per_pixel_summed_over_channels():
    model = tanh_model()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = error_maps(model, x, batch_size=4)
    assert maps.shape == (6, 16, 16) and maps.dtype == torch.float32
    with torch.no_grad():
        x_hat = model.eval().reconstruct(x)
    by_hand = sum((x_hat[:, c] - x[:, c]) ** 2 for c in range(3))
    torch.testing.assert_close(maps, by_hand)
    # The mse score is the map's mean over pixels and channels.
    np.testing.assert_allclose(maps.double().mean((1, 2)).numpy() / 3, score_images(model, x, "mse"), rtol=1e-5)
    smoothed = error_maps(model, x, sigma=1.5)
    np.testing.assert_allclose(smoothed.numpy(), ndimage.gaussian_filter(by_hand.double().numpy(), (0, 1.5, 1.5)),
                               atol=1e-5)


# ---------------------------------------------------------------------------- vaelab detect --maps
@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny conv AE on 16x16 colour blobs, and a folder of 10 new images (two of them odd)."""
    root = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    blobs = np.exp(-((yy[None] - rng.integers(5, 11, (96, 1, 1))) ** 2 + (xx[None] - rng.integers(5, 11, (96, 1, 1))) ** 2) / 12)
    x = (np.stack([blobs, 0.5 * blobs, 1 - blobs], 1) * 255).astype(np.uint8)  # (96, 3, 16, 16)
    np.savez(root / "train.npz", x=x[:80])
    new = x[80:90].copy()
    new[3, :, 2:6, 2:6] = [[[255]], [[0]], [[255]]]  # a magenta square
    new[7, 1] = 255
    np.savez(root / "new.npz", x=new)
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={root / 'train.npz'}", "data.val=none", "model.kind=ae", "model.arch=conv",
        "model.channels=8,16", "model.latent_dim=8", "model.output_activation=tanh", "model.loss=mse",
        "train.epochs=30", "train.batch_size=16", "train.lr=0.005", "train.device=cpu", "train.progress=false"])
    api.train(cfg, root / "run", evaluate_after=False, log=lambda s: None)
    return root / "run", root / "new.npz"


def test_detect_maps_writes_the_maps_and_a_figure(capsys, rgb_run, tmp_path):
    run_dir, new = rgb_run
    rc, out, err = run_main(capsys, "detect", run_dir, "--input", new, "--maps", "--out", tmp_path / "s.csv")
    assert rc == 0, out + err
    maps = np.load(tmp_path / "anomaly_maps.npy")
    assert maps.shape == (10, 16, 16) and maps.dtype == np.float32
    run = api.Run.load(run_dir, device="cpu")
    x = torch.from_numpy(np.load(new)["x"]).float() / 255
    with torch.no_grad():
        by_hand = (run.model.reconstruct(x) - x).square().sum(1).numpy()
    np.testing.assert_allclose(maps, by_hand, atol=1e-6)
    assert set(np.argsort(-maps.sum((1, 2)))[:2]) == {3, 7}  # the two odd images
    assert (tmp_path / "anomaly_maps.png").stat().st_size > 5000
    assert "anomaly_maps.npy (10 maps)" in out
    rc, out, err = run_main(capsys, "detect", run_dir, "--input", new, "--maps", "--smooth", "1.5", "--out",
                            tmp_path / "b" / "s.csv")
    assert rc == 0, out + err
    np.testing.assert_allclose(np.load(tmp_path / "b" / "anomaly_maps.npy"),
                               ndimage.gaussian_filter(by_hand.astype(np.float64), (0, 1.5, 1.5)), atol=1e-5)


@pytest.mark.parametrize("args, match", [
    (["--smooth", "2"], "--smooth smooths the anomaly maps; add --maps"),
    (["--maps", "--smooth", "0"], "--smooth must be a positive number of pixels"),
    (["--maps", "--smooth", "nan"], "--smooth must be a positive number of pixels"),
])
def test_detect_maps_errors(capsys, rgb_run, tmp_path, args, match):
    run_dir, new = rgb_run
    assert match in cli_error(capsys, "detect", run_dir, "--input", new, "--out", tmp_path / "s.csv", *args)
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "anomaly_maps.npy").exists()
