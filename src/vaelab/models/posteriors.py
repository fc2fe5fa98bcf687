"""Posteriors q(z|x): heads from encoder features (B, F) to a distribution over codes.

``POSTERIORS[model.posterior](cfg, features)`` builds the head; calling it on features
returns a ``vaelab.distributions`` object. Heads compute in fp32 even under autocast:
the code statistics feed the KL and the sampling noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vaelab.distributions import DiagNormal, Distribution, PointMass
from vaelab.models.bodies import activation

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


class PointPosterior(nn.Module):
    """An autoencoder's code: z = act(W h), a point mass. ``model.latent=conv`` takes the
    encoder's last feature map itself as the code (no weights here)."""

    stochastic = False

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        self.linear = nn.Identity() if cfg.latent == "conv" else nn.Linear(features, cfg.latent_dim)
        self.act = activation(cfg.latent_activation)

    def forward(self, h: torch.Tensor) -> Distribution:
        return PointMass(self.act(self.linear(h)))


class GaussianPosterior(nn.Module):
    """q(z|x) = N(mu(h), diag(exp(logvar(h)))): two linear heads, as in the PyTorch (fc21/fc22)
    and Keras (z_mean/z_log_var) tutorials."""

    stochastic = True

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        self.mu = nn.Linear(features, cfg.latent_dim)
        self.logvar = nn.Linear(features, cfg.latent_dim)

    def forward(self, h: torch.Tensor) -> Distribution:
        return DiagNormal(self.mu(h).float(), self.logvar(h).float())


# Registry: model.posterior -> head class (cfg, encoder feature width).
POSTERIORS: dict[str, type[nn.Module]] = {"point": PointPosterior, "gaussian": GaussianPosterior}

__all__ = ["GaussianPosterior", "POSTERIORS", "PointPosterior"]
