"""Normalizing-flow posteriors: a diagonal Gaussian q0(z0|x) pushed through K invertible steps.

``model.posterior=planar``, ``radial`` or ``iaf`` with any family whose objective takes a
reparameterised posterior (elbo, iwae, miwae, piwae, ciwae, infovae, ...). The head outputs
the base q0 = N(mu(h), diag(exp(logvar(h)))) and the flow's parameters from the encoder's
features h; a draw is z_K = f_K o ... o f_1(z_0), z_0 ~ q0, and

    log q(z_K | x) = log q0(z_0 | x) - sum_k log |det df_k / dz_{k-1}|

(``vaelab.distributions.Flowed``). A flow has no closed-form KL to the prior, so
``kl_divergence(q, p, z)`` is the Monte-Carlo estimate log q(z) - log p(z) at the draw z (the
elbo's ``kl`` part), ``kl_per_dim`` is None and eval.json has no ``kl_per_dim``; the iwae
objective and ``nll_iw`` use log q of each of their k draws, every draw flowed.

- ``planar`` (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML,
  arXiv:1505.05770, eq. 10-12): f(z) = z + u_hat tanh(w.z + b),
  log |det| = log |1 + u_hat.psi(z)|, psi(z) = (1 - tanh^2(w.z + b)) w. Invertible because
  u_hat = u + (m(w.u) - w.u) w / |w|^2, m(x) = -1 + softplus(x), so w.u_hat = m(w.u) > -1
  (the paper's appendix A.1); then u_hat.psi = (1 - tanh^2) m(w.u), used as is.
- ``radial`` (the same paper, eq. 13-14): f(z) = z + beta h(alpha, r) (z - z0), h = 1 / (alpha
  + r), r = |z - z0|, log |det| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r)
  (= log(1 + beta alpha h^2)). Invertible because alpha = softplus(.) > 0 and beta = -alpha
  + softplus(.) >= -alpha (appendix A.2).
- ``iaf`` (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
  Flow", NeurIPS, arXiv:1606.04934, eq. 10-14 and Algorithm 1): each step is a MADE (Germain
  et al. 2015) over z_{t-1} that also reads a context h from the encoder, giving [m_t, s_t];
  sigma_t = sigmoid(s_t), z_t = sigma_t z_{t-1} + (1 - sigma_t) m_t (the paper's numerically
  stable form, eq. 13-14), log |det| = sum_i log sigma_{t,i}. The variable ordering is
  reversed between steps. The bias of s starts at +1, so sigma starts near 1 and each step
  starts close to the identity (the paper's advice: s "close to +1 or +2"; van den Berg et
  al.'s IAF, below, adds a forget bias of 1). As there, h joins the MADE's first hidden layer.

Defaults and where this differs from Pythae (clementchadebec/benchmark_VAE:
src/pythae/models/normalizing_flows/{planar_flow,radial_flow,iaf,made}, models/vae_lin_nf,
models/vae_iaf):

- Planar and radial parameters are amortised (``amortised=true``): the encoder computes every
  image's u, w, b (or z0, alpha, beta), as the reference code of van den Berg et al. (2018,
  "Sylvester Normalizing Flows for Variational Inference", riannevdberg/sylvester-flows,
  models/flows.py ``Planar``: "Model assumes amortized flow parameters") does for the paper's
  planar flow. Pythae's VAE_LinNF learns one set shared by all images (``amortised=false``
  here, initialised N(0, 1) as Pythae does).
- Pythae's PlanarFlow uses u as given, with log(|1 + psi.u| + 1e-4): the step need not be
  invertible and log |det| is off by the 1e-4; here u_hat keeps it invertible and log |det|
  exact. Pythae's radial alpha is exp(.), here softplus(.).
- K: Pythae's VAE_LinNF defaults to two planar steps; the paper's MNIST table compares K = 10,
  20, 40 and 80; here K = 10 (``model.planar.steps``, ``model.radial.steps``).
- Pythae's IAF is the affine z exp(s) + m (no sigmoid gate, no context), over its MADE with 3
  ReLU hidden layers of 128 units and 2 blocks; here the paper's gated update and context h
  (``model.iaf.context`` units, 0 for none), 2 steps with 3 ELU hidden layers of 128 units
  (``model.iaf.steps``, ``model.iaf.hidden``).
- Pythae's losses leave the log(2 pi) constants out of log q0 and log p(z) (they cancel in
  its KL); here both are full log-densities, so log q is a density in nats (``nll_iw``).

``mean`` of a flow posterior (what ``encode``, reconstructions and the latent tools use) is
the flow's image of the base mean, f(mu): the mean of q has no closed form. ``params()``
(``vaelab export latents``, the ONNX encoder) names it ``code`` beside the base's ``base_mu``
and ``base_logvar``; the flow's own per-image parameters are not exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from vaelab.distributions import DiagNormal, Distribution, Flowed
from vaelab.errors import ConfigError

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

Context = tuple[torch.Tensor, ...]


def wide(t: torch.Tensor) -> torch.Tensor:
    """fp32 for a half-precision tensor (autocast's), else as it is (a float64 model stays float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _steps_at_least_one(part: str, steps: int) -> None:
    if steps < 1:
        raise ConfigError(f"model.{part}.steps (the number of flow steps K) must be at least 1, got {steps}; "
                          "model.posterior=gaussian is the posterior without a flow")


# ------------------------------------------------------------------------------ options
@dataclass
class PlanarOptions:
    steps: int = field(default=10, metadata={"help": "K, the number of planar steps"})
    amortised: bool = field(default=True, metadata={
        "help": "each image's u, w, b from the encoder (the paper); false: one set shared by all images (Pythae)"})

    def __post_init__(self) -> None:
        _steps_at_least_one("planar", self.steps)


@dataclass
class RadialOptions:
    steps: int = field(default=10, metadata={"help": "K, the number of radial steps"})
    amortised: bool = field(default=True, metadata={
        "help": "each image's z0, alpha, beta from the encoder (the paper); false: one set shared by all images "
                "(Pythae)"})

    def __post_init__(self) -> None:
        _steps_at_least_one("radial", self.steps)


@dataclass
class IafOptions:
    steps: int = field(default=2, metadata={"help": "T, the number of IAF steps (MADE blocks)"})
    hidden: list[int] = field(default_factory=lambda: [128, 128, 128], metadata={
        "help": "the hidden widths of each step's MADE (ELU)"})
    context: int = field(default=128, metadata={
        "help": "width of the context h the encoder gives every MADE (the paper's h); 0: none (Pythae)"})

    def __post_init__(self) -> None:
        _steps_at_least_one("iaf", self.steps)
        if not self.hidden or not all(w >= 1 for w in self.hidden):
            raise ConfigError(f"model.iaf.hidden (the MADE's hidden widths) must be one or more positive widths, "
                              f"got {self.hidden}")
        if self.context < 0:
            raise ConfigError(f"model.iaf.context (the width of the context h) must be >= 0, got {self.context}")


# ------------------------------------------------------------------------------ planar and radial
def planar_u_hat(u: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u_hat, w.u_hat) for u, w (..., D): u_hat = u + (m(w.u) - w.u) w / |w|^2 with
    m(x) = -1 + softplus(x), so that w.u_hat = m(w.u) > -1 (the paper's appendix A.1)."""
    wu = (w * u).sum(-1, keepdim=True)
    m = F.softplus(wu) - 1
    return u + (m - wu) * w / w.square().sum(-1, keepdim=True).clamp_min(1e-12), m


def planar_step(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """One planar step on codes z (..., B, D) with per-image u, w (B, D) and b (B,):
    (f(z), log |det df/dz|) with u replaced by u_hat (w.u_hat > -1, so f is invertible)."""
    u_hat, m = planar_u_hat(u, w)
    t = torch.tanh((z * w).sum(-1) + b)  # (..., B)
    # u_hat.psi(z) = (1 - tanh^2) w.u_hat = (1 - tanh^2) m(w.u) > -1
    log_det = torch.log1p(((1 - t.square()) * m.squeeze(-1)).clamp_min(-1 + 1e-6))
    return z + u_hat * t.unsqueeze(-1), log_det


def radial_step(z: torch.Tensor, z0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """One radial step on codes z (..., B, D) around z0 (B, D), with raw alpha ``a`` and beta
    ``b`` (B,): alpha = softplus(a) > 0, beta = -alpha + softplus(b) >= -alpha (invertible)."""
    alpha = F.softplus(a)
    beta = -alpha + F.softplus(b)
    diff = z - z0
    r = torch.linalg.vector_norm(diff, dim=-1)  # (..., B)
    h = 1 / (alpha + r)
    bh = beta * h
    # (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r), h' = -h^2: the last is 1 + beta alpha h^2
    log_det = (z.shape[-1] - 1) * torch.log1p(bh) + torch.log1p(beta * alpha * h.square())
    return z + bh.unsqueeze(-1) * diff, log_det


class _Amortised(nn.Module):
    """K steps' parameters: per image from the encoder's features (a linear head), or one
    learned set shared by every image. ``context(h)`` returns them per image, each (B, K, ...)."""

    def __init__(self, features: int, sizes: list[int], steps: int, amortised: bool):
        super().__init__()
        self.sizes, self.steps = sizes, steps
        n = steps * sum(sizes)
        if amortised:
            self.net = nn.Linear(features, n)
        else:
            self.shared = nn.Parameter(torch.randn(n))  # N(0, 1), as Pythae initialises its flows

    def context(self, h: torch.Tensor) -> Context:
        flat = wide(self.net(h)) if hasattr(self, "net") else self.shared.expand(h.shape[0], -1)
        flat = flat.reshape(h.shape[0], self.steps, sum(self.sizes))
        return tuple(flat.split(self.sizes, -1))


class PlanarFlow(_Amortised):
    """K planar steps (Rezende & Mohamed 2015, eq. 10-12) on D-dimensional codes."""

    def __init__(self, dim: int, steps: int, features: int, amortised: bool = True):
        super().__init__(features, [dim, dim, 1], steps, amortised)

    def forward(self, z: torch.Tensor, context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        u, w, b = context  # (B, K, D), (B, K, D), (B, K, 1)
        log_det = z.new_zeros(z.shape[:-1])
        for k in range(self.steps):
            z, ld = planar_step(z, u[:, k], w[:, k], b[:, k, 0])
            log_det = log_det + ld
        return z, log_det


class RadialFlow(_Amortised):
    """K radial steps (Rezende & Mohamed 2015, eq. 13-14) on D-dimensional codes."""

    def __init__(self, dim: int, steps: int, features: int, amortised: bool = True):
        super().__init__(features, [dim, 1, 1], steps, amortised)

    def forward(self, z: torch.Tensor, context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        z0, a, b = context  # (B, K, D), (B, K, 1), (B, K, 1)
        log_det = z.new_zeros(z.shape[:-1])
        for k in range(self.steps):
            z, ld = radial_step(z, z0[:, k], a[:, k, 0], b[:, k, 0])
            log_det = log_det + ld
        return z, log_det


# ------------------------------------------------------------------------------ IAF
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, d_in: int, d_out: int, mask: torch.Tensor):
        super().__init__(d_in, d_out)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """An autoregressive network (Germain et al. 2015) z (..., B, D), h (B, C) -> m, s (..., B, D):
    output i reads only the inputs before it in ``order`` (a permutation of 0..D-1: the
    position of each variable), and the context h through the first hidden layer."""

    def __init__(self, dim: int, hidden: list[int], context: int, order: torch.Tensor):
        super().__init__()
        deg_in = order + 1  # degrees 1..D
        degrees = [deg_in]
        for width in hidden:  # hidden degrees 1..D-1 (0 with D = 1: units that read only the context)
            degrees.append(torch.arange(width) % max(1, dim - 1) + 1 if dim > 1 else torch.zeros(width, dtype=torch.long))
        layers = []
        for i, width in enumerate(hidden):
            layers.append(MaskedLinear(len(degrees[i]), width, degrees[i + 1][:, None] >= degrees[i][None, :]))
        self.hidden = nn.ModuleList(layers)
        out_mask = deg_in[:, None] > degrees[-1][None, :]  # (D, H): strictly earlier variables only
        self.out = MaskedLinear(hidden[-1], 2 * dim, out_mask.repeat(2, 1))
        with torch.no_grad():
            self.out.bias[dim:].fill_(1.0)  # s starts near +1: sigma near 1, each step near the identity
        self.context = nn.Linear(context, hidden[0], bias=False) if context else None
        self.dim = dim

    def forward(self, z: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.hidden[0](z)
        if self.context is not None:
            a = a + self.context(h)
        a = F.elu(a)
        for layer in self.hidden[1:]:
            a = F.elu(layer(a))
        out = self.out(a)
        return out[..., :self.dim], out[..., self.dim:]


class IAFFlow(nn.Module):
    """T steps of the inverse autoregressive flow (Kingma et al. 2016, eq. 10-14): z_t =
    sigma_t z_{t-1} + (1 - sigma_t) m_t, [m_t, s_t] = MADE_t(z_{t-1}, h), sigma_t = sigmoid(s_t);
    the ordering reversed between steps."""

    def __init__(self, dim: int, steps: int, features: int, hidden: list[int], context: int):
        super().__init__()
        self.h = nn.Linear(features, context) if context else None
        natural = torch.arange(dim)
        self.orders = [natural if t % 2 == 0 else natural.flip(0) for t in range(steps)]
        self.steps = nn.ModuleList(MADE(dim, hidden, context, order) for order in self.orders)

    def context(self, h: torch.Tensor) -> Context:
        return (wide(self.h(h)),) if self.h is not None else ()

    def forward(self, z: torch.Tensor, context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        h = context[0] if context else None
        log_det = z.new_zeros(z.shape[:-1])
        for made in self.steps:
            m, s = made(z, h)
            sigma = torch.sigmoid(s)
            z = sigma * z + (1 - sigma) * m
            log_det = log_det + F.logsigmoid(s).sum(-1)
        return z, log_det


# ------------------------------------------------------------------------------ posterior heads
class FlowPosterior(nn.Module):
    """q(z|x): a diagonal Gaussian q0 (two linear heads, as ``gaussian``) through a flow whose
    parameters (or context) come from the same encoder features. Each registered head says
    which flow: ``build_flow(cfg, features)``."""

    # q is not one diagonal Gaussian (no tcvae, no VampPrior) and has no closed-form KL
    stochastic, continuous, codebook, diagonal, two_layers = True, True, False, False, False
    export_note = ("a flow posterior: code is the flow's image of the base mean, f(base_mu); base_mu and base_logvar "
                   "are the base Gaussian q0's; the flow's own parameters are not exported, so these outputs do not "
                   "determine q(z|x)")

    def __init__(self, cfg: ModelConfig, features: int):
        super().__init__()
        self.mu = nn.Linear(features, cfg.latent_dim)
        self.logvar = nn.Linear(features, cfg.latent_dim)
        self.flow = self.build_flow(cfg, features)

    def forward(self, h: torch.Tensor) -> Distribution:
        base = DiagNormal(wide(self.mu(h)), wide(self.logvar(h)))
        with torch.autocast(h.device.type, enabled=False):
            context = self.flow.context(wide(h))
        return Flowed(base, self.flow, context)


class PlanarPosterior(FlowPosterior):
    """A Gaussian through K planar steps (Rezende & Mohamed 2015)."""

    options = PlanarOptions

    def build_flow(self, cfg: ModelConfig, features: int) -> nn.Module:
        o = cfg.opts("planar")
        return PlanarFlow(cfg.latent_dim, o.steps, features, o.amortised)


class RadialPosterior(FlowPosterior):
    """A Gaussian through K radial steps (Rezende & Mohamed 2015)."""

    options = RadialOptions

    def build_flow(self, cfg: ModelConfig, features: int) -> nn.Module:
        o = cfg.opts("radial")
        return RadialFlow(cfg.latent_dim, o.steps, features, o.amortised)


class IAFPosterior(FlowPosterior):
    """A Gaussian through T inverse autoregressive steps with MADE blocks (Kingma et al. 2016)."""

    options = IafOptions

    def build_flow(self, cfg: ModelConfig, features: int) -> nn.Module:
        o = cfg.opts("iaf")
        return IAFFlow(cfg.latent_dim, o.steps, features, o.hidden, o.context)


FLOW_POSTERIORS: dict[str, type[nn.Module]] = {"planar": PlanarPosterior, "radial": RadialPosterior,
                                                "iaf": IAFPosterior}

__all__ = ["FLOW_POSTERIORS", "MADE", "FlowPosterior", "IAFFlow", "IAFPosterior", "IafOptions", "MaskedLinear",
           "PlanarFlow", "PlanarOptions", "PlanarPosterior", "RadialFlow", "RadialOptions", "RadialPosterior",
           "planar_step", "planar_u_hat", "radial_step"]
