"""The Riemannian Hamiltonian VAE (Chadebec, Mantoux & Allassonnière 2020, "Geometry-Aware
Hamiltonian Variational Auto-Encoder", arXiv:2010.11518): the objective and family ``rhvae``.
The Hamiltonian VAE (``vaelab.models.hamiltonian``) with a learned Riemannian metric G(z) on
the latent space: the momentum's covariance is G(z), so the flow's kinetic energy and its
steps depend on where z is.

The metric. A metric network maps an image x_i to a lower-triangular L_i (its diagonal the
exp of one head, below it another head; Pythae's ``Metric_MLP``: one hidden layer of
``metric_hidden`` ReLU units), and the encoder's mean gives its centroid c_i = mu(x_i):

    G^{-1}(z) = sum_i L_i L_i^T exp(-|z - c_i|^2 / T^2) + lambda I

(T ``temperature``, lambda ``regularization``), symmetric positive definite for lambda > 0.
In training the sum runs over the batch's images (the metric network and the encoder's means
with their gradients, as in Pythae); in evaluation over the stored centroids (below).
G^{-1} is what the flow needs; log det G(z) = -2 sum log diag C and draws of N(0, G(z)) come
from its Cholesky factor C (C C^T = G^{-1}). The gradients of the metric's terms in z are in
closed form (tested against autograd): with M_i = L_i L_i^T, w_i = exp(-|z - c_i|^2 / T^2),

    grad_z [1/2 log det G(z) + 1/2 v^T G^{-1}(z) v] = 1/T^2 sum_i w_i (tr(G M_i) - v^T M_i v) (z - c_i).

The flow. The Hamiltonian is -log of p(x, z) N(v | 0, G(z)):

    H(z, v) = U(z) + 1/2 log((2 pi)^D det G(z)) + 1/2 v^T G^{-1}(z) v,   U(z) = -log p(x|z) - log p(z)

(decoder and prior, grad U by autograd as in the Hamiltonian VAE). A draw z_0 ~ q0(z|x) and
v_0 = gamma / sqrt(beta_0), gamma ~ N(0, G(z_0)), go through K generalised leapfrog steps
(Girolami & Calderhead 2011's integrator, as in the paper), each followed by the Hamiltonian
VAE's cooling:

    v'   = v - eps/2 grad_z H(z, v')                                 (implicit in v')
    z'   = z + eps/2 (G^{-1}(z) v' + G^{-1}(z') v')                   (implicit in z')
    v''  = v' - eps/2 grad_z H(z', v')
    v_k  = sqrt(beta_{k-1} / beta_k) v''    (the quadratic schedule of ``hamiltonian.sqrt_betas``)

The two implicit equations are solved by ``fixed_point_steps`` fixed-point iterations each,
from v' = v and z' = z (Pythae: 3). Solved exactly, a step is symplectic, so volume-preserving
(and reversible): the map (z_0, v_0) -> (z_K, v_K) has log |det| = (D/2) log beta_0, the
cooling's, as in the Hamiltonian VAE, and the weight needs no other Jacobian (tested with
autograd's Jacobian, the iterations run to convergence). With a few iterations the step is
only approximately volume-preserving; the bound takes it as exact, as the paper does. With a
constant metric (no centroids: G^{-1} = lambda I) the step is the ordinary leapfrog of
``hamiltonian.leapfrog_flow`` in rho = sqrt(lambda) v with step size sqrt(lambda) eps (tested).

The bound: log w = log p(x|z_K) + log p(z_K) + log N(v_K | 0, G(z_K)) - log q0(z_0|x)
- log N(gamma | 0, G(z_0)) (the tempering's Jacobian folded into gamma's density, as in
``hamiltonian``), E[log w] <= log p(x) and E[w] = p(x) for a given metric. Per-image parts:
``loss`` = -log w, ``recon`` = -log p(x|z_K) (the likelihood's convention), ``kl`` = loss -
recon, the one-sample KL on the extended space (z, v).

The metric in evaluation (what is saved). The metric network needs training images, so a
model in evaluation mode (``model.eval()``: eval, nll, the tools, a reloaded run) uses the
last ``centroids`` training points' (c_i, L_i), written by each training step (a training-mode
forward with gradients on) into a ring of buffers of the objective's network
(``model.critics["rhvae"]``: ``centroids`` (N, D), ``factors`` (N, D, D), ``seen``), so they are
saved in the run's safetensors checkpoint with the weights and a reloaded run evaluates
exactly as the model that wrote it. Before any training step the sum is empty: G^{-1} = lambda
I. A training-mode forward uses the batch's metric, written or not (under torch.no_grad it
writes nothing).

Capabilities: the model is p(z) p(x|z) with a Gaussian encoder q0, as the Hamiltonian VAE: it
keeps its ``density`` (``nll_iw`` is importance sampling with q0 as the proposal: the model's
``log_weights``, no metric), ``encode`` and reconstructions use q0's mean, and the ONNX
export's encoder is q0's. The metric network and the flow are in no exported part (nothing
but the bound uses them), so the export needs nothing more.

Options (``model.rhvae.*``): ``n_lf`` K >= 1, ``eps_lf`` > 0, ``beta_zero`` in (0, 1],
``temperature`` T > 0, ``regularization`` lambda > 0, ``fixed_point_steps`` >= 1, ``centroids``
>= 1 (the stored points), ``metric_hidden`` >= 1. eps and beta_0 are fixed (Pythae's RHVAE
learns neither).

Where this follows the paper and where Pythae differs (clementchadebec/benchmark_VAE,
``src/pythae/models/rhvae/rhvae_model.py``, ``rhvae_config.py``: ``n_lf`` 3, ``eps_lf`` 1e-3,
``beta_zero`` 0.3, ``temperature`` 1.5, ``regularization`` 0.01; its metric keeps the last 100
training batches):

- Pythae's RHVAE uses its ``beta_zero`` as sqrt(beta_0) (``beta_zero_sqrt`` is the config
  value; its HVAE takes the square root): its 0.3 is beta_0 = 0.09. Here ``beta_zero`` is
  beta_0, as in ``hamiltonian``: Pythae's 0.3 is ``model.rhvae.beta_zero=0.09``.
- Pythae's implicit z step holds G^{-1} at the old z in both terms (its iterations change
  nothing: z' = z + eps G^{-1}(z) v', explicit, not volume-preserving). Here the paper's
  step, G^{-1}(z') recomputed at each iteration.
- Pythae's first momentum in training is L_psi(x) gamma / sqrt(beta_0), L_psi(x) the metric
  network's factor of x's own term of G^{-1} (in evaluation a Cholesky factor of G(z_0)), and
  its loss leaves out the momentum's start, log N(gamma | 0, G(z_0)) (with its -1/2 log det
  G(z_0), which depends on the metric and the encoder), and log N(v_K | 0, G(z_K))'s 2 pi
  constant. Its ``get_nll`` has both but takes log N(v_0 | 0, G(z_0) / beta_0) without the
  cooling's Jacobian (D/2) log beta_0, so its NLL is low by -(D/2) log beta_0 (1.20 D nats at
  its defaults, beta_0 = 0.09). Here v_0 ~ N(0, G(z_0) / beta_0) always and log w is the
  paper's full weight, every log-density normalised.
- Pythae takes grad_z H in the implicit v step without ``create_graph`` (no gradient through
  it); here the bound's gradient goes through the whole flow.
- Pythae's evaluation metric is the last 100 batches of the last epoch (kept in deques,
  turned into the metric by ``update()`` at each epoch's end: before the first, G^{-1}(z) =
  exp(-|z|^2) I + lambda I), saved by pickle with the weights. Here the last ``centroids``
  training points (default 6400: Pythae's 100 batches of its default batch size, 64), across
  epoch ends, in safetensors.
- Pythae's potential has a N(0, I) prior; here the model's prior (normal, conditional, vamp).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from vaelab.distributions import LOG_2PI, Distribution
from vaelab.errors import ConfigError
from vaelab.models.contract import Objective, Parts
from vaelab.models.hamiltonian import check_flow_parts, potential_grad, sqrt_betas

NAME = "rhvae"  # the objective's registry name and its options section (model.rhvae.*)


@dataclass
class RhvaeOptions:
    n_lf: int = field(default=3, metadata={"help": "K, the number of generalised leapfrog steps (Pythae: 3)"})
    eps_lf: float = field(default=1e-3, metadata={"help": "the leapfrog step size eps (Pythae: 1e-3)"})
    beta_zero: float = field(default=0.3, metadata={"help": "the initial inverse temperature beta_0 in (0, 1] of the "
                                                            "momentum, cooled to 1 over the steps (1: no tempering; "
                                                            "Pythae's beta_zero is sqrt(beta_0): its 0.3 is 0.09 here)"})
    temperature: float = field(default=1.5, metadata={"help": "T, the width of each centroid's term of the metric "
                                                              "(Pythae: 1.5)"})
    regularization: float = field(default=0.01, metadata={"help": "lambda, the metric's lambda I term (Pythae: "
                                                                  "0.01)"})
    fixed_point_steps: int = field(default=3, metadata={"help": "fixed-point iterations solving each implicit "
                                                                "leapfrog equation (Pythae: 3)"})
    centroids: int = field(default=6400, metadata={"help": "training points (centroid and factor) kept for the "
                                                           "metric in evaluation (Pythae: its last 100 batches)"})
    metric_hidden: int = field(default=400, metadata={"help": "hidden units of the metric network (Pythae: 400)"})

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, got) -> None:
            if not ok:
                raise ConfigError(f"model.{NAME}.{what}, got {got}")

        need(self.n_lf >= 1, "n_lf (leapfrog steps) must be at least 1", self.n_lf)
        need(self.eps_lf > 0, "eps_lf (the leapfrog step size) must be > 0", self.eps_lf)
        need(0 < self.beta_zero <= 1, "beta_zero (the initial inverse temperature) must be in (0, 1]", self.beta_zero)
        need(self.temperature > 0, "temperature (the metric's T) must be > 0", self.temperature)
        need(self.regularization > 0, "regularization (the metric's lambda, which keeps it positive definite) "
                                      "must be > 0", self.regularization)
        need(self.fixed_point_steps >= 1, "fixed_point_steps must be at least 1", self.fixed_point_steps)
        need(self.centroids >= 1, "centroids (training points kept for the metric) must be at least 1",
             self.centroids)
        need(self.metric_hidden >= 1, "metric_hidden (the metric network's width) must be at least 1",
             self.metric_hidden)


def check(cfg) -> None:
    check_flow_parts(cfg, NAME)  # the Hamiltonian VAE's parts: a diagonal Gaussian q0 and a prior


# ------------------------------------------------------------------------------ the metric
def _exact(fn: Callable) -> Callable:
    """The metric's arithmetic in the codes' precision: outside autocast (fp32 under mixed
    precision, where products of matrices would run in bf16), as the flow's other arithmetic."""

    @functools.wraps(fn)
    def run(self, *args):
        device = next(a for a in args if isinstance(a, torch.Tensor)).device
        with torch.autocast(device.type, enabled=False):
            return fn(self, *args)

    return run


