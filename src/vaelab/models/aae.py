"""The adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey 2015,
"Adversarial Autoencoders", arXiv:1511.05644).

An autoencoder whose codes are pushed to follow a prior p(z) by a discriminator D on
codes: D learns to tell prior draws from codes of the data, the encoder (the generator of
the GAN on codes) learns to fool it, so the aggregate posterior q(z) = E_x q(z|x) is
matched to p(z) (the paper's Section 2, Eq. 1) and decoded prior draws are samples:

    disc        = BCE(D(z'), 1) + BCE(D(sg(z)), 0),     z' ~ p(z),  z ~ q(z|x)
    adversarial = BCE(D(z), 1)                          (the non-saturating generator loss)
    loss        = recon(x | z) + adversarial_weight * adversarial

D outputs a logit; BCE(sigmoid(l), 1) = softplus(-l), BCE(sigmoid(l), 0) = softplus(l).
Each is a per-image (B,) part: ``loss``, ``recon``, ``adversarial``, ``disc`` (the
discriminator's loss) and ``disc_acc`` (the fraction of its two decisions per image it
gets right: 0, 0.5 or 1; near 0.5 on average when q(z) matches p(z)).

The encoder is deterministic (``model.posterior=point``, the ``aae`` family's default:
the paper finds its three choices of q(z|x) alike and uses the deterministic one in its
experiments) or Gaussian (``--set model.posterior=gaussian``, z drawn by
reparameterisation: the paper's second choice and Pythae's default). With
``model.aae.supervised=true`` the discriminator also sees the one-hot label, D(z, y)
against D(z', y) with z' ~ p(z|y): the paper's Section 2.3 (the label picks the prior's
component; with ``model.prior=conditional`` a learned Gaussian per class, with ``normal``
q(z|y) is matched to N(0, I) for every class, so the code carries the style and not the
class, the paper's Section 5). It needs the labels in training, so it asks for
``model.condition`` (onehot: the decoder sees the label too, the paper's supervised AAE of
Section 5).

Two optimisation steps per batch (the trainer's coupled update: one forward, then each
group's gradient over its own parameters only, then both updates): ``model`` (encoder,
decoder: ``loss``, the train config's lr and Adam betas) and ``disc`` (the
discriminator: ``disc``, its own Adam with ``model.aae.disc_lr`` (default: train.lr) and
``disc_beta1/2``).

Where this follows the paper, and where it or Pythae differ
(``src/pythae/models/adversarial_ae/adversarial_ae_model.py`` and its trainer
``trainers/adversarial_trainer``, clementchadebec/benchmark_VAE):

- Phases: the paper updates the autoencoder on the reconstruction (the reconstruction
  phase), then the discriminator, then the encoder on the generator loss (the
  regularisation phase), each batch, each a separate SGD step with its own learning rate.
  Here, as in Pythae's AdversarialTrainer, one forward and two simultaneous Adam steps:
  the model's on recon + weight * adversarial, the discriminator's on its loss, both
  from the same codes. The model's weight on the adversarial term plays the part of the
  paper's ratio of the two phases' learning rates.
- Weight: ``adversarial_weight`` 1 (the two losses summed as they are, per image: the
  reconstruction summed over pixels in nats, the adversarial term a binary cross-entropy
  in nats). Pythae's default ``adversarial_loss_scale`` is 0.5 with
  ``reconstruction_loss_scale`` 1 (its BCE is a batch mean, its reconstruction a sum over
  pixels: the same per-image convention as here). Both are small beside a reconstruction
  of ~100 nats an MNIST digit, so the encoder's gradient is mostly the reconstruction's.
  One short check here (MNIST, the zoo's 784-400-16 body, 3 epochs on 10,000 digits, one
  seed; |mean|^2 + |std - 1|^2 of the test codes against N(0, I)): weight 0 (the plain
  autoencoder) 185, 0.5: 55, 1: 91, 5: 39, 20: 67, with the reconstruction rising from 116
  to 122 (weight 1), 144 (5) and 180 nats (20). A short adversarial run is noisy; weight 1
  keeps the reconstruction and matches the paper's unweighted losses. The benchmark sets
  Pythae's ``adversarial_loss_scale`` to 1 as well.
- Discriminator: Pythae's default, one hidden layer of 256 ReLU units (``disc_hidden``);
  the paper's MNIST discriminator has two of 1000 (``--set model.aae.disc_hidden=1000,1000``).
  Pythae ends it in a sigmoid and takes the BCE of the probability (PyTorch clamps its logs
  at -100); here the BCE is taken from the logit (the same loss, stable in the tails).
- Optimisers: Pythae's AdversarialTrainer gives the autoencoder and the discriminator the
  same learning rate (1e-4 by default) and Adam's default betas (0.9, 0.999), which are
  this objective's defaults (``disc_lr`` none: train.lr). The paper uses SGD with momentum.
- Generator loss: the non-saturating -log D(z) (Pythae's, and the usual GAN practice),
  not the minimax log(1 - D(z)) of Eq. 1.
- Gradients: the discriminator's loss sees detached codes, and the trainer's disc step
  descends it over the discriminator's parameters alone; the adversarial term reaches the
  encoder only (the discriminator's gradient from it is not used). Pythae does the same
  (it zeroes the discriminator's gradient after the autoencoder's backward pass).

Capabilities: no density. The loss is not a bound on log p(x): the adversarial term
estimates no divergence in nats, and the Gaussian encoder's variance is not held to a
KL. So this objective ``drops`` the ``density`` capability (``vaelab eval`` reports no
``nll_iw``, whose name would promise a likelihood; the point encoder has none anyway).
``prior`` and ``continuous`` stay: sampling from p(z) is what an AAE is trained for
(``vaelab sample`` decodes prior draws), and the latent tools read its continuous codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.distributions import Distribution
from vaelab.errors import ConfigError, DataError
from vaelab.models.bodies import mlp
from vaelab.models.contract import Objective, OptimStep, Parts, other_parameters

NAME = "aae"  # the objective's registry name and its options section (model.aae.*)


@dataclass
class AAEOptions:
    adversarial_weight: float = field(default=1.0, metadata={
        "help": "weight of the adversarial (generator) loss in the model's loss, beside the reconstruction "
                "(Pythae's default 0.5)"})
    disc_hidden: list[int] = field(default_factory=lambda: [256], metadata={
        "help": "the discriminator's hidden widths, ReLU (Pythae's default 256; the paper's MNIST net 1000,1000)"})
    disc_lr: float | None = field(default=None, metadata={
        "help": "the discriminator's Adam learning rate (none: train.lr, as Pythae's equal rates)"})
    disc_beta1: float = field(default=0.9, metadata={"help": "the discriminator's Adam beta1 (Adam's default)"})
    disc_beta2: float = field(default=0.999, metadata={"help": "the discriminator's Adam beta2 (Adam's default)"})
    supervised: bool = field(default=False, metadata={
        "help": "the discriminator also sees the one-hot label (the paper's Section 2.3; needs model.condition)"})

    def __post_init__(self):
        if self.adversarial_weight < 0:
            raise ConfigError(f"model.{NAME}.adversarial_weight must be >= 0 (0: an autoencoder with a "
                              f"discriminator watching), got {self.adversarial_weight}")
        if not self.disc_hidden or any(w < 1 for w in self.disc_hidden):
            raise ConfigError(f"model.{NAME}.disc_hidden must be one or more positive widths, got {self.disc_hidden}")
        if self.disc_lr is not None and not self.disc_lr > 0:
            raise ConfigError(f"model.{NAME}.disc_lr must be > 0 (or none: train.lr), got {self.disc_lr}")
        for k in ("disc_beta1", "disc_beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"model.{NAME}.{k} must be in [0, 1), got {getattr(self, k)}")


def discriminator_logits(model, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The discriminator's logit (B,) that codes z (B, D) are prior draws; with
    ``supervised`` it reads [z, onehot(y)]."""
    if model.cfg.opts(NAME).supervised:
        if y is None:
            raise DataError(f"objective {NAME} with model.{NAME}.supervised=true needs the images' labels")
        z = torch.cat([z, F.one_hot(y, model.cfg.num_classes).to(z.dtype)], 1)
    return model.critics["disc"](z).squeeze(1).float()


