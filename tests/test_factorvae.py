"""FactorVAE (Kim & Mnih 2018): permute_dims, the discriminator's TC estimate against the
analytic total correlation of a Gaussian, the loss by hand, the two optimisation steps
through ``fit``, bit-exact resume, one-line refusals, and the tools on a 1-epoch run."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import model_config, one_line, run_main

from vaelab.errors import ConfigError
from vaelab.models import MODELS, build_model
from vaelab.models.factorvae import (
    build_discriminator,
    discriminator_loss,
    permute_dims,
    tc_estimate,
)
from vaelab.training import checkpoint
from vaelab.training.loop import fit

SMALL = ["model.kind=factor-vae", "model.factorvae.disc_hidden=16,16"]


def quiet(msg: str) -> None:
    pass


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- permute_dims
def test_permute_dims_keeps_each_column_and_breaks_the_joint():
    n = 200
    base = torch.arange(n, dtype=torch.float32)
    z = torch.stack([base, base + 1000, -base], 1)  # the three columns determine each other
    p = permute_dims(z, gen(0))
    assert p.shape == z.shape
    for j in range(3):  # each column: the same multiset of values
        assert torch.equal(p[:, j].sort().values, z[:, j].sort().values)
    # the joint is broken: few rows keep their columns together (1 expected per pair of columns),
    # and the columns no longer correlate
    assert int((p[:, 1] == p[:, 0] + 1000).sum()) <= 5 and int((p[:, 2] == -p[:, 0]).sum()) <= 5
    c = np.corrcoef(p.T.numpy())
    assert np.abs(c[np.triu_indices(3, 1)]).max() < 0.25  # was exactly +-1
    # each column its own permutation; the same generator state gives the same shuffle
    assert not torch.equal(p[:, 0] - z[:, 0], p[:, 1] - z[:, 1])
    assert torch.equal(permute_dims(z, gen(0)), p) and not torch.equal(permute_dims(z, gen(1)), p)
    with pytest.raises(ValueError, match=r"codes \(B, D\)"):
        permute_dims(torch.zeros(2, 3, 4))


# ---------------------------------------------------------------------------- the TC estimate: an independent reference
def test_a_trained_discriminator_estimates_the_total_correlation_of_a_gaussian():
    """Trained alone on codes z ~ N(0, Sigma) against permute_dims(z), the discriminator's mean
    logit difference approaches TC = KL(N(0, Sigma) || prod N(0, Sigma_jj)) = -1/2 log det(corr),
    and its per-code logit difference follows the analytic log-ratio."""
    torch.manual_seed(0)
    corr = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
    scale = torch.tensor([1.0, 2.0, 0.5])
    sigma = corr * scale[:, None] * scale[None, :]
    dist = torch.distributions.MultivariateNormal(torch.zeros(3), sigma)
    tc_true = -0.5 * math.log(torch.linalg.det(corr).item())  # 0.66 nats
    d = build_discriminator(3, [64, 64])
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.9))
    for step in range(600):
        if step == 400:  # a smaller step to settle (the estimate wanders by ~0.07 nats at 2e-3)
            opt.param_groups[0]["lr"] = 4e-4
        loss, _ = discriminator_loss(d, dist.sample((512,)))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    z = dist.sample((20000,))
    with torch.no_grad():
        est = tc_estimate(d(z))
        acc = discriminator_loss(d, z)[1].mean().item()
    marginals = torch.distributions.Normal(0.0, scale)
    log_ratio = dist.log_prob(z) - marginals.log_prob(z).sum(1)  # log q(z) / prod q(z_j), exact
    assert log_ratio.mean().item() == pytest.approx(tc_true, abs=0.03)  # the reference itself
    assert est.mean().item() == pytest.approx(tc_true, abs=0.1)  # seeds 0-3 gave 0.63-0.70
    assert np.corrcoef(est.numpy(), log_ratio.numpy())[0, 1] > 0.95
    assert acc > 0.6  # it does tell the two apart
    # an untrained discriminator knows nothing: its estimate is not the TC
    fresh = build_discriminator(3, [64, 64])
    with torch.no_grad():
        assert abs(tc_estimate(fresh(z)).mean().item() - tc_true) > 0.3


# ---------------------------------------------------------------------------- the loss, by hand
def small_model(**kw):
    torch.manual_seed(0)
    base = {"kind": "factor-vae", "arch": "mlp", "input_shape": [1, 6, 6], "hidden": [16], "latent_dim": 3,
            "options": {"factorvae": {"disc_hidden": [8, 8], "gamma": 7.0}}}
    base.update(kw)
    return build_model(model_config(**base))


def test_the_loss_is_the_elbo_plus_gamma_times_the_discriminators_estimate():
    m = small_model()
    assert m.cfg.objective == "factorvae" and m.cfg.posterior == "gaussian" and m.cfg.prior == "normal"
    assert "density" in m.capabilities  # the ELBO part is a bound of the model it trains
    x = torch.rand(10, 1, 6, 6, generator=gen(0))
    out = m(x, generator=gen(1))
    assert set(out) == {"loss", "recon", "kl", "tc", "disc", "disc_acc"}
    assert all(v.shape == (10,) for v in out.values())
    with torch.no_grad():
        q = m.posterior(x)
        g = gen(1)
        z = q.rsample(generator=g)
        recon = m.recon_loss(m.decode_logits(z, None), x)
        kl = 0.5 * (q.mean.square() + q.logvar.exp() - 1 - q.logvar).sum(1)
        d = m.critics["disc"]
        logits = d(z)
        perm = permute_dims(z, g)
        lp, lr = logits.log_softmax(1), d(perm).log_softmax(1)
        disc = -0.5 * (lp[:, 0] + lr[:, 1])
        acc = 0.5 * ((logits[:, 0] > logits[:, 1]).float() + (d(perm)[:, 1] > d(perm)[:, 0]).float())
    torch.testing.assert_close(out["recon"], recon)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["tc"], logits[:, 0] - logits[:, 1])
    torch.testing.assert_close(out["loss"], recon + kl + 7.0 * out["tc"])
    torch.testing.assert_close(out["disc"], disc)
    torch.testing.assert_close(out["disc_acc"], acc)
    # the discriminator's loss reaches the discriminator alone; the TC term reaches the encoder
    enc = list(m.encoder.parameters()) + list(m.posterior_head.parameters())
    g_disc = torch.autograd.grad(out["disc"].sum(), enc, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in g_disc)
    g_tc = torch.autograd.grad(out["tc"].sum(), enc, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_tc)
    # the discriminator: 8, 8 hidden, leaky ReLU 0.2, two logits
    linears = [mod for mod in d if isinstance(mod, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(3, 8), (8, 8), (8, 2)]
    assert all(mod.negative_slope == 0.2 for mod in d if isinstance(mod, torch.nn.LeakyReLU))


def test_under_bf16_autocast_the_discriminator_follows_the_run_unless_disc_fp32():
    """Mixed precision on CPU wraps the forward pass in bf16 autocast. By default the
    discriminator runs under it too (its logits bf16-rounded, returned as fp32); with
    disc_fp32 its pass leaves autocast, and the TC term comes from fp32 logits."""
    x = torch.rand(10, 1, 6, 6, generator=gen(0))
    m = small_model()
    assert m.cfg.opts("factorvae").disc_fp32 is False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, generator=gen(1))
        z = m.posterior(x).rsample(generator=gen(1))
        logits = m.critics["disc"](z)
    assert logits.dtype == torch.bfloat16 and out["tc"].dtype == torch.float32
    torch.testing.assert_close(out["tc"], tc_estimate(logits.float()), rtol=0, atol=0)
    on = small_model(options={"factorvae": {"disc_hidden": [8, 8], "gamma": 7.0, "disc_fp32": True}})
    with torch.no_grad():
        ref = on(x, generator=gen(1))  # no autocast: fp32 throughout, either way
        torch.testing.assert_close(ref["tc"], tc_estimate(on.critics["disc"](on.posterior(x).rsample(generator=gen(1)))))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = on(x, generator=gen(1))
            z_on = on.posterior(x).rsample(generator=gen(1))
            bf16 = on.critics["disc"](z_on)
        want = tc_estimate(on.critics["disc"](z_on.float()))  # the same codes, the discriminator in fp32
    torch.testing.assert_close(mixed["tc"], want, rtol=0, atol=0)
    torch.testing.assert_close(mixed["disc"], discriminator_loss(on.critics["disc"], z_on, gen_after_rsample(on, x))[0],
                               rtol=0, atol=0)
    assert not torch.equal(tc_estimate(bf16.float()), want)  # bf16 would have rounded them
    from vaelab.configure import build_config

    for text, value in (("true", True), ("1", True), ("0", False), ("no", False)):  # the CLI gives "0" as an int
        cfg = build_config(None, overrides=["model.kind=factor-vae", f"model.factorvae.disc_fp32={text}"])
        assert cfg.model.opts("factorvae").disc_fp32 is value
    with pytest.raises(ConfigError, match="disc_fp32 must be true or false, got 2"):
        build_config(None, overrides=["model.kind=factor-vae", "model.factorvae.disc_fp32=2"])


def gen_after_rsample(m, x) -> torch.Generator:
    """gen(1) after the objective's one posterior draw (its permutation comes next)."""
    g = gen(1)
    m.posterior(x).rsample(generator=g)
    return g


