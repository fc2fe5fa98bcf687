"""Autoencoder and variational autoencoder.

Both follow one contract: ``model(x)`` takes images in [0, 1] (B, C, H, W) and
returns a dict of per-image tensors (B,) holding ``loss`` and its named parts
(``recon``, and ``kl`` for VAEs), so one training loop and one evaluation drive
every model. The VAE differs from the AE only in its heads and in how a code is
drawn, so it subclasses the AE and overrides just those.

With ``model.predictor_weight > 0`` either model also holds a label predictor, an
MLP on the code (the posterior mean for VAEs); ``model(x, y=labels)`` then adds the
part ``predictor`` (cross-entropy in nats per image) to the loss, times the weight.
Without labels the forward pass is the plain model's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.models.losses import apply_output, classification, kl_normal, reconstruction
from vaelab.models.bodies import activation, build_decoder, build_encoder, build_predictor


class AE(nn.Module):
    """Deterministic autoencoder: x -> z = act(W h) -> x_hat."""

    is_vae = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, features = build_encoder(cfg)
        self._build_heads(features)
        self.decoder = build_decoder(cfg)
        # Built last, so the encoder and decoder start from the same weights with or
        # without it (same seed); absent (None, no weights) when predictor_weight is 0.
        self.predictor = build_predictor(cfg) if cfg.predictor_weight > 0 else None
        # Models with a tanh output work on data scaled to [-1, 1]; users always see [0, 1].
        self.signed = cfg.output_activation == "tanh"

    def _build_heads(self, features: int) -> None:
        if self.cfg.latent == "conv":
            self.cfg.latent_dim = features  # the feature map is the code
            self.head = nn.Identity()
        else:
            self.head = nn.Linear(features, self.cfg.latent_dim)
        self.latent_act = activation(self.cfg.latent_activation)

    # ------------------------------------------------------------------ data space
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.signed else x

    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """Model-space output (after the output activation) back to [0, 1] images."""
        return ((out + 1) / 2).clamp(0, 1) if self.signed else out.clamp(0, 1)

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        return apply_output(logits, self.cfg.output_activation)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        # Convolutions run channels-last (NHWC): oneDNN's fast kernels on CPU (see blocks.py).
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.arch == "conv" and x.dim() == 4 else x

    # ------------------------------------------------------------------ encode/decode
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log-variance) of q(z|x); the AE has no variance (None)."""
        return self.latent_act(self.head(self.encoder(self._layout(self.to_model_space(x))))), None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, latent_dim): the posterior mean for VAEs."""
        return self.posterior(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) from codes (B, latent_dim)."""
        return self.to_image(self.output(self.decode_logits(z)))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean."""
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ label predictor
    @property
    def has_predictor(self) -> bool:
        return self.predictor is not None

    def predict_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) of the label predictor for codes (B, latent_dim)."""
        if self.predictor is None:
            raise RuntimeError("this model has no label predictor (model.predictor_weight is 0)")
        return self.predictor(z).float()

    def _with_predictor(self, parts: dict[str, torch.Tensor], z: torch.Tensor,
                        y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Add the weighted predictor cross-entropy to the loss when there are labels."""
        if y is None or self.predictor is None:
            return parts
        ce = classification(self.predict_logits(z), y)
        parts["loss"] = parts["loss"] + self.cfg.predictor_weight * ce
        parts["predictor"] = ce
        return parts

    # ------------------------------------------------------------------ loss
    def recon_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction loss in model space; x is in [0, 1]."""
        # .float(): under bf16 autocast the decoder returns bf16; losses are summed in fp32.
        return reconstruction(logits.float(), self.to_model_space(x), self.cfg.loss, self.cfg.output_activation)

    def forward(self, x: torch.Tensor, kl_scale: float = 1.0, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        recon = self.recon_loss(self.decode_logits(z), x)
        return self._with_predictor({"loss": recon, "recon": recon}, z, y)


class VAE(AE):
    """Gaussian VAE: q(z|x) = N(mu, diag(exp(logvar))), p(z) = N(0, I), reparameterised."""

    is_vae = True

    def _build_heads(self, features: int) -> None:
        # Two separate heads, as in the PyTorch (fc21/fc22) and Keras (z_mean/z_log_var) tutorials.
        self.mu = nn.Linear(features, self.cfg.latent_dim)
        self.logvar = nn.Linear(features, self.cfg.latent_dim)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self._layout(self.to_model_space(x)))
        return self.mu(h).float(), self.logvar(h).float()  # fp32 even under autocast

    @staticmethod
    def sample_z(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, kl_scale: float = 1.0, generator: torch.Generator | None = None,
                y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior(x)
        z = self.sample_z(mu, logvar, generator)
        recon = self.recon_loss(self.decode_logits(z), x)
        kl = kl_normal(mu, logvar).sum(1)
        # The predictor reads the posterior mean, the code that steering later moves.
        return self._with_predictor({"loss": recon + (self.cfg.beta * kl_scale) * kl, "recon": recon, "kl": kl},
                                    mu, y)

    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x|z_k) + log p(z_k) - log q(z_k|x) for K posterior samples: (K, B).

        log p(x|z) is minus the reconstruction loss, the likelihood the model is trained
        on (Bernoulli for bce; for mse/euclidean a Gaussian up to a constant).
        """
        mu, logvar = self.posterior(x)
        out = []
        for _ in range(k):
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
            log_px = -self.recon_loss(self.decode_logits(z), x)
            log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).sum(1)
            log_qz = -0.5 * (eps.square() + logvar + math.log(2 * math.pi)).sum(1)
            out.append(log_px + log_pz - log_qz)
        return torch.stack(out)
