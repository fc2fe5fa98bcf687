"""The model families on the contract, each checked against a computation by hand:
beta-TCVAE, WAE-MMD, InfoVAE, VampPrior, two stochastic layers, VQ-VAE, denoising, sparse."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import model_config
from torch.distributions import Normal

from vaelab.errors import ConfigError, VaelabError
from vaelab.models import MODELS, build_model, require
from vaelab.models.estimators import mmd, tc_decomposition
from vaelab.models.model import corrupt, sparsity_penalty


def model(**kw):
    torch.manual_seed(0)
    base = dict(arch="mlp", input_shape=[1, 6, 6], hidden=[16], latent_dim=3)
    base.update(kw)
    if base["arch"] != "mlp":
        del base["hidden"]  # the mlp body's option: refused for another body
    return build_model(model_config(**base))


def images(n=8, seed=0):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def log_n(z, mu, lv):
    return Normal(mu, (0.5 * lv).exp()).log_prob(z).sum(-1)


def test_every_family_is_a_registry_entry_that_builds_and_trains_a_step():
    extra = {"hvae": dict(latent_dims=[4, 2]), "vamp": dict(vamp_components=5),
             "vq-vae": dict(arch="conv", latent="conv", channels=[4, 3], codebook_size=8, input_shape=[1, 8, 8])}
    for kind in MODELS:
        m = model(kind=kind, num_classes=2, **extra.get(kind, {}))
        m.train()
        x = torch.rand(6, *m.cfg.input_shape)
        y = torch.arange(6) % 2 if m.conditional else None
        out = m(x, y, generator=gen(0), dataset_size=100)
        out["loss"].mean().backward()
        assert all(v.shape == (6,) and torch.isfinite(v).all() for v in out.values()), kind
        assert sum(p.grad is not None for p in m.parameters()) > 0


def test_tcvae_splits_the_kl_and_weighs_its_parts():
    m = model(kind="beta-tcvae", beta=6.0, tc_alpha=1.0, tc_gamma=2.0)
    x = images(10)
    with torch.no_grad():
        out = m(x, generator=gen(1), dataset_size=600)
        q = m.posterior(x)
        z = q.rsample(generator=gen(1))
        t = tc_decomposition(z, q.mean, q.logvar, 600, estimator="mss")  # the default estimator
        assert not torch.allclose(t["tc"], tc_decomposition(z, q.mean, q.logvar, 600, estimator="mws")["tc"])
    for k in ("mi", "tc", "dwkl"):
        torch.testing.assert_close(out[k], t[k])
    # the three parts add up to log q(z|x) - log p(z) at the draw
    torch.testing.assert_close(out["mi"] + out["tc"] + out["dwkl"],
                               log_n(z, q.mean, q.logvar) - Normal(0.0, 1.0).log_prob(z).sum(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["loss"], out["recon"] + out["mi"] + 6.0 * out["tc"] + 2.0 * out["dwkl"])
    with pytest.raises(ConfigError, match="needs the size of the data set"):
        m(x, generator=gen(1))
    mws = model(kind="beta-tcvae", beta=6.0, tc_alpha=1.0, tc_gamma=2.0, tc_estimator="mws")
    mws.load_state_dict(m.state_dict())
    with torch.no_grad():
        out = mws(x, generator=gen(1), dataset_size=600)
    torch.testing.assert_close(out["tc"], tc_decomposition(z, q.mean, q.logvar, 600, estimator="mws")["tc"])


def test_wae_adds_the_mmd_to_prior_draws():
    m = model(kind="wae", mmd_weight=10.0)
    assert m.capabilities == {"continuous", "prior"}  # a point posterior: no density
    x = images(12)
    with torch.no_grad():
        out = m(x, generator=gen(2))
        z = m.posterior(x).mean
        zp = torch.randn((12, 3), generator=gen(2))  # the prior's draw, from the same generator
        expect = mmd(z, zp, "imq", [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0])
    torch.testing.assert_close(out["mmd"], expect.expand(12))
    torch.testing.assert_close(out["loss"], out["recon"] + 10.0 * expect)


def test_infovae_weights_kl_and_mmd():
    m = model(kind="infovae", info_alpha=0.25, mmd_weight=3.0, mmd_kernel="rbf")
    x = images(12)
    with torch.no_grad():
        out = m(x, generator=gen(3))
    torch.testing.assert_close(out["loss"], out["recon"] + 0.75 * out["kl"] + 2.25 * out["mmd"])
    with pytest.raises(ConfigError, match="mmd_scales"):
        model_config(kind="infovae", mmd_scales=[1.0, 0.0])


def test_vampprior_is_the_mixture_of_posteriors_at_the_pseudo_inputs():
    m = model(kind="vamp", vamp_components=4).eval()
    z = torch.randn(5, 3, generator=gen(4))
    with torch.no_grad():
        u = m.prior_net.pseudo_inputs()
        assert u.shape == (4, 1, 6, 6) and u.min() >= 0 and u.max() <= 1
        q = m.posterior(u)
        by_hand = torch.logsumexp(log_n(z[:, None], q.mean[None], q.logvar[None]), 1) - math.log(4)
        torch.testing.assert_close(m.prior(None, 5).log_prob(z), by_hand)
        draws = m.prior(None, 5).sample((1000,), generator=gen(5))
    assert draws.shape == (1000, 5, 3)
    # no closed-form KL: the elbo's KL is log q(z|x) - log p(z) at the sample
    x = images(5)
    with torch.no_grad():
        out = m(x, generator=gen(6))
        qx = m.posterior(x)
        zs = qx.rsample(generator=gen(6))
        torch.testing.assert_close(out["kl"], log_n(zs, qx.mean, qx.logvar) - m.prior(None, 5).log_prob(zs))
    assert "density" in m.capabilities
    with pytest.raises(ConfigError, match="model.vamp.components must be at least 1"):
        model_config(kind="vamp", vamp_components=0)  # the old flat name: an alias
    with pytest.raises(ConfigError, match="model.vamp.components must be at least 1"):
        model_config(kind="vamp", options={"vamp": {"components": 0}})


def test_two_stochastic_layers_chain_and_decode_from_z1():
    m = model(kind="hvae", latent_dims=[4, 2], hidden=[16], hidden2=[8]).eval()
    assert m.cfg.latent_dim == 6
    x = images(5)
    with torch.no_grad():
        q = m.posterior(x)
        z = q.rsample(generator=gen(7))  # (5, 6) = [z1, z2]
        z1, z2 = z[:, :4], z[:, 4:]
        head = m.posterior_head
        q1, q2 = head.z1(m.encoder(x)), head.z2(z1)
        torch.testing.assert_close(q.log_prob(z), log_n(z1, q1.mean, q1.logvar) + log_n(z2, q2.mean, q2.logvar))
        p1 = m.prior_net.z1(z2)
        torch.testing.assert_close(m.prior(None, 5).log_prob(z),
                                   Normal(0.0, 1.0).log_prob(z2).sum(1) + log_n(z1, p1.mean, p1.logvar))
        # the decoder reads z1 only
        moved = torch.cat([z1, z2 + 5.0], 1)
        torch.testing.assert_close(m.decode(z), m.decode(moved))
        lw = m.log_weights(x, None, 7, generator=gen(8))
    assert lw.shape == (7, 5) and torch.isfinite(lw).all()


def test_vq_snaps_to_the_nearest_code_and_passes_gradients_straight_through():
    m = model(kind="vq-vae", arch="conv", latent="conv", channels=[4, 3], codebook_size=8, input_shape=[1, 8, 8])
    assert m.capabilities == {"codebook"}
    x = torch.rand(4, 1, 8, 8, generator=gen(9))
    q = m.posterior(x)
    codes = m.posterior_head.codes
    ze = q.encoded.view(4, 3, 2, 2).permute(0, 2, 3, 1).reshape(-1, 3)  # (B*h*w, D)
    nearest = torch.cdist(ze.detach(), codes.detach()).argmin(1)
    assert torch.equal(q.indices.flatten(), nearest)
    torch.testing.assert_close(q.quantized.view(4, 3, 2, 2).permute(0, 2, 3, 1).reshape(-1, 3), codes[nearest])
    out = m(x)
    torch.testing.assert_close(out["commit"], (q.encoded - q.quantized).square().sum(1).detach(), rtol=1e-5, atol=1e-6)
    out["recon"].sum().backward()  # the reconstruction reaches the encoder through the straight-through code
    assert m.encoder[0].weight.grad is not None and m.encoder[0].weight.grad.abs().sum() > 0
    for tool, cap in (("a latent traversal", "continuous"), ("nll_iw", "density")):
        with pytest.raises(VaelabError, match=f"{tool} needs"):
            require(m, cap, tool)
    with pytest.raises(ConfigError, match="codebook_size"):
        model_config(kind="vq-vae", arch="conv", latent="conv", codebook_size=0)
    with pytest.raises(ConfigError, match="model.posterior=vq quantises a grid"):
        model_config(kind="vq-vae")


def test_vq_ema_codebook_moves_towards_its_assigned_outputs():
    m = model(kind="vq-vae", arch="conv", latent="conv", channels=[4, 3], codebook_size=8, input_shape=[1, 8, 8],
              vq_ema=True, vq_decay=0.5)
    head = m.posterior_head
    m.train()
    x = torch.rand(16, 1, 8, 8, generator=gen(10))
    before = head.codes.clone()
    with torch.no_grad():
        q = head(m.encoder(x))
    used = torch.unique(q.indices)
    unused = [k for k in range(8) if k not in used.tolist()]
    ze = q.encoded.view(16, 3, 2, 2).permute(0, 2, 3, 1).reshape(-1, 3)
    for k in used.tolist():  # decay 0.5: the new code is between the old one and its outputs' mean
        target = ze[q.indices.flatten() == k].mean(0)
        assert (head.codes[k] - target).norm() < (before[k] - target).norm() + 1e-6
    for k in unused:  # an unused code stays where it was (up to the Laplace smoothing)
        torch.testing.assert_close(head.codes[k], before[k], rtol=1e-3, atol=1e-4)
    assert "codebook" not in m(x)  # no codebook loss term with an EMA codebook


def test_perplexity_and_dead_codes():
    m = model(kind="vq-vae", arch="conv", latent="conv", channels=[4, 3], codebook_size=8, input_shape=[1, 8, 8])
    head = m.posterior_head
    assert head.perplexity(torch.tensor([5, 5, 5, 5, 5, 5, 5, 5])) == pytest.approx(8.0)
    assert head.perplexity(torch.tensor([9, 0, 0, 0, 0, 0, 0, 0])) == pytest.approx(1.0)
    from vaelab.data import ImageSet
    from vaelab.evaluation.evaluate import evaluate

    x8 = (torch.rand(20, 1, 8, 8, generator=gen(11)) * 255).to(torch.uint8)
    r = evaluate(m.eval(), ImageSet(x8, None), iw_samples=10)
    idx = m.posterior(x8.float() / 255).indices.flatten()
    counts = torch.bincount(idx, minlength=8)
    assert r["dead_codes"] == int((counts == 0).sum()) and r["perplexity"] == pytest.approx(head.perplexity(counts))
    assert "nll_iw" not in r and "active_units" not in r and {"recon", "commit", "codebook"} <= set(r)
    assert "ssim" not in r and "mse" in r  # SSIM needs 11x11 images: not reported for 8x8 ones


def test_corruption_is_what_it_says_and_only_while_training():
    x = torch.full((4, 1, 50, 50), 0.5)
    masked = corrupt(x, "mask", 0.3, gen(12))
    assert abs(float((masked == 0).float().mean()) - 0.3) < 0.03 and set(masked.unique().tolist()) <= {0.0, 0.5}
    sp = corrupt(x, "salt_pepper", 0.2, gen(12))
    hit = sp != 0.5
    assert abs(float(hit.float().mean()) - 0.2) < 0.03 and set(sp[hit].unique().tolist()) == {0.0, 1.0}
    g = corrupt(x, "gaussian", 0.1, gen(12))
    assert abs(float((g - x).std()) - 0.1) < 0.01 and g.min() >= 0 and g.max() <= 1
    m = model(kind="ae", corrupt="mask", corrupt_level=0.5, loss="mse")
    xb = images(4)
    seen = []
    m.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    m.train()
    m(xb, generator=gen(13))
    m.eval()
    m(xb)
    assert (seen[0] == 0).float().mean() > 0.3 and torch.equal(seen[1], xb.flatten(1) if seen[1].dim() == 2 else xb)


def test_sparsity_penalties():
    z = torch.tensor([[0.5, -1.0, 0.0], [0.1, 0.2, 0.3]])
    torch.testing.assert_close(sparsity_penalty(z, "l1", 0.05), torch.tensor([1.5, 0.6]))
    a = torch.tensor([[0.2, 0.9], [0.4, 0.7]])
    rho = a.mean(0)
    kl = (0.1 * torch.log(0.1 / rho) + 0.9 * torch.log(0.9 / (1 - rho))).sum()
    torch.testing.assert_close(sparsity_penalty(a, "kl", 0.1), kl.expand(2))
    m = model(kind="ae", sparsity="l1", sparsity_weight=0.5, loss="mse")
    out = m(images(3))
    torch.testing.assert_close(out["loss"], out["recon"] + 0.5 * out["sparsity"])
    with pytest.raises(ConfigError, match="latent_activation=sigmoid"):
        model_config(kind="ae", sparsity="kl")