def test_the_paper_defaults_and_other_posteriors_and_priors():
    cfg = model_config(kind="factor-vae", latent_dim=10)
    o = cfg.opts("factorvae")
    assert (o.gamma, o.disc_hidden, o.disc_lr, o.disc_beta1, o.disc_beta2) == (35.0, [1000] * 5, 1e-4, 0.5, 0.9)
    assert MODELS["factor-vae"].objective == "factorvae"
    # two stacked Gaussian layers and a VampPrior also give flat codes and a KL: they train
    for kw in ({"posterior": "gaussian2", "prior": "hierarchical", "latent_dims": [3, 2], "hidden2": [8]},
               {"prior": "vamp", "vamp_components": 3}):
        m = small_model(**kw)
        out = m(torch.rand(6, 1, 6, 6, generator=gen(2)), generator=gen(3))
        out["loss"].mean().backward()
        assert all(torch.isfinite(v).all() and v.shape == (6,) for v in out.values())
        assert m.critics["disc"][0].in_features == m.cfg.latent_dim


# ---------------------------------------------------------------------------- training through fit
def test_one_epoch_moves_both_groups_with_their_own_optimizers(tiny_config):
    cfg = tiny_config(*SMALL, "train.epochs=1", "model.factorvae.disc_lr=3e-4", "model.factorvae.disc_beta1=0.4")
    torch.manual_seed(0)
    from dataclasses import replace

    before = build_model(replace(cfg.model, input_shape=[1, 28, 28])).state_dict()
    before = {k: v.clone() for k, v in before.items()}
    res = fit(cfg, None, log=quiet)
    opts = res.trainer.optimizers
    assert list(opts) == ["model", "disc"]
    disc_params = list(res.model.critics.parameters())
    g_model, g_disc = opts["model"].param_groups[0], opts["disc"].param_groups[0]
    assert (g_disc["lr"], g_disc["betas"]) == (pytest.approx(3e-4), (0.4, 0.9))
    assert (g_model["lr"], g_model["betas"]) == (pytest.approx(1e-3), (0.9, 0.999))  # the train config's
    assert {id(p) for p in g_disc["params"]} == {id(p) for p in disc_params}
    assert not {id(p) for p in g_model["params"]} & {id(p) for p in disc_params}
    assert all(opts["disc"].state[p]["step"] == 4 for p in disc_params)  # 256 shapes, batch 64
    row = res.history[-1]
    for k in ("train_loss", "train_recon", "train_kl", "train_tc", "train_disc", "train_disc_acc", "lr_disc"):
        assert math.isfinite(row[k]), k
    assert row["lr_disc"] == pytest.approx(3e-4)
    assert 0 <= row["train_disc_acc"] <= 1 and row["train_disc"] > 0
    moved = [k for k, v in res.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("critics.disc.") for k in moved) and any(k.startswith("encoder.") for k in moved)


