"""Posteriors q(z|x): heads from encoder features (B, F) to a distribution over codes.

``POSTERIORS[model.posterior](cfg, features)`` builds the head; calling it on features
returns a ``vaelab.distributions`` object. Heads compute in fp32 even under autocast:
the code statistics feed the KL and the sampling noise. Class attributes say what the
head offers (``vaelab.models.capabilities`` reads them): ``stochastic`` (draws differ),
``continuous`` (codes live in R^D), ``codebook`` (discrete codes from a codebook),
``diagonal`` (q is one diagonal Gaussian, a ``DiagNormal``: a mean and a log-variance per
dimension), ``two_layers`` (codes [z1, z2] from two stochastic layers), and ``decoder_dim``
(how many leading code dimensions the decoder reads; all by default), ``feature_map`` (it
takes the encoder's last feature map as the code: ``model.conv.latent=conv``). A head may own
options (a dataclass, section ``model.<posterior>``) and a ``check(cfg)``, and make the decoder's
first layer its own (``adapt_decoder(decoder, dim)``: wrapped-normal's log_0 or gyroplane layer). The flow
posteriors planar, radial and iaf (``vaelab.models.flows``) are stochastic and continuous
but not diagonal: their q has no closed-form KL (``vaelab.distributions.Flowed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from vaelab.distributions import (
    Ancestral,
    DiagNormal,
    Distribution,
    PointMass,
    Quantized,
)
from vaelab.errors import ConfigError
from vaelab.models.bodies import activation, conv_sizes, feature_map_code, mlp
from vaelab.models.flows import FLOW_POSTERIORS
from vaelab.models.poincare import WrappedNormalPosterior
from vaelab.models.svae import VMFPosterior

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


class PointPosterior(nn.Module):
    """An autoencoder's code: z = act(W h), a point mass. ``model.conv.latent=conv`` takes the
    encoder's last feature map itself as the code (no weights here)."""

    stochastic, continuous, codebook, diagonal, two_layers = False, True, False, False, False
    feature_map = True
    reads = ("latent_activation",)  # an autoencoder's code activation (a ModelConfig field)

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        self.linear = nn.Identity() if feature_map_code(cfg) else nn.Linear(features, cfg.latent_dim)
        self.act = activation(cfg.latent_activation)

    def forward(self, h: torch.Tensor) -> Distribution:
        return PointMass(self.act(self.linear(h)))


class GaussianPosterior(nn.Module):
    """q(z|x) = N(mu(h), diag(exp(logvar(h)))): two linear heads, as in the PyTorch (fc21/fc22)
    and Keras (z_mean/z_log_var) tutorials."""

    stochastic, continuous, codebook, diagonal, two_layers = True, True, False, True, False

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        self.mu = nn.Linear(features, cfg.latent_dim)
        self.logvar = nn.Linear(features, cfg.latent_dim)

    def forward(self, h: torch.Tensor) -> Distribution:
        return DiagNormal(self.mu(h).float(), self.logvar(h).float())


class GaussianLayer(nn.Module):
    """An MLP (tanh, as in the IWAE paper) then two heads: a DiagNormal over ``out`` dims."""

    def __init__(self, d_in: int, widths: list[int], out: int, act: str):
        super().__init__()
        self.net = nn.Sequential(*mlp([d_in] + list(widths), act)) if widths else nn.Identity()
        width = widths[-1] if widths else d_in
        self.mu, self.logvar = nn.Linear(width, out), nn.Linear(width, out)

    def forward(self, z: torch.Tensor) -> DiagNormal:
        h = self.net(z)
        return DiagNormal(self.mu(h).float(), self.logvar(h).float())


