"""Priors p(z|y): ``PRIORS[model.prior](cfg)`` builds a module; ``prior(y, batch)``
returns a ``vaelab.distributions`` object over codes.

- ``normal``: N(0, I), the same for every label.
- ``conditional``: a learned N(mu_y, diag(exp(logvar_y))) per class (starting at N(0, I)),
  for conditional models; with no label it is the mixture of the class priors
  weighted by the class frequencies of the training data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vaelab.distributions import DiagNormal, Distribution, MixtureDiagNormal, StandardNormal
from vaelab.errors import ConfigError

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


class NormalPrior(nn.Module):
    """N(0, I); holds no weights (a buffer tells it the device and dtype)."""

    needs_labels = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dim = cfg.latent_dim
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def forward(self, y: torch.Tensor | None, batch: int | None, class_log_prior=None) -> Distribution:
        shape = () if batch is None else (batch,)
        return StandardNormal(self.dim, self.anchor.device, torch.float32, shape)


class ConditionalPrior(nn.Module):
    """p(z|y) = N(mu_y, diag(exp(logvar_y))), one learned mean and log-variance per class."""

    needs_labels = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.num_classes is None:
            raise ConfigError("model.prior=conditional needs model.num_classes (filled in from labelled data)")
        self.mu = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))
        self.logvar = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))

    def forward(self, y: torch.Tensor | None, batch: int | None, class_log_prior=None) -> Distribution:
        if y is None:
            return MixtureDiagNormal(self.mu, self.logvar, class_log_prior, () if batch is None else (batch,))
        return DiagNormal(self.mu[y], self.logvar[y])


# Registry: model.prior -> module class. "none": an autoencoder has no prior.
PRIORS: dict[str, type[nn.Module] | None] = {"none": None, "normal": NormalPrior, "conditional": ConditionalPrior}

__all__ = ["ConditionalPrior", "NormalPrior", "PRIORS"]
