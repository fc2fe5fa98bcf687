"""The adversarial autoencoder (vaelab.models.aae): its losses against the BCE formulas with a
fixed discriminator, q(z) pulled towards the prior, two optimizers with their own settings,
the label-conditioned discriminator, resume, and the tools on a trained run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli_error, model_config, run_main
from torch import nn

from vaelab.distributions import PointMass
from vaelab.errors import ConfigError
from vaelab.models import MODELS, OBJECTIVES, build_model
from vaelab.models.aae import AAEOptions, aae
from vaelab.models.contract import Objective
from vaelab.training import checkpoint
from vaelab.training.loop import fit


def quiet(msg: str) -> None:
    pass


def small(**kw):
    torch.manual_seed(0)
    base = {"kind": "aae", "arch": "mlp", "input_shape": [1, 6, 6], "hidden": [16], "latent_dim": 3}
    base.update(kw)
    return build_model(model_config(**base))


def set_linear_disc(model, w: torch.Tensor, b: float) -> None:
    """A fixed discriminator whose logit is w.z + b."""
    lin = nn.Linear(len(w), 1)
    with torch.no_grad():
        lin.weight.copy_(w[None])
        lin.bias.fill_(b)
    model.critics["disc"] = lin


# ---------------------------------------------------------------------------- the losses
def test_with_a_fixed_optimal_discriminator_the_losses_are_the_bce_formulas():
    m = small()
    n, d = 512, 3
    mu = torch.tensor([1.0, -0.5, 2.0])
    # Codes from q = N(mu, I) against the prior N(0, I): the optimal D(z) = p(z) / (p(z) + q(z)),
    # whose logit log p(z) - log q(z) = -mu.z + |mu|^2 / 2 is linear in z.
    set_linear_disc(m, -mu, float(mu.square().sum() / 2))
    z = mu + torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    parts = aae(m, x, None, PointMass(z), generator=torch.Generator().manual_seed(3))
    zp = torch.randn(n, d, generator=torch.Generator().manual_seed(3))  # the prior draws it made
    dz, dp = torch.sigmoid(z @ -mu + mu.square().sum() / 2), torch.sigmoid(zp @ -mu + mu.square().sum() / 2)
    ones, zeros = torch.ones(n), torch.zeros(n)
    bce = lambda p, t: F.binary_cross_entropy(p, t, reduction="none")
    assert torch.allclose(parts["adversarial"], bce(dz, ones), atol=1e-5)
    assert torch.allclose(parts["disc"], bce(dp, ones) + bce(dz, zeros), atol=1e-5)
    recon = m.recon_loss(m.decode_logits(z), x)
    assert torch.allclose(parts["recon"], recon) and torch.allclose(parts["loss"], recon + parts["adversarial"])
    assert torch.equal(parts["disc_acc"], ((dp > 0.5).double() + (dz < 0.5).double()) / 2)
    # The optimal discriminator's loss is 2 log 2 - 2 JSD(p, q): below 2 log 2 when q != p.
    assert parts["disc"].mean() < 2 * math.log(2) - 0.1


def test_when_q_is_the_prior_the_optimal_discriminator_says_one_half():
    m = small(options={"aae": {"adversarial_weight": 3.0}})
    set_linear_disc(m, torch.zeros(3), 0.0)  # D = 1/2 everywhere: optimal when q(z) = p(z)
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    x = torch.rand(64, 1, 6, 6)
    parts = aae(m, x, None, PointMass(z), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(parts["disc"], torch.full((64,), 2 * math.log(2)))
    assert torch.allclose(parts["adversarial"], torch.full((64,), math.log(2)))
    assert torch.allclose(parts["loss"], parts["recon"] + 3 * math.log(2))


def test_the_gaussian_encoder_feeds_its_draw_to_decoder_and_discriminator():
    m = small(posterior="gaussian")
    x = torch.rand(5, 1, 6, 6)
    q = m.posterior(x)
    g = torch.Generator().manual_seed(4)
    parts = aae(m, x, None, q, generator=g)
    g = torch.Generator().manual_seed(4)
    z = q.rsample(generator=g)
    assert not torch.allclose(z, q.mean)
    assert torch.allclose(parts["recon"], m.recon_loss(m.decode_logits(z), x))
    assert torch.allclose(parts["adversarial"], F.softplus(-m.critics["disc"](z).squeeze(1)))


def test_capabilities_no_density_but_a_prior_and_a_continuous_code():
    point, gauss = small(), small(posterior="gaussian")
    for m in (point, gauss):
        assert {"prior", "continuous"} <= m.capabilities and "density" not in m.capabilities
    assert "stochastic" in gauss.capabilities and "stochastic" not in point.capabilities
    assert MODELS["aae"].posterior == "point" and MODELS["aae"].prior == "normal"
    # The discriminator is the objective's own network, saved with the weights.
    assert any(k.startswith("critics.disc.") for k in point.state_dict())


# ---------------------------------------------------------------------------- training
def codes_of(model, shapes_arrays) -> torch.Tensor:
    x = torch.from_numpy(shapes_arrays[0]).float().div(255)[:, None]
    with torch.no_grad():
        return model.eval().encode(x)


def distance_to_prior(z: torch.Tensor) -> float:
    """|mean|^2 + |std - 1|^2 over the dimensions: 0 for codes distributed as N(0, I)."""
    return float(z.mean(0).square().sum() + (z.std(0) - 1).square().sum())


@pytest.mark.parametrize("posterior", ["point", "gaussian"])
def test_training_moves_the_codes_towards_the_prior(tiny_config, shapes_arrays, posterior):
    """Four short epochs on the 256 shapes; the same run with adversarial weight 0 (the same
    networks, data order and draws: the plain autoencoder, see the next test) is the control."""
    common = ["model.kind=aae", f"model.posterior={posterior}", "train.epochs=4", "train.batch_size=16"]
    plain = fit(tiny_config(*common, "model.aae.adversarial_weight=0"), None, log=quiet)
    pushed = fit(tiny_config(*common, "model.aae.adversarial_weight=50"), None, log=quiet)
    d_plain, d_pushed = distance_to_prior(codes_of(plain.model, shapes_arrays)), \
        distance_to_prior(codes_of(pushed.model, shapes_arrays))
    assert d_pushed < 0.5 * d_plain, (d_pushed, d_plain)
    # The encoder fools the discriminator more often than the plain autoencoder's does.
    assert pushed.history[-1]["train_adversarial"] < plain.history[-1]["train_adversarial"]


def test_adversarial_weight_zero_trains_the_plain_autoencoder(tiny_config):
    ae = fit(tiny_config("model.kind=ae", "train.epochs=1"), None, log=quiet).model.state_dict()
    aae0 = fit(tiny_config("model.kind=aae", "model.aae.adversarial_weight=0", "train.epochs=1"), None,
               log=quiet).model.state_dict()
    assert set(ae) == {k for k in aae0 if not k.startswith("critics.")}
    for k, v in ae.items():
        assert torch.equal(v, aae0[k]), k


def test_both_optimizers_step_with_their_own_settings(tiny_config):
    cfg = tiny_config("model.kind=aae", "model.aae.disc_lr=3e-3", "model.aae.disc_beta1=0.5",
                      "model.aae.disc_beta2=0.9", "train.lr=2e-3", "train.epochs=1")
    torch.manual_seed(0)
    res = fit(cfg, None, log=quiet)
    opts = res.trainer.optimizers
    assert list(opts) == ["model", "disc"]
    (gm,), (gd,) = opts["model"].param_groups, opts["disc"].param_groups
    assert (gm["lr"], gm["betas"]) == (pytest.approx(2e-3), (0.9, 0.999))
    assert (gd["lr"], gd["betas"]) == (pytest.approx(3e-3), (0.5, 0.9))
    disc = {id(p) for p in res.model.critics.parameters()}
    assert {id(p) for p in gd["params"]} == disc
    assert {id(p) for p in gm["params"]} | disc == {id(p) for p in res.model.parameters()}
    assert not {id(p) for p in gm["params"]} & disc
    assert all(opts["disc"].state[p]["step"] > 0 for p in gd["params"])
    assert all(opts["model"].state[p]["step"] > 0 for p in gm["params"])
    row = res.history[-1]
    assert row["lr"] == pytest.approx(2e-3) and row["lr_disc"] == pytest.approx(3e-3)
    assert {"train_loss", "train_recon", "train_adversarial", "train_disc", "train_disc_acc"} <= set(row)
    # No disc_lr: the discriminator follows train.lr.
    res = fit(tiny_config("model.kind=aae", "train.lr=2e-3", "train.epochs=1"), None, log=quiet)
    assert res.trainer.optimizers["disc"].param_groups[0]["lr"] == pytest.approx(2e-3)


def test_the_discriminator_step_descends_its_own_loss_alone(tiny_config, monkeypatch):
    """The adversarial term pushes the discriminator the other way; none of it reaches the disc step."""
    cfg = tiny_config("model.kind=aae", "model.aae.adversarial_weight=100", "model.aae.disc_beta1=0.5",
                      "train.epochs=1")
    entry, grads, seen = OBJECTIVES["aae"], [], []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        if self.param_groups[0]["betas"][0] == 0.5 and not grads:
            grads.append(torch.cat([p.grad.flatten() for p in self.param_groups[0]["params"]]).clone())
        return real_step(self, *a, **k)

    def fn(model, x, y, q, **k):
        parts = entry.fn(model, x, y, q, **k)
        if not seen:
            crit = list(model.critics.parameters())
            seen.append(torch.cat([g.flatten() for g in torch.autograd.grad(parts["disc"].mean(), crit,
                                                                            retain_graph=True)]))
        return parts

    monkeypatch.setitem(OBJECTIVES, "aae", Objective(fn, entry.requires, entry.description, options=entry.options,
                                                     check=entry.check, networks=entry.networks, steps=entry.steps,
                                                     drops=entry.drops))
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    fit(cfg, None, log=quiet)
    assert torch.allclose(grads[0], seen[0], atol=1e-6)


def test_supervised_discriminator_reads_the_training_labels(tiny_config, monkeypatch):
    cfg = tiny_config("model.kind=aae", "model.condition=onehot", "model.aae.supervised=true", "train.epochs=1")
    entry, calls = OBJECTIVES["aae"], []

    def fn(model, x, y, q, **k):
        inputs = []
        hook = model.critics["disc"][0].register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
        try:
            parts = entry.fn(model, x, y, q, **k)
        finally:
            hook.remove()
        calls.append((y, inputs))
        return parts

    monkeypatch.setitem(OBJECTIVES, "aae", Objective(fn, entry.requires, entry.description, options=entry.options,
                                                     check=entry.check, networks=entry.networks, steps=entry.steps,
                                                     drops=entry.drops))
    res = fit(cfg, None, log=quiet)
    k, d = res.config.model.num_classes, res.config.model.latent_dim
    assert k == 4 and res.model.critics["disc"][0].in_features == d + k
    assert len(calls) == 4  # 256 shapes in batches of 64, one epoch
    for y, inputs in calls:
        assert y is not None and len(inputs) == 3  # prior draws, detached codes, codes
        for v in inputs:
            assert torch.equal(v[:, d:], F.one_hot(y, k).float())
    # The label changes the discriminator's verdict on the same code.
    m = res.model.eval()
    z = torch.randn(8, d)
    from vaelab.models.aae import discriminator_logits

    assert not torch.allclose(discriminator_logits(m, z, torch.zeros(8, dtype=torch.long)),
                              discriminator_logits(m, z, torch.ones(8, dtype=torch.long)))


def test_resume_is_bit_exact(tiny_config, tmp_path):
    sets = ("model.kind=aae", "model.posterior=gaussian")
    whole = fit(tiny_config(*sets, "train.epochs=3"), tmp_path / "whole", log=quiet)
    fit(tiny_config(*sets, "train.epochs=2"), tmp_path / "part", log=quiet)
    _, meta = checkpoint._load(tmp_path / "part" / "checkpoint.safetensors")
    assert "param_groups-disc" in meta
    resumed = fit(tiny_config(*sets, "train.epochs=3"), tmp_path / "part", resume=True, log=quiet)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert any(k.startswith("critics.disc.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("model", "disc"):
        sa, sb = whole.trainer.optimizers[name].state_dict(), resumed.trainer.optimizers[name].state_dict()
        for i in sa["state"]:
            assert torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert whole.history[-1]["train_disc"] == resumed.history[-1]["train_disc"]


# ---------------------------------------------------------------------------- tools on a trained run
@pytest.fixture(scope="module")
def aae_run(tmp_path_factory, shapes_npz):
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=aae", "model.posterior=gaussian",
        "model.arch=mlp", "model.hidden=32", "model.latent_dim=2", "train.epochs=1", "train.batch_size=64",
        "train.device=cpu", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "aae", evaluate_after=False, log=quiet)


def test_eval_reports_no_nll(aae_run, capsys):
    assert "the aae model has no density" in cli_error(capsys, "eval", aae_run.run_dir, "--iw-samples", "5")
    rc, out, err = run_main(capsys, "eval", aae_run.run_dir)
    assert rc == 0, err
    ev = json.loads((aae_run.run_dir / "eval.json").read_text())
    assert "nll_iw" not in ev and "iw_samples" not in ev
    assert {"loss", "recon", "adversarial", "disc", "disc_acc", "mse"} <= set(ev)
    assert ev["loss"] == pytest.approx(ev["recon"] + ev["adversarial"], rel=1e-6)
    assert not [line for line in out.splitlines() if line.split()[:1] and line.split()[0].startswith("nll")]
    assert "nll_iw not applicable" in out and "has no density" in out


def test_sample_decodes_prior_draws(aae_run, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    rc, _out, err = run_main(capsys, "sample", aae_run.run_dir, "--n", "400", "--npz", npz, "--out",
                            tmp_path / "s.png")
    assert rc == 0, err
    assert (tmp_path / "s.png").is_file()
    with np.load(npz) as f:
        codes, images = torch.from_numpy(f["codes"]), f["images"]
    assert codes.shape == (400, 2) and images.shape == (400, 1, 28, 28)
    assert codes.mean(0).abs().max() < 0.2 and (codes.std(0) - 1).abs().max() < 0.15  # N(0, I) draws
    with torch.no_grad():
        decoded = aae_run.model.decode(codes[:8])
    assert np.array_equal((decoded.numpy() * 255).round().astype(np.uint8), images[:8])


def test_onnx_export_leaves_the_discriminator_out(aae_run, tmp_path):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from vaelab.export.onnx import available_parts, export_onnx

    assert {"encoder", "decoder", "sampler"} <= set(available_parts(aae_run.model))
    # Numerics against onnxruntime are tests/test_onnx.py's; here: what goes into the encoder's graph (the
    # decoder's and the sampler's are built from the decoder alone, as for every family).
    manifest = export_onnx(aae_run, tmp_path / "onnx", parts=["encoder"], check=False)
    assert set(manifest["parts"]) == {"encoder"}
    m = aae_run.model
    disc = {tuple(p.shape) for p in m.critics.parameters() if p.dim() == 2}
    count = lambda *mods: sum(p.numel() for mod in mods for p in mod.parameters())
    graph = onnx.load(str(tmp_path / "onnx" / "encoder.onnx")).graph
    n, weights = sum(int(np.prod(t.dims)) for t in graph.initializer), count(m.encoder, m.posterior_head)
    assert weights <= n < weights + 16  # its own weights (and a few constants), no discriminator
    assert not {tuple(t.dims) for t in graph.initializer} & disc
    assert count(m.critics) > 16


def test_report_and_explorer_work(aae_run, tmp_path, capsys):
    rc, _out, err = run_main(capsys, "report", aae_run.run_dir, "--out", tmp_path / "r.html")
    assert rc == 0, err
    assert "adversarial" in (tmp_path / "r.html").read_text()
    from vaelab.explore.explorer import Explorer

    explorer = Explorer(aae_run, n=32)
    info = explorer.info()
    assert info["continuous"] is True and "density" not in info["capabilities"]
    assert "prior" in [s["name"] for s in info["samplers"]]
    drawn = explorer.sample("prior", n=4)
    assert len(drawn["pngs"]) == 4 and len(drawn["codes"][0]) == 2
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app

    assert TestClient(make_app(explorer)).get("/api/info").json()["latent_dim"] == 2


# ---------------------------------------------------------------------------- refusals
def test_bad_options_and_combinations_are_one_line(tiny_config, capsys, tmp_path, shapes_npz):
    with pytest.raises(ConfigError, match=r"model\.aae\.adversarial_weight must be >= 0"):
        tiny_config("model.kind=aae", "model.aae.adversarial_weight=-1")
    with pytest.raises(ConfigError, match=r"model\.aae\.disc_beta1 must be in \[0, 1\), got 1\.0"):
        tiny_config("model.kind=aae", "model.aae.disc_beta1=1")
    with pytest.raises(ConfigError, match=r"model\.aae\.disc_lr must be > 0"):
        tiny_config("model.kind=aae", "model.aae.disc_lr=0")
    with pytest.raises(ConfigError, match=r"model\.aae\.disc_hidden must be one or more positive widths"):
        tiny_config("model.kind=aae", "model.aae.disc_hidden=0")
    with pytest.raises(ConfigError, match=r"objective aae matches .* a prior p\(z\), and model\.prior=none"):
        tiny_config("model.kind=aae", "model.prior=none")
    with pytest.raises(ConfigError, match=r"objective aae's discriminator reads continuous codes, and "
                                          r"model\.posterior=vq"):
        tiny_config("model.kind=aae", "model.arch=conv", "model.latent=conv", "model.posterior=vq",
                    "model.channels=[4,3]")
    with pytest.raises(ConfigError, match=r"model\.aae\.supervised=true .* model\.condition=none"):
        tiny_config("model.kind=aae", "model.aae.supervised=true")
    with pytest.raises(ConfigError, match=r"model\.aae holds options of the objective aae, and model\.objective "
                                          r"is elbo"):
        tiny_config("model.aae.adversarial_weight=2")
    line = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--kind", "aae", "--set",
                     "model.aae.supervised=true", "--out", tmp_path / "r")
    assert "model.condition=onehot" in line
    assert not (tmp_path / "r").exists()
    assert AAEOptions().adversarial_weight == 1.0
