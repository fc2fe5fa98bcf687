"""The celeba-vae preset is PyTorch-VAE's VanillaVAE, layer for layer; batch norm in the conv
bodies (eval mode, running statistics saved with the weights); the exponential lr schedule."""

from __future__ import annotations

import pytest
import torch
from conftest import model_config
from torch import nn

from vaelab.configure import build_config
from vaelab.errors import ConfigError
from vaelab.models import build_model, count_params
from vaelab.training.schedules import lr_at


class VanillaVAE(nn.Module):
    """AntixK/PyTorch-VAE models/vanilla_vae.py (in_channels 3, latent 128, hidden 32..512),
    written out here in plain torch.nn, independent of vaelab."""

    def __init__(self, latent_dim: int = 128, hidden=(32, 64, 128, 256, 512)):
        super().__init__()
        hidden, cin, mods = list(hidden), 3, []
        for h in hidden:
            mods.append(nn.Sequential(nn.Conv2d(cin, h, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(h),
                                      nn.LeakyReLU()))
            cin = h
        self.encoder = nn.Sequential(*mods)
        self.fc_mu = nn.Linear(hidden[-1] * 4, latent_dim)
        self.fc_var = nn.Linear(hidden[-1] * 4, latent_dim)
        self.decoder_input = nn.Linear(latent_dim, hidden[-1] * 4)
        hidden.reverse()
        self.decoder = nn.Sequential(*[nn.Sequential(
            nn.ConvTranspose2d(hidden[i], hidden[i + 1], kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(hidden[i + 1]), nn.LeakyReLU()) for i in range(len(hidden) - 1)])
        self.final_layer = nn.Sequential(
            nn.ConvTranspose2d(hidden[-1], hidden[-1], kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(hidden[-1]), nn.LeakyReLU(),
            nn.Conv2d(hidden[-1], 3, kernel_size=3, padding=1), nn.Tanh())

    def encode(self, x):
        h = torch.flatten(self.encoder(x), start_dim=1)
        return self.fc_mu(h), self.fc_var(h)

    def decode(self, z):
        return self.final_layer(self.decoder(self.decoder_input(z).view(-1, 512, 2, 2)))


def celeba_vae():
    cfg = build_config("celeba-vae")
    cfg.model.input_shape = [3, 64, 64]
    torch.manual_seed(0)
    return build_model(cfg.model)


def copy_into_reference(model) -> VanillaVAE:
    """The reference with vaelab's weights and batch-norm buffers, matched in order and shape."""
    torch.manual_seed(1)
    ref = VanillaVAE()
    ours = [v for k, v in model.state_dict().items() if not k.startswith("prior_net.")]
    theirs = ref.state_dict()
    assert [tuple(v.shape) for v in ours] == [tuple(v.shape) for v in theirs.values()]
    ref.load_state_dict(dict(zip(theirs, (v.clone() for v in ours))))
    return ref


def test_parameter_count_equals_pytorch_vaes():
    model, ref = celeba_vae(), VanillaVAE()
    assert count_params(model) == sum(p.numel() for p in ref.parameters()) == 3_937_635
    # The same buffers too: each BatchNorm's running mean, variance and batch count.
    bn = [b.numel() for n, b in model.named_buffers() if not n.startswith("prior_net.")]  # prior: a device anchor
    assert sorted(bn) == sorted(b.numel() for b in ref.buffers())


def test_same_function_as_pytorch_vae_in_eval_and_train_mode():
    model = celeba_vae()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for _ in range(3):  # move the running statistics away from their initial values
        model.train()
        model(x)
    ref = copy_into_reference(model)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        getattr(ref, mode)()
        with torch.no_grad():
            q = model.posterior(x)
            mu, logvar = ref.encode(x * 2 - 1)  # vaelab's tanh models see data in [-1, 1]
            torch.testing.assert_close(q.mean, mu, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(q.logvar, logvar, atol=1e-5, rtol=1e-4)
            out = model.likelihood.mean(model.decode_logits(mu))
            torch.testing.assert_close(out, ref.decode(mu), atol=1e-5, rtol=1e-4)


def test_batch_norm_uses_running_statistics_in_eval_mode():
    model = celeba_vae()
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        one = model.encode(x[:1])
        batch = model.encode(x)
    # Eval mode: an image's code does not depend on the batch it comes in.
    torch.testing.assert_close(one, batch[:1], atol=1e-5, rtol=1e-4)
    bn = model.encoder[1]
    assert isinstance(bn, nn.BatchNorm2d)
    before = bn.running_mean.clone()
    with torch.no_grad():
        model(x)
    assert torch.equal(bn.running_mean, before)  # eval mode updates nothing
    model.train()
    with torch.no_grad():
        model(x)
    assert not torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == 1


def test_running_statistics_are_saved_and_restored(tmp_path, shapes_arrays):
    import numpy as np

    from vaelab.api import Run
    from vaelab.tensorfiles import load_tensors
    from vaelab.training.loop import fit

    x = np.repeat(shapes_arrays[0][:48, None], 3, 1)  # (48, 3, 28, 28) colour copies of the shapes
    np.savez(tmp_path / "rgb.npz", x=x)
    cfg = build_config("celeba-vae", overrides=[
        "data.name=npz", f"data.path={tmp_path / 'rgb.npz'}", "data.image_size=null", "data.channels=null",
        "data.val=none", "train.epochs=2",
        "train.batch_size=16", "train.device=cpu", "train.progress=false", "model.channels=8,8,8",
        "model.decoder_channels=8,8,8", "model.latent_dim=4"])
    model = fit(cfg, tmp_path / "run", log=lambda s: None).model
    tensors, _ = load_tensors(tmp_path / "run" / "model.safetensors")
    names = [k for k in tensors if "running_" in k or "num_batches_tracked" in k]
    assert len(names) == 6 * 3  # 6 BatchNorms (3 encoder, 3 decoder): running mean, variance, count
    assert all(int(tensors[k]) == 2 * 3 for k in names if k.endswith("num_batches_tracked"))  # 2 epochs x 3 steps
    run = Run.load(tmp_path / "run", device="cpu")
    assert not run.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(run.model.state_dict()[k], v), k
    xt = torch.from_numpy(x[:5]).float() / 255
    with torch.no_grad():
        torch.testing.assert_close(run.model.reconstruct(xt), model.eval().reconstruct(xt))


def test_norm_and_leaky_slope_leave_other_presets_alone():
    base = {"kind": "ae", "arch": "conv", "input_shape": [1, 28, 28], "channels": [4, 8], "latent_dim": 3,
            "activation": "leaky_relu"}
    m = build_model(model_config(**base))
    slopes = {mod.negative_slope for mod in m.modules() if isinstance(mod, nn.LeakyReLU)}
    assert slopes == {0.2} and not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    m = build_model(model_config(**base, norm="batch", leaky_slope=0.01))
    assert {mod.negative_slope for mod in m.modules() if isinstance(mod, nn.LeakyReLU)} == {0.01}
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 3  # 2 encoder, 1 decoder (not the output)


@pytest.mark.parametrize("change, match", [
    ({"norm": "layer"}, "model.conv.norm must be one of batch, none"),
    ({"final_layer": "dense"}, "model.conv.final_layer must be one of conv, transpose"),
    ({"leaky_slope": -1}, "model.leaky_slope must be >= 0"),
    ({"decoder_channels": [8, 8]}, "model.conv.decoder_channels needs model.conv.final_kernel"),
    ({"decoder_channels": [8], "final_kernel": 3}, "needs 2 positive widths"),
])
def test_body_option_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        model_config(kind="vae", arch="conv", channels=[4, 8], **change)


def test_exponential_schedule_is_torchs_exponential_lr_per_epoch():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.005)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)
    for epoch in range(1, 8):
        assert lr_at("exponential", 0.005, epoch, 100, 0.5, gamma=0.95) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cfg = build_config("celeba-vae")
    assert (cfg.train.lr_schedule, cfg.train.lr_gamma, cfg.train.lr) == ("exponential", 0.95, 0.005)
    with pytest.raises(ConfigError, match="train.lr_gamma must be in"):
        build_config("celeba-vae", overrides=["train.lr_gamma=1.5"])