@dataclass
class TwoLayerOptions:
    latent_dims: list[int] | None = field(default=None, metadata={
        "help": "the sizes [z1, z2] of the two stochastic layers (model.latent_dim becomes their sum)",
        "alias": "latent_dims"})
    hidden2: list[int] = field(default_factory=lambda: [100, 100], metadata={
        "help": "the deterministic widths between z1 and z2 (q(z2|z1), and p(z1|z2) reversed)", "alias": "hidden2"})

    def __post_init__(self) -> None:
        if self.latent_dims is not None and not (len(self.latent_dims) == 2 and all(d >= 1 for d in self.latent_dims)):
            raise ConfigError(f"model.gaussian2.latent_dims must be two sizes [z1, z2], got {self.latent_dims}")
        if not all(h > 0 for h in self.hidden2):
            raise ConfigError("model.gaussian2.hidden2 widths must be positive")


class TwoLayerPosterior(nn.Module):
    """q(z1|x) q(z2|z1), the IWAE paper's second architecture: z1 from the encoder body's
    features, z2 from z1 through ``model.hidden2``. Codes are [z1, z2]; the decoder reads z1."""

    # q is a product of two Gaussians, not one diagonal Gaussian: no tcvae, no VampPrior
    stochastic, continuous, codebook, diagonal, two_layers = True, True, False, False, True
    options = TwoLayerOptions

    @staticmethod
    def check(cfg: ModelConfig) -> None:
        dims = cfg.opts("gaussian2").latent_dims
        if dims is None:
            raise ConfigError("model.posterior=gaussian2 needs the sizes of its two layers: "
                              "--set model.gaussian2.latent_dims=[z1,z2], e.g. [100,50]")
        cfg.latent_dim = sum(dims)  # codes are [z1, z2]

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        o = cfg.opts("gaussian2")
        d1, d2 = o.latent_dims
        self.d1 = d1
        self.z1 = GaussianLayer(features, [], d1, cfg.activation)
        self.z2 = GaussianLayer(d1, o.hidden2, d2, cfg.activation)

    @staticmethod
    def decoder_dim(cfg: ModelConfig) -> int:
        return cfg.opts("gaussian2").latent_dims[0]

    def forward(self, h: torch.Tensor) -> Distribution:
        return Ancestral(self.z1(h), self.z2, self.d1)


@dataclass
class VQOptions:
    """The options of the posterior vq and the objective vq (one section, model.vq)."""

    codebook_size: int = field(default=512, metadata={"help": "K, the number of code vectors", "alias": "codebook_size"})
    commitment: float = field(default=0.25, metadata={"help": "weight beta of the commitment term (objective vq)",
                                                       "alias": "commitment"})
    ema: bool = field(default=False, metadata={"help": "the codebook as an EMA of its assigned encoder outputs, "
                                                       "instead of the codebook loss term", "alias": "vq_ema"})
    decay: float = field(default=0.99, metadata={"help": "the EMA's decay (with ema)", "alias": "vq_decay"})

    def __post_init__(self) -> None:
        if self.codebook_size < 1:
            raise ConfigError(f"model.vq.codebook_size (VQ-VAE codes) must be at least 1, got {self.codebook_size}")
        if self.commitment < 0:
            raise ConfigError(f"model.vq.commitment must be >= 0, got {self.commitment}")
        if not 0 < self.decay < 1:
            raise ConfigError(f"model.vq.decay must be in (0, 1), got {self.decay}")


def check_vq(cfg: ModelConfig) -> None:
    """The vq part (posterior and objective): a grid of codes from a conv encoder's last map."""
    if cfg.posterior == "vq" and not (cfg.arch == "conv" and feature_map_code(cfg)):
        latent = f"model.conv.latent={cfg.opts('conv').latent}" if cfg.arch == "conv" else f"model.arch={cfg.arch}"
        raise ConfigError(f"model.posterior=vq quantises a grid of codes: it needs model.arch=conv and "
                          f"model.conv.latent=conv (the encoder's last feature map); got {latent}")
    o = cfg.opts("vq")
    if not o.ema and o.decay != 0.99:
        raise ConfigError(f"model.vq.decay={o.decay} is not used: it is the EMA codebook's decay, and model.vq.ema "
                          "is off; leave it out")
    if cfg.objective != "vq" and o.commitment != 0.25:
        raise ConfigError(f"model.vq.commitment={o.commitment} is not used: it weighs the objective vq's commitment "
                          f"term, and model.objective is {cfg.objective}; leave it out")


