"""The Hamiltonian VAE (Caterini, Doucet & Sejdinovic 2018, "Hamiltonian Variational
Auto-Encoder", NeurIPS; arXiv:1805.11328): the objective ``hamiltonian`` and the family
``hamiltonian-vae``. (Not the family ``hvae``: that name is the IWAE paper's two stochastic
layers, vaelab.models.posteriors.TwoLayerPosterior.)

The encoder gives a diagonal Gaussian q0(z|x). A draw z_0 ~ q0 and a tempered momentum
rho_0 = gamma_0 / sqrt(beta_0), gamma_0 ~ N(0, I), go through K leapfrog steps of the
Hamiltonian H(z, rho) = U(z) + |rho|^2 / 2 whose potential is the model's own
U(z) = -log p(x, z) = -log p(x|z) - log p(z) (decoder and prior: the flow is informed by
the target), each step followed by a cooling of the momentum (the paper's Algorithm 1):

    rho'   = rho_{k-1} - eps/2 * grad U(z_{k-1})
    z_k    = z_{k-1} + eps * rho'
    rho''  = rho' - eps/2 * grad U(z_k)
    rho_k  = sqrt(beta_{k-1} / beta_k) * rho'',
    sqrt(beta_k) = 1 / ((1 - 1/sqrt(beta_0)) k^2/K^2 + 1/sqrt(beta_0))   (the quadratic schedule,
                                                                         sqrt(beta_K) = 1)

with eps a step size per latent dimension. A leapfrog step is volume-preserving (its
Jacobian determinant is 1); the cooling scales D momenta by sqrt(beta_{k-1}/beta_k), so
the whole map (z_0, rho_0) -> (z_K, rho_K) has log |det| = (D/2) log beta_0 (``log_det``).
The change of variables on the extended space (z, rho) gives the unbiased estimate of p(x)
whose log is the Hamiltonian ELBO estimate (Algorithm 1's p-bar / q-bar):

    log w = log p(x|z_K) + log p(z_K) + log N(rho_K | 0, I)
            - log q0(z_0|x) - log N(rho_0 | 0, I / beta_0) + (D/2) log beta_0.

(The last two terms are -log N(gamma_0 | 0, I): the weight needs no Jacobian but the
cooling's.) E[log w] <= log p(x), and E[w] = p(x). With beta_0 = 1 and eps -> 0 the
flow is the identity and log w is the VAE's one-sample ELBO estimate at z_0, the KL by
Monte Carlo. grad U comes from autograd (``create_graph`` when gradients are on, so the
loss's gradient reaches the encoder, the decoder, eps and beta_0 through the flow); under
``torch.no_grad`` (evaluation) only the gradient in z is taken. Each step reuses the
gradient at z_k for the next step's first half, and the last one's log p(x, z_K): K + 1
decoder passes (each with its backward) per batch.

Per-image parts: ``loss`` = -log w (log p(x|z) in the likelihood's convention, as every
objective's ``recon``: add ``nll_offset`` for nats); ``recon`` = -log p(x|z_K), the
reconstruction at the flow's end; ``kl`` = loss - recon = log q0(z_0) + log N(gamma_0)
- log p(z_K) - log N(rho_K | 0, I), the one-sample estimate of the KL between the flow's
q(z_K, rho_K | x) and p(z) N(rho | 0, I) on the extended space (>= 0 in expectation; it
is not the closed-form KL(q0 || p) of a VAE, which eval.json's ``kl_per_dim`` reports: the
encoder's q0, per dimension).

Capabilities: the model is p(z) p(x|z) with a Gaussian encoder q0, and ``loss`` bounds
-log p(x) of that model; ``vaelab eval``'s ``nll_iw`` (importance sampling with q0 as the
proposal: the model's ``log_weights``) is a consistent estimate of the same -log p(x), so the
model keeps its ``density`` and nothing is dropped. ``encode`` and reconstructions use q0's
mean (the flow needs x's decoder gradient, and the mean of q(z_K|x) has no closed form);
the exported ONNX encoder is q0's.

Options (``model.hamiltonian.*``): ``n_lf`` K >= 1, ``eps_lf`` the initial step size (> 0),
``beta_zero`` in (0, 1] (1: no tempering), ``learn_eps`` (one learned step size per
dimension, kept positive as exp of a parameter), ``learn_beta_zero`` (beta_0 learned as
sigmoid of a parameter, so it stays in (0, 1); it needs an initial beta_zero < 1). The
learned ones are parameters of the objective's own network (``model.critics["hamiltonian"]``,
saved with the weights) and train with the model in its single optimisation step (the
trainer's default: every trainable parameter on ``loss``); fixed ones are buffers.

Where this follows the paper and where Pythae differs (clementchadebec/benchmark_VAE,
``src/pythae/models/hvae/hvae_model.py``, ``hvae_config.py``: ``n_lf`` 3, ``eps_lf`` 1e-3,
``beta_zero`` 0.3, ``learn_eps_lf`` and ``learn_beta_zero`` false; the defaults here):

- Pythae's leapfrog moves z with the momentum before the half step (``z + eps * rho``, not
  ``rho_``), and its tempered momentum is overwritten by the untempered one (``rho =
  rho__``), so its flow does no tempering; here the paper's update and cooling.
- Pythae takes grad U without ``create_graph``: no gradient flows through the flow's
  gradient terms. Here it does (the paper's reparameterised gradient of the bound).
- Pythae's loss leaves out log q0's quadratic term and the beta_0 terms, and its log q0 term
  does not match the q0 it draws from: it draws with std softplus(a) from its encoder's second
  head a, and its log q0 is -1/2 sum a, which would be the entropy (up to a constant) if a were
  a log-variance; for large a it rewards a std s by about s / 2 where the bound rewards it by
  log s. Its ``get_nll`` uses exp(a / 2). Here log w is the paper's full weight, q0's std
  exp(logvar / 2), every log-density normalised. That entropy term is why Pythae's prior samples
  are closer than these at the zoo's budget (bench/peers/hvae_variant.py: with it made its own
  q0's entropy, Pythae's HVAE scores FCD 268.6 from the prior, against 221.6 as it is and 265.8
  here).
- Pythae's eps is one scalar (and its beta_0 is learned as sqrt(beta_0) unconstrained);
  the paper's eps is a vector (the elementwise products of Algorithm 1), as here.
- The paper's potential is -log p(x, z); Pythae adds z to the likelihood's gradient (a
  N(0, I) prior's). Here the model's prior, whatever it is (normal, conditional, vamp).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from vaelab.distributions import LOG_2PI, Distribution
from vaelab.errors import ConfigError
from vaelab.models.contract import Objective, Parts

NAME = "hamiltonian"  # the objective's registry name and its options section (model.hamiltonian.*)
POSTERIORS_OK = ("gaussian",)


@dataclass
class HamiltonianOptions:
    n_lf: int = field(default=3, metadata={"help": "K, the number of leapfrog steps (Pythae: 3)"})
    eps_lf: float = field(default=1e-3, metadata={"help": "the leapfrog step size eps (the initial one with "
                                                          "learn_eps; Pythae: 1e-3)"})
    beta_zero: float = field(default=0.3, metadata={"help": "the initial inverse temperature beta_0 in (0, 1] of the "
                                                            "momentum, cooled to 1 over the steps (1: no tempering; "
                                                            "Pythae: 0.3)"})
    learn_eps: bool = field(default=False, metadata={"help": "learn one step size per latent dimension (the paper)"})
    learn_beta_zero: bool = field(default=False, metadata={"help": "learn beta_0, kept in (0, 1) (the paper's "
                                                                   "'free' tempering)"})

    def __post_init__(self) -> None:
        if self.n_lf < 1:
            raise ConfigError(f"model.{NAME}.n_lf (leapfrog steps) must be at least 1, got {self.n_lf}; "
                              "model.kind=vae is the model without the flow")
        if not self.eps_lf > 0:
            raise ConfigError(f"model.{NAME}.eps_lf (the leapfrog step size) must be > 0, got {self.eps_lf}")
        if not 0 < self.beta_zero <= 1:
            raise ConfigError(f"model.{NAME}.beta_zero (the initial inverse temperature) must be in (0, 1], "
                              f"got {self.beta_zero}")
        if self.learn_beta_zero and self.beta_zero == 1:
            raise ConfigError(f"model.{NAME}.learn_beta_zero learns beta_0 in (0, 1) and cannot start at "
                              f"model.{NAME}.beta_zero=1; start it below 1 (e.g. 0.3)")


def check_flow_parts(cfg, name: str) -> None:
    """A Hamiltonian flow (objective ``name``: this one, rhvae's) starts from a reparameterised
    diagonal Gaussian q0 and needs the gradient of log p(z): refuse other posteriors and a model
    without a prior."""
    if cfg.posterior not in POSTERIORS_OK or cfg.prior == "none":
        raise ConfigError(f"objective {name} flows draws of a diagonal Gaussian posterior along the gradient of "
                          f"log p(x, z): it needs model.posterior=gaussian and a prior (model.prior=normal, "
                          f"conditional or vamp), got model.posterior={cfg.posterior} and model.prior={cfg.prior}")


def check(cfg) -> None:
    check_flow_parts(cfg, NAME)


# ------------------------------------------------------------------------------ the flow
def sqrt_betas(beta_zero: torch.Tensor, n_lf: int) -> list[torch.Tensor]:
    """sqrt(beta_k), k = 0..K, the paper's quadratic schedule in 1/sqrt(beta): from
    sqrt(beta_0) to 1."""
    inv = 1 / beta_zero.sqrt()
    return [1 / ((1 - inv) * (k / n_lf) ** 2 + inv) for k in range(n_lf + 1)]


def log_det(beta_zero: torch.Tensor, dim: int) -> torch.Tensor:
    """log |det| of the whole flow (z_0, rho_0) -> (z_K, rho_K): the leapfrog steps keep
    volume; the coolings scale D momenta by prod_k sqrt(beta_{k-1}/beta_k) = sqrt(beta_0)."""
    return 0.5 * dim * torch.log(beta_zero)


def leapfrog_flow(z: torch.Tensor, rho: torch.Tensor, grad_u: Callable, eps: torch.Tensor, n_lf: int,
                  beta_zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, object]:
    """K tempered leapfrog steps from (z_0, rho_0) (..., D): (z_K, rho_K, aux of the last
    gradient). ``grad_u(z) -> (grad U(z), aux)``; each gradient serves two half steps."""
    scales = sqrt_betas(beta_zero, n_lf)
    g, aux = grad_u(z)
    for k in range(1, n_lf + 1):
        rho = rho - eps / 2 * g
        z = z + eps * rho
        g, aux = grad_u(z)
        rho = (rho - eps / 2 * g) * (scales[k - 1] / scales[k])
    return z, rho, aux


class Leapfrog(nn.Module):
    """The flow's own numbers: the step sizes eps (D,) and beta_0, parameters when learned
    (trained with the model), buffers (saved, fixed) otherwise."""

    def __init__(self, dim: int, o: HamiltonianOptions):
        super().__init__()
        log_eps = torch.full((dim,), math.log(o.eps_lf))
        if o.learn_eps:
            self.log_eps = nn.Parameter(log_eps)
        else:
            self.register_buffer("log_eps", log_eps)
        self.learned_beta = o.learn_beta_zero
        if o.learn_beta_zero:  # beta_0 = sigmoid(logit): in (0, 1)
            self.beta_logit = nn.Parameter(torch.tensor(math.log(o.beta_zero / (1 - o.beta_zero))))
        else:
            self.register_buffer("beta", torch.tensor(o.beta_zero))

    def eps(self) -> torch.Tensor:
        return self.log_eps.exp()

    def beta_zero(self) -> torch.Tensor:
        return torch.sigmoid(self.beta_logit) if self.learned_beta else self.beta


def networks(cfg) -> dict[str, nn.Module]:
    return {NAME: Leapfrog(cfg.latent_dim, cfg.opts(NAME))}


def _log_std_normal(v: torch.Tensor) -> torch.Tensor:
    return -0.5 * (v.square() + LOG_2PI).sum(-1)


def potential_grad(model, x, y, prior: Distribution, create_graph: bool) -> Callable:
    """grad_u(z) -> (grad U(z), (recon, log p(z))) for codes z (B, D) of images x, with
    U(z) = -log p(x|z) - log p(z) (the reconstruction loss: -log p(x|z) up to its offset).
    ``create_graph``: the gradient keeps its graph (training, Jacobians of the flow); else
    it is taken in z alone, from z detached (under torch.no_grad too). A decoder with batch
    norm in training mode couples the images' potentials through the batch statistics (as in
    Pythae); in evaluation it does not."""

    def grad_u(z: torch.Tensor):
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):  # a code nothing upstream needs: a leaf of its own
                z = z.detach().requires_grad_()
            recon = model.recon_loss(model.decode_logits(z, y), x)
            log_pz = prior.log_prob(z)
            g = torch.autograd.grad((recon - log_pz).sum(), z, create_graph=create_graph)[0]
        return g, (recon, log_pz)

    return grad_u


def hamiltonian(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    flow: Leapfrog = model.critics[NAME]
    n_lf = model.cfg.opts(NAME).n_lf
    train = torch.is_grad_enabled()  # else (evaluation) gradients in z only, nothing kept
    prior = model.prior(y, len(x))
    z0 = q.rsample(generator=generator)  # (B, D), drawn first: the VAE's draw for the same generator
    gamma = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    eps, beta0 = flow.eps().to(z0.dtype), flow.beta_zero().to(z0.dtype)
    rho0 = gamma / beta0.sqrt()
    # the flow's arithmetic stays in q0's precision (z0 and the gradients in z are fp32 under autocast)
    _, rhok, (recon, log_pz) = leapfrog_flow(z0, rho0, potential_grad(model, x, y, prior, train), eps, n_lf, beta0)
    if not train:
        recon, log_pz = recon.detach(), log_pz.detach()
    d = z0.shape[-1]
    log_rho0 = -0.5 * (beta0 * rho0.square() + LOG_2PI - beta0.log()).sum(-1)  # log N(rho_0 | 0, I / beta_0)
    kl = q.log_prob(z0) + log_rho0 - log_det(beta0, d) - log_pz - _log_std_normal(rhok)
    return {"loss": recon + kl, "recon": recon, "kl": kl}


HAMILTONIAN = Objective(
    hamiltonian, frozenset({"prior", "stochastic", "continuous", "diagonal"}),
    "Hamiltonian VAE (Caterini et al. 2018): the ELBO of q0's draws flowed by tempered leapfrog steps of -log p(x, z)",
    options=HamiltonianOptions, check=check, networks=networks)

__all__ = ["HAMILTONIAN", "HamiltonianOptions", "Leapfrog", "hamiltonian", "leapfrog_flow", "log_det",
           "potential_grad", "sqrt_betas"]
