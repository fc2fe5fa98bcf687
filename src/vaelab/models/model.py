"""The one model class: a latent-variable model assembled from named parts.

    x --encoder body--> features --posterior head--> q(z | x, y)
    z --decoder body--> logits --likelihood--> p(x | z, y);   prior p(z | y);   objective

Every family is this class with other parts (``vaelab.models.MODELS`` says which), so one
training loop, one evaluation and every tool drive all of them through one contract:

- ``model(x, y=None, *, generator=None, progress=1.0)`` -> per-image (B,) tensors,
  ``loss`` and its named parts (the objective's, plus ``predictor`` with a label predictor);
- ``posterior(x, y)`` / ``prior(y)`` -> ``vaelab.distributions`` objects;
- ``decode(z, y)`` -> images in [0, 1]; ``encode(x, y)`` -> posterior means;
- ``capabilities``: what the model offers (a density, a continuous latent, labels, ...).
  Tools ask for what they need with ``vaelab.models.require``; nothing branches on a
  model's name.

Labels ``y`` (B,) are the classes of the images: a conditional model feeds them to its
encoder and decoder; a label predictor learns them. Images are float (B, C, H, W) in
[0, 1]; models with a tanh output work on data scaled to [-1, 1] inside.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from vaelab.distributions import Distribution
from vaelab.errors import ConfigError, DataError
from vaelab.models.bodies import BODIES, build_predictor, feature_map_code
from vaelab.models.likelihoods import build_likelihood, classification
from vaelab.models.posteriors import POSTERIORS
from vaelab.models.priors import PRIORS
from vaelab.models.objectives import OBJECTIVES

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


def capabilities(cfg: ModelConfig) -> frozenset[str]:
    """What a model with these parts offers; tools and objectives ask for these by name
    (``vaelab.models.CAPABILITIES`` says what each means)."""
    head = POSTERIORS[cfg.posterior]
    caps = {name for name in ("continuous", "codebook", "diagonal", "two_layers", "spherical", "hyperbolic")
            if getattr(head, name, False)}
    stochastic = head.stochastic
    prior = PRIORS[cfg.prior] is not None
    if stochastic:
        caps.add("stochastic")
    if prior:
        caps.add("prior")
    if stochastic and prior and build_likelihood(cfg.loss, cfg.output_activation).density:
        caps.add("density")
    if cfg.condition != "none":
        caps.add("labels")
    if cfg.predictor_weight > 0:
        caps.add("predictor")
    return frozenset(caps) - OBJECTIVES[cfg.objective].drops


def corrupt(x: torch.Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A corrupted copy of images (B, C, H, W) in [0, 1] for a denoising model (Vincent et al.
    2008): Gaussian noise of std ``level`` (clipped to [0, 1]), salt-and-pepper (a fraction
    ``level`` of pixels set to 0 or 1 at random), or masking (a fraction set to 0)."""
    if kind == "none" or level <= 0:
        return x
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "gaussian":
        return (x + level * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)).clamp(0, 1)
    hit = u < level
    if kind == "mask":
        return x.masked_fill(hit, 0.0)
    # salt and pepper: the hit pixels' own uniform draw decides white (u < level / 2) or black
    return torch.where(hit, (u < level / 2).to(x.dtype), x)


def sparsity_penalty(z: torch.Tensor, kind: str, target: float) -> torch.Tensor:
    """Per-image (B,) sparsity penalty of codes (B, D): the L1 norm, or (kl) the KL between
    Bernoulli(target) and Bernoulli(mean activation of each dimension over the batch),
    summed over dimensions (Ng's sparse autoencoder), reported for every image of the batch."""
    if kind == "l1":
        return z.abs().sum(1)
    rho = z.float().mean(0).clamp(1e-6, 1 - 1e-6)  # (D,)
    kl = target * torch.log(target / rho) + (1 - target) * torch.log((1 - target) / (1 - rho))
    return kl.sum().expand(len(z))


class LabelCode(nn.Module):
    """Labels (B,) -> vectors (B, E) that a conditional encoder and decoder read:
    one-hot (E = classes) or a learned embedding (E = model.condition_dim)."""

    def __init__(self, kind: str, num_classes: int, dim: int):
        super().__init__()
        self.kind, self.num_classes = kind, num_classes
        self.embed = nn.Embedding(num_classes, dim) if kind == "embedding" else None
        self.dim = dim if kind == "embedding" else num_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            return self.embed(y)
        return nn.functional.one_hot(y, self.num_classes).float()


