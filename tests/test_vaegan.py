"""The VAE-GAN family (Larsen et al. 2016): its losses against a computation by hand on a tiny
fixed network, each of its three optimisation steps descending its own loss alone, training,
resume, and the tools on a trained run (no density, so no nll)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli_error, model_config, run_main

from vaelab.errors import ConfigError
from vaelab.models import build_model
from vaelab.models.objectives import OBJECTIVES, Objective
from vaelab.training import checkpoint
from vaelab.training.loop import fit

SMALL = ("model.kind=vae-gan", "model.vaegan.widths=[16,8]")


def quiet(msg: str) -> None:
    pass


def tiny(**opts):
    torch.manual_seed(0)
    return build_model(model_config(kind="vae-gan", arch="mlp", input_shape=[1, 6, 6], hidden=[8], latent_dim=2,
                                   options={"vaegan": {"widths": [5, 4], **opts}}))


def by_hand(m, x, seed, gamma, layer, gan_on_recon=True, generator="minimax", kl_weight=1.0):
    """The paper's losses written out: Linear layers, leaky ReLU, sigmoid, closed-form KL."""
    g = torch.Generator().manual_seed(seed)
    q = m.posterior(x)
    mu, lv = q.mean, q.logvar
    z = mu + (0.5 * lv).exp() * torch.randn(mu.shape, generator=g)
    zp = torch.randn(mu.shape, generator=g)
    dec = m.decoder
    x_tilde = torch.sigmoid(dec[2](torch.relu(dec[0](z)))).reshape(x.shape)
    x_p = torch.sigmoid(dec[2](torch.relu(dec[0](zp)))).reshape(x.shape)
    dis = m.critics["discriminator"]
    w1, b1 = dis.blocks[0][1].weight, dis.blocks[0][1].bias
    w2, b2 = dis.blocks[1][0].weight, dis.blocks[1][0].bias
    wo, bo = dis.out.weight, dis.out.bias

    def run(img):
        h1 = F.leaky_relu(img.flatten(1) @ w1.T + b1, 0.2)
        h2 = F.leaky_relu(h1 @ w2.T + b2, 0.2)
        return torch.sigmoid(h2 @ wo.T + bo).squeeze(1), (h1, h2)[layer - 1]

    d_x, f_x = run(x)
    d_t, f_t = run(x_tilde)
    d_p, _ = run(x_p)
    kl = 0.5 * (mu.square() + lv.exp() - 1 - lv).sum(1)
    llike = 0.5 * (f_x - f_t).square().sum(1)
    l_gan = -torch.log(d_x) - torch.log(1 - d_p) - (torch.log(1 - d_t) if gan_on_recon else 0)
    if generator == "minimax":
        gan = -l_gan
    else:
        gan = -torch.log(d_p) - (torch.log(d_t) if gan_on_recon else 0)
    return {"loss": kl_weight * kl + llike, "kl": kl, "llike": llike, "disc": l_gan, "gan": gan, "decoder": gamma * llike + gan}


@pytest.mark.parametrize("opts", [{}, {"gamma": 0.5, "layer": 1, "kl_weight": 0.1}, {"gan_on_recon": False},
                                  {"generator": "non-saturating", "gamma": 2.0}])
def test_losses_are_the_papers_on_a_tiny_fixed_network(opts):
    m = tiny(**opts)
    o = m.cfg.opts("vaegan")
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = m(x, generator=torch.Generator().manual_seed(7))
        want = by_hand(m, x, 7, o.gamma, o.layer or 2, o.gan_on_recon, o.generator, o.kl_weight)
        recon = F.binary_cross_entropy(m.decode(m.posterior(x).rsample(generator=torch.Generator().manual_seed(7))),
                                       x, reduction="none").sum((1, 2, 3))
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5, msg=k)
    torch.testing.assert_close(got["recon"], recon, rtol=1e-4, atol=1e-4)  # the pixel loss, reported
    assert m.capabilities == {"continuous", "stochastic", "prior", "diagonal"}  # no density


