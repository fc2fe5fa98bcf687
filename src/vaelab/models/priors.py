"""Priors p(z|y): ``PRIORS[model.prior](cfg)`` builds a module; ``prior(model, y, batch)``
returns a ``vaelab.distributions`` object over codes (the model is passed in, for priors
built from its other parts).

- ``normal``: N(0, I), the same for every label.
- ``conditional``: a learned N(mu_y, diag(exp(logvar_y))) per class (starting at N(0, I)),
  for conditional models; with no label it is the mixture of the class priors
  weighted by the class frequencies of the training data.
- ``vamp``: the VampPrior (Tomczak & Welling 2018), the mixture of the model's own
  posteriors at K learned pseudo-inputs, (1/K) sum_k q(z | u_k).
- ``hierarchical``: p(z2) p(z1|z2) for the two-stochastic-layer posterior (codes [z1, z2]),
  p(z2) = N(0, I) and p(z1|z2) Gaussian through ``model.gaussian2.hidden2`` (Burda et al. 2016).

A prior class says what the rest of the model must offer for it (``requires``: model
capabilities, ``vaelab.models.CAPABILITIES``), checked when the config is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from vaelab.distributions import (
    Ancestral,
    DiagNormal,
    Distribution,
    MixtureDiagNormal,
    StandardNormal,
)
from vaelab.errors import ConfigError
from vaelab.models.poincare import WrappedNormalPrior
from vaelab.models.posteriors import GaussianLayer
from vaelab.models.svae import SphericalUniformPrior

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


class NormalPrior(nn.Module):
    """N(0, I); holds no weights (a buffer tells it the device and dtype)."""

    needs_labels = False
    requires: frozenset[str] = frozenset()

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dim = cfg.latent_dim
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def forward(self, model, y: torch.Tensor | None, batch: int | None) -> Distribution:
        shape = () if batch is None else (batch,)
        return StandardNormal(self.dim, self.anchor.device, torch.float32, shape)


class ConditionalPrior(nn.Module):
    """p(z|y) = N(mu_y, diag(exp(logvar_y))), one learned mean and log-variance per class."""

    needs_labels = True
    requires = frozenset({"labels"})

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.num_classes is None:
            raise ConfigError("model.prior=conditional needs model.num_classes (filled in from labelled data)")
        self.mu = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))
        self.logvar = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_dim))

    def forward(self, model, y: torch.Tensor | None, batch: int | None) -> Distribution:
        if y is None:
            return MixtureDiagNormal(self.mu, self.logvar, model.class_log_prior, () if batch is None else (batch,))
        return DiagNormal(self.mu[y], self.logvar[y])


@dataclass
class VampOptions:
    components: int = field(default=500, metadata={"help": "K, the number of learned pseudo-inputs",
                                                   "alias": "vamp_components"})

    def __post_init__(self) -> None:
        if self.components < 1:
            raise ConfigError(f"model.vamp.components must be at least 1, got {self.components}")


class VampPrior(nn.Module):
    """(1/K) sum_k q(z | u_k) at K learned pseudo-inputs u_k, images in [0, 1].

    The pseudo-inputs are hardtanh(w) with w initialised N(0.05, 0.01) per pixel (the
    paper's MNIST settings). The KL to this prior has no closed form: objectives use a
    one-sample estimate, and nll_iw / the prior sampler work from the mixture."""

    needs_labels = False
    requires = frozenset({"diagonal"})  # its components are the posterior's own means and variances
    options = VampOptions

    @staticmethod
    def check(cfg: ModelConfig) -> None:
        if cfg.condition != "none":
            raise ConfigError(f"model.prior=vamp is the mixture of q(z|u_k) at unlabelled pseudo-inputs, and "
                              f"model.condition={cfg.condition} would need labels for them; choose another prior "
                              "or model.condition=none")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pseudo = nn.Parameter(torch.randn(cfg.opts("vamp").components, *cfg.input_shape) * 0.01 + 0.05)

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.nn.functional.hardtanh(self.pseudo, 0.0, 1.0)  # (K, C, H, W)

    def forward(self, model, y: torch.Tensor | None, batch: int | None) -> Distribution:
        q = model.posterior(self.pseudo_inputs())  # (K, D) components
        return MixtureDiagNormal(q.mean, q.logvar, None, () if batch is None else (batch,))


class HierarchicalPrior(nn.Module):
    """p(z2) p(z1|z2) over codes [z1, z2]: z2 ~ N(0, I), z1 from z2 through the two-layer
    posterior's ``hidden2`` reversed (its options: ``model.gaussian2``)."""

    needs_labels = False
    requires = frozenset({"two_layers"})

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        o = cfg.opts(cfg.posterior)  # the two-layer posterior's sizes (requires two_layers)
        d1, d2 = o.latent_dims
        self.d1, self.d2 = d1, d2
        self.z1 = GaussianLayer(d2, list(reversed(o.hidden2)), d1, cfg.activation)
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def forward(self, model, y: torch.Tensor | None, batch: int | None) -> Distribution:
        top = StandardNormal(self.d2, self.anchor.device, torch.float32, () if batch is None else (batch,))
        return Ancestral(top, self.z1, self.d2, swap=True)


# Registry: model.prior -> module class. "none": an autoencoder has no prior.
PRIORS: dict[str, type[nn.Module] | None] = {
    "none": None, "normal": NormalPrior, "conditional": ConditionalPrior, "vamp": VampPrior,
    "hierarchical": HierarchicalPrior,
    "spherical-uniform": SphericalUniformPrior,  # U(S^{D-1}), for the vmf posterior (vaelab.models.svae)
    "wrapped-normal-prior": WrappedNormalPrior,  # WN(0, sigma I) on the Poincaré ball (vaelab.models.poincare)
}

__all__ = ["PRIORS", "ConditionalPrior", "HierarchicalPrior", "NormalPrior", "VampOptions", "VampPrior"]