class LatentModel(nn.Module):
    """Encoder body + posterior head, decoder body + likelihood, prior, objective, and
    optionally a label code (conditional models) and a label predictor."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        body = BODIES[cfg.arch]
        self.body = body
        self.label_code = None
        if cfg.condition != "none":
            if cfg.num_classes is None:
                raise ConfigError("a conditional model needs model.num_classes (filled in from labelled data)")
            self.label_code = LabelCode(cfg.condition, cfg.num_classes, cfg.condition_dim)
        extra = self.label_code.dim if self.label_code is not None else 0
        self.encoder, features = body.encoder(cfg, extra)
        if feature_map_code(cfg):
            cfg.latent_dim = features  # the encoder's last feature map is the code
        head = POSTERIORS[cfg.posterior]
        self.posterior_head = head(cfg, features)
        # The decoder reads the code's first decoder_dim dimensions (z1 of a two-layer model).
        self.decoder_dim = head.decoder_dim(cfg) if hasattr(head, "decoder_dim") else cfg.latent_dim
        dec_cfg = cfg if self.decoder_dim == cfg.latent_dim else replace(cfg, latent_dim=self.decoder_dim)
        self.decoder = body.decoder(dec_cfg, extra)
        if hasattr(self.posterior_head, "adapt_decoder"):  # its first layer made for the codes (the ball's)
            self.decoder = self.posterior_head.adapt_decoder(self.decoder, self.decoder_dim)
        prior = PRIORS[cfg.prior]
        self.prior_net = prior(cfg) if prior is not None else None
        self.likelihood = build_likelihood(cfg.loss, cfg.output_activation, cfg.input_shape)
        self.objective = OBJECTIVES[cfg.objective]
        if self.label_code is not None:
            # log p(y) of the training labels, to marginalise over classes where a density
            # is asked for unlabelled images; set by fit() from the data (uniform until then).
            k = cfg.num_classes
            self.register_buffer("class_log_prior", torch.full((k,), -math.log(k)))
        # Built last, so the other parts start from the same weights with or without it.
        self.predictor = build_predictor(cfg) if cfg.predictor_weight > 0 else None
        # Networks of the objective's own (a discriminator), after every other part: the
        # model's weights start the same with or without them.
        self.critics = nn.ModuleDict(self.objective.networks(cfg) if self.objective.networks else {})
        self.signed = cfg.output_activation == "tanh"
        self.capabilities = capabilities(cfg)

    def optimisation_steps(self):
        """The objective's optimisation steps (each a parameter group with its own optimizer),
        or None: one step over every parameter on ``loss``."""
        return self.objective.steps(self) if self.objective.steps else None

    # ------------------------------------------------------------------ what it offers
    def describe(self) -> str:
        c = self.cfg
        cond = f", conditioned on labels ({c.condition})" if self.label_code is not None else ""
        return (f"this run's model ({c.kind}: {c.posterior} posterior, {c.prior} prior, {c.loss} likelihood, "
                f"{c.objective} objective{cond})")

    @property
    def conditional(self) -> bool:
        return self.label_code is not None

    @property
    def has_predictor(self) -> bool:
        return self.predictor is not None

    # ------------------------------------------------------------------ data space
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.signed else x

    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """Model-space output (after the output activation) back to [0, 1] images."""
        return ((out + 1) / 2).clamp(0, 1) if self.signed else out.clamp(0, 1)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        # Conv bodies run channels-last (NHWC): oneDNN's fast kernels on CPU (see bodies.py).
        return x.contiguous(memory_format=torch.channels_last) if self.body.channels_last and x.dim() == 4 else x

    def _labels(self, y: torch.Tensor | None, n: int, what: str) -> torch.Tensor | None:
        """The labels a conditional model needs (checked), or None for other models."""
        if self.label_code is None:
            return None
        if y is None:
            raise DataError(f"{what} of a conditional model needs the images' labels (or use infer_labels)")
        if y.shape != (n,):
            raise DataError(f"{what}: {tuple(y.shape)} labels for {n} images")
        k = self.cfg.num_classes
        # Not while torch.export traces the model (ONNX export): reading label values is a
        # data-dependent branch it cannot trace; the exported graph documents the range instead.
        if not torch.compiler.is_exporting() and len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            bad = int(y.max()) if int(y.max()) >= k else int(y.min())
            raise DataError(f"class {bad} is not one this model was trained on (classes 0..{k - 1})")
        return y

    # ------------------------------------------------------------------ the contract
    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """q(z | x, y) for images (B, C, H, W) in [0, 1]."""
        h = self.to_model_space(x)
        # x.shape[0], not len(x), here, in prior and in infer_labels: len() would fix the batch size in
        # a graph traced by torch.export (ONNX export keeps it dynamic).
        y = self._labels(y, x.shape[0], "encoding")
        if y is not None:
            h = self.body.join(h, self.label_code(y))
        return self.posterior_head(self.encoder(self._layout(h)))

    def prior(self, y: torch.Tensor | None = None, batch: int | None = None) -> Distribution:
        """p(z | y); without labels a conditional prior is the mixture over the classes."""
        if self.prior_net is None:
            raise ConfigError(f"{self.describe()} has no prior")
        if y is not None and self.prior_net.needs_labels:
            y = self._labels(y, y.shape[0], "the prior")
        else:
            y = None
        return self.prior_net(self, y, batch)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder logits (..., C, H, W) for codes (..., D); leading sample dims are kept."""
        lead = z.shape[:-1]
        z2 = z[..., :self.decoder_dim].reshape(-1, self.decoder_dim)
        if self.label_code is not None:
            y = self._labels(y, lead[-1] if lead else 1, "decoding")
            e = self.label_code(y)
            e = e.expand(*lead, e.shape[-1]).reshape(-1, e.shape[-1])
            z2 = torch.cat([z2, e.to(z2.dtype)], 1)
        out = self.decoder(z2)
        return out.reshape(*lead, *out.shape[1:])

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) from codes (B, D)."""
        return self.to_image(self.likelihood.mean(self.decode_logits(z, y)))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (B, D): the posterior mean."""
        return self.posterior(x, y).mean

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean."""
        return self.decode(self.encode(x, y), y)

    def recon_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction loss (...) in the likelihood's convention; x in [0, 1]."""
        # .float(): under bf16 autocast the decoder returns bf16; losses are summed in fp32.
        return self.likelihood.loss(logits.float(), self.to_model_space(x))

    def nll_offset(self) -> float:
        """c with -log p(x|z) = recon_loss + c (nats, images in [0, 1]); 0 for Bernoulli."""
        return self.likelihood.nll_offset(self.cfg.input_shape, self.signed)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                progress: float = 1.0, dataset_size: int | None = None, q: Distribution | None = None
                ) -> dict[str, torch.Tensor]:
        """Per-image (B,) loss and parts. ``dataset_size``: the size of the data set the batch
        comes from, for objectives that estimate the aggregate posterior from a minibatch.
        ``q``: q(z | x, y) when the caller has it already (the evaluation: one encoder pass
        fewer); in training the model encodes its own, possibly corrupted, input."""
        if q is None or self.training:
            x_in = corrupt(x, self.cfg.corrupt, self.cfg.corrupt_level, generator) if self.training else x
            q = self.posterior(x_in, y)  # a denoising model encodes the corrupted image, decodes towards x
        parts = self.objective.fn(self, x, y, q, generator=generator, progress=progress, dataset_size=dataset_size)
        if self.cfg.sparsity != "none" and self.cfg.sparsity_weight > 0:
            s = sparsity_penalty(q.mean, self.cfg.sparsity, self.cfg.sparsity_target)
            parts["loss"] = parts["loss"] + self.cfg.sparsity_weight * s
            parts["sparsity"] = s
        if y is not None and self.predictor is not None:
            # The predictor reads the posterior mean, the code that steering later moves.
            ce = classification(self.predict_logits(q.mean), y)
            parts["loss"] = parts["loss"] + self.cfg.predictor_weight * ce
            parts["predictor"] = ce
        return parts

    # ------------------------------------------------------------------ densities
    def log_weights(self, x: torch.Tensor, y: torch.Tensor | None, k: int, generator: torch.Generator | None = None,
                    q: Distribution | None = None, rows: int | None = None) -> torch.Tensor:
        """log p(x|z_k) + log p(z_k|y) - log q(z_k|x, y) for k posterior draws: (k, B).

        log p(x|z) is minus the reconstruction loss (the likelihood's convention; add
        ``nll_offset`` for nats). All k draws go through the decoder as one batch, or, with
        ``rows``, in pieces of about ``rows`` decoder rows (the same draws and numbers).
        """
        q = self.posterior(x, y) if q is None else q
        z = q.rsample((k,), generator=generator)  # (k, B, D)
        per = len(x) if rows is None else max(1, rows // k)  # images per decoder pass
        if per >= len(x):
            log_px = -self.recon_loss(self.decode_logits(z, y), x)  # (k, B)
        else:
            log_px = torch.cat([-self.recon_loss(self.decode_logits(z[:, i:i + per], None if y is None else
                                                                    y[i:i + per]), x[i:i + per])
                                for i in range(0, len(x), per)], 1)
        return log_px + self.prior(y, len(x)).log_prob(z) - q.log_prob(z)

    def infer_labels(self, x: torch.Tensor) -> torch.Tensor:
        """For unlabelled images: the most probable class, argmax_y log p(y) - loss(x, y),
        the loss through the posterior mean of q(z|x, y). (B,)"""
        k = self.cfg.num_classes
        scores = []
        for c in range(k):
            y = torch.full((x.shape[0],), c, dtype=torch.long, device=x.device)
            q = self.posterior(x, y)
            score = -self.recon_loss(self.decode_logits(q.mean, y), x)
            if "prior" in self.capabilities:
                score = score + self.prior(y, x.shape[0]).log_prob(q.mean)
            scores.append(score + self.class_log_prior[c])
        return torch.stack(scores, 1).argmax(1)

    # ------------------------------------------------------------------ label predictor
    def predict_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of the label predictor for codes (B, D)."""
        if self.predictor is None:
            raise ConfigError(f"{self.describe()} has no label predictor (model.predictor_weight is 0)")
        return self.predictor(z).float()


__all__ = ["LabelCode", "LatentModel", "capabilities", "corrupt", "sparsity_penalty"]
