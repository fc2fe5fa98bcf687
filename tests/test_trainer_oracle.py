"""The one training loop against a hand-written one: a VAE trained by ``vaelab train`` in fp32 has,
bit for bit, the weights of the textbook loop below (the same layers made in the same order from
the seed, a new random order each epoch, one reparameterised draw per image, Bernoulli
cross-entropy summed over pixels plus the closed-form KL, the batch mean, Adam).

The loop is written from the equations, not from vaelab's code; the only things it takes from
vaelab are its documented random stream (the seed before the model is built, then
``epoch_seed(seed, epoch)`` before each epoch's order) and its fused Adam. bench/README.md
("Six seeds, and the same model in a plain loop") relies on this identity to compare vaelab with a
plain PyTorch loop and with Pythae, seed by seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab import api
from vaelab.data import load_data
from vaelab.training.trainer import epoch_seed


def test_vaelab_train_is_the_textbook_loop_bit_for_bit(tmp_path, tiny_config):
    cfg = tiny_config("train.precision=fp32", "model.elbo.beta=4")  # mlp 784-32-2, 2 epochs, batch 64
    run = api.train(cfg, tmp_path / "run", evaluate_after=False, log=lambda *_: None)

    t = cfg.train
    x_all = load_data(cfg.data).train.float()
    d, h, k = 784, 32, 2
    torch.manual_seed(t.seed)
    fc1, fc_mu, fc_logvar, fc3, fc4 = nn.Linear(d, h), nn.Linear(h, k), nn.Linear(h, k), nn.Linear(k, h), nn.Linear(h, d)
    layers = [fc1, fc_mu, fc_logvar, fc3, fc4]
    opt = torch.optim.Adam([p for m in layers for p in m.parameters()], lr=t.lr, fused=True)
    for epoch in range(1, t.epochs + 1):
        torch.manual_seed(epoch_seed(t.seed, epoch))
        order = torch.randperm(len(x_all))
        for i in range(0, len(x_all), t.batch_size):
            x = x_all[order[i:i + t.batch_size]].reshape(-1, d)
            hid = F.relu(fc1(x))
            mu, logvar = fc_mu(hid), fc_logvar(hid)
            z = mu + torch.randn(mu.shape) * torch.exp(0.5 * logvar)
            recon = F.binary_cross_entropy_with_logits(fc4(F.relu(fc3(z))), x, reduction="none").sum(-1)
            kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)
            loss = (recon + 4.0 * kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    model = run.model
    theirs = [model.encoder[1], model.posterior_head.mu, model.posterior_head.logvar, model.decoder[0],
              model.decoder[2]]
    for name, a, b in zip(("fc1", "mu", "logvar", "fc3", "fc4"), theirs, layers):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), f"{name} differs"
