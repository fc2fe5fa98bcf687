"""Objectives and the importance-weighted likelihood: values by hand, with torch.distributions,
Monte Carlo, and a linear-Gaussian model whose log p(x) is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import model_config
from scipy import stats

from vaelab.evaluation.evaluate import iw_log_likelihood
from vaelab.models import build_model
from vaelab.models.objectives import OBJECTIVES, kl_weight


def small(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(kind="vae", arch="mlp", input_shape=[1, 6, 6], hidden=[16], latent_dim=3)
    cfg.update(kw)
    if cfg["arch"] != "mlp":
        del cfg["hidden"]  # the mlp body's option: refused for another body
    return build_model(model_config(**cfg)).eval()


def binary_images(n=16, seed=0):
    return (torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- elbo, recon, iwae
def test_elbo_is_reparameterised_recon_plus_closed_form_kl():
    m, x = small(), binary_images(5)
    with torch.no_grad():
        out = m(x, generator=gen(3))
        h = m.encoder(x)
        mu, lv = m.posterior_head.mu(h), m.posterior_head.logvar(h)
        z = mu + torch.randn(mu.shape, generator=gen(3)) * (0.5 * lv).exp()
        recon = torch.nn.functional.binary_cross_entropy_with_logits(m.decoder(z), x, reduction="none").sum((1, 2, 3))
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * lv).exp()),
                                               torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(out["recon"], recon)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["loss"], recon + kl)


def test_beta_warmup_and_capacity_weight_only_the_kl():
    m = small(beta=2.0, kl_warmup=0.5)
    x = binary_images(4)
    with torch.no_grad():
        full = m(x, generator=gen(1), progress=1.0)
        quarter = m(x, generator=gen(1), progress=0.25)  # half-way through the warm-up
    torch.testing.assert_close(full["loss"], full["recon"] + 2.0 * full["kl"])
    torch.testing.assert_close(quarter["loss"], quarter["recon"] + 1.0 * quarter["kl"])
    assert kl_weight(m.cfg, 0.0) == 0.0 and kl_weight(m.cfg, 0.9) == 2.0
    c = small(capacity=10.0, capacity_gamma=100.0)
    with torch.no_grad():
        out = c(x, generator=gen(1), progress=0.3)
    torch.testing.assert_close(out["loss"], out["recon"] + 100.0 * (out["kl"] - 3.0).abs())


def test_recon_objective_goes_through_the_posterior_mean():
    m, x = small(kind="ae", loss="mse", output_activation="sigmoid"), binary_images(3)
    with torch.no_grad():
        out = m(x)
        expect = (torch.sigmoid(m.decoder(m.posterior_head.linear(m.encoder(x)))) - x).square().mean((1, 2, 3))
    assert set(out) == {"loss", "recon"}
    torch.testing.assert_close(out["loss"], expect)


def test_iwae_objective_is_minus_the_log_mean_weight():
    m, x = small(objective="iwae", k=7), binary_images(4)
    with torch.no_grad():
        out = m(x, generator=gen(5))
        lw = m.log_weights(x, None, 7, generator=gen(5))
    torch.testing.assert_close(out["loss"], -(torch.logsumexp(lw, 0) - math.log(7)))
    torch.testing.assert_close(out["nelbo"], -lw.mean(0))
    assert (out["loss"] <= out["nelbo"] + 1e-5).all()  # Jensen: the k-sample bound is tighter


def test_iwae_trains_its_bound_down():
    from vaelab.configure import build_config
    from vaelab.data import ImageSet, Splits
    from vaelab.training.loop import fit

    x = (binary_images(128, seed=2) * 255).to(torch.uint8)
    cfg = build_config(None, None, ["data.name=npz", "data.path=unused.npz", "data.val=none", "model.objective=iwae",
                                    "model.k=3", "model.hidden=16", "model.latent_dim=2", "train.epochs=3",
                                    "train.batch_size=32", "train.device=cpu", "train.progress=false"])
    res = fit(cfg, None, splits=Splits(ImageSet(x, None), None, None), log=lambda *_: None)
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < losses[0] and "train_nelbo" in res.history[0]


def test_objective_registry_lists_what_each_needs():
    assert OBJECTIVES["recon"].requires == frozenset()
    assert OBJECTIVES["iwae"].requires == {"density"}
    assert {"prior", "stochastic"} <= OBJECTIVES["elbo"].requires


# ---------------------------------------------------------------------------- importance weights
def test_one_importance_sample_is_the_single_sample_estimate():
    m, x = small(), binary_images()
    with torch.no_grad():
        lw = m.log_weights(x, None, 1, generator=gen(3))
        h = m.encoder(x)
        mu, lv = m.posterior_head.mu(h), m.posterior_head.logvar(h)
        std = (0.5 * lv).exp()
        z = mu + torch.randn(mu.shape, generator=gen(3)) * std
        recon = torch.nn.functional.binary_cross_entropy_with_logits(m.decoder(z), x, reduction="none").sum((1, 2, 3))
        log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(-lw[0], recon + log_q - log_p, rtol=1e-5, atol=1e-3)


def test_mean_log_weight_is_the_elbo():
    """E[-log w] over posterior draws is the negative ELBO: the elbo loss with the closed-form KL."""
    m, x = small(), binary_images(8)
    with torch.no_grad():
        lw = m.log_weights(x, None, 4000, generator=gen(4))  # (K, B)
        losses = torch.stack([m(x, generator=gen(100 + i))["loss"] for i in range(400)])
    mc, neg_elbo = (-lw).mean(0), losses.mean(0)
    se = (-lw).std(0) / math.sqrt(lw.shape[0]) + losses.std(0) / math.sqrt(losses.shape[0])
    assert (torch.abs(mc - neg_elbo) < 5 * se + 1e-3).all(), (mc, neg_elbo, se)


def test_the_iw_bound_is_tighter_than_the_elbo():
    m, x = small(1), binary_images(32, seed=1)
    with torch.no_grad():
        elbo_loss = torch.stack([m(x, generator=gen(i))["loss"] for i in range(200)]).mean(0)
        iw = -iw_log_likelihood(m, x, None, 500, gen(9))
        iw1 = -iw_log_likelihood(m, x, None, 1, gen(9))
    assert float(iw.mean()) < float(elbo_loss.mean())
    assert (iw <= elbo_loss + 0.05).float().mean() > 0.9  # per image too, up to Monte-Carlo noise
    assert float(iw.mean()) < float(iw1.mean())


def _linear_gaussian_vae(w: torch.Tensor, b: torch.Tensor, exact: bool):
    """z ~ N(0, 1), x | z ~ N(w z + b, 1/2 I) in 2-D (the euclidean likelihood), so log p(x)
    is known in closed form; the encoder is set to the exact posterior or a shifted one."""
    m = small(input_shape=[1, 1, 2], hidden=[], latent_dim=1, loss="euclidean", output_activation="none")
    prec = 1 + 2 * float(w @ w)  # posterior precision 1 + w'w / s^2, s^2 = 1/2
    head = m.posterior_head
    with torch.no_grad():
        dec = next(layer for layer in m.decoder if isinstance(layer, torch.nn.Linear))
        dec.weight.copy_(w.view(2, 1))
        dec.bias.copy_(b)
        head.mu.weight.copy_((2 * w / prec).view(1, 2))
        head.mu.bias.fill_(float(-2 * (w @ b) / prec))
        head.logvar.weight.zero_()
        head.logvar.bias.fill_(-math.log(prec))
        if not exact:
            head.mu.bias.add_(0.3)  # shifted and too wide: a valid but imperfect proposal
            head.logvar.bias.add_(0.5)
    return m


def test_iw_on_a_linear_gaussian_model_recovers_log_px_in_nats():
    w, b = torch.tensor([0.8, -0.5]), torch.tensor([0.4, 0.6])
    x = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.9, 0.2], [0.0, 1.0]])
    cov = np.outer(w.numpy(), w.numpy()) + 0.5 * np.eye(2)
    log_px = np.array([stats.multivariate_normal(b.numpy(), cov).logpdf(xi) for xi in x.numpy()])
    xs = x.view(4, 1, 1, 2)
    with torch.no_grad():
        exact = _linear_gaussian_vae(w, b, exact=True)
        # exact posterior: every importance weight is p(x), whatever the chunking of the draws
        for rows in (8, 1 << 20):
            nll = exact.nll_offset() - iw_log_likelihood(exact, xs, None, 7, gen(0), rows=rows)
            np.testing.assert_allclose(nll.numpy(), -log_px, atol=2e-4)
        m = _linear_gaussian_vae(w, b, exact=False)
        lw = m.log_weights(xs, None, 4000, generator=gen(1))
        nll = m.nll_offset() - iw_log_likelihood(m, xs, None, 4000, gen(1))
    elbo = lw.double().mean(0).numpy() - m.nll_offset()
    assert (elbo < log_px - 0.05).all()  # a wrong posterior: the ELBO is below log p(x) ...
    wts = torch.exp(lw.double() - lw.double().max(0).values)
    se = (wts.std(0) / wts.mean(0) / math.sqrt(lw.shape[0])).numpy()  # delta method
    err = np.abs(-nll.numpy() - log_px)
    assert (err < 5 * se + 1e-4).all(), (err, se)  # ... and many importance samples close the gap
    assert (se < 0.02).all()


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_log_weights_decoded_in_pieces_are_the_same_numbers(arch):
    """Evaluation on the CPU decodes the draws in pieces of ``rows`` rows: the same draws, and
    the same numbers bit for bit, as one pass (a conditional model's labels sliced along)."""
    extra = {"arch": "conv", "channels": [4, 8], "dense": [8], "final_kernel": 3} if arch == "conv" else {}
    m = small(**extra)
    x = binary_images(37)
    with torch.no_grad():
        whole = m.log_weights(x, None, 3, generator=gen(2))
        for rows in (3, 20, 64, 3 * 36):
            torch.testing.assert_close(m.log_weights(x, None, 3, generator=gen(2), rows=rows), whole, rtol=0, atol=0)
    c = build_model(model_config(kind="cvae", arch="mlp", hidden=[16], latent_dim=2, num_classes=3,
                                input_shape=[1, 6, 6])).eval()
    y = torch.arange(37) % 3
    with torch.no_grad():
        torch.testing.assert_close(c.log_weights(x, y, 4, generator=gen(1), rows=10),
                                   c.log_weights(x, y, 4, generator=gen(1)), rtol=0, atol=0)


def test_many_importance_samples_stay_in_bounded_memory():
    """5,000 samples over a batch go through the decoder in chunks that fit the budget."""
    m, x = small(), binary_images(50)
    calls = []
    real = m.log_weights

    def spy(x, y, k, generator=None, q=None, rows=None):
        calls.append(k)
        return real(x, y, k, generator, q, rows)

    m.log_weights = spy
    with torch.no_grad():
        ll = iw_log_likelihood(m, x, None, 5000, gen(0), rows=50 * 512)
    assert sum(calls) == 5000 and max(calls) == 512 and torch.isfinite(ll).all()
