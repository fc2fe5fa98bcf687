"""MS-SSIM (metrics.ms_ssim) against pytorch-msssim, an independent implementation."""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import image_pairs

from vaelab.evaluation import metrics

pytorch_msssim = pytest.importorskip("pytorch_msssim", reason="the oracle: pip install pytorch-msssim")
oracle_core = importlib.import_module("pytorch_msssim.ssim")  # the module (the package's `ssim` is a function)


def pairs(kind: str, c: int, h: int, w: int, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, c, h, w) float32 image pairs in [0, 1] (conftest.image_pairs, with finer waves)."""
    x, y = image_pairs(kind, c, h, w, n, waves=(9, 7))
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


KINDS = ["random", "noisy", "shapes", "smooth", "blurred"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chw", [(3, 176, 176), (1, 192, 256), (3, 256, 208)], ids=["rgb176", "grey192x256", "rgb256x208"])
def test_standard_sizes_match_pytorch_msssim(kind, chw):
    x, y = pairs(kind, *chw)
    ours = metrics.ms_ssim(x, y)
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def reference_cut_windows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of square images from pytorch-msssim's own SSIM core (its ``_ssim`` and Gaussian),
    with the window cut to each scale narrower than 11 pixels, as vaelab documents."""
    weights = torch.tensor(metrics.MS_SSIM_WEIGHTS)
    terms = []
    for j in range(5):
        if j:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        side = x.shape[-1]
        size = min(11, side if side % 2 else side - 1)
        win = oracle_core._fspecial_gauss_1d(size, 1.5).repeat(x.shape[1], 1, 1, 1)
        s, cs = oracle_core._ssim(x, y, data_range=1.0, win=win, size_average=False)
        terms.append(torch.relu(s if j == 4 else cs))
    return torch.prod(torch.stack(terms) ** weights.view(-1, 1, 1), 0).mean(1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [48, 64, 96, 160])
def test_small_sizes_cut_the_window_as_documented(kind, size):
    x, y = pairs(kind, 3, size, size)
    torch.testing.assert_close(metrics.ms_ssim(x, y), reference_cut_windows(x, y), atol=1e-5, rtol=0)


def test_one_scale_is_ssim_and_identical_images_score_one():
    x, y = pairs("smooth", 3, 64, 64)
    torch.testing.assert_close(metrics.ms_ssim(x, y, weights=(1.0,)), metrics.ssim(x, y), atol=1e-6, rtol=0)
    torch.testing.assert_close(metrics.ms_ssim(x, x), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(metrics.ms_ssim(x, y), metrics.ms_ssim(y, x), atol=1e-6, rtol=0)
    noisier = [metrics.ms_ssim(x, (x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1))
               for s in (0.02, 0.1, 0.3)]
    assert all((a > b).all() for a, b in itertools.pairwise(noisier))


@pytest.mark.parametrize("hw", [(28, 28), (47, 64), (64, 40)])
def test_images_too_small_for_five_scales_are_refused(hw):
    x = torch.rand(2, 1, *hw)
    with pytest.raises(ValueError, match=r"ms_ssim needs images of at least 48x48 .* got \d+x\d+; use ssim"):
        metrics.ms_ssim(x, x)
    assert metrics.ms_ssim_min_size() == 48 and metrics.ms_ssim_min_size(3) == 12


def test_gradients_stay_finite_for_identical_and_anticorrelated_images():
    x, _ = pairs("shapes", 3, 64, 64)
    for target in (x, 1 - x):  # MS-SSIM 1, and negative contrast-structure terms
        r = target.clone().requires_grad_(True)
        (1 - metrics.ms_ssim(r, x)).sum().backward()
        assert torch.isfinite(r.grad).all()


# ---------------------------------------------------------------------------- the msssim loss and score
def msssim_model(**kw):
    from conftest import model_config
    from vaelab.models import build_model

    base = {"kind": "vae", "arch": "conv", "input_shape": [3, 48, 48], "channels": [8, 16], "latent_dim": 4,
            "loss": "msssim", "output_activation": "tanh"}
    base.update(kw)
    torch.manual_seed(0)
    return build_model(model_config(**base))


@pytest.mark.parametrize("output", ["tanh", "sigmoid"])
def test_msssim_loss_is_one_minus_msssim_of_the_images(output):
    model = msssim_model(output_activation=output)
    x, _ = pairs("shapes", 3, 48, 48, n=4)
    with torch.no_grad():
        z = model.encode(x)
        loss = model.recon_loss(model.decode_logits(z), x)
        torch.testing.assert_close(loss, 1 - metrics.ms_ssim(model.decode(z), x), atol=1e-5, rtol=0)
        # Leading sample dimensions (k, B) are kept, as for every likelihood.
        zk = torch.stack([z, z + 0.5])
        lk = model.recon_loss(model.decode_logits(zk), x)
        assert lk.shape == (2, 4)
        torch.testing.assert_close(lk[0], loss)
        out = model(x)
        torch.testing.assert_close(out["loss"], out["recon"] + model.cfg.opts("elbo").beta * out["kl"])


def test_msssim_loss_is_not_a_density_and_tools_that_need_one_refuse():
    from vaelab.anomaly.scores import score_images
    from conftest import model_config
    from vaelab.errors import ConfigError, VaelabError

    model = msssim_model()
    assert "density" not in model.capabilities and {"prior", "stochastic"} <= model.capabilities
    x, _ = pairs("smooth", 3, 48, 48)
    with pytest.raises(VaelabError, match="anomaly score 'elbo' needs a density"):
        score_images(model, x, "elbo")
    with pytest.raises(ConfigError, match="model.objective=iwae needs a density"):
        model_config(kind="vae", arch="conv", loss="msssim", objective="iwae")
    with pytest.raises(ConfigError, match=r"model.loss=msssim needs images of at least 48x48 .* these are 28x28"):
        msssim_model(input_shape=[1, 28, 28])


def test_msssim_score_and_its_size_limit():
    from vaelab.anomaly.scores import score_images
    from vaelab.errors import VaelabError

    model = msssim_model(loss="mse")
    x, _ = pairs("shapes", 3, 48, 48, n=5)
    with torch.no_grad():
        expected = 1 - metrics.ms_ssim(model.eval().reconstruct(x), x)
    np.testing.assert_allclose(score_images(model, x, "msssim", batch_size=2), expected.double().numpy(), atol=1e-6)
    small = msssim_model(loss="mse", input_shape=[1, 28, 28])
    with pytest.raises(VaelabError, match="anomaly score 'msssim' needs images of at least 48x48, got 28x28"):
        score_images(small, torch.rand(2, 1, 28, 28), "msssim")


def test_training_on_msssim_lowers_it(tmp_path):
    from vaelab.configure import build_config
    from vaelab.training.loop import fit

    x, _ = pairs("shapes", 3, 48, 48, n=32)
    np.savez(tmp_path / "d.npz", x=(x.numpy() * 255).astype(np.uint8))
    cfg = build_config("celeba-vae", overrides=[
        "data.name=npz", f"data.path={tmp_path / 'd.npz'}", "data.val=none", "data.image_size=null",
        "data.channels=null", "model.loss=msssim",
        "model.channels=8,16,16", "model.decoder_channels=16,8,8", "model.latent_dim=8", "train.epochs=6",
        "train.batch_size=16", "train.lr=0.005", "train.device=cpu", "train.progress=false", "train.precision=fp32"])
    r = fit(cfg, None, log=lambda s: None)
    losses = [row["train_recon"] for row in r.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
