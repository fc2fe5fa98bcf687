"""The benchmarks' own models compute what they claim to.

bench/reference_conv_loop.py is written as a user would port the Keras tutorial, with
stock layers only; the issue asks that the layers stay the same functions (same
parameter count, same outputs for the same weights) as vaelab's conv-vae.
bench/mlp_floor.py times a hand-written mlp-vae step; its closed-form backward must give
autograd's gradients, or its timing would be of some other computation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sys

import torch
import torch.nn.functional as F

from vaelab.configure import build_config
from vaelab.models import build_model

REPO = Path(__file__).resolve().parent.parent


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_conv_loop_is_the_conv_vae_preset():
    reference = _bench_module("reference_conv_loop")
    ref = reference.ConvVAE().eval()
    cfg = build_config("conv-vae").model
    cfg.input_shape = [1, 28, 28]
    model = build_model(cfg).eval()
    theirs = list(ref.state_dict().values())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in theirs) == 134_165
    # Same layers in the same order (encoder, z_mean, z_log_var, decoder): copy the
    # reference's weights into the preset model.
    rank = {"encoder": 0, "posterior_head.mu": 1, "posterior_head.logvar": 2, "decoder": 3}
    order = sorted(model.state_dict(), key=lambda n: rank[n.split(".")[0] if n.startswith(("encoder", "decoder"))
                                                          else ".".join(n.split(".")[:2])])  # stable: keeps layer order
    assert [model.state_dict()[n].shape for n in order] == [p.shape for p in theirs]
    model.load_state_dict({n: p for n, p in zip(order, theirs)})

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = ref.encoder(x)
        # The symmetric variant (the benchmark's --padding symmetric) is a different function.
        sym = reference.ConvVAE(padding="symmetric").eval()
        sym.load_state_dict(dict(zip(sym.state_dict(), ref.state_dict().values())))
        assert not torch.allclose(sym.encoder(x), h)
        q = model.posterior(x)
        mu, logvar = q.mean, q.logvar
        torch.testing.assert_close(mu, ref.z_mean(h))
        torch.testing.assert_close(logvar, ref.z_log_var(h))
        z = torch.randn(4, 2)
        torch.testing.assert_close(model.decode(z), ref.decoder(z))


def test_mlp_floor_hand_step_gradients_are_autograds():
    sys.path.insert(0, str(REPO / "bench"))  # mlp_floor imports bench/common.py
    try:
        floor = _bench_module("mlp_floor")
    finally:
        sys.path.remove(str(REPO / "bench"))
    gen = torch.Generator().manual_seed(0)
    params = floor.init_params(seed=3)
    x = torch.rand(6, 784, generator=gen)
    eps = torch.randn(6, 20, generator=gen)
    # Products in fp32 (the benchmark runs them in bf16) against autograd on the tutorial's
    # formulas, fc21 and fc22 being the two halves of the stacked head.
    loss, grads = floor.hand_step(params, x, eps, dtype=torch.float32)
    leaves = [p.clone().requires_grad_() for p in params]
    w1, b1, w2, b2, w3, b3, w4, b4 = leaves
    h1 = F.relu(F.linear(x, w1, b1))
    mu, logvar = F.linear(h1, w2[:20], b2[:20]), F.linear(h1, w2[20:], b2[20:])
    z = mu + eps * torch.exp(0.5 * logvar)
    recon = F.binary_cross_entropy(torch.sigmoid(F.linear(F.relu(F.linear(z, w3, b3)), w4, b4)), x,
                                   reduction="none").sum(1)
    want = recon - 0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    want.mean().backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-3)
    for got, leaf in zip(grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-4, atol=1e-6)
