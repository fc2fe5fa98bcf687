"""Latent-space pictures: every kind draws a real PNG; computations checked directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.errors import ConfigError
from vaelab.latent.pictures import PLOTS, interpolation_codes, pca_spectrum, plot


def assert_picture(path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
        # Not a blank canvas: the picture has structure.
        assert np.asarray(im.convert("L")).std() > 5


@pytest.mark.parametrize("kind", sorted(set(PLOTS) - {"styles"}))
def test_every_kind_writes_a_png(trained_run, tmp_path, kind):
    assert_picture(plot(trained_run, kind, tmp_path / f"{kind}.png", **_n64(kind)))


def _n64(kind: str) -> dict:
    # n=64 where the kind reads n (a kind refuses an option it does not read)
    from vaelab.latent.pictures import plot_options

    return {"n": 64} if "n" in plot_options(kind) else {}


@pytest.mark.parametrize("kind", sorted(PLOTS))
def test_every_kind_serves_a_conditional_model(trained_cvae, tmp_path, kind):
    assert_picture(plot(trained_cvae, kind, tmp_path / f"{kind}.png", **_n64(kind)))


def test_styles_decode_one_code_under_every_class(trained_cvae, trained_run, tmp_path):
    from vaelab.errors import VaelabError
    from vaelab.latent.pictures import style_grid

    data = trained_cvae.split("val")
    x, y = data.batch(slice(0, 3)), data.y[:3]
    grid = style_grid(trained_cvae, x, y)  # (3, 4 classes, C, H, W)
    assert grid.shape == (3, 4, 1, 28, 28)
    z = trained_cvae.encode(x, y)
    for c in range(4):  # column c is the decoder's image of each code under class c
        torch.testing.assert_close(grid[:, c], trained_cvae.decode(z, torch.full((3,), c)))
    assert not torch.allclose(grid[:, 0], grid[:, 1])  # the label changes the picture
    with pytest.raises(VaelabError, match="plot styles needs a conditional model"):
        plot(trained_run, "styles", tmp_path / "s.png")


def test_traverse_of_a_2d_latent_is_a_grid(tmp_path, shapes_npz):
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=none", "model.hidden=32",
                                    "model.latent_dim=2", "train.epochs=1", "train.progress=false"])
    run = train(cfg, tmp_path / "r2", evaluate_after=False, log=lambda *_: None)
    out = plot(run, "traverse", tmp_path / "grid.png", steps=5, radius=2.0)
    assert Image.open(out).size[0] > 300


def test_interpolation_codes_are_convex_combinations():
    a, b = torch.tensor([0.0, 2.0]), torch.tensor([4.0, -2.0])
    z = interpolation_codes(a, b, 5)
    assert torch.allclose(z[0], a) and torch.allclose(z[-1], b)
    assert torch.allclose(z[2], (a + b) / 2)


def test_pca_spectrum_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 3)) * np.array([3.0, 1.0, 0.1])
    ev = pca_spectrum(z)
    np.testing.assert_allclose(ev, np.sort(np.linalg.eigvalsh(np.cov(z.T)))[::-1])
    assert ev[0] > ev[1] > ev[2]


def test_bad_options(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown plot kind"):
        plot(trained_run, "hexbin", tmp_path / "x.png")
    with pytest.raises(ConfigError, match="out of range"):
        plot(trained_run, "scatter", tmp_path / "x.png", dims=(0, 9))
    with pytest.raises(ConfigError, match="pairs"):
        plot(trained_run, "pca", tmp_path / "x.png", pairs="a-b")
    with pytest.raises(ConfigError, match="no images"):
        plot(trained_run, "interpolate", tmp_path / "x.png", source=0, target=7)


@pytest.mark.parametrize("overrides, name", [
    (["model.kind=vae", "model.arch=mlp", "model.hidden=8"], "latent means"),
    (["model.kind=ae", "model.arch=mlp", "model.hidden=8"], "latent codes"),
    (["model.kind=vq-vae", "model.arch=conv", "model.latent=conv", "model.channels=4,4", "model.codebook_size=8"],
     "quantised code grids (flattened)"),
])
def test_scatter_and_tsne_titles_name_the_codes_they_draw(tmp_path, shapes_npz, monkeypatch, overrides, name):
    """A VQ-VAE's codes are quantised grids and an autoencoder's have no posterior: neither is titled
    "latent means"."""
    from vaelab import plots
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.latent_dim=2",
                                    "train.epochs=1", "train.batch_size=64", "train.device=cpu",
                                    "train.progress=false", *overrides])
    run = train(cfg, tmp_path / "run", evaluate_after=False, log=lambda *_: None)
    titles = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: titles.append(fig.axes[0].get_title()) or save(fig, out))
    plot(run, "scatter", tmp_path / "s.png", n=64)
    plot(run, "tsne", tmp_path / "t.png", n=64)
    assert titles[0].startswith(f"{name} of 64 images") and titles[1] == f"t-SNE of the {name} (64 images)"
