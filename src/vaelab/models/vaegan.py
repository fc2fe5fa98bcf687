"""VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity
metric", arXiv:1512.09300): a VAE whose reconstruction is measured in the feature space of
a GAN discriminator, and whose decoder is also the GAN's generator.

With x the images, x~ = Dec(z), z ~ q(z|x), the reconstructions, x_p = Dec(z_p), z_p ~ p(z),
the prior samples, D(.) the discriminator's probability that an image is real and Dis_l(.)
its l-th hidden layer:

- ``L_prior`` = KL(q(z|x) || p(z)) (eq. 4; closed form where there is one);
- ``L_llike`` = -log N(Dis_l(x); Dis_l(x~), I) = 1/2 ||Dis_l(x) - Dis_l(x~)||^2 per image,
  the constant left out (eq. 8-9; Pythae's ``recon_loss``, the same 1/2 sum);
- ``L_GAN`` = the discriminator's cross-entropy -[log D(x) + log(1 - D(x~)) + log(1 - D(x_p))]
  (eq. 5 with x_p as in section 2.2; Algorithm 1 uses the name for this loss, the negative
  of eq. 5, which its updates' signs need).

Algorithm 1's three updates, each its own parameter group and Adam here:

    encoder (and posterior head, prior, any label predictor):  L_prior + L_llike      ("loss")
    decoder:                                                   gamma L_llike - L_GAN  ("decoder")
    discriminator:                                             L_GAN                  ("disc")

The trainer runs one forward per batch and one backward per group over that group's
parameters only, so no group gets another's gradient: the GAN loss does not reach the
encoder (the paper: "we do not backpropagate the error signal from L_GAN to Enc"), L_llike
does not reach the discriminator. ``gamma`` weighs content (L_llike) against style (the GAN)
in the decoder's loss; the authors' code weights the decoder's two gradients w and -(1 - w)
with w = recon_vs_gan_weight (1e-6 on CelebA with a deep feature layer, 1e-2 its default),
i.e. gamma = w / (1 - w); Pythae's ``adversarial_loss_scale`` s gives (1 - s) L_llike - s L_GAN,
gamma = (1 - s) / s = 1 at its default 0.5. The default here is Pythae's, 1: with a feature
layer of a few hundred units (options ``widths``, ``layer``) L_llike is tens of nats, and at
1e-2 the GAN term ruled the decoder, which then ignored z (every prior sample one image, in
short MNIST runs); the authors' 1e-6 goes with the 65,536 batch-normalised features of their
CelebA discriminator.

Where Pythae's VAEGAN (pythae/models/vae_gan/vae_gan_model.py, trained by its
CoupledOptimizerAdversarialTrainer) differs, and what vaelab follows:

- Pythae's discriminator sees x and x_p only (the x~ term is commented out); the paper's
  eq. 5 with section 2.2 has all three, and so does ``gan_on_recon=true`` (the default here);
  ``gan_on_recon=false`` is Pythae's choice (and the authors' CelebA run's).
- Pythae calls ``loss.backward()`` on each of its three losses over the whole graph, so its
  encoder's step also gets the decoder's and the discriminator's gradients, and its decoder
  the discriminator's; here each group descends its own loss alone (Algorithm 1).
- Pythae's ``equilibrium`` / ``margin`` (the authors' code: skip the discriminator's update
  when it wins by more than the margin, the decoder's when it loses) are not implemented: the
  trainer steps every group on every batch. Pythae's default discriminator is an MLP
  784-256-1 with the feature loss on its last layer (its sigmoid output); here the feature
  layer is a hidden layer, as in the paper (its 3rd of 4 conv layers).
- ``generator=minimax`` (default) is Algorithm 1's decoder loss (-L_GAN, saturating, as in
  the authors' code and Pythae); ``non-saturating`` replaces its GAN part with
  -log D(x~) - log D(x_p) (Goodfellow et al. 2014's practical variant).
- ``norm=batch`` puts the paper's batch norm after each hidden layer of the discriminator
  (its statistics over the real, reconstructed and prior-sampled images of one pass, as in the
  authors' code; running averages in eval mode); the default is none.

The discriminator is an MLP for mlp bodies (Linear layers of ``widths``, leaky ReLU) and a
conv net for conv bodies (4x4 stride-2 convs of ``widths`` channels, leaky ReLU, then one
Linear to the logit); ``arch`` picks either for any body. Its learning rate and Adam betas,
like the encoder's and decoder's, are options (none: the train config's ``lr`` and betas; Pythae's trainer defaults to 1e-4
for all three, the paper used RMSProp at 3e-4).

``kl_weight`` (not in the paper, whose weight is 1) weighs L_prior in the encoder's loss:
L_llike is a unit-variance Gaussian over the discriminator's features, so its scale is that
of the features, and an MLP discriminator's few hundred small activations give tens of nats
where the pixel likelihood gives a hundred or more; against the full KL the encoder then
codes almost nothing (KL about 1 nat in short MNIST runs).

The model has no density (its reconstruction term is not the likelihood's): ``drops``.
Its ``recon`` part is the likelihood's pixel loss of x~, reported only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.distributions import Distribution, kl_divergence
from vaelab.errors import ConfigError
from vaelab.models.contract import Objective, OptimStep, Parts, other_parameters

NAME = "vaegan"
GENERATORS = ("minimax", "non-saturating")
DEFAULT_WIDTHS = {"mlp": [512, 256], "conv": [32, 64, 128]}


def _betas(value, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2 or not all(0 <= b < 1 for b in value):
        raise ConfigError(f"{where} must be two numbers in [0, 1) (Adam's beta1, beta2), got {list(value)}")
    return (float(value[0]), float(value[1]))


@dataclass
class VAEGANOptions:
    gamma: float = field(default=1.0, metadata={
        "help": "weight of the feature reconstruction L_llike in the decoder's loss against the GAN loss "
                "(gamma L_llike - L_GAN)"})
    kl_weight: float = field(default=1.0, metadata={
        "help": "weight of L_prior in the encoder's loss (1: the paper's KL + L_llike)"})
    arch: str = field(default="auto", metadata={
        "help": "the discriminator's body: mlp, conv (4x4 stride-2 convs), or auto (model.arch's)"})
    widths: list[int] | None = field(default=None, metadata={
        "help": "the discriminator's hidden layers: Linear widths for an mlp (default 512,256), "
                "conv channels for a conv net (default 32,64,128)"})
    norm: str = field(default="none", metadata={
        "help": "normalisation after each hidden layer of the discriminator: none or batch (the paper's batch norm)"})
    layer: int | None = field(default=None, metadata={
        "help": "the discriminator's hidden layer l (1 = first) whose features L_llike compares "
                "(default: its last)"})
    gan_on_recon: bool = field(default=True, metadata={
        "help": "the discriminator also sees the reconstructions x~ (the paper); false: x and prior samples only "
                "(Pythae)"})
    generator: str = field(default="minimax", metadata={
        "help": "the decoder's GAN term: minimax (-L_GAN, the paper) or non-saturating (-log D)"})
    encoder_lr: float | None = field(default=None, metadata={"help": "the encoder's learning rate (none: train.lr)"})
    decoder_lr: float | None = field(default=None, metadata={"help": "the decoder's learning rate (none: train.lr)"})
    discriminator_lr: float | None = field(default=None, metadata={
        "help": "the discriminator's learning rate (none: train.lr)"})
    encoder_betas: list[float] | None = field(default=None, metadata={
        "help": "the encoder's Adam betas (none: train.adam_beta1, adam_beta2)"})
    decoder_betas: list[float] | None = field(default=None, metadata={
        "help": "the decoder's Adam betas (none: train.adam_beta1, adam_beta2)"})
    discriminator_betas: list[float] | None = field(default=None, metadata={
        "help": "the discriminator's Adam betas (none: train.adam_beta1, adam_beta2)"})

    def __post_init__(self):
        w = f"model.{NAME}"
        if self.gamma < 0:
            raise ConfigError(f"{w}.gamma must be >= 0, got {self.gamma}")
        if self.kl_weight < 0:
            raise ConfigError(f"{w}.kl_weight must be >= 0, got {self.kl_weight}")
        if self.widths is not None and (not self.widths or any(int(v) < 1 for v in self.widths)):
            raise ConfigError(f"{w}.widths must be one or more positive sizes, got {self.widths}")
        if self.layer is not None and self.layer < 1:
            raise ConfigError(f"{w}.layer must be a hidden layer of the discriminator (1 = the first), got {self.layer}")
        if self.arch not in ("auto", *DEFAULT_WIDTHS):
            raise ConfigError(f"{w}.arch must be auto, mlp or conv, got {self.arch!r}")
        if self.norm not in ("none", "batch"):
            raise ConfigError(f"{w}.norm must be none or batch, got {self.norm!r}")
        if self.generator not in GENERATORS:
            raise ConfigError(f"{w}.generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        for name in ("encoder_lr", "decoder_lr", "discriminator_lr"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"{w}.{name} must be > 0, got {v}")
        for name in ("encoder_betas", "decoder_betas", "discriminator_betas"):
            _betas(getattr(self, name), f"{w}.{name}")


def arch_of(cfg) -> str:
    """The discriminator's body: model.vaegan.arch, or model.arch's where that is auto."""
    a = cfg.opts(NAME).arch
    return cfg.arch if a == "auto" else a


def widths_of(cfg) -> list[int]:
    o = cfg.opts(NAME)
    return [int(v) for v in (o.widths if o.widths is not None else DEFAULT_WIDTHS[arch_of(cfg)])]


def feature_layer(cfg) -> int:
    """l, 1-based: the hidden layer whose output L_llike compares."""
    o = cfg.opts(NAME)
    return o.layer if o.layer is not None else len(widths_of(cfg))


class Discriminator(nn.Module):
    """Hidden blocks (Linear or 4x4 stride-2 conv, then leaky ReLU), then a Linear to one logit.
    ``forward(x, l)`` -> (logits (B,), the l-th block's output flattened (B, F))."""

    def __init__(self, blocks: list[nn.Module], features: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, feat = x, None
        for i, block in enumerate(self.blocks, 1):
            h = block(h)
            if i == layer:
                feat = h.flatten(1)
        return self.out(h.flatten(1)).squeeze(1), feat


def build_discriminator(cfg) -> Discriminator:
    c, h, w = cfg.input_shape
    widths = widths_of(cfg)
    batch = cfg.opts(NAME).norm == "batch"
    blocks: list[nn.Module] = []
    if arch_of(cfg) == "conv":
        cin = c
        for cout in widths:
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1  # kernel 4, stride 2, padding 1
            if h < 1 or w < 1:
                raise ConfigError(f"model.{NAME}.widths has {len(widths)} stride-2 conv layers, too many for "
                                  f"{cfg.input_shape[1]}x{cfg.input_shape[2]} images; give fewer")
            blocks.append(nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), *([nn.BatchNorm2d(cout)] if batch else []),
                                        nn.LeakyReLU(0.2)))
            cin = cout
        features = cin * h * w
    else:
        widths = [c * h * w, *widths]
        blocks = [nn.Sequential(*([nn.Flatten()] if i == 0 else []), nn.Linear(a, b),
                                *([nn.BatchNorm1d(b)] if batch else []), nn.LeakyReLU(0.2))
                  for i, (a, b) in enumerate(pairwise(widths))]
        features = widths[-1]
    return Discriminator(blocks, features)


