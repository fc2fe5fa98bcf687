"""Distributions over codes in R^D (or discrete codebooks): ``DiagNormal``, ``StandardNormal``,
``PointMass`` (an autoencoder's code), ``MixtureDiagNormal`` (mixture priors), ``Quantized``
(a VQ-VAE's code) and ``Ancestral`` (a two-layer Gaussian chain)."""

from __future__ import annotations

import math

import torch

from vaelab.distributions.base import (
    LOG_2PI,
    Distribution,
    _Centred,
    _shape,
    log_normal,
)


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
