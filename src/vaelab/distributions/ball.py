"""The Poincaré ball: its maps (``mobius_add``, ``conformal_factor``, ``ball_expmap0``,
``ball_logmap0``, ``ball_expmap``, ``ball_logmap``, ``ball_distance``, ``gyration``,
``ball_transport``, ``ball_project``, ``gyroplane_distance``) and the wrapped normal on it
(``WrappedNormal``, the Poincaré VAE's posterior)."""

from __future__ import annotations

import math
import weakref

import torch

from vaelab.distributions.base import Distribution, _shape, log_normal

# The few maps of the Poincaré ball B^D_c = {x : c |x|^2 < 1}, the hyperbolic space of curvature
# -c (c > 0), written by hand (Ganea et al. 2018, "Hyperbolic Neural Networks", NeurIPS, section 2;
# as geoopt's PoincareBall, which the Poincaré VAE authors' code builds on: emilemathieu/pvae,
# pvae/manifolds/poincareball.py): each is a line of torch, and geoopt (a dependency of its own,
# its last release mid-2025) would add nothing here but its float32 projection eps of 4e-3. Every
# map broadcasts over leading dimensions, points and tangent vectors in the last one; callers
# that need the digits (``WrappedNormal``) run them in float64. c is a number or a 0-d float64
# tensor: torch.onnx writes a Python number into its graph rounded to float32 (c = 0.7 becomes
# 0.699999988, which moves the boundary), a float64 tensor as it is (the P-VAE's decoders pass one).
_MIN_NORM = 1e-15


def _sqrt(c: float | torch.Tensor) -> float | torch.Tensor:
    return c.sqrt() if isinstance(c, torch.Tensor) else math.sqrt(c)


def _norm(x: torch.Tensor) -> torch.Tensor:
    # |x| (..., 1), kept off 0 (whose gradient sqrt would make infinite)
    return x.square().sum(-1, keepdim=True).clamp_min(_MIN_NORM ** 2).sqrt()


def ball_project(x: torch.Tensor, c: float, eps: float | None = None) -> torch.Tensor:
    """x pulled inside the ball: |x| <= (1 - eps) / sqrt(c) (eps: the float32 spacing by default,
    so a point rounded onto the boundary keeps a finite distance to the origin)."""
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    limit = (1 - eps) / _sqrt(c)
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
    sc, n = _sqrt(c), _norm(u)
    return torch.tanh(sc * n) * u / (sc * n)


def _artanh(x: torch.Tensor) -> torch.Tensor:
    # artanh(x) = log1p(2x / (1 - x)) / 2 for 0 <= x < 1: torch.atanh's digits, and onnxruntime
    # has no float64 Atanh kernel (the P-VAE's ONNX graphs run the log maps: the wrapped decoder,
    # a conditional model's scorer through log q). The floor keeps it finite at x = 1, where the
    # callers' clamp_max(1 - 1e-15) lands in an ONNX graph (1 - 1e-15 rounded to float32 is 1).
    return 0.5 * torch.log1p(2 * x / (1 - x).clamp_min(1e-16))


def _arsinh(x: torch.Tensor) -> torch.Tensor:
    # arsinh(x) = sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))), for the same reason (no float64
    # Asinh kernel in onnxruntime); odd by construction, so no cancellation for x << 0. Its
    # gradient at exactly x = 0 is 0 (that of |x|), as a ReLU's at 0, not 1.
    ax = x.abs()
    return torch.sign(x) * torch.log1p(ax + ax * ax / (1 + torch.sqrt(1 + ax * ax)))


def ball_logmap0(y: torch.Tensor, c: float) -> torch.Tensor:
    """log_0(y) = artanh(sqrt(c) |y|) y / (sqrt(c) |y|), the inverse of ``ball_expmap0``."""
    sc, n = _sqrt(c), _norm(y)
    return _artanh((sc * n).clamp_max(1 - 1e-15)) * y / (sc * n)


def ball_expmap(x: torch.Tensor, u: torch.Tensor, c: float) -> torch.Tensor:
    """exp_x(u) = x (+) (tanh(sqrt(c) lambda_x |u| / 2) u / (sqrt(c) |u|))."""
    sc, n = _sqrt(c), _norm(u)
    return mobius_add(x, torch.tanh(sc * conformal_factor(x, c) * n / 2) * u / (sc * n), c)


def ball_logmap(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """log_x(y) = 2 / (sqrt(c) lambda_x) artanh(sqrt(c) |w|) w / |w|, w = (-x) (+) y."""
    sc = _sqrt(c)
    w = mobius_add(-x, y, c)
    n = _norm(w)
    return 2 / (sc * conformal_factor(x, c)) * _artanh((sc * n).clamp_max(1 - 1e-15)) * w / n


def ball_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """d_c(x, y) = 2 / sqrt(c) artanh(sqrt(c) |(-x) (+) y|) (...,)."""
    sc = _sqrt(c)
    return 2 / sc * _artanh((sc * _norm(mobius_add(-x, y, c))).clamp_max(1 - 1e-15)).squeeze(-1)


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


def gyroplane_distance(z: torch.Tensor, p: torch.Tensor, a: torch.Tensor, c: float) -> torch.Tensor:
    """The gyroplane layer's units at points z (B, D) (Mathieu et al. 2019, section 3.3; Ganea et
    al. 2018, section 3.1): for each gyroplane H_{a_k, p_k} = {w : <(-p_k) (+) w, a_k> = 0}, p_k in
    the ball and a_k in the tangent space at p_k (p, a: (H, D)), the signed distance scaled by
    a_k's Riemannian norm, (B, H):

        f_k(z) = sign(<(-p_k) (+) z, a_k>) ||a_k||_{p_k} d_c(z, H_k),   ||a||_p = lambda_p |a|,
        d_c(z, H_{a,p}) = arsinh( 2 sqrt(c) |<(-p) (+) z, a>| / ((1 - c |(-p) (+) z|^2) |a|) ) / sqrt(c).

    With (-p) (+) z = (-A p + beta z) / D (A = 1 - 2c<p,z> + c|z|^2, beta = 1 - c|p|^2) and
    1 - c |x (+) y|^2 = (1 - c|x|^2)(1 - c|y|^2) / D(x, y), D cancels:

        f_k(z) = lambda_p |a| / sqrt(c) arsinh( 2 sqrt(c) (beta <z,a> - A <p,a>) / (beta (1 - c|z|^2) |a|) ),

    which needs only <z, p_k> and <z, a_k>, two (B, D) x (D, H) products, not the (B, H, D) Möbius
    sums, and no 1 - c |(-p) (+) z|^2 that cancels near the boundary. As c -> 0 it tends to
    4 <z - p, a>: |a| times the Euclidean signed distance, times lambda_0 = 2 (the norm of a) and 2
    (the ball's metric is 4 I at c -> 0). Callers that need the digits run it in float64."""
    sc = _sqrt(c)
    zp, za = z @ p.transpose(-1, -2), z @ a.transpose(-1, -2)  # (B, H)
    z2 = z.square().sum(-1, keepdim=True)  # (B, 1)
    p2, pa, an = p.square().sum(-1), (p * a).sum(-1), _norm(a).squeeze(-1)  # (H,)
    beta = 1 - c * p2
    big_a = 1 - 2 * c * zp + c * z2
    x = 2 * sc * (beta * za - big_a * pa) / (beta * (1 - c * z2) * an).clamp_min(_MIN_NORM)
    return 2 / beta.clamp_min(_MIN_NORM) * an / sc * _arsinh(x)


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