def networks(cfg) -> dict[str, nn.Module]:
    return {"discriminator": build_discriminator(cfg)}


def vaegan(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    o = model.cfg.opts(NAME)
    dis = model.critics["discriminator"]
    n = len(x)
    z = q.rsample(generator=generator)
    logits = model.decode_logits(z, y)
    x_tilde = model.likelihood.mean(logits)  # model-space images
    zp = model.prior(y, n).sample(generator=generator).to(z.dtype)
    x_p = model.likelihood.mean(model.decode_logits(zp, y))
    real = model.to_model_space(x).to(x_tilde.dtype)
    # One pass of the discriminator over real, reconstructed and prior-sampled images.
    d, feat = dis(torch.cat([real, x_tilde, x_p]), feature_layer(model.cfg))
    d, feat = d.float(), feat.float()
    d_real, d_tilde, d_p = d[:n], d[n:2 * n], d[2 * n:]
    llike = 0.5 * (feat[:n] - feat[n:2 * n]).square().sum(1)
    kl = kl_divergence(q, model.prior(y, n), z)
    # -log D = softplus(-logit), -log(1 - D) = softplus(logit)
    disc = F.softplus(-d_real) + F.softplus(d_p)
    if o.gan_on_recon:
        disc = disc + F.softplus(d_tilde)
    if o.generator == "minimax":
        gan = -disc  # Algorithm 1: the decoder descends -L_GAN (its real term has no gradient there)
    else:
        gan = F.softplus(-d_p) + (F.softplus(-d_tilde) if o.gan_on_recon else 0)
    with torch.no_grad():  # reported, not descended: the pixel loss of the likelihood
        recon = model.recon_loss(logits, x)
    return {"loss": o.kl_weight * kl + llike, "kl": kl, "llike": llike, "decoder": o.gamma * llike + gan, "gan": gan,
            "disc": disc, "recon": recon}


def steps(model) -> list[OptimStep]:
    o = model.cfg.opts(NAME)
    dec = list(model.decoder.parameters())
    dis = list(model.critics.parameters())
    enc = other_parameters(model, dec, dis)
    w = f"model.{NAME}"
    return [OptimStep("encoder", enc, loss="loss", lr=o.encoder_lr, betas=_betas(o.encoder_betas, w)),
            OptimStep("decoder", dec, loss="decoder", lr=o.decoder_lr, betas=_betas(o.decoder_betas, w)),
            OptimStep("discriminator", dis, loss="disc", lr=o.discriminator_lr,
                      betas=_betas(o.discriminator_betas, w))]


def check(cfg) -> None:
    if cfg.condition != "none":
        raise ConfigError(f"objective {NAME}'s discriminator does not see labels, and model.condition is "
                          f"{cfg.condition}; use model.condition=none (a label predictor is fine)")
    o = cfg.opts(NAME)
    if arch_of(cfg) not in DEFAULT_WIDTHS:
        raise ConfigError(f"objective {NAME} has a discriminator for mlp and conv bodies, and model.arch is {cfg.arch}; "
                          f"set model.{NAME}.arch=mlp or conv")
    if o.layer is not None and o.layer > len(widths_of(cfg)):
        raise ConfigError(f"model.{NAME}.layer={o.layer} is deeper than the discriminator's "
                          f"{len(widths_of(cfg))} hidden layers (model.{NAME}.widths)")


OBJECTIVE = Objective(
    vaegan, frozenset({"prior", "stochastic"}),
    "VAE-GAN: encoder KL + discriminator-feature reconstruction, decoder gamma L_llike - L_GAN, discriminator L_GAN",
    options=VAEGANOptions, check=check, networks=networks, steps=steps, drops=frozenset({"density"}))

__all__ = ["OBJECTIVE", "Discriminator", "VAEGANOptions", "build_discriminator", "feature_layer", "vaegan"]
