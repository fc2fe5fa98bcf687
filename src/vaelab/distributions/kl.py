"""KL divergences: the closed forms per dimension (``KL_RULES``) and per item (``KL_WHOLE``),
``kl_per_dim``, and ``kl_divergence`` (a closed form where one exists, else the one-sample
Monte-Carlo estimate at a draw)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vaelab.distributions.base import Distribution
from vaelab.distributions.euclidean import DiagNormal, StandardNormal
from vaelab.distributions.sphere import HypersphericalUniform, VonMisesFisher


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