class VQPosterior(nn.Module):
    """VQ-VAE (van den Oord et al. 2017): each position of the encoder's last feature map
    (D channels, h x w) snaps to the nearest of K code vectors. The codebook is a parameter
    trained by the codebook loss term, or (``model.vq.ema``) an exponential moving average
    of the encoder outputs assigned to each code (buffers, updated in training mode)."""

    stochastic, continuous, codebook, diagonal, two_layers = False, False, True, False, False
    feature_map = True
    options, check = VQOptions, staticmethod(check_vq)

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        self.d = cfg.opts("conv").channels[-1]
        self.hw = conv_sizes(cfg)[-1]
        o = cfg.opts("vq")
        k = o.codebook_size
        self.ema, self.decay = o.ema, o.decay
        # Uniform in +-1/K, as the paper's reference code (Sonnet) and PyTorch-VAE do.
        weight = torch.empty(k, self.d).uniform_(-1 / k, 1 / k)
        if self.ema:
            self.register_buffer("codes", weight)
            # Every code starts as if assigned once to its own vector: an unused code then keeps
            # its place instead of being divided by a count of ~0 and thrown far away.
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", weight.clone())
        else:
            self.codes = nn.Parameter(weight)

    def forward(self, h: torch.Tensor) -> Distribution:
        b = len(h)
        ze = h.float().view(b, self.d, *self.hw).permute(0, 2, 3, 1).reshape(-1, self.d)  # (B*h*w, D)
        # |z - e|^2 = |z|^2 - 2 z.e + |e|^2, as one matrix product: (B*h*w, K)
        d2 = ze.square().sum(1, keepdim=True) - 2 * ze @ self.codes.t() + self.codes.square().sum(1)
        idx = d2.argmin(1)
        if self.ema and self.training:
            self._ema_update(ze.detach(), idx)
        e = self.codes[idx]  # (B*h*w, D)
        flat = lambda t: t.view(b, *self.hw, self.d).permute(0, 3, 1, 2).reshape(b, -1)
        return Quantized(flat(ze), flat(e), idx.view(b, *self.hw))

    @torch.no_grad()
    def _ema_update(self, ze: torch.Tensor, idx: torch.Tensor) -> None:
        """Codebook as EMA of its assigned encoder outputs (the paper's appendix; Laplace-smoothed counts)."""
        onehot = torch.nn.functional.one_hot(idx, len(self.codes)).to(ze.dtype)  # (M, K)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ ze, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + len(self.codes) * 1e-5) * n
        self.codes.copy_(self.ema_sum / count[:, None])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, D*h*w) for codebook indices (B, h, w): what the decoder reads."""
        e = self.codes[indices]  # (B, h, w, D)
        return e.permute(0, 3, 1, 2).reshape(len(indices), -1)

    def perplexity(self, counts: torch.Tensor) -> float:
        """exp(entropy) of the code usage ``counts`` (K,): K when every code is used equally."""
        p = counts.double() / counts.sum()
        return float(math.exp(-(p[p > 0] * p[p > 0].log()).sum()))


# Registry: model.posterior -> head class (cfg, encoder feature width).
POSTERIORS: dict[str, type[nn.Module]] = {
    "point": PointPosterior, "gaussian": GaussianPosterior, "gaussian2": TwoLayerPosterior, "vq": VQPosterior,
    **FLOW_POSTERIORS,  # planar, radial, iaf: a Gaussian through a normalizing flow (vaelab.models.flows)
    "vmf": VMFPosterior,  # von Mises-Fisher on the unit sphere (vaelab.models.svae)
    "wrapped-normal": WrappedNormalPosterior,  # on the Poincaré ball (vaelab.models.poincare)
}

__all__ = ["POSTERIORS", "GaussianLayer", "GaussianPosterior", "PointPosterior", "TwoLayerOptions", "TwoLayerPosterior",
           "VQOptions", "VQPosterior", "check_vq"]
