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

- ``model.wrapped-normal.decoder``: the decoder's first layer, the one that reads the code (the
  authors' ``--dec``). ``linear`` (the default, and what a run written before the option has):
  the body's linear layer reads the ball's coordinates (``DecLinear``). ``wrapped``: the same
  layer reads log_0(z) (``DecWrapped``, the authors' default ``--dec``). ``gyroplane``: the
  paper's gyroplane layer (section 3.3; ``DecGeo`` with their ``GeodesicLayer``, their MNIST
  command) takes the place of that layer, one unit per width it had, f_k(z) = sign(<(-p_k) (+) z,
  a_k>) ||a_k||_{p_k} d_c(z, H_{a_k, p_k}) (``distributions.gyroplane_distance``, in closed form,
  float64), then the body's activation and remaining layers; p_k = exp_0(b_k w_k) and a_k =
  PT_{0->p_k}(w_k) from a free w_k and b_k, as their ``RiemannianLayer``. The head swaps the
  layer in (``adapt_decoder``), so either body (mlp, or conv's dense layer from the code) and
  its options serve every decoder. Where this differs from their code: their ``GeodesicLayer``
  leaves out the factor ||a_k||_{p_k} (``normdist2plane(..., norm=False)``), which the paper's
  formula has and this keeps; and it passes (bias, weight) to ``normdist2plane(x, a, p)``, whose
  body takes its third argument as the point, so as written the roles of p_k and a_k are
  exchanged there; this follows the paper. Their Möbius layer (``DecMob``) is not built, nor the
  Riemannian normal (the paper's other distribution, an adaptive rejection sampler for its radius).

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
does; the decoder exports with each first layer (a code off the ball is pulled inside it first,
in PyTorch and in the graph alike).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from vaelab.distributions import (
    Distribution,
    WrappedNormal,
    ball_expmap0,
    ball_logmap0,
    ball_project,
    gyroplane_distance,
)
from vaelab.errors import ConfigError

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

# The authors' Constants.eta: the least posterior scale
MIN_SCALE = 1e-5
# model.wrapped-normal.decoder: the decoder's first layer (the authors' --dec Linear, Wrapped, Geo)
DECODERS = {"linear": "reads the ball's coordinates (DecLinear)",
            "wrapped": "log_0 first, then the body (DecWrapped, the authors' default)",
            "gyroplane": "a gyroplane layer in place of the body's first linear layer (DecGeo, their MNIST runs)"}


def _positive(value: float, where: str, what: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where} ({what}) must be a positive number, got {value}; set it above 0")


@dataclass
class WrappedNormalOptions:
    curvature: float = field(default=1.0, metadata={
        "help": "c > 0: the ball has curvature -c and radius 1/sqrt(c) (the authors' --c); the prior "
                "wrapped-normal-prior lives on the same ball"})

    # linear by default: a run written before this option (its config.json has none) is linear
    decoder: str = field(default="linear", metadata={
        "help": "the decoder's first layer: " + "; ".join(f"{k}: {v}" for k, v in DECODERS.items())})

    def __post_init__(self) -> None:
        _positive(self.curvature, "model.wrapped-normal.curvature", "c, the Poincaré ball's curvature is -c")
        if self.decoder not in DECODERS:
            raise ConfigError(f"model.wrapped-normal.decoder must be one of {', '.join(DECODERS)}, got "
                              f"{self.decoder!r}; set model.wrapped-normal.decoder=linear, wrapped or gyroplane")


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
        opts = cfg.opts("wrapped-normal")
        self.curvature, self.decoder_kind = opts.curvature, opts.decoder
        self.mu = nn.Linear(features, cfg.latent_dim)
        self.scale = nn.Linear(features, cfg.latent_dim)

    def forward(self, h: torch.Tensor) -> Distribution:
        c = self.curvature
        mu = ball_project(ball_expmap0(self.mu(h).float(), c), c)
        return WrappedNormal(mu, F.softplus(self.scale(h).float()) + MIN_SCALE, c)

    def adapt_decoder(self, decoder: nn.Sequential, dim: int) -> nn.Sequential:
        """The body's decoder with its first layer, the linear map that reads the code (B, dim) [and
        a label vector after it], made the chosen one (``model.wrapped-normal.decoder``).

        Why the first layer is swapped rather than a layer put before the body: the gyroplane
        layer is the ball's analogue of an affine layer (its units tend to 4 <z - p_k, a_k> as
        c -> 0, ``gyroplane_distance``), so it takes the place of the affine map that reads the
        code, followed by the body's activation and remaining layers, as the authors' DecGeo
        (GeodesicLayer, non-linearity, Linear layers). The body keeps its widths and options (the
        first hidden width, ``model.mlp.decoder_hidden``, the conv body's dense layer from the code)
        and both bodies get it. ``wrapped`` keeps the very layer (its weights, their init and names)
        and maps the code by log_0 first; ``linear`` leaves the decoder as it is."""
        if self.decoder_kind == "linear":
            return decoder
        first = decoder[0] if isinstance(decoder, nn.Sequential) and len(decoder) else None
        if type(first) is not nn.Linear or first.in_features < dim:  # every body's decoder of a dense code has it
            raise ConfigError(f"model.wrapped-normal.decoder={self.decoder_kind} replaces the decoder's first "
                              f"linear layer, and this body's decoder starts with {type(first).__name__}; "
                              "use model.wrapped-normal.decoder=linear")
        if self.decoder_kind == "wrapped":
            # the same weights, and no draw from the RNG (the parts built after start as with linear)
            layer = nn.utils.skip_init(LogMapLinear, first.in_features, first.out_features, dim, self.curvature)
            layer.load_state_dict(first.state_dict())
        else:
            layer = GyroplaneLayer(dim, first.out_features, self.curvature, labels=first.in_features - dim)
        decoder[0] = layer
        return decoder


def _exact(c: float, like: torch.Tensor) -> torch.Tensor:
    # c as a float64 tensor: an ONNX graph keeps its digits (a Python number is written rounded to
    # float32 there, and near the boundary 1 - c |z|^2 is then another number); made per call, as a
    # buffer would be cast by the exporter's model.float()
    return torch.tensor(c, dtype=torch.float64, device=like.device)


class LogMapLinear(nn.Linear):
    """nn.Linear (its parameters and names) reading [log_0(z), e] for codes z in the ball (the first
    ``dim`` inputs) and a label vector e: the authors' DecWrapped. log_0 in float64."""

    def __init__(self, in_features: int, out_features: int, dim: int, c: float, device=None):
        super().__init__(in_features, out_features, device=device)
        self.dim, self.c = dim, c

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, log_0 of the first {self.dim} in the ball of c={self.c:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _exact(self.c, x)
        z = ball_logmap0(ball_project(x[:, :self.dim].double(), c), c).to(x.dtype)
        return super().forward(torch.cat([z, x[:, self.dim:]], 1))


class GyroplaneLayer(nn.Module):
    """H gyroplane units on codes z (B, dim) in the ball of curvature -c (Mathieu et al. 2019,
    section 3.3; the authors' GeodesicLayer): f_k(z) = sign(<(-p_k) (+) z, a_k>) ||a_k||_{p_k}
    d_c(z, H_{a_k, p_k}) (``vaelab.distributions.gyroplane_distance``), (B, H).

    Parameters as the authors' RiemannianLayer: a free tangent vector w_k at the origin
    (``weight``, (H, dim)) and a scalar ``offset`` b_k; p_k = exp_0(b_k w_k), inside the ball for
    any w_k, b_k (and kept inside by ``ball_project``, float32's spacing from the boundary),
    and a_k = PT_{0->p_k}(w_k) = (1 - c |p_k|^2) w_k, so ||a_k||_{p_k} = 2 |w_k| and the gyroplane
    is orthogonal to the geodesic from the origin through p_k: dim + 1 numbers a unit, as a
    Euclidean affine unit (f_k -> 4 (<w_k, z> - b_k |w_k|^2) as c -> 0). Their init: w Kaiming-normal (a =
    sqrt(5)), b uniform in +-4 / sqrt(dim). The maths runs in float64 (the points near the
    boundary lose digits in float32), the units come back in the input's dtype.

    A conditional decoder's label vector (B, ``labels``), which is not in the ball, adds a linear
    term (``labels.weight``, no bias) to each unit."""

    def __init__(self, dim: int, units: int, c: float, labels: int = 0):
        super().__init__()
        self.dim, self.c = dim, c
        self.weight = nn.Parameter(torch.empty(units, dim))
        self.offset = nn.Parameter(torch.empty(units))
        nn.init.kaiming_normal_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.offset, -4 / math.sqrt(dim), 4 / math.sqrt(dim))
        self.labels = nn.Linear(labels, units, bias=False) if labels else None

    def extra_repr(self) -> str:
        labels = f", labels={self.labels.in_features}" if self.labels is not None else ""
        return f"dim={self.dim}, units={self.weight.shape[0]}, c={self.c:g}{labels}"

    def planes(self, c: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, a), each (H, dim) float64: the points and normals of the gyroplanes."""
        c = self.c if c is None else c
        w = self.weight.double()
        p = ball_project(ball_expmap0(self.offset.double()[:, None] * w, c), c)
        return p, (1 - c * p.square().sum(-1, keepdim=True)) * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _exact(self.c, x)
        z = ball_project(x[:, :self.dim].double(), c)  # a code off the ball (a picture's grid) is pulled in
        out = gyroplane_distance(z, *self.planes(c), c).to(x.dtype)
        return out if self.labels is None else out + self.labels(x[:, self.dim:])


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


__all__ = ["DECODERS", "GyroplaneLayer", "LogMapLinear", "WrappedNormalOptions", "WrappedNormalPosterior",
           "WrappedNormalPrior", "WrappedNormalPriorOptions"]
