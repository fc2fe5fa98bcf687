"""The Poincaré VAE (P-VAE): codes in the Poincaré ball of curvature -c, a wrapped normal
posterior and a wrapped normal prior at the origin (Mathieu et al. 2019, "Continuous Hierarchical
Representations with Poincaré Variational Auto-Encoders", NeurIPS, arXiv:1901.06033; the authors'
code: emilemathieu/pvae).

- ``model.posterior=wrapped-normal``: q(z|x) = WN(mu(h), sigma(h)) on the ball B^D_c, mu(h) =
  exp_0(W h + b) (a linear head mapped into the ball by the exponential map at the origin, the
  authors' ``EncWrapped``) and sigma(h) = softplus(w.h + b) + 1e-5 per dimension (their
  ``Constants.eta``); ``vaelab.distributions.WrappedNormal`` (draws z = exp_mu(PT_{0->mu}(v /
  lambda_0)), v ~ N(0, diag(sigma^2)), and log q(z) = log N(v) - (D - 1) log(sinh(sqrt(c) r) /
  (sqrt(c) r)), r = d_c(mu, z): the paper's eq. 6, in float64). ``model.wrapped-normal.curvature``
  is c (1 by default, the authors' ``--c``; the ball has radius 1 / sqrt(c)); c <= 0 is refused.
- ``model.prior=wrapped-normal-prior``: WN(0, ``model.wrapped-normal-prior.sigma`` I) (sigma 1, the
  authors' ``--prior-std``, not learned), on the posterior's ball (its curvature).
- Family ``pvae``: wrapped-normal, wrapped-normal-prior, elbo. The KL has no closed form: the elbo
  takes log q(z) - log p(z) at the draw (``kl_divergence``), as the authors' default (their
  ``--analytical-kl`` is off); eval.json has ``kl`` and no ``kl_per_dim``, and ``nll_iw`` from the
  same log-densities (both with respect to the ball's Riemannian volume, so their ratio is the
  density ratio whatever the base measure).

The decoder reads the ball's coordinates directly: the paper's "linear" decoder (``DecLinear``).
The authors' default ``Wrapped`` decoder (log_0 first) and the gyroplane layer of the paper's
section 3.3 (``DecGeo``, its MNIST runs) are not built: either needs a decoder of its own, and
vaelab's bodies read the code as it is. The Riemannian normal (the paper's other distribution,
an adaptive rejection sampler for its radius) is not built either.

Only parts that agree with the ball pair with wrapped-normal: a prior on the ball
(wrapped-normal-prior; normal, vamp, conditional and hierarchical are densities on R^D and are
refused in ``models.check_parts``), and no objective that builds codes off the ball (factorvae
permutes each code dimension across the batch: the permuted codes may leave it; its own check
takes Gaussian posteriors only); the prior needs
a posterior on the ball (``requires`` the capability ``hyperbolic``). tcvae and hamiltonian need a
diagonal Gaussian posterior and are refused by their own ``requires``.

Pythae 0.1.2 has one (``PoincareVAE``, from the authors' code; bench/peers/PYTHAE.md sets it beside
this, the same head and decoder). Where this follows the authors' code and where it differs: their maps come
from geoopt in float32 with a projection 4e-3 inside the boundary; here the few maps are by hand
(``vaelab.distributions``, ``ball_*``), in float64, the boundary kept at float32's spacing.

Tools: ``encode``, reconstructions and the latent pictures use mu (in the ball); ``sample
--sampler prior`` draws from the wrapped normal prior (codes inside the ball); the ONNX encoder
exports ``mu`` and ``sigma``, the sampler maps standard-normal noise to the ball as ``rsample``
does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from vaelab.distributions import Distribution, WrappedNormal, ball_expmap0, ball_project
from vaelab.errors import ConfigError

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

# The authors' Constants.eta: the least posterior scale
MIN_SCALE = 1e-5


def _positive(value: float, where: str, what: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where} ({what}) must be a positive number, got {value}; set it above 0")


@dataclass
class WrappedNormalOptions:
    curvature: float = field(default=1.0, metadata={
        "help": "c > 0: the ball has curvature -c and radius 1/sqrt(c) (the authors' --c); the prior "
                "wrapped-normal-prior lives on the same ball"})

    def __post_init__(self) -> None:
        _positive(self.curvature, "model.wrapped-normal.curvature", "c, the Poincaré ball's curvature is -c")


@dataclass
class WrappedNormalPriorOptions:
    sigma: float = field(default=1.0, metadata={
        "help": "the prior's scale in the tangent space at the origin (the authors' --prior-std)"})

    def __post_init__(self) -> None:
        _positive(self.sigma, "model.wrapped-normal-prior.sigma", "the prior's scale")


class WrappedNormalPosterior(nn.Module):
    """q(z|x) = WN(exp_0(W h + b), softplus(w h + b) + 1e-5) on the Poincaré ball of curvature -c."""

    stochastic, continuous, codebook, diagonal, two_layers = True, True, False, False, False
    hyperbolic = True
    options = WrappedNormalOptions
    export_note = ("a wrapped normal posterior on the Poincaré ball: mu is the code (inside the ball of radius "
                   "1/sqrt(c)), sigma the scale of the Gaussian in the tangent space at the origin")

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        self.curvature = cfg.opts("wrapped-normal").curvature
        self.mu = nn.Linear(features, cfg.latent_dim)
        self.scale = nn.Linear(features, cfg.latent_dim)

    def forward(self, h: torch.Tensor) -> Distribution:
        c = self.curvature
        mu = ball_project(ball_expmap0(self.mu(h).float(), c), c)
        return WrappedNormal(mu, F.softplus(self.scale(h).float()) + MIN_SCALE, c)


class WrappedNormalPrior(nn.Module):
    """WN(0, sigma I) on the posterior's Poincaré ball; holds no weights."""

    needs_labels = False
    requires = frozenset({"hyperbolic"})
    hyperbolic = True
    options = WrappedNormalPriorOptions

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dim, self.sigma = cfg.latent_dim, cfg.opts("wrapped-normal-prior").sigma
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def forward(self, model, y: torch.Tensor | None, batch: int | None) -> Distribution:
        shape = (() if batch is None else (batch,)) + (self.dim,)
        loc = torch.zeros(shape, device=self.anchor.device)
        # the ball is the posterior's (any hyperbolic posterior says its curvature)
        return WrappedNormal(loc, torch.full_like(loc, self.sigma), model.posterior_head.curvature)


__all__ = ["WrappedNormalOptions", "WrappedNormalPosterior", "WrappedNormalPrior",
           "WrappedNormalPriorOptions"]