def test_the_discriminator_body_and_its_batch_norm_are_options():
    m = build_model(model_config(kind="vae-gan", arch="mlp", input_shape=[1, 8, 8], hidden=[8], latent_dim=2,
                                options={"vaegan": {"arch": "conv", "widths": [4, 6], "norm": "batch"}}))
    dis = m.critics["discriminator"]
    assert [type(b[0]).__name__ for b in dis.blocks] == ["Conv2d", "Conv2d"]
    bn = dis.blocks[1][1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and dis.out.in_features == 6 * 2 * 2
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    m.train()
    m(x, generator=torch.Generator().manual_seed(1))
    assert int(bn.num_batches_tracked) == 1  # one pass over real, reconstructed and prior-sampled images
    m.eval()
    with torch.no_grad():
        a = m(x, generator=torch.Generator().manual_seed(1))
        b = m(x, generator=torch.Generator().manual_seed(1))
    assert int(bn.num_batches_tracked) == 1 and torch.equal(a["disc"], b["disc"])  # running statistics in eval


def test_groups_partition_the_parameters_with_the_predictor_on_the_encoders_side():
    m = build_model(model_config(kind="vae-gan", arch="mlp", input_shape=[1, 6, 6], hidden=[8], latent_dim=2,
                                predictor_weight=1.0, num_classes=3))
    steps = {s.name: {id(p) for p in s.params} for s in m.optimisation_steps()}
    assert list(steps) == ["encoder", "decoder", "discriminator"]
    assert steps["decoder"] == {id(p) for p in m.decoder.parameters()}
    assert steps["discriminator"] == {id(p) for p in m.critics.parameters()}
    assert {id(p) for p in m.predictor.parameters()} <= steps["encoder"]
    assert set().union(*steps.values()) == {id(p) for p in m.parameters()}
    assert sum(map(len, steps.values())) == len(list(m.parameters()))


def test_each_step_descends_its_own_loss_alone(tiny_config, monkeypatch):
    """The decoder's loss pushes the discriminator and the encoder too, the encoder's reaches the
    decoder and the discriminator: each step must get the gradient of its own loss only."""
    cfg = tiny_config(*SMALL, "model.vaegan.gamma=0.3", "train.epochs=1")
    original = OBJECTIVES["vaegan"]
    expected: dict[str, torch.Tensor] = {}
    groups: dict[int, str] = {}

    def fn(model, x, y, q, **k):
        parts = original.fn(model, x, y, q, **k)
        if not expected:  # the first batch: each loss's gradient over its own group, by autograd
            for s in model.optimisation_steps():
                grads = torch.autograd.grad(parts[s.loss].mean(), s.params, retain_graph=True, allow_unused=True)
                expected[s.name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                              for g, p in zip(grads, s.params)])
                groups[id(s.params[0])] = s.name
        return parts

    got: dict[str, torch.Tensor] = {}
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        name = groups.get(id(self.param_groups[0]["params"][0]))
        if name is not None and name not in got:
            got[name] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                   for p in self.param_groups[0]["params"]]).clone()
        return real_step(self, *a, **k)

    monkeypatch.setitem(OBJECTIVES, "vaegan", Objective(fn, original.requires, original.description,
                                                        options=original.options, check=original.check,
                                                        networks=original.networks, steps=original.steps,
                                                        drops=original.drops))
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    fit(cfg, None, log=quiet)
    assert sorted(got) == ["decoder", "discriminator", "encoder"]
    for name, grad in got.items():
        assert expected[name].abs().sum() > 0, name
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_one_epoch_moves_all_three_groups_with_their_own_settings(tiny_config):
    cfg = tiny_config(*SMALL, "train.epochs=1", "model.vaegan.discriminator_lr=3e-4",
                      "model.vaegan.discriminator_betas=[0.5,0.9]", "model.vaegan.decoder_lr=2e-3")
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in build_model(_shaped(cfg.model)).state_dict().items()}
    result = fit(cfg, None, log=quiet)
    opt = result.trainer.optimizers
    assert list(opt) == ["encoder", "decoder", "discriminator"]
    assert opt["discriminator"].param_groups[0]["betas"] == (0.5, 0.9)
    assert opt["encoder"].param_groups[0]["betas"] == (0.9, 0.999)
    row = result.history[-1]
    assert (row["lr"], row["lr_decoder"], row["lr_discriminator"]) == pytest.approx((1e-3, 2e-3, 3e-4))
    assert {"train_loss", "train_kl", "train_llike", "train_decoder", "train_gan", "train_disc",
            "train_recon"} <= set(row)
    assert row["train_loss"] == pytest.approx(row["train_kl"] + row["train_llike"], rel=1e-5)  # kl_weight 1
    moved = {k.split(".")[0] for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"encoder", "posterior_head", "decoder", "critics"} <= moved


def _shaped(model_cfg):
    return type(model_cfg)(**{**vars(model_cfg), "input_shape": [1, 28, 28]})


def test_resume_is_bit_exact(tiny_config, tmp_path):
    whole = fit(tiny_config(*SMALL, "train.epochs=2"), tmp_path / "whole", log=quiet)
    fit(tiny_config(*SMALL, "train.epochs=1"), tmp_path / "part", log=quiet)
    _, meta = checkpoint._load(tmp_path / "part" / "checkpoint.safetensors")
    assert {"param_groups-decoder", "param_groups-discriminator"} <= set(meta)
    resumed = fit(tiny_config(*SMALL, "train.epochs=2"), tmp_path / "part", resume=True, log=quiet)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for name in ("encoder", "decoder", "discriminator"):
        sa, sb = whole.trainer.optimizers[name].state_dict(), resumed.trainer.optimizers[name].state_dict()
        for i in sa["state"]:
            assert torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"]), name
    assert whole.history[-1]["train_disc"] == resumed.history[-1]["train_disc"]


@pytest.fixture(scope="module")
def vaegan_run(tmp_path_factory, shapes_npz):
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vae-gan", "model.arch=conv",
        "model.channels=[4,8]", "model.latent_dim=3", "model.vaegan.widths=[4,8]", "train.epochs=1",
        "train.batch_size=64", "train.device=cpu", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "vaegan", evaluate_after=False, log=lambda *_: None)


