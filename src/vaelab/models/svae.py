"""The hyperspherical VAE (S-VAE): codes on the unit sphere S^{D-1}, a von Mises-Fisher
posterior and the uniform prior on the sphere (Davidson et al. 2018, "Hyperspherical
Variational Auto-Encoders", UAI, arXiv:1804.00891).

- ``model.posterior=vmf``: q(z|x) = vMF(mu(h), kappa(h)) with mu(h) = W h / |W h| (a linear
  head, normalised) and kappa(h) = softplus(w.h + c) + ``model.vmf.kappa_floor`` (1 by default:
  the authors' "+ 1", nicola-decao/s-vae-pytorch, examples/mnist.py, so that q never collapses
  to the uniform distribution); ``vaelab.distributions.VonMisesFisher`` (Wood's rejection
  sampler, the Householder reflection, the log-normaliser through a stable log I_v).
- ``model.prior=spherical-uniform``: U(S^{D-1}), log p(z) = -log |S^{D-1}|
  (``vaelab.distributions.HypersphericalUniform``). KL(vMF || U) has a closed form (the paper's
  eq. 7-8), which the elbo uses; it is one number per image, not a sum over dimensions, so
  eval.json has no ``kl_per_dim``.
- Family ``svae``: vmf, spherical-uniform, elbo.

Gradients. The paper's reparameterisation of the rejection sampler (its section 3.2, after
Naesseth et al. 2017, "Reparameterization Gradients through Acceptance-Rejection Sampling
Algorithms", AISTATS) splits the gradient of E_q[f(z)] in kappa into g_rep, through the accepted
w = h(eps, kappa), and g_cor = E[f(z) d/dkappa log pi(eps|kappa)], pi the density of an accepted
eps (written out in ``VonMisesFisher``; tests/test_svae.py checks g_rep + g_cor against the
analytic dA_m/dkappa, which g_rep alone misses by up to a third at small kappa). g_rep flows through the draw;
the elbo adds g_cor for its reconstruction term (``vaelab.distributions.rejection_correction``,
a term of value 0, with a leave-one-out baseline over the batch), unless ``model.vmf.correction
=false`` (g_rep only, as the authors' PyTorch and TensorFlow code). Other objectives (iwae, the
IW bounds, infovae, wae-mmd, aae, vaegan) take g_rep only. The mean direction mu gets its exact
gradient through the reflection.

The codes live on the sphere, and only parts that agree with that pair with vmf: a prior on the
sphere (spherical-uniform; normal, vamp, conditional and hierarchical are densities on R^D and are
refused), and no objective that builds codes off the sphere (factorvae permutes each dimension
across the batch: the permuted codes leave the sphere, so its discriminator would only learn
their norm; its own check takes Gaussian posteriors only). spherical-uniform needs a spherical posterior (``requires`` the capability
``spherical``). The sphere S^0 of a 1-dimensional latent is two points: refused.

Where Pythae's SVAE (clementchadebec/benchmark_VAE, src/pythae/models/svae/svae_model.py)
differs: the same heads (mu normalised, kappa = softplus + 1) and closed-form KL, but its
rejection loop stops after 100 rounds (a draw still rejected keeps w = 0), runs in float32,
and its gradient is g_rep only (``model.vmf.correction=false`` here); its ``get_nll`` scores
with kappa = softplus(.), without the + 1 it trains with; its default reconstruction loss is
mse (bce here, as the paper's MNIST runs).

Tools: ``encode``, reconstructions and the latent pictures use the mean direction mu, on the
sphere; ``nll_iw`` is the importance-sampled log-likelihood with log q of the vMF draws (a
density on the sphere, as the prior's); the ONNX encoder exports ``mu`` and ``kappa`` (repeated
per dimension, as every exported parameter is (B, D)); drawing from q (rejection sampling) is not
part of any exported graph. ``sample --sampler sphere`` draws uniformly on the sphere (the prior).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from vaelab.distributions import Distribution, HypersphericalUniform, VonMisesFisher
from vaelab.distributions.sphere import KAPPA_MAX
from vaelab.errors import ConfigError

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


@dataclass
class VmfOptions:
    kappa_floor: float = field(default=1.0, metadata={
        "help": "kappa = softplus(.) + kappa_floor (the authors' +1): the least concentration q may have"})
    correction: bool = field(default=True, metadata={
        "help": "add the paper's g_cor (the rejection sampler's score term) to the elbo's gradient; false: "
                "g_rep only, as the authors' code"})

    def __post_init__(self) -> None:
        if not self.kappa_floor >= 0:
            raise ConfigError(f"model.vmf.kappa_floor (the least concentration kappa) must be >= 0, got "
                              f"{self.kappa_floor}")


def check_sphere_dim(part: str, cfg: ModelConfig) -> None:
    if cfg.latent_dim < 2:
        raise ConfigError(f"model.{part} puts codes on the unit sphere S^(D-1), and model.latent_dim={cfg.latent_dim} "
                          "gives S^0, two points: set model.latent_dim to 2 or more")


class VMFPosterior(nn.Module):
    """q(z|x) = vMF(mu(h), kappa(h)) on S^{D-1}: a normalised linear head and a softplus one."""

    stochastic, continuous, codebook, diagonal, two_layers = True, True, False, False, False
    spherical = True
    options = VmfOptions
    export_note = ("a von Mises-Fisher posterior on the unit sphere: mu is the mean direction (the code), kappa the "
                   "concentration, repeated in every column")

    @staticmethod
    def check(cfg: ModelConfig) -> None:
        # its prior must be on the sphere too: vaelab.models.check_parts, which knows the priors
        check_sphere_dim("posterior=vmf", cfg)

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        o = cfg.opts("vmf")
        self.floor, self.correction = o.kappa_floor, o.correction
        self.mu = nn.Linear(features, cfg.latent_dim)
        self.kappa = nn.Linear(features, 1)

    def forward(self, h: torch.Tensor) -> Distribution:
        mu = self.mu(h).float()
        mu = mu / torch.linalg.vector_norm(mu, dim=-1, keepdim=True).clamp_min(1e-12)
        kappa = F.softplus(self.kappa(h).float()).squeeze(-1) + self.floor
        # capped where float64 still resolves a draw (KAPPA_MAX, 1e10: a point to 1e-5 radians)
        return VonMisesFisher(mu, kappa.clamp(1e-6, KAPPA_MAX), correction=self.correction)


class SphericalUniformPrior(nn.Module):
    """U(S^{D-1}), the uniform distribution on the unit sphere; holds no weights."""

    needs_labels = False
    requires = frozenset({"spherical"})
    spherical = True

    @staticmethod
    def check(cfg: ModelConfig) -> None:
        check_sphere_dim("prior=spherical-uniform", cfg)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dim = cfg.latent_dim
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def forward(self, model, y: torch.Tensor | None, batch: int | None) -> Distribution:
        return HypersphericalUniform(self.dim, self.anchor.device, torch.float32, () if batch is None else (batch,))


__all__ = ["SphericalUniformPrior", "VMFPosterior", "VmfOptions", "check_sphere_dim"]