def test_resume_is_bit_exact(tiny_config, tmp_path):
    whole = fit(tiny_config(*SMALL, "train.epochs=3"), tmp_path / "whole", log=quiet)
    fit(tiny_config(*SMALL, "train.epochs=2"), tmp_path / "part", log=quiet)
    _, meta = checkpoint._load(tmp_path / "part" / "checkpoint.safetensors")
    assert "param_groups-disc" in meta and "optim_scalars-disc" in meta
    resumed = fit(tiny_config(*SMALL, "train.epochs=3"), tmp_path / "part", resume=True, log=quiet)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b) and any(k.startswith("critics.disc.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("model", "disc"):
        sa, sb = whole.trainer.optimizers[name].state_dict(), resumed.trainer.optimizers[name].state_dict()
        for i in sa["state"]:
            assert torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"])
            assert torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert whole.history[-1]["train_tc"] == resumed.history[-1]["train_tc"]


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("overrides, match", [
    (["model.factorvae.gamma=-1"], r"model\.factorvae\.gamma must be >= 0"),
    (["model.factorvae.disc_hidden=16,0"], r"model\.factorvae\.disc_hidden must be one or more positive widths"),
    (["model.factorvae.disc_lr=0"], r"model\.factorvae\.disc_lr must be > 0, got 0"),
    (["model.factorvae.disc_beta1=1"], r"model\.factorvae\.disc_beta1 must be in \[0, 1\), got 1"),
    (["model.factorvae.gama=3"], r"unknown option\(s\) model\.factorvae\.gama of factorvae; its options: gamma, "),
    (["model.factorvae.gamma=lots"], r"model\.factorvae\.gamma must be float, got 'lots'"),
    (["model.posterior=point"], (r"objective factorvae needs a Gaussian posterior .* and a prior .*, got "
                                 r"model\.posterior=point and model\.prior=normal")),
    (["model.prior=none"], r"got model\.posterior=gaussian and model\.prior=none"),
    (["model.beta=4"], r"model\.beta"),
])
def test_bad_options_are_one_line(tiny_config, overrides, match):
    with pytest.raises(ConfigError) as e:
        tiny_config(*SMALL, *overrides)
    assert re.search(match, one_line(e)), one_line(e)


def test_factorvae_options_on_another_objective_are_refused(tiny_config):
    with pytest.raises(ConfigError, match="model.factorvae holds options of the objective factorvae, and "
                                          "model.objective is elbo"):
        tiny_config("model.factorvae.gamma=3")


# ---------------------------------------------------------------------------- the tools on a 1-epoch run
def test_tools_work_on_a_one_epoch_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "fv"
    fit(tiny_config(*SMALL, "train.epochs=1", "data.val=0.25"), run_dir, log=quiet)
    rc, out, err = run_main(capsys, "eval", run_dir, "--iw-samples", "5", "--seed", "0")
    assert rc == 0, err
    assert all(f"\n  {k} " in out for k in ("tc", "disc", "disc_acc", "nll_iw"))  # printed with the others
    ev = json.loads((run_dir / "eval.json").read_text())
    for k in ("loss", "recon", "kl", "tc", "disc", "disc_acc", "nll_iw"):
        assert math.isfinite(ev[k]), k
    assert ev["loss"] == pytest.approx(ev["recon"] + ev["kl"] + 35.0 * ev["tc"], rel=1e-4, abs=1e-3)
    # the importance-weighted bound is at least the ELBO (nll below recon + kl, up to its own noise)
    assert ev["nll_iw"] < ev["recon"] + ev["kl"] + 1.0
    rc, _, err = run_main(capsys, "sample", run_dir, "--n", "4", "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, _, err = run_main(capsys, "report", run_dir, "--out", tmp_path / "r.html")
    assert rc == 0, err
    assert "factor-vae" in (tmp_path / "r.html").read_text()
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vaelab.api import Run
    from vaelab.export.onnx import resolve_parts

    run = Run.load(run_dir, device="cpu")
    assert resolve_parts(run.model, None) == ["encoder", "decoder", "scorer", "sampler"]  # no discriminator
    rc, _, err = run_main(capsys, "export", run_dir, "--onnx", tmp_path / "onnx", "--parts", "encoder,decoder")
    assert rc == 0, err  # each file checked against PyTorch by onnxruntime before it is written
    manifest = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert list(manifest["parts"]) == ["encoder", "decoder"]
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    info = TestClient(make_app(Explorer(run, n=32))).get("/api/info").json()
    assert info["latent_dim"] == 2