def test_the_tools_on_a_trained_run(vaegan_run, tmp_path, capsys):
    rd = vaegan_run.run_dir
    rc, _, err = run_main(capsys, "eval", rd)
    assert rc == 0, err
    ev = json.loads((rd / "eval.json").read_text())
    assert "nll_iw" not in ev and ev["loss"] == pytest.approx(ev["kl"] + ev["llike"], rel=1e-5)
    assert {"disc", "decoder", "gan", "recon", "mse"} <= set(ev)
    rc, _, err = run_main(capsys, "sample", rd, "--n", 8, "--seed", 5, "--out", tmp_path / "s.png",
                            "--npz", tmp_path / "s.npz")
    assert rc == 0, err
    with np.load(tmp_path / "s.npz") as f:
        images, codes = f["images"], f["codes"]
    np.testing.assert_allclose(codes, torch.randn((8, 3), generator=torch.Generator().manual_seed(5)).numpy(),
                               rtol=1e-6)
    decoded = vaegan_run.decode(torch.from_numpy(codes)).numpy()
    assert np.abs(images / 255.0 - decoded).max() <= 0.5 / 255 + 1e-6
    rc, _, err = run_main(capsys, "report", rd, "--out", tmp_path / "r.html")
    assert rc == 0, err
    msg = cli_error(capsys, "eval", rd, "--iw-samples", 10)
    assert "density" in msg


def test_onnx_export_leaves_the_discriminator_out(vaegan_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # The decoder (the generic wrappers are checked part by part in test_onnx.py): the one network
    # the discriminator reads from, exported without it.
    rc, _, err = run_main(capsys, "export", vaegan_run.run_dir, "--onnx", tmp_path / "onnx", "--parts", "decoder")
    assert rc == 0, err
    made = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert sorted(made["parts"]) == ["decoder"]
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["decoder.onnx", "onnx.json"]
    import onnx

    graph = onnx.load(str(tmp_path / "onnx" / "decoder.onnx")).graph
    size = sum(int(np.prod(t.dims)) for t in graph.initializer)
    dec = sum(p.numel() for p in vaegan_run.model.decoder.parameters())
    dis = sum(p.numel() for p in vaegan_run.model.critics.parameters())
    assert dec <= size < dec + 64 < dec + dis  # the decoder's weights (and a few shape constants), not the critic's
    from vaelab.export.onnx import available_parts

    assert available_parts(vaegan_run.model) == ["encoder", "decoder", "scorer", "sampler"]  # no discriminator


def test_explore_builds_its_app(vaegan_run):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    client = TestClient(make_app(Explorer(vaegan_run, n=32)))
    info = client.get("/api/info").json()
    assert info["latent_dim"] == 3


def test_bad_options_are_one_line(tiny_config):
    cases = [
        (["model.vaegan.gamma=-1"], "model.vaegan.gamma must be >= 0, got -1.0"),
        (["model.vaegan.kl_weight=-0.5"], "model.vaegan.kl_weight must be >= 0, got -0.5"),
        (["model.vaegan.generator=wgan"], "model.vaegan.generator must be one of minimax, non-saturating"),
        (["model.vaegan.layer=3"], r"model.vaegan.layer=3 is deeper than the discriminator's 2 hidden layers"),
        (["model.vaegan.layer=0"], "model.vaegan.layer must be a hidden layer"),
        (["model.vaegan.widths=[8,0]"], "model.vaegan.widths must be one or more positive sizes"),
        (["model.vaegan.discriminator_betas=[0.5]"], r"model.vaegan.discriminator_betas must be two numbers"),
        (["model.vaegan.encoder_lr=0"], "model.vaegan.encoder_lr must be > 0"),
        (["model.vaegan.arch=resnet"], "model.vaegan.arch must be auto, mlp or conv, got 'resnet'"),
        (["model.vaegan.norm=layer"], "model.vaegan.norm must be none or batch, got 'layer'"),
        (["model.condition=onehot", "model.num_classes=4"],
         "objective vaegan's discriminator does not see labels, and model.condition is onehot"),
        (["model.kind=ae", "model.prior=normal", "model.objective=vaegan"], "needs a stochastic posterior"),
    ]
    for extra, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            tiny_config("model.kind=vae-gan", *extra)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.vaegan holds options of the objective vaegan"):
        tiny_config("model.kind=vae", "model.vaegan.gamma=1")
    cfg = model_config(kind="vae-gan", arch="conv", channels=[4], latent_dim=2, input_shape=[1, 6, 6],
                      options={"vaegan": {"widths": [4, 4, 4, 4]}})
    with pytest.raises(ConfigError, match="model.vaegan.widths has 4 stride-2 conv layers, too many for 6x6"):
        build_model(cfg)


def test_train_refuses_a_bad_option_in_one_line(shapes_npz, tmp_path, capsys):
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--kind", "vae-gan", "--epochs", 1,
                    "--val", "none", "--set", "model.vaegan.gamma=lots", "--out", tmp_path / "r")
    assert "model.vaegan.gamma must be float, got 'lots'" in msg
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()
