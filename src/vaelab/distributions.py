"""The one home of vaelab's probability maths: distributions over latent codes, KL
divergences, log-densities, log-mean-exp and importance weights.

Models return these objects from ``posterior(x, y)`` and ``prior(y)``; objectives,
evaluation and every tool use them, and nothing else re-derives a Gaussian formula.
They follow torch.distributions' names (``mean``, ``rsample``, ``sample``,
``log_prob``, ``entropy``) but are written here for two reasons: every draw takes a
``torch.Generator`` (seeded evaluation gives the same numbers twice; torch's
``rsample`` takes none), and there is no per-call argument validation in the hot
path of training. The tests check every formula against torch.distributions and
against Monte-Carlo estimates.

Shapes: a distribution over D-dimensional codes has ``batch_shape`` (B,) and events
of size D; ``rsample((K,))`` returns (K, B, D) and ``log_prob(z)`` sums over the last
dimension, so ``log_prob`` of (K, B, D) codes is (K, B).
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable

import torch

LOG_2PI = math.log(2 * math.pi)


def _shape(sample_shape) -> tuple[int, ...]:
    if isinstance(sample_shape, int):
        return (sample_shape,)
    return tuple(sample_shape)


class Distribution:
    """Base: a batch of distributions over codes (B, D)."""

    #: draws are differentiable functions of the parameters (reparameterised)
    has_rsample = True
    #: ``log_prob`` exists (a density w.r.t. Lebesgue measure on R^D)
    has_density = True
    #: codes live in R^D (False for discrete codebooks)
    continuous = True

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError

    def rsample(self, sample_shape=(), generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, sample_shape=(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, torch.Tensor]:
        """The parameters per code, each (B, D): what ``vaelab export`` writes."""
        return {"mu": self.mean}


class DiagNormal(Distribution):
    """N(mean, diag(exp(logvar))), parameterised by the log-variance (B, D) as VAEs are."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.loc, self.logvar = mean, logvar

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = _shape(sample_shape) + tuple(self.loc.shape)
        eps = torch.randn(shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + eps * self.std

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return log_normal(z, self.loc, self.logvar).sum(-1)

    def entropy(self) -> torch.Tensor:
        return 0.5 * (self.logvar + 1 + LOG_2PI).sum(-1)

    def params(self) -> dict[str, torch.Tensor]:
        return {"mu": self.loc, "logvar": self.logvar}


class _Centred(Distribution):
    """A parameter-free distribution over D dimensions centred at 0, for any batch: what N(0, I)
    and the uniform distribution on the sphere share (their size, device, dtype and zero mean)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_shape: tuple[int, ...] = ()):
        self.dim, self.device, self.dtype, self.batch_shape = dim, torch.device(device), dtype, tuple(batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self.batch_shape + (self.dim,), device=self.device, dtype=self.dtype)


class StandardNormal(_Centred):
    """N(0, I) over D dimensions, for any batch: ``sample((n,))`` gives (n, D)."""

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = _shape(sample_shape) + self.batch_shape + (self.dim,)
        return torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.square() + LOG_2PI).sum(-1)

    def params(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mean}


class PointMass(Distribution):
    """A deterministic code (an autoencoder's posterior): every draw is the mean."""

    has_density = False

    def __init__(self, value: torch.Tensor):
        self.value = value

    @property
    def mean(self) -> torch.Tensor:
        return self.value

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        return self.value.expand(_shape(sample_shape) + tuple(self.value.shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise TypeError("a point mass has no density")


class MixtureDiagNormal(Distribution):
    """sum_k w_k N(means_k, diag(exp(logvars_k))): a mixture shared by every item of a batch.

    ``means``/``logvars`` (K, D), ``logits`` (K,) unnormalised log-weights. Used for
    mixture priors (VampPrior's mixture of posteriors at pseudo-inputs). No closed-form
    KL: objectives estimate it by Monte Carlo.
    """

    has_rsample = False  # the component draw is discrete; priors are only sampled

    def __init__(self, means: torch.Tensor, logvars: torch.Tensor, logits: torch.Tensor | None = None,
                 batch_shape: tuple[int, ...] = ()):
        self.means, self.logvars = means, logvars
        self.logits = logits if logits is not None else torch.zeros(len(means), device=means.device, dtype=means.dtype)
        self.batch_shape = tuple(batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        w = torch.softmax(self.logits, 0)
        return (w[:, None] * self.means).sum(0).expand(self.batch_shape + (self.means.shape[1],))

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = _shape(sample_shape) + self.batch_shape
        n = math.prod(shape)
        k = torch.multinomial(torch.softmax(self.logits.float(), 0), n, replacement=True, generator=generator)
        eps = torch.randn((n, self.means.shape[1]), generator=generator, device=self.means.device,
                          dtype=self.means.dtype)
        z = self.means[k] + eps * torch.exp(0.5 * self.logvars[k])
        return z.reshape(shape + (self.means.shape[1],))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        # (..., 1, D) against (K, D) -> (..., K) component log-densities, then log-sum-exp with the weights.
        comp = log_normal(z.unsqueeze(-2), self.means, self.logvars).sum(-1)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, 0), dim=-1)


class Quantized(Distribution):
    """A VQ-VAE's code: the nearest codebook vectors to the encoder's output, deterministic.

    ``encoded`` z_e and ``quantized`` e are (B, D') (the code grid flattened); ``mean`` is
    the straight-through code z_e + sg(e - z_e): e in value, z_e's gradient.
    ``indices`` (B, h, w) are the codes' positions in the codebook. Codes are discrete:
    no density, and moving through the space between codebook vectors means nothing."""

    has_density = False
    continuous = False

    def __init__(self, encoded: torch.Tensor, quantized: torch.Tensor, indices: torch.Tensor):
        self.encoded, self.quantized, self.indices = encoded, quantized, indices

    @property
    def mean(self) -> torch.Tensor:
        return self.encoded + (self.quantized - self.encoded).detach()

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        return self.mean.expand(_shape(sample_shape) + tuple(self.mean.shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise TypeError("a quantised code has no density")

    def params(self) -> dict[str, torch.Tensor]:
        return {"code": self.indices.flatten(1).to(self.quantized.dtype)}


class Ancestral(Distribution):
    """A two-layer Gaussian chain over z = [z1, z2]: z1 ~ first, then z2 ~ second(z1).

    ``first`` is a DiagNormal over z1 (B, d1); ``second`` maps z1 (..., d1) to a DiagNormal
    over z2. Draws go down the chain (so k draws of z1 give k of z2), ``log_prob`` adds
    the two layers' log-densities, and ``mean`` follows the means. Both the posterior
    q(z1|x) q(z2|z1) and the prior p(z2) p(z1|z2) of a two-stochastic-layer model are of
    this form (the prior with its layers in the other order, see ``swap``)."""

    def __init__(self, first: Distribution, second, first_dim: int, swap: bool = False):
        # first_dim: the width of the first layer's code; swap: it goes last in z (a prior
        # p(z2) p(z1|z2) over codes laid out [z1, z2]).
        self.first, self.second, self.first_dim, self.swap = first, second, first_dim, swap

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b, a] if self.swap else [a, b], -1)

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.swap:
            cut = z.shape[-1] - self.first_dim
            return z[..., cut:], z[..., :cut]
        return z[..., :self.first_dim], z[..., self.first_dim:]

    @property
    def mean(self) -> torch.Tensor:
        a = self.first.mean
        return self._join(a, self.second(a).mean)

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        a = self.first.rsample(sample_shape, generator)
        return self._join(a, self.second(a).rsample(generator=generator))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        a, b = self._split(z)
        return self.first.log_prob(a) + self.second(a).log_prob(b)


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Flowed(Distribution):
    """A normalizing-flow posterior: z = flow(z0), z0 ~ ``base`` (a DiagNormal), for an
    invertible ``flow(z0, context) -> (z, log |det dz/dz0|)`` with per-item ``context`` tensors
    (B, ...) (vaelab.models.flows). Its density is the change of variables

        log q(z) = log base(z0) - log |det dz/dz0|,

    known where z0 is: at this object's own draws. ``rsample`` keeps log q of each draw, and
    ``log_prob(z)`` returns it for a tensor ``rsample`` returned (the flows have no cheap
    inverse, so log q of any other code is refused). No closed-form KL: ``kl_divergence``
    takes the Monte-Carlo estimate at the draw. ``mean`` is the flow's image of the base
    mean, flow(mu): the mean of q itself has no closed form. The flow runs in fp32 (or
    wider) even under autocast."""

    def __init__(self, base: DiagNormal, flow: Callable, context: tuple[torch.Tensor, ...] = ()):
        self.base, self.flow, self.context = base, flow, tuple(context)
        # id(z) -> (a weak reference to z, log q(z)) for each draw while the draw lives: a long
        # importance-sampled evaluation keeps no draws it has done with
        self._drawn: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        self._mean: torch.Tensor | None = None
        self._grad = torch.is_grad_enabled()  # the mean, computed when first asked, as if computed here

    def push(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow(z0), log |det|) for base codes z0 (..., B, D)."""
        with torch.autocast(z0.device.type, enabled=False):
            return self.flow(_wide(z0), tuple(_wide(c) for c in self.context))

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            with torch.set_grad_enabled(self._grad):
                self._mean = self.push(self.base.mean)[0]
        return self._mean

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        z0 = self.base.rsample(sample_shape, generator)
        z, log_det = self.push(z0)
        key, drawn = id(z), self._drawn

        def forget(ref: weakref.ref) -> None:  # z is gone: so is its entry (and not a newer one at its id)
            if drawn.get(key, (None,))[0] is ref:
                del drawn[key]

        drawn[key] = (weakref.ref(z, forget), self.base.log_prob(z0) - log_det)
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        ref, log_q = self._drawn.get(id(z), (None, None))
        if ref is not None and ref() is z:
            return log_q
        raise ValueError("a flow posterior's log q(z|x) is known only at its own draws (pass the tensor its "
                         "rsample returned): the flow is not inverted")

    def params(self) -> dict[str, torch.Tensor]:
        return {"code": self.mean, "base_mu": self.base.loc, "base_logvar": self.base.logvar}


# ------------------------------------------------------------------------------------ the hypersphere
def _log_iv_numpy(v: float, k):
    """log I_v(k) for an order v >= 0 and k > 0 (float64 arrays): log(ive(v, k)) + k from
    scipy's exponentially scaled Bessel function, which neither overflows for large k nor
    loses digits; where it underflows (k small beside v: I_v(k) ~ (k/2)^v / Gamma(v+1)),
    the power series sum_j (k^2/4)^j / (j! Gamma(v+j+1)) in log space."""
    import numpy as np
    from scipy import special

    k = np.atleast_1d(np.asarray(k, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(special.ive(v, k)) + k
    bad = ~np.isfinite(out) | (special.ive(v, k) < 1e-280)
    if bad.any():
        kb = np.maximum(k[bad], 1e-300)
        q = kb * kb / 4
        term, total = np.ones_like(q), np.ones_like(q)
        for j in range(1, 60):  # ratio of terms q / (j (v + j)): few terms where ive underflows
            term = term * q / (j * (v + j))
            total = total + term
        out[bad] = v * np.log(kb / 2) - special.gammaln(v + 1) + np.log(total)
    return np.asarray(out, dtype=np.float64).reshape(k.shape)


class LogBesselIv(torch.autograd.Function):
    """log I_v(kappa) for a fixed order v >= 0 and kappa > 0 (any shape), differentiable in kappa:
    d/dk log I_v(k) = I_{v+1}(k) / I_v(k) + v / k, the ratio from the same stable log-values.
    Computed in float64 on the CPU with scipy (``scipy.special.ive``), as the S-VAE authors' own
    ``IveFunction`` does (nicola-decao/s-vae-pytorch, hyperspherical_vae/ops/ive.py); torch has
    Bessel functions of orders 0 and 1 only."""

    @staticmethod
    def forward(ctx, v: float, kappa: torch.Tensor) -> torch.Tensor:
        k = kappa.detach().double().cpu().numpy()
        out = torch.from_numpy(_log_iv_numpy(float(v), k).reshape(k.shape)).to(device=kappa.device, dtype=kappa.dtype)
        ctx.v = float(v)
        ctx.save_for_backward(kappa, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        kappa, out = ctx.saved_tensors
        v = ctx.v
        k = kappa.detach().double().cpu().numpy()
        ratio = torch.from_numpy(_log_iv_numpy(v + 1, k).reshape(k.shape)).to(device=kappa.device, dtype=kappa.dtype)
        ratio = torch.exp(ratio - out)  # I_{v+1} / I_v, in (0, 1)
        return None, grad * (ratio + v / kappa)


def log_bessel_iv(v: float, kappa: torch.Tensor) -> torch.Tensor:
    """log I_v(kappa), the modified Bessel function of the first kind, differentiable in kappa."""
    return LogBesselIv.apply(v, kappa)


def log_sphere_area(m: int) -> float:
    """log of the surface area of the unit sphere S^{m-1} in R^m: log(2 pi^{m/2} / Gamma(m/2))."""
    return math.log(2) + m / 2 * math.log(math.pi) - math.lgamma(m / 2)


def vmf_mean_length(m: int, kappa: torch.Tensor) -> torch.Tensor:
    """A_m(kappa) = I_{m/2}(kappa) / I_{m/2-1}(kappa) = E|E[z]|: the mean resultant length of
    vMF(mu, kappa) on S^{m-1} (E[z] = A_m(kappa) mu), differentiable in kappa."""
    return torch.exp(log_bessel_iv(m / 2, kappa) - log_bessel_iv(m / 2 - 1, kappa))


class VonMisesFisher(Distribution):
    """The von Mises-Fisher distribution on the unit sphere S^{m-1} in R^m (densities are with
    respect to its surface measure): q(z) = C_m(kappa) exp(kappa mu.z), with
    log C_m(kappa) = (m/2 - 1) log kappa - (m/2) log 2 pi - log I_{m/2-1}(kappa).
    ``loc`` (B, m) unit mean directions, ``kappa`` (B,) concentrations > 0.

    ``rsample`` is the S-VAE's (Davidson et al. 2018, "Hyperspherical Variational
    Auto-Encoders", UAI, arXiv:1804.00891, section 3.2 and Algorithm 1): w = mu.z drawn by
    Wood's (1994) rejection sampler, eps ~ Beta((m-1)/2, (m-1)/2) proposed and w = h(eps, kappa)
    = (1 - (1+b) eps) / (1 - (1-b) eps) accepted with Wood's test; v ~ U(S^{m-2}); z' = (w,
    sqrt(1 - w^2) v) reflected onto mu by the Householder reflection that maps e1 to mu. The
    gradient flows through the accepted w = h(eps, kappa) with eps held (the paper's g_rep) and
    through the reflection to mu. The paper's correction term g_cor = E[f(z) d/dkappa log
    pi(eps | kappa)], with pi(eps | kappa) = g(h(eps, kappa) | kappa) |dh/deps| the density of an
    accepted eps (g: the density of w), needs f: ``draw_score(z)`` gives log pi(eps | kappa) of a
    draw (differentiable in kappa), and ``rejection_correction`` turns it into a loss term of
    value 0 whose gradient is g_cor. ``correction=False``: no score (g_rep only, as the authors'
    code, nicola-decao/s-vae-pytorch, hyperspherical_vae/distributions/von_mises_fisher.py).

    Where this differs from the authors' code: Beta draws come from Gaussians (a chi-square
    ratio) so a ``torch.Generator`` seeds them; b = (m-1) / (2 kappa + sqrt(4 kappa^2 + (m-1)^2)),
    the same number without the cancellation that their Taylor blend for kappa > 10 avoids;
    1 - w is computed directly (2 b eps / (1 - (1-b) eps)), so sqrt(1 - w^2) keeps its digits at
    large kappa; the exact inverse CDF they use for m = 3 is not used (Wood's sampler for every m,
    so one g_cor for all); the reflection normalises e1 - mu exactly (they add 1e-5).

    ``mean`` is the mode mu (on the sphere, what the decoder is trained on); the mean of q is
    A_m(kappa) mu, inside the ball (``mean_length``)."""

    def __init__(self, loc: torch.Tensor, kappa: torch.Tensor, correction: bool = True):
        self.loc, self.kappa, self.correction = loc, kappa, correction
        self.m = loc.shape[-1]
        self._drawn: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    # The scalar maths runs in float64 and is cast back: at large kappa, log C_m(kappa) and
    # kappa A_m(kappa) are both about kappa and cancel, and in float32 A_m (a ratio of two
    # log-Bessel values near kappa) alone would put the KL nats off at kappa = 1e4.
    def _log_c(self) -> torch.Tensor:
        m, k = self.m, self.kappa.double()
        return (m / 2 - 1) * torch.log(k) - m / 2 * LOG_2PI - log_bessel_iv(m / 2 - 1, k)

    def _mean_length(self) -> torch.Tensor:
        return vmf_mean_length(self.m, self.kappa.double())

    def mean_length(self) -> torch.Tensor:
        """A_m(kappa) (B,): |E[z]|."""
        return self._mean_length().to(self.kappa.dtype)

    def log_normalizer(self) -> torch.Tensor:
        """log C_m(kappa) (B,)."""
        return self._log_c().to(self.kappa.dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        cos = (self.loc.double() * z.double()).sum(-1)
        return (self._log_c() + self.kappa.double() * cos).to(z.dtype)

    def entropy(self) -> torch.Tensor:
        return (-self._log_c() - self.kappa.double() * self._mean_length()).to(self.kappa.dtype)

    def kl_to_uniform(self) -> torch.Tensor:
        """KL(q || U(S^{m-1})) = log C_m(kappa) + kappa A_m(kappa) + log |S^{m-1}| (B,)."""
        return (self._log_c() + self.kappa.double() * self._mean_length() + log_sphere_area(self.m)).to(
            self.kappa.dtype)

    def params(self) -> dict[str, torch.Tensor]:
        # (B, D) each, as every posterior's: kappa repeated in every column
        return {"mu": self.loc, "kappa": self.kappa.unsqueeze(-1).expand_as(self.loc)}

    # -- sampling
    def _b(self, kappa: torch.Tensor) -> torch.Tensor:
        m1 = self.m - 1
        return m1 / (2 * kappa + torch.sqrt(4 * kappa.square() + m1 * m1))

    def _accepted_eps(self, shape: tuple[int, ...], generator) -> torch.Tensor:
        """Wood's (1994) rejection sampler, vectorised: the accepted eps ~ pi(eps | kappa) (float64,
        no gradient), ``shape`` = sample shape + batch shape."""
        m1 = self.m - 1
        dev = self.loc.device
        k = self.kappa.detach().double().expand(shape)
        b = self._b(k)
        x0 = (1 - b) / (1 + b)
        c = k * x0 + m1 * torch.log1p(-x0.square())
        eps = torch.empty(shape, dtype=torch.float64, device=dev)
        todo = torch.ones(shape, dtype=torch.bool, device=dev)
        while bool(todo.any()):
            n = int(todo.sum())
            g = torch.randn((2, n, m1), generator=generator, device=dev, dtype=torch.float64).square().sum(-1)
            e = g[0] / (g[0] + g[1])  # Beta((m-1)/2, (m-1)/2): a ratio of chi-squares with m-1 degrees each
            u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
            bt, kt, ct, x0t = b[todo], k[todo], c[todo], x0[todo]
            w = (1 - (1 + bt) * e) / (1 - (1 - bt) * e)
            ok = kt * w + m1 * torch.log1p(-x0t * w) - ct >= torch.log(u)
            idx = todo.nonzero(as_tuple=True)
            keep = tuple(i[ok] for i in idx)
            eps[keep] = e[ok]
            todo[keep] = False
        return eps

    def _w(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w = h(eps, kappa) and 1 - w, differentiable in kappa (eps held)."""
        b = self._b(self.kappa)
        e = eps.to(b.dtype)
        den = 1 - (1 - b) * e
        return (1 - (1 + b) * e) / den, 2 * b * e / den

    def log_pi(self, eps: torch.Tensor) -> torch.Tensor:
        """log pi(eps | kappa) = log g(h(eps, kappa) | kappa) + log |dh/deps| for accepted eps
        (..., B), differentiable in kappa: g(w | kappa) = exp(kappa w) (1 - w^2)^((m-3)/2) / Z(kappa)
        is the density of w = mu.z, Z(kappa) = 1 / (C_m(kappa) |S^{m-2}|), and dh/deps = -2 b /
        (1 - (1-b) eps)^2."""
        m, k = self.m, self.kappa.double()  # float64, as log C (kappa w and log C cancel)
        b = self._b(k)
        e = eps.double()
        den = 1 - (1 - b) * e
        w, one_minus_w = (1 - (1 + b) * e) / den, 2 * b * e / den
        log_g = (k * w + (m - 3) / 2 * torch.log((one_minus_w * (1 + w)).clamp_min(1e-300))
                 + self._log_c() + log_sphere_area(m - 1))
        return (log_g + torch.log(2 * b) - 2 * torch.log(den)).to(self.kappa.dtype)

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = _shape(sample_shape) + tuple(self.kappa.shape)
        eps = self._accepted_eps(shape, generator)
        w, one_minus_w = self._w(eps)
        v = torch.randn(shape + (self.m - 1,), generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-30)
        r = torch.sqrt((one_minus_w * (1 + w)).clamp_min(0))
        x = torch.cat([w.unsqueeze(-1), r.unsqueeze(-1) * v], -1)  # a draw around e1
        # the Householder reflection that maps e1 to mu: z = x - 2 (x.u) u, u = (e1 - mu) / |e1 - mu|
        u = -self.loc.clone()
        u[..., 0] = u[..., 0] + 1
        u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(1e-12)
        z = x - 2 * (x * u).sum(-1, keepdim=True) * u
        if self.correction:
            key, drawn = id(z), self._drawn

            def forget(ref: weakref.ref) -> None:
                if drawn.get(key, (None,))[0] is ref:
                    del drawn[key]

            drawn[key] = (weakref.ref(z, forget), self.log_pi(eps))
        return z

    def draw_score(self, z: torch.Tensor) -> torch.Tensor | None:
        """log pi(eps | kappa) of the accepted proposals behind a draw ``z`` that ``rsample``
        returned (differentiable in kappa), or None (another tensor, or correction off)."""
        ref, score = self._drawn.get(id(z), (None, None))
        return score if ref is not None and ref() is z else None


class HypersphericalUniform(_Centred):
    """The uniform distribution on the unit sphere S^{D-1} in R^D: log p(z) = -log |S^{D-1}| for
    every z on it (a density with respect to the surface measure, as VonMisesFisher's)."""

    has_rsample = False  # no parameters to differentiate

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = _shape(sample_shape) + self.batch_shape + (self.dim,)
        g = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(1e-30)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full(z.shape[:-1], -log_sphere_area(self.dim), device=z.device, dtype=z.dtype)

    def entropy(self) -> torch.Tensor:
        return torch.full(self.batch_shape, log_sphere_area(self.dim), device=self.device, dtype=self.dtype)

    def params(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mean}


def rejection_correction(q: Distribution, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor | float:
    """A term of value 0 whose gradient is the S-VAE's g_cor for a loss f(z) (B,) at q's draw z:
    (f - b) d/dkappa log pi(eps | kappa), with b the mean of the batch's other values of f (a
    leave-one-out baseline: independent of the image's own draw, so the estimate stays unbiased,
    and its variance falls). 0 for a draw with no score (every reparameterised distribution)."""
    score = getattr(q, "draw_score", lambda _: None)(z)
    if score is None:
        return 0.0
    f = f.detach()
    n = f.shape[-1]
    base = (f.sum(-1, keepdim=True) - f) / (n - 1) if n > 1 else torch.zeros_like(f)
    return (f - base) * (score - score.detach())


# ------------------------------------------------------------------------------------ the Poincaré ball
# The few maps of the Poincaré ball B^D_c = {x : c |x|^2 < 1}, the hyperbolic space of curvature
# -c (c > 0), written by hand (Ganea et al. 2018, "Hyperbolic Neural Networks", NeurIPS, section 2;
# as geoopt's PoincareBall, which the Poincaré VAE authors' code builds on: emilemathieu/pvae,
# pvae/manifolds/poincareball.py): each is a line of torch, and geoopt (a dependency of its own,
# its last release mid-2025) would add nothing here but its float32 projection eps of 4e-3. Every
# map broadcasts over leading dimensions, points and tangent vectors in the last one; callers
# that need the digits (``WrappedNormal``) run them in float64.
_MIN_NORM = 1e-15


def _norm(x: torch.Tensor) -> torch.Tensor:
    # |x| (..., 1), kept off 0 (whose gradient sqrt would make infinite)
    return x.square().sum(-1, keepdim=True).clamp_min(_MIN_NORM ** 2).sqrt()


def ball_project(x: torch.Tensor, c: float, eps: float | None = None) -> torch.Tensor:
    """x pulled inside the ball: |x| <= (1 - eps) / sqrt(c) (eps: the float32 spacing by default,
    so a point rounded onto the boundary keeps a finite distance to the origin)."""
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    limit = (1 - eps) / math.sqrt(c)
    n = _norm(x)
    return torch.where(n > limit, x / n * limit, x)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """x (+)_c y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2 |x|^2 |y|^2)."""
    xy, x2, y2 = (x * y).sum(-1, keepdim=True), x.square().sum(-1, keepdim=True), y.square().sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return num / (1 + 2 * c * xy + c * c * x2 * y2).clamp_min(_MIN_NORM)


def conformal_factor(x: torch.Tensor, c: float) -> torch.Tensor:
    """lambda_x^c = 2 / (1 - c |x|^2) (..., 1): the metric at x is lambda_x^2 times the Euclidean one."""
    return 2 / (1 - c * x.square().sum(-1, keepdim=True)).clamp_min(_MIN_NORM)


def ball_expmap0(u: torch.Tensor, c: float) -> torch.Tensor:
    """exp_0(u) = tanh(sqrt(c) |u|) u / (sqrt(c) |u|)."""
    sc, n = math.sqrt(c), _norm(u)
    return torch.tanh(sc * n) * u / (sc * n)


def ball_logmap0(y: torch.Tensor, c: float) -> torch.Tensor:
    """log_0(y) = artanh(sqrt(c) |y|) y / (sqrt(c) |y|), the inverse of ``ball_expmap0``."""
    sc, n = math.sqrt(c), _norm(y)
    return torch.atanh((sc * n).clamp_max(1 - 1e-15)) * y / (sc * n)


def ball_expmap(x: torch.Tensor, u: torch.Tensor, c: float) -> torch.Tensor:
    """exp_x(u) = x (+) (tanh(sqrt(c) lambda_x |u| / 2) u / (sqrt(c) |u|))."""
    sc, n = math.sqrt(c), _norm(u)
    return mobius_add(x, torch.tanh(sc * conformal_factor(x, c) * n / 2) * u / (sc * n), c)


def ball_logmap(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """log_x(y) = 2 / (sqrt(c) lambda_x) artanh(sqrt(c) |w|) w / |w|, w = (-x) (+) y."""
    sc = math.sqrt(c)
    w = mobius_add(-x, y, c)
    n = _norm(w)
    return 2 / (sc * conformal_factor(x, c)) * torch.atanh((sc * n).clamp_max(1 - 1e-15)) * w / n


def ball_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """d_c(x, y) = 2 / sqrt(c) artanh(sqrt(c) |(-x) (+) y|) (...,)."""
    sc = math.sqrt(c)
    return 2 / sc * torch.atanh((sc * _norm(mobius_add(-x, y, c))).clamp_max(1 - 1e-15)).squeeze(-1)


def gyration(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    """gyr[a, b] w = -(a (+) b) (+) (a (+) (b (+) w)), in the closed form w + 2 (A a + B b) / D
    (as geoopt's ``_gyration``): three Möbius additions near the boundary lose digits."""
    ab, aw, bw = ((a * b).sum(-1, keepdim=True), (a * w).sum(-1, keepdim=True), (b * w).sum(-1, keepdim=True))
    a2, b2 = a.square().sum(-1, keepdim=True), b.square().sum(-1, keepdim=True)
    big_a = -c * c * aw * b2 + c * bw + 2 * c * c * ab * bw
    big_b = -c * c * bw * a2 - c * aw
    den = 1 + 2 * c * ab + c * c * a2 * b2
    return w + 2 * (big_a * a + big_b * b) / den.clamp_min(_MIN_NORM)


def ball_transport(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, c: float) -> torch.Tensor:
    """Parallel transport of u in T_x along the geodesic to y: (lambda_x / lambda_y) gyr[y, -x] u;
    from the origin the gyration is the identity, PT_{0->y}(u) = (1 - c |y|^2) u."""
    return conformal_factor(x, c) / conformal_factor(y, c) * gyration(y, -x, u, c)


def _log_sinhc(a: torch.Tensor) -> torch.Tensor:
    """log(sinh(a) / a) for a >= 0, without overflow or 0/0: a^2/6 near 0."""
    big = a.clamp_min(1e-4)
    far = big + torch.log1p(-torch.exp(-2 * big)) - math.log(2) - torch.log(big)
    return torch.where(a < 1e-4, a.square() / 6, far)


class WrappedNormal(Distribution):
    """The wrapped normal on the Poincaré ball of curvature -c (Mathieu et al. 2019, "Continuous
    Hierarchical Representations with Poincaré Variational Auto-Encoders", NeurIPS,
    arXiv:1901.06033, section 3, and the authors' code: emilemathieu/pvae,
    pvae/distributions/wrapped_normal.py): a Gaussian in the tangent space at the origin, carried
    to mu by parallel transport and wrapped onto the ball by the exponential map,

        v ~ N(0, diag(scale^2)),   z = exp_mu(PT_{0->mu}(v / lambda_0)) = exp_mu(v / lambda_mu),   lambda_0 = 2,

    so d_c(mu, z) = |v| (v / lambda_0 has Riemannian norm |v| at 0, and both maps keep it).
    Its density with respect to the ball's Riemannian volume (lambda_z^D dz), the paper's eq. 6
    and the authors' ``log_prob``:

        log q(z) = log N(v; 0, diag(scale^2)) - (D - 1) log( sinh(sqrt(c) r) / (sqrt(c) r) ),

    with r = d_c(mu, z) and v = lambda_0 PT_{mu->0}(log_mu(z)) = lambda_mu log_mu(z), the draw's
    Gaussian coordinates recovered (the volume grows as (sinh(sqrt(c) r) / (sqrt(c) r))^(D-1) in
    geodesic polar coordinates, hence the minus). As c -> 0 the ball flattens to R^D with the
    metric 4 I: z = mu + v / 2 and log q(z) = log N(z; mu, scale^2 / 4) - D log 2, the Euclidean
    Gaussian's density over that metric's volume 2^D dz.

    ``loc`` (B, D) inside the ball, ``scale`` (B, D) > 0 (or shapes that broadcast). The maths
    runs in float64 whatever the parameters' dtype (artanh near the boundary loses digits in
    float32) and draws come back in ``loc``'s dtype, pulled inside the ball (``ball_project``).
    ``rsample`` keeps each draw's v, so ``log_prob`` of a draw is exact (no log map of a rounded
    point); any other z goes through the log map. No closed-form KL: ``kl_divergence`` takes the
    Monte-Carlo estimate log q(z) - log p(z) at the draw, as the authors' code does by default.
    ``mean`` is mu (the mode and Fréchet mean, on the ball)."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, c: float):
        if not c > 0:
            raise ValueError(f"the Poincaré ball's curvature -c needs c > 0, got c = {c}")
        self.loc, self.scale, self.c = loc, scale, float(c)
        self._drawn: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def _eps(self) -> float:  # how far inside the boundary a point of loc's dtype is kept
        return torch.finfo(self.loc.dtype).eps

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """z for standard-normal ``noise`` (..., B, D): the reparameterisation (in float64)."""
        mu, c = self.loc.double(), self.c
        v = self.scale.double() * noise.double()
        u = v / conformal_factor(mu, c)  # PT_{0->mu}(v / lambda_0) = (lambda_0 / lambda_mu) v / lambda_0
        return ball_project(ball_expmap(mu, u, c), c, self._eps()).to(self.loc.dtype)

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = _shape(sample_shape) + tuple(torch.broadcast_shapes(self.loc.shape, self.scale.shape))
        noise = torch.randn(shape, generator=generator, device=self.loc.device, dtype=torch.float64)
        z = self.from_noise(noise)
        key, drawn = id(z), self._drawn

        def forget(ref: weakref.ref) -> None:
            if drawn.get(key, (None,))[0] is ref:
                del drawn[key]

        drawn[key] = (weakref.ref(z, forget), self._log_q(self.scale.double() * noise))
        return z

    def tangent(self, z: torch.Tensor) -> torch.Tensor:
        """v = lambda_mu log_mu(z) (float64): z's coordinates in the tangent space at 0."""
        mu = self.loc.double()
        z = ball_project(z.double(), self.c, self._eps())
        return conformal_factor(mu, self.c) * ball_logmap(mu, z, self.c)

    def _log_q(self, v: torch.Tensor) -> torch.Tensor:
        d = v.shape[-1]
        logvar = 2 * torch.log(self.scale.double())
        r = v.square().sum(-1).sqrt()  # d_c(mu, z)
        out = log_normal(v, torch.zeros_like(v), logvar).sum(-1) - (d - 1) * _log_sinhc(math.sqrt(self.c) * r)
        return out.to(self.loc.dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        ref, log_q = self._drawn.get(id(z), (None, None))
        if ref is not None and ref() is z:
            return log_q
        return self._log_q(self.tangent(z)).to(z.dtype)

    def params(self) -> dict[str, torch.Tensor]:
        return {"mu": self.loc, "sigma": self.scale.expand_as(self.loc)}


# ------------------------------------------------------------------------------------ densities
def log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(z; mean, exp(logvar)), broadcast, not summed."""
    return -0.5 * (LOG_2PI + logvar + (z - mean).square() * torch.exp(-logvar))


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K sum_k exp(x_k)) along ``dim``, computed stably (log-sum-exp minus log K)."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def importance_weights(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Normalised importance weights softmax(log_w) along ``dim`` (the IWAE gradient weights)."""
    return torch.softmax(log_w, dim)


# ------------------------------------------------------------------------------------ KL
def _kl_normal_standard(q: DiagNormal, p: StandardNormal) -> torch.Tensor:
    # KL(N(mu, sigma^2) || N(0, 1)) per dimension, the closed form of Kingma & Welling (2014).
    return -0.5 * (1 + q.logvar - q.loc.square() - q.logvar.exp())


def _kl_normal_normal(q: DiagNormal, p: DiagNormal) -> torch.Tensor:
    # KL(N(m1, v1) || N(m2, v2)) per dimension = 0.5 (log v2/v1 + (v1 + (m1 - m2)^2) / v2 - 1).
    return 0.5 * (p.logvar - q.logvar + (q.logvar.exp() + (q.loc - p.loc).square()) * torch.exp(-p.logvar) - 1)


# (type of q, type of p) -> per-dimension KL (..., D). Absent pairs have no closed form.
KL_RULES: dict[tuple[type, type], Callable[[Distribution, Distribution], torch.Tensor]] = {
    (DiagNormal, StandardNormal): _kl_normal_standard,
    (DiagNormal, DiagNormal): _kl_normal_normal,
}


def _kl_vmf_uniform(q: VonMisesFisher, p: HypersphericalUniform) -> torch.Tensor:
    # KL(vMF(mu, kappa) || U(S^{m-1})) = log C_m(kappa) + kappa A_m(kappa) + log |S^{m-1}|
    # (Davidson et al. 2018, eq. 7-8): minus q's entropy plus p's; it does not depend on mu.
    return q.kl_to_uniform()


# (type of q, type of p) -> KL per item (...,), closed forms that do not split by dimension.
KL_WHOLE: dict[tuple[type, type], Callable[[Distribution, Distribution], torch.Tensor]] = {
    (VonMisesFisher, HypersphericalUniform): _kl_vmf_uniform,
}


def kl_per_dim(q: Distribution, p: Distribution) -> torch.Tensor | None:
    """Closed-form KL(q || p) per latent dimension (B, D), or None where there is none."""
    rule = KL_RULES.get((type(q), type(p)))
    return None if rule is None else rule(q, p)


def kl_divergence(q: Distribution, p: Distribution, z: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q || p) per item (B,): closed form where one exists, else the one-sample
    Monte-Carlo estimate log q(z) - log p(z) at the draw ``z`` from q."""
    per_dim = kl_per_dim(q, p)
    if per_dim is not None:
        return per_dim.sum(-1)
    whole = KL_WHOLE.get((type(q), type(p)))
    if whole is not None:
        return whole(q, p)
    if z is None:
        raise ValueError(f"KL({type(q).__name__} || {type(p).__name__}) has no closed form: pass a draw z ~ q")
    return q.log_prob(z) - p.log_prob(z)


def _same_flow(a, b) -> bool:
    """One flow, or copies of one (``to`` copies a flow to the device of its codes): the same
    module type with equal weights."""
    if a is b:
        return True
    if not (isinstance(a, torch.nn.Module) and type(a) is type(b)):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)


def cat(dists: list[Distribution]) -> Distribution:
    """Concatenate distributions of one type along the batch (encode a split in chunks)."""
    first = dists[0]
    if isinstance(first, DiagNormal):
        return DiagNormal(torch.cat([d.loc for d in dists]), torch.cat([d.logvar for d in dists]))
    if isinstance(first, PointMass):
        return PointMass(torch.cat([d.value for d in dists]))
    if isinstance(first, Quantized):
        return Quantized(*(torch.cat([getattr(d, a) for d in dists]) for a in ("encoded", "quantized", "indices")))
    if isinstance(first, Ancestral):  # the chain's networks stay behind: keep the means of both layers
        return PointMass(torch.cat([d.mean for d in dists]))
    if isinstance(first, Flowed) and all(isinstance(d, Flowed) and _same_flow(d.flow, first.flow) for d in dists):
        base = DiagNormal(torch.cat([d.base.loc for d in dists]), torch.cat([d.base.logvar for d in dists]))
        return Flowed(base, first.flow, tuple(torch.cat(c) for c in zip(*(d.context for d in dists))))
    if isinstance(first, VonMisesFisher):
        return VonMisesFisher(torch.cat([d.loc for d in dists]), torch.cat([d.kappa for d in dists]),
                              first.correction)
    if isinstance(first, WrappedNormal) and all(isinstance(d, WrappedNormal) and d.c == first.c for d in dists):
        return WrappedNormal(torch.cat([d.loc for d in dists]),
                             torch.cat([d.scale.expand_as(d.loc) for d in dists]), first.c)
    raise TypeError(f"cannot concatenate {type(first).__name__} distributions")


def to(d: Distribution, device) -> Distribution:
    """A copy of ``d`` with its parameters on ``device``."""
    if isinstance(d, DiagNormal):
        return DiagNormal(d.loc.to(device), d.logvar.to(device))
    if isinstance(d, PointMass):
        return PointMass(d.value.to(device))
    if isinstance(d, Quantized):
        return Quantized(d.encoded.to(device), d.quantized.to(device), d.indices.to(device))
    if isinstance(d, Ancestral):
        return PointMass(d.mean.to(device))
    if isinstance(d, Flowed):
        flow = d.flow
        weights = list(flow.parameters()) if isinstance(flow, torch.nn.Module) else []
        if weights and weights[0].device != torch.device(device):  # a copy of the flow beside its codes
            flow = copy.deepcopy(flow).to(device)
        return Flowed(to(d.base, device), flow, tuple(c.to(device) for c in d.context))
    if isinstance(d, VonMisesFisher):
        return VonMisesFisher(d.loc.to(device), d.kappa.to(device), d.correction)
    if isinstance(d, WrappedNormal):
        return WrappedNormal(d.loc.to(device), d.scale.to(device), d.c)
    raise TypeError(f"cannot move a {type(d).__name__}")


__all__ = [
    "KL_RULES",
    "KL_WHOLE",
    "LOG_2PI",
    "Ancestral",
    "DiagNormal",
    "Distribution",
    "Flowed",
    "HypersphericalUniform",
    "MixtureDiagNormal",
    "PointMass",
    "Quantized",
    "StandardNormal",
    "VonMisesFisher",
    "WrappedNormal",
    "ball_distance",
    "ball_expmap",
    "ball_expmap0",
    "ball_logmap",
    "ball_logmap0",
    "ball_project",
    "ball_transport",
    "cat",
    "conformal_factor",
    "gyration",
    "importance_weights",
    "kl_divergence",
    "kl_per_dim",
    "log_bessel_iv",
    "log_mean_exp",
    "log_normal",
    "log_sphere_area",
    "mobius_add",
    "rejection_correction",
    "to",
    "vmf_mean_length",
]
