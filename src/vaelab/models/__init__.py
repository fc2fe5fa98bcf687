"""Model registry: ``MODELS[name](cfg)`` builds a model. Adding one is a class and an entry."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from vaelab.models.autoencoder import AE, VAE

MODELS = {"ae": AE, "vae": VAE}


def build_model(cfg):
    """Build the model a ``ModelConfig`` describes (``cfg.input_shape`` must be set)."""
    from vaelab.errors import ConfigError

    if cfg.input_shape is None:
        raise ConfigError("model.input_shape is unset; it is filled in from the data when training")
    model = MODELS[cfg.kind](cfg)
    if cfg.init == "glorot":
        glorot_init(model)
    if cfg.arch == "conv":
        # Channels-last conv weights match the channels-last activations (no reorder per call).
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model


def glorot_init(model) -> None:
    """Keras's default initialisation: Glorot-uniform weights, zero biases."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["AE", "MODELS", "VAE", "build_model", "count_params", "frozen"]


@contextmanager
def frozen(model) -> Iterator[None]:
    """Weights need no gradients while only the codes are optimised (inpainting, steering);
    the flags are restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
