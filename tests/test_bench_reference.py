"""The speed benchmark's plain-PyTorch conv loop computes the same function as the preset.

bench/reference_conv_loop.py is written as a user would port the Keras tutorial, with
stock layers only; the issue asks that the layers stay the same functions (same
parameter count, same outputs for the same weights) as vaelab's conv-vae.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from vaelab.config import build_config
from vaelab.models import build_model

REPO = Path(__file__).resolve().parent.parent


def _reference_module():
    spec = importlib.util.spec_from_file_location("reference_conv_loop", REPO / "bench" / "reference_conv_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_conv_loop_is_the_conv_vae_preset():
    reference = _reference_module()
    ref = reference.ConvVAE().eval()
    cfg = build_config("conv-vae").model
    cfg.input_shape = [1, 28, 28]
    model = build_model(cfg).eval()
    theirs = list(ref.state_dict().values())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in theirs) == 134_165
    # Same layers in the same order (encoder, z_mean, z_log_var, decoder): copy the
    # reference's weights into the preset model.
    rank = {"encoder": 0, "mu": 1, "logvar": 2, "decoder": 3}
    order = sorted(model.state_dict(), key=lambda n: rank[n.split(".")[0]])  # stable: keeps layer order
    assert [model.state_dict()[n].shape for n in order] == [p.shape for p in theirs]
    model.load_state_dict({n: p for n, p in zip(order, theirs)})

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = ref.encoder(x)
        # The symmetric variant (the benchmark's --padding symmetric) is a different function.
        sym = reference.ConvVAE(padding="symmetric").eval()
        sym.load_state_dict(dict(zip(sym.state_dict(), ref.state_dict().values())))
        assert not torch.allclose(sym.encoder(x), h)
        mu, logvar = model.posterior(x)
        torch.testing.assert_close(mu, ref.z_mean(h))
        torch.testing.assert_close(logvar, ref.z_log_var(h))
        z = torch.randn(4, 2)
        torch.testing.assert_close(model.decode(z), ref.decoder(z))
