"""Loss functions: pure, per image.

Conventions (users compare numbers across tools with these):
- ``bce``: binary cross-entropy summed over pixels (computed from logits);
- ``mse``: squared error averaged over pixels;
- ``euclidean``: squared error summed over pixels (the squared Euclidean distance);
- ``kl``: KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions;
- ``predictor``: the label predictor's cross-entropy, in nats per image.
The VAE loss is ``recon + beta * kl`` per image: the negative ELBO when beta = 1 and
the loss is bce, which is the PyTorch tutorial VAE's "test loss".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction(logits: torch.Tensor, target: torch.Tensor, loss: str, output_activation: str) -> torch.Tensor:
    """Per-image reconstruction loss (B,). ``target`` is in the model's data space."""
    dims = tuple(range(1, target.dim()))
    if loss == "bce":
        # From logits: one fused, numerically stable op instead of sigmoid then log.
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dims)
    sq = (apply_output(logits, output_activation) - target).square()
    if loss == "mse":
        return sq.mean(dims)
    if loss == "euclidean":
        return sq.sum(dims)
    raise ValueError(f"unknown loss {loss!r}")


def apply_output(logits: torch.Tensor, output_activation: str) -> torch.Tensor:
    if output_activation == "sigmoid":
        return torch.sigmoid(logits)
    if output_activation == "tanh":
        return torch.tanh(logits)
    return logits


def classification(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy (B,) in nats of class logits (B, K) against labels (B,)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per dimension (B, D), closed form."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp())