def aae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.rsample(generator=generator)  # the code itself for a deterministic encoder
    r = model.recon_loss(model.decode_logits(z, y), x)
    # Prior draws, one per image (under its label for a conditional prior).
    zp = model.prior(y, len(z)).sample(generator=generator).to(z.dtype)
    real = discriminator_logits(model, zp, y)
    fake = discriminator_logits(model, z.detach(), y)
    disc = F.softplus(-real) + F.softplus(fake)  # BCE(D(z'), 1) + BCE(D(sg z), 0)
    adversarial = F.softplus(-discriminator_logits(model, z, y))  # BCE(D(z), 1): the encoder fools D
    acc = ((real > 0).double() + (fake < 0).double()) / 2
    loss = r + model.cfg.opts(NAME).adversarial_weight * adversarial
    return {"loss": loss, "recon": r, "adversarial": adversarial, "disc": disc, "disc_acc": acc}


def _networks(cfg) -> dict[str, nn.Module]:
    o = cfg.opts(NAME)
    d_in = cfg.latent_dim + (cfg.num_classes if o.supervised else 0)
    widths = [d_in, *o.disc_hidden]
    return {"disc": nn.Sequential(*mlp(widths, "relu"), nn.Linear(widths[-1], 1))}


def _steps(model) -> list[OptimStep]:
    o = model.cfg.opts(NAME)
    disc = list(model.critics["disc"].parameters())
    return [OptimStep("model", other_parameters(model, disc)),
            OptimStep("disc", disc, loss="disc", lr=o.disc_lr, betas=(o.disc_beta1, o.disc_beta2))]


def _check(cfg) -> None:
    if cfg.prior == "none":
        raise ConfigError(f"objective {NAME} matches the codes' distribution to a prior p(z), and model.prior=none "
                          "has none; set model.prior=normal (or use model.kind=aae)")
    if cfg.posterior == "vq":
        raise ConfigError(f"objective {NAME}'s discriminator reads continuous codes, and model.posterior=vq snaps "
                          "them to a codebook; use model.posterior=point or gaussian")
    if cfg.opts(NAME).supervised and cfg.condition == "none":
        raise ConfigError(f"model.{NAME}.supervised=true shows the label to the discriminator, and "
                          "model.condition=none gives the model no labels; set model.condition=onehot (the "
                          "paper's supervised AAE: the decoder sees the label too)")


OBJECTIVE = Objective(aae, frozenset({"prior", "continuous"}),
                      "adversarial autoencoder: recon + weight * BCE(D(z), 1), a discriminator on codes against "
                      "prior draws", options=AAEOptions, check=_check, networks=_networks, steps=_steps,
                      drops=frozenset({"density"}))

__all__ = ["NAME", "OBJECTIVE", "AAEOptions", "aae", "discriminator_logits"]
