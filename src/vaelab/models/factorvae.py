"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising", ICML; arXiv:1802.05983).

The model's loss is the negative ELBO plus gamma times the total correlation of the
aggregate posterior, TC = KL(q(z) || prod_j q(z_j)):

    loss = recon + KL(q(z|x) || p(z)) + gamma * [D(z)_0 - D(z)_1],   z ~ q(z|x)

where D is a discriminator with two logits trained to tell codes z ~ q(z) (class 0) from
codes whose dimensions were shuffled independently across the batch (``permute_dims``,
the paper's Algorithm 1; samples of prod_j q(z_j), class 1). For the optimal D,
softmax(D(z))_0 = q(z) / (q(z) + prod_j q(z_j)), so the logit difference D(z)_0 - D(z)_1
is log q(z) / prod_j q(z_j) and its mean over q(z) is the TC: the density-ratio trick the
paper uses. The discriminator's loss is the cross-entropy of that two-class
problem on detached codes (no gradient reaches the encoder from it):

    disc = 1/2 [CE(D(z), 0) + CE(D(permute_dims(z)), 1)]     (the paper's Algorithm 2)

Each is a per-image (B,) part: ``loss``, ``recon``, ``kl``, ``tc`` (the estimate, nats;
it can be negative while D is poor), ``disc`` (the discriminator's loss) and
``disc_acc`` (the fraction of its two decisions per image it gets right, 0, 0.5 or 1).

Two optimisation steps per batch (the trainer's coupled update: one forward, then each
group's gradient over its own parameters only, then both updates): ``model`` (encoder,
decoder, prior: ``loss``, with the train config's lr and Adam betas) and ``disc`` (the
discriminator: ``disc``, with its own Adam, ``model.factorvae.disc_lr`` and
``disc_beta1/2``).

Where this follows the paper, and where it or Pythae differ
(``src/pythae/models/factor_vae/factor_vae_model.py`` and ``factor_vae_utils.py``,
clementchadebec/benchmark_VAE; its trainer ``trainers/adversarial_trainer``):

- Discriminator: the paper's MLP of 6 layers, 1000 hidden units, leaky ReLU 0.2, 2
  logits (5 hidden Linear+LeakyReLU layers and the output layer; ``disc_hidden``), the
  same as Pythae's ``FactorVAEDiscriminator``.
- Optimisers: the paper trains the VAE with Adam lr 1e-4, betas (0.9, 0.999) and the
  discriminator with Adam lr 1e-4, betas (0.5, 0.9). The discriminator's are this
  objective's defaults; the VAE's are the train config's (``train.lr``, ``train.adam_*``),
  so a benchmark can keep every family on one budget. Pythae's AdversarialTrainer uses
  lr 1e-4 for both and Adam's default betas (0.9, 0.999) for the discriminator too.
- gamma: the default 35 is Pythae's reproduction setting for the paper's dSprites
  experiment (``examples/scripts/configs/dsprites/factorvae/factorvae_config.json``,
  latent 10, Bernoulli likelihood); the paper reports results over a range of gamma (the
  trade-off between reconstruction and disentanglement). Pythae's model default is 2 (and 5 in its MNIST
  config).
- Batches: the paper draws two batches per iteration, one for the VAE step (whose codes
  are also the discriminator's class-0 samples) and a second one that is permuted for the
  discriminator's class-1 samples. Pythae splits each batch in two halves for the same
  roles, so the VAE sees half a batch per step. Here the VAE sees the whole batch and the
  discriminator's permuted samples are ``permute_dims`` of that batch's own codes
  (detached): no second encoder pass, every image in the VAE step. Each term of the
  discriminator's loss keeps its expectation (class 0 over q(z), class 1 over the
  product of the batch's marginals, exactly as for a second batch); only the two sets of
  samples are no longer independent, which the loss, a sum of per-sample terms, does not
  use. A batch of one image has nothing to permute across: its permuted code is itself.
- Gradients: the discriminator's loss reaches only the discriminator (its codes are
  detached, and the trainer's disc step descends it over the discriminator's parameters
  alone); the TC term of the model's loss reaches only the model. In Pythae the
  discriminator's loss also back-propagates into the encoder through the undetached D(z)
  (its ``autoencoder_optimizer`` steps after both backward passes), a pull of weight 1/2
  against the TC penalty.
- Reported ``loss`` is per image; Pythae reports batch means and adds the two losses
  into one ``loss``.

Capabilities: the ELBO part is a valid bound on log p(x) of the model p(z) p(x|z) it
trains (a Gaussian posterior, a normal prior, a normalised likelihood), and the TC term
only changes which such model training finds. So the model keeps its ``density``:
``vaelab eval`` reports the importance-weighted NLL of that model (``nll_iw``, from the
model's q, p and likelihood), which is what its name says. ``loss`` is not a bound (it
adds gamma times an estimate), and eval.json reports it as the training loss it is, with
``recon + kl`` (the negative ELBO) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.distributions import Distribution, kl_divergence
from vaelab.errors import ConfigError
from vaelab.models.bodies import mlp
from vaelab.models.contract import Objective, OptimStep, Parts, other_parameters

NAME = "factorvae"  # the objective's registry name and its options section (model.factorvae.*)
# Posteriors whose codes are flat vectors in R^D drawn by reparameterisation (what
# permute_dims shuffles and the KL term needs): a diagonal Gaussian, or two stacked ones.
POSTERIORS_OK = ("gaussian", "gaussian2")
SLOPE = 0.2  # the paper's leaky ReLU slope


@dataclass
class FactorVAEOptions:
    gamma: float = field(default=35.0, metadata={"help": "weight of the total correlation estimate in the model's "
                                                         "loss (35: Pythae's reproduction of the paper's dSprites runs)"})
    disc_hidden: list[int] = field(default_factory=lambda: [1000] * 5, metadata={
        "help": "the discriminator's hidden widths (paper: 5 hidden layers of 1000, leaky ReLU 0.2, 2 logits)"})
    disc_lr: float = field(default=1e-4, metadata={"help": "the discriminator's Adam learning rate (paper: 1e-4)"})
    disc_beta1: float = field(default=0.5, metadata={"help": "the discriminator's Adam beta1 (paper: 0.5)"})
    disc_beta2: float = field(default=0.9, metadata={"help": "the discriminator's Adam beta2 (paper: 0.9)"})
    disc_fp32: bool = field(default=False, metadata={
        "help": "run the discriminator in fp32 under mixed precision (false: under the run's autocast; true: "
                "epochs 1.7x as long here, samples within the seeds' spread: bench/README)"})

    def __post_init__(self):
        if self.gamma < 0:
            raise ConfigError(f"model.{NAME}.gamma must be >= 0 (0: a plain VAE with a discriminator watching), "
                              f"got {self.gamma}")
        if not self.disc_hidden or any(w < 1 for w in self.disc_hidden):
            raise ConfigError(f"model.{NAME}.disc_hidden must be one or more positive widths, got {self.disc_hidden}")
        if not self.disc_lr > 0:
            raise ConfigError(f"model.{NAME}.disc_lr must be > 0, got {self.disc_lr}")
        for k in ("disc_beta1", "disc_beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"model.{NAME}.{k} must be in [0, 1), got {getattr(self, k)}")


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Codes (B, D) with each dimension shuffled across the batch by its own random
    permutation (the paper's Algorithm 1): each column keeps its values, the rows become
    draws from the product of the batch's marginals."""
    if z.dim() != 2:
        raise ValueError(f"permute_dims takes codes (B, D), got shape {tuple(z.shape)}")
    keys = torch.rand(z.shape, generator=generator, device=z.device)  # one independent ordering per column
    return z.gather(0, keys.argsort(0))


def build_discriminator(latent_dim: int, hidden: list[int]) -> nn.Sequential:
    """The MLP D: codes (B, latent_dim) -> two logits (B, 2): class 0 'from q(z)', class 1 'permuted'."""
    return nn.Sequential(*mlp([latent_dim, *hidden, 2], "leaky_relu", last_act=False, leaky_slope=SLOPE))


def discriminate(disc: nn.Module, z: torch.Tensor, fp32: bool = False) -> torch.Tensor:
    """The discriminator's logits (B, 2) of codes z, as fp32 tensors. With ``fp32`` the pass
    also computes in fp32, outside any autocast region (the TC term is gamma times a difference
    of two logits, which bf16 rounds to 8 significant bits); without, under the run's autocast.
    Measured at the zoo's budget over six seeds, this rounding did not move the samples beyond
    the seeds' spread, and fp32 made an epoch 1.7x as long; the whole model in fp32 did move
    the prior samples (bench/README, "FactorVAE over seeds")."""
    if fp32 and torch.is_autocast_enabled(z.device.type):
        with torch.autocast(z.device.type, enabled=False):
            return disc(z.float())
    return disc(z).float()


def tc_estimate(logits: torch.Tensor) -> torch.Tensor:
    """log q(z) / prod_j q(z_j) per code, from the discriminator's logits (B, 2): D_0 - D_1."""
    return logits[:, 0] - logits[:, 1]


def discriminator_loss(disc: nn.Module, z: torch.Tensor, generator: torch.Generator | None = None,
                       fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's per-image loss (B,) on codes z (B, D), detached here, and its
    accuracy (B,): 1/2 [CE(D(z), 0) + CE(D(permute_dims(z)), 1)]."""
    z = z.detach()
    n = len(z)
    logits = discriminate(disc, torch.cat([z, permute_dims(z, generator)]), fp32)  # (2B, 2): both classes at once
    labels = torch.cat([torch.zeros(n, dtype=torch.long, device=z.device),
                        torch.ones(n, dtype=torch.long, device=z.device)])
    ce = F.cross_entropy(logits, labels, reduction="none")
    right = (logits.argmax(1) == labels).float()
    return 0.5 * (ce[:n] + ce[n:]), 0.5 * (right[:n] + right[n:])


def factorvae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.rsample(generator=generator)  # (B, D), reparameterised
    r = model.recon_loss(model.decode_logits(z, y), x)
    kl = kl_divergence(q, model.prior(y, len(x)), z)
    disc, o = model.critics["disc"], model.cfg.opts(NAME)
    tc = tc_estimate(discriminate(disc, z, o.disc_fp32))  # gradient to the model (the disc step leaves it out)
    d_loss, d_acc = discriminator_loss(disc, z, generator, o.disc_fp32)
    loss = r + kl + o.gamma * tc
    return {"loss": loss, "recon": r, "kl": kl, "tc": tc, "disc": d_loss, "disc_acc": d_acc}


def networks(cfg) -> dict[str, nn.Module]:
    return {"disc": build_discriminator(cfg.latent_dim, cfg.opts(NAME).disc_hidden)}


def steps(model) -> list[OptimStep]:
    o = model.cfg.opts(NAME)
    disc = list(model.critics.parameters())
    return [OptimStep("model", other_parameters(model, disc)),
            OptimStep("disc", disc, loss="disc", lr=o.disc_lr, betas=(o.disc_beta1, o.disc_beta2))]


def check(cfg) -> None:
    """The TC estimate shuffles the dimensions of a flat code drawn by reparameterisation,
    and the KL term needs a prior: refuse other posteriors, and a model without a prior."""
    if cfg.posterior not in POSTERIORS_OK or cfg.prior == "none":
        raise ConfigError(f"objective {NAME} needs a Gaussian posterior (model.posterior=gaussian or gaussian2) "
                          f"and a prior (model.prior=normal, ...), got model.posterior={cfg.posterior} and "
                          f"model.prior={cfg.prior}")


FACTORVAE = Objective(
    factorvae, frozenset({"prior", "stochastic", "continuous"}),
    "FactorVAE: recon + KL + gamma * TC, the TC estimated by a discriminator (density-ratio trick)",
    options=FactorVAEOptions, check=check, networks=networks, steps=steps)

__all__ = ["FACTORVAE", "FactorVAEOptions", "build_discriminator", "discriminate", "discriminator_loss", "factorvae",
           "permute_dims", "tc_estimate"]
