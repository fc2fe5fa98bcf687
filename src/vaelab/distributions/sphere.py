"""The hypersphere: the log-Bessel function (``LogBesselIv``, ``log_bessel_iv``),
``log_sphere_area``, ``vmf_mean_length``, the von Mises-Fisher distribution (``VonMisesFisher``,
the S-VAE's posterior), the uniform distribution on the sphere (``HypersphericalUniform``) and
``rejection_correction`` (the S-VAE's g_cor)."""

from __future__ import annotations

import math
import weakref

import torch

from vaelab.distributions.base import LOG_2PI, Distribution, _Centred, _shape
from vaelab.errors import TrainingDiverged

# The largest concentration the sampler takes. Its acceptance test compares kappa w + ... - c,
# terms of size kappa whose difference is O(1), so float64 (16 digits) resolves it to about
# kappa * 1e-16: 1e-6 at 1e10, while at 1e16 the test can no longer accept and the loop never
# ended. The distribution is then a point to 1e-5 radians (its angular spread ~ 1 / sqrt(kappa)),
# so the vmf head caps kappa here (vaelab.models.svae), and larger values are refused.
KAPPA_MAX = 1e10
# Wood's sampler accepts with probability above 1/2 at every kappa and m: 200 rounds that leave
# a draw unaccepted mean broken numbers, not bad luck (2^-200).
MAX_ROUNDS = 200


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
    # ive gives nan from k = 2^31 on (scipy 1.x): there, Hankel's large-argument expansion,
    # log I_v(k) = k - log(2 pi k) / 2 + log(1 - (4v^2 - 1) / (8k) + (4v^2 - 1)(4v^2 - 9) / (2! (8k)^2) - ...),
    # whose terms at k >= 1e8 fall below float64's digits after a few (for orders v << sqrt(k)).
    large = bad & (k >= 1e8)
    if large.any():
        kl, mu = k[large], 4.0 * v * v
        term, total = np.ones_like(kl), np.ones_like(kl)
        for j in range(1, 8):
            term = -term * (mu - (2 * j - 1) ** 2) / (j * 8 * kl)
            total = total + term
        out[large] = kl - 0.5 * np.log(2 * np.pi * kl) + np.log(total)
        bad = bad & ~large
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
        _check_kappa(self.kappa.detach())
        k = self.kappa.detach().double().expand(shape)
        b = self._b(k)
        x0 = (1 - b) / (1 + b)
        c = k * x0 + m1 * torch.log1p(-x0.square())
        eps = torch.empty(shape, dtype=torch.float64, device=dev)
        todo = torch.ones(shape, dtype=torch.bool, device=dev)
        for _ in range(MAX_ROUNDS):
            if not bool(todo.any()):
                break
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
        if bool(todo.any()):
            raise RuntimeError(f"the von Mises-Fisher rejection sampler accepted no draw in {MAX_ROUNDS} rounds "
                               f"for {int(todo.sum())} of {todo.numel()} (kappa {float(k[todo].min()):.4g} to "
                               f"{float(k[todo].max()):.4g}): a numerical fault, please report it")
        return eps

    def _w(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """w = h(eps, kappa), 1 - w and 1 + w, differentiable in kappa (eps held). Both sides of w
        are computed directly, 1 - w = 2 b eps / den and 1 + w = 2 (1 - eps) / den, with 1 - eps
        taken in float64 before any cast: at m = 2 eps is Beta(1/2, 1/2), whose mass piles up at 0
        and 1, and in float32 an eps within 6e-8 of 1 became 1, w exactly -1, and the gradient of
        sqrt(1 - w^2) at 0 turned the weights to nan within the first epoch."""
        b = self._b(self.kappa)
        e = eps.to(b.dtype)
        den = 1 - (1 - b) * e
        return (1 - (1 + b) * e) / den, 2 * b * e / den, 2 * (1 - eps.double()).to(b.dtype) / den

    def log_pi(self, eps: torch.Tensor) -> torch.Tensor:
        """log pi(eps | kappa) = log g(h(eps, kappa) | kappa) + log |dh/deps| for accepted eps
        (..., B), differentiable in kappa: g(w | kappa) = exp(kappa w) (1 - w^2)^((m-3)/2) / Z(kappa)
        is the density of w = mu.z, Z(kappa) = 1 / (C_m(kappa) |S^{m-2}|), and dh/deps = -2 b /
        (1 - (1-b) eps)^2."""
        m, k = self.m, self.kappa.double()  # float64, as log C (kappa w and log C cancel)
        b = self._b(k)
        e = eps.double()
        den = 1 - (1 - b) * e
        w, one_minus_w, one_plus_w = (1 - (1 + b) * e) / den, 2 * b * e / den, 2 * (1 - e) / den
        log_g = (k * w + (m - 3) / 2 * torch.log((one_minus_w * one_plus_w).clamp_min(1e-300))
                 + self._log_c() + log_sphere_area(m - 1))
        return (log_g + torch.log(2 * b) - 2 * torch.log(den)).to(self.kappa.dtype)

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = _shape(sample_shape) + tuple(self.kappa.shape)
        eps = self._accepted_eps(shape, generator)
        w, one_minus_w, one_plus_w = self._w(eps)
        v = torch.randn(shape + (self.m - 1,), generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-30)
        r = _sqrt0(one_minus_w * one_plus_w)
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


def _check_kappa(kappa: torch.Tensor) -> None:
    """Refuse concentrations the sampler cannot draw from, in one line: not finite (the weights
    or inputs that made them are not: a diverged training), or above ``KAPPA_MAX``."""
    bad = ~torch.isfinite(kappa)
    if bool(bad.any()):
        raise TrainingDiverged(f"the von Mises-Fisher posterior's concentration kappa is {float(kappa[bad][0])} for "
                               f"{int(bad.sum())} of {kappa.numel()} codes: the model's weights or inputs are not "
                               "finite (a diverged training: lower --lr or set --set train.grad_clip=1.0)")
    if bool((kappa > KAPPA_MAX).any()):
        raise ValueError(f"von Mises-Fisher concentration kappa {float(kappa.max()):.4g} is above {KAPPA_MAX:g}, "
                         "the largest whose draws float64 resolves (vaelab.distributions.sphere.KAPPA_MAX); "
                         "clamp it to that")


def _sqrt0(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x >= 0 whose gradient at 0 is 0, not inf (sqrt's own; inf times a zero upstream
    is nan). At a pole of the sphere (1 - w^2 = 0 for every kappa) 0 is the derivative's value."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))