class Metric:
    """G^{-1}(z) = sum_i L_i L_i^T exp(-|z - c_i|^2 / T^2) + lambda I for centroids (N, D) and
    lower-triangular factors (N, D, D) (N may be 0: G^{-1} = lambda I)."""

    def __init__(self, centroids: torch.Tensor, factors: torch.Tensor, temperature: float, regularization: float):
        self.c = centroids
        self.dim = centroids.shape[-1]
        with torch.autocast(factors.device.type, enabled=False):
            self.m = (factors @ factors.mT).flatten(1)  # M_i = L_i L_i^T, (N, D * D)
        self.t2 = temperature ** 2
        self.lam = regularization

    @_exact
    def weights(self, z: torch.Tensor) -> torch.Tensor:
        """w_i(z) = exp(-|z - c_i|^2 / T^2), (B, N)."""
        d2 = z.square().sum(-1, keepdim=True) - 2 * z @ self.c.T + self.c.square().sum(-1)
        return torch.exp(-d2.clamp_min(0) / self.t2)

    @_exact
    def inverse(self, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """G^{-1}(z), (B, D, D)."""
        w = self.weights(z) if w is None else w
        eye = torch.eye(self.dim, dtype=z.dtype, device=z.device)
        return (w @ self.m).view(-1, self.dim, self.dim) + self.lam * eye

    @_exact
    def inverse_times(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """G^{-1}(z) v, (B, D)."""
        return (self.inverse(z) @ v.unsqueeze(-1)).squeeze(-1)

    def at(self, z: torch.Tensor) -> MetricAt:
        return MetricAt(self, z)


class MetricAt:
    """The metric at codes z (B, D): G^{-1}, its Cholesky factor, and the kinetic energy's
    terms and their gradients in z."""

    @_exact
    def __init__(self, metric: Metric, z: torch.Tensor):
        self.metric, self.z = metric, z
        self.w = metric.weights(z)
        self.inv = metric.inverse(z, self.w)
        # C C^T = G^{-1}. It is positive definite wherever z is finite; a flow whose fixed-point
        # iterations diverged (eps_lf too large for the metric) gets NaNs, which the trainer's check
        # reports, not a linear-algebra error in the middle of a batch.
        chol, info = torch.linalg.cholesky_ex(self.inv)
        self.chol = torch.where((info > 0)[..., None, None], torch.nan, chol)
        self._trace_term: torch.Tensor | None = None

    def log_det_g(self) -> torch.Tensor:
        """log det G(z) = -log det G^{-1}(z), (B,)."""
        return -2 * self.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    @_exact
    def inv_times(self, v: torch.Tensor) -> torch.Tensor:
        """G^{-1}(z) v, (B, D)."""
        return (self.inv @ v.unsqueeze(-1)).squeeze(-1)

    @_exact
    def draw(self, noise: torch.Tensor) -> torch.Tensor:
        """C^{-T} noise: standard-normal noise (B, D) made a draw of N(0, G(z))."""
        return torch.linalg.solve_triangular(self.chol.mT, noise.unsqueeze(-1), upper=True).squeeze(-1)

    def log_normal(self, v: torch.Tensor) -> torch.Tensor:
        """log N(v | 0, G(z)), (B,)."""
        return -0.5 * ((v * self.inv_times(v)).sum(-1) + self.log_det_g() + self.metric.dim * LOG_2PI)

    def log_normal_of_draw(self, noise: torch.Tensor) -> torch.Tensor:
        """log N(draw(noise) | 0, G(z)) = log N(noise | 0, I) - 1/2 log det G(z), (B,)."""
        return -0.5 * ((noise.square() + LOG_2PI).sum(-1) + self.log_det_g())

    def _pull(self, a: torch.Tensor) -> torch.Tensor:
        """1/T^2 sum_i a_i (z - c_i) for coefficients a (B, N)."""
        return (self.z * a.sum(-1, keepdim=True) - a @ self.metric.c) / self.metric.t2

    @_exact
    def grad_kinetic(self, v: torch.Tensor) -> torch.Tensor:
        """grad_z [1/2 log det G(z) + 1/2 v^T G^{-1}(z) v] = 1/T^2 sum_i w_i (tr(G M_i) - v^T M_i v) (z - c_i),
        (B, D): the part of grad_z H(z, v) beside grad U(z)."""
        m = self.metric.m
        if self._trace_term is None:  # tr(G M_i) w_i: the same for every v at this z
            g = torch.cholesky_inverse(self.chol)
            self._trace_term = self.w * (g.flatten(1) @ m.T)
        quad = (v.unsqueeze(-1) * v.unsqueeze(-2)).flatten(1) @ m.T  # v^T M_i v, (B, N)
        return self._pull(self._trace_term - self.w * quad)


# ------------------------------------------------------------------------------ the flow
def momentum_half_step(v: torch.Tensor, grad_u: torch.Tensor, at: MetricAt, eps, steps: int) -> torch.Tensor:
    """v' = v - eps/2 grad_z H(z, v') by ``steps`` fixed-point iterations from v' = v."""
    out = v
    for _ in range(steps):
        out = v - eps / 2 * (grad_u + at.grad_kinetic(out))
    return out


def position_step(z: torch.Tensor, v: torch.Tensor, at: MetricAt, metric: Metric, eps, steps: int) -> torch.Tensor:
    """z' = z + eps/2 (G^{-1}(z) v + G^{-1}(z') v) by ``steps`` fixed-point iterations from z' = z."""
    start = at.inv_times(v)
    out = z
    for _ in range(steps):
        out = z + eps / 2 * (start + metric.inverse_times(out, v))
    return out


def generalized_leapfrog(z: torch.Tensor, v: torch.Tensor, grad_u: Callable, metric: Metric, eps, n_lf: int,
                         beta_zero: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, MetricAt, object]:
    """K tempered generalised leapfrog steps from (z_0, v_0) (B, D): (z_K, v_K, the metric at
    z_K, aux of the last potential gradient). ``grad_u(z) -> (grad U(z), aux)``, as
    ``hamiltonian.potential_grad``; each gradient serves two half steps."""
    scales = sqrt_betas(beta_zero, n_lf)
    at = metric.at(z)
    g, aux = grad_u(z)
    for k in range(1, n_lf + 1):
        v = momentum_half_step(v, g, at, eps, steps)
        z = position_step(z, v, at, metric, eps, steps)
        at = metric.at(z)
        g, aux = grad_u(z)
        v = (v - eps / 2 * (g + at.grad_kinetic(v))) * (scales[k - 1] / scales[k])
    return z, v, at, aux


# ------------------------------------------------------------------------------ the objective's network
class MetricNetwork(nn.Module):
    """x -> L_psi(x), lower-triangular (B, D, D) with a positive diagonal (Pythae's
    ``Metric_MLP``), and the stored training points that define the metric in evaluation:
    buffers ``centroids`` (N, D), ``factors`` (N, D, D) and ``seen`` (points written so far),
    a ring the training steps write."""

    def __init__(self, input_size: int, dim: int, o: RhvaeOptions):
        super().__init__()
        self.dim = dim
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_size, o.metric_hidden), nn.ReLU())
        self.diag = nn.Linear(o.metric_hidden, dim)
        self.lower = nn.Linear(o.metric_hidden, dim * (dim - 1) // 2)
        self.register_buffer("centroids", torch.zeros(o.centroids, dim))
        self.register_buffer("factors", torch.zeros(o.centroids, dim, dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        rows, cols = torch.tril_indices(self.dim, self.dim, -1, device=h.device)
        low = h.new_zeros(h.shape[0], self.dim, self.dim)
        low[:, rows, cols] = self.lower(h)
        return low + torch.diag_embed(self.diag(h).exp())

    @torch.no_grad()
    def remember(self, centroids: torch.Tensor, factors: torch.Tensor) -> None:
        """Write a batch's centroids and factors over the oldest stored ones."""
        n, b = len(self.centroids), len(centroids)
        keep = min(n, b)
        pos = (self.seen + (b - keep) + torch.arange(keep, device=self.seen.device)) % n
        self.centroids.index_copy_(0, pos, centroids[b - keep:].to(self.centroids.dtype))
        self.factors.index_copy_(0, pos, factors[b - keep:].to(self.factors.dtype))
        self.seen += b

    def stored(self, o: RhvaeOptions) -> Metric:
        """The metric of the stored training points (empty before the first training step)."""
        k = min(int(self.seen), len(self.centroids))
        return Metric(self.centroids[:k], self.factors[:k], o.temperature, o.regularization)


def networks(cfg) -> dict[str, nn.Module]:
    return {NAME: MetricNetwork(math.prod(cfg.input_shape), cfg.latent_dim, cfg.opts(NAME))}


def rhvae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    o = model.cfg.opts(NAME)
    net: MetricNetwork = model.critics[NAME]
    train = torch.is_grad_enabled()  # else (evaluation) gradients in z only, nothing kept
    prior = model.prior(y, len(x))
    z0 = q.rsample(generator=generator)  # (B, D), drawn first: the VAE's draw for the same generator
    noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    if model.training:  # the batch's metric: its images' factors, centred on their encoder means
        factors = net(model.to_model_space(x)).to(z0.dtype)
        centroids = q.mean.to(z0.dtype)
        if train:
            net.remember(centroids.detach(), factors.detach())
        metric = Metric(centroids, factors, o.temperature, o.regularization)
    else:
        metric = net.stored(o)
    beta0 = torch.tensor(o.beta_zero, dtype=z0.dtype, device=z0.device)
    at0 = metric.at(z0)
    v0 = at0.draw(noise) / beta0.sqrt()  # gamma ~ N(0, G(z_0)), v_0 = gamma / sqrt(beta_0)
    grad_u = potential_grad(model, x, y, prior, train)
    _, vk, atk, (recon, log_pz) = generalized_leapfrog(z0, v0, grad_u, metric, o.eps_lf, o.n_lf, beta0,
                                                       o.fixed_point_steps)
    if not train:
        recon, log_pz = recon.detach(), log_pz.detach()
    kl = q.log_prob(z0) + at0.log_normal_of_draw(noise) - log_pz - atk.log_normal(vk)
    return {"loss": recon + kl, "recon": recon, "kl": kl}


RHVAE = Objective(
    rhvae, frozenset({"prior", "stochastic", "continuous", "diagonal"}),
    "Riemannian Hamiltonian VAE (Chadebec et al. 2020): the Hamiltonian VAE with a learned latent metric G(z) and "
    "generalised leapfrog steps",
    options=RhvaeOptions, check=check, networks=networks)

__all__ = ["RHVAE", "Metric", "MetricAt", "MetricNetwork", "RhvaeOptions", "generalized_leapfrog",
           "momentum_half_step", "position_step", "rhvae"]
