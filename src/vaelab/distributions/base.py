"""The base of vaelab's distributions and what every one of them needs: ``Distribution``
(the interface: ``mean``, ``rsample``, ``sample``, ``log_prob``, ``params``), ``_Centred``
(parameter-free, zero-mean, for any batch: N(0, I) and the uniform distribution on the sphere),
``_shape``, and the density helpers: ``log_normal`` (element-wise Gaussian log-density),
``log_mean_exp`` and ``importance_weights``."""

from __future__ import annotations

import math

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


class _Centred(Distribution):
    """A parameter-free distribution over D dimensions centred at 0, for any batch: what N(0, I)
    and the uniform distribution on the sphere share (their size, device, dtype and zero mean)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_shape: tuple[int, ...] = ()):
        self.dim, self.device, self.dtype, self.batch_shape = dim, torch.device(device), dtype, tuple(batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self.batch_shape + (self.dim,), device=self.device, dtype=self.dtype)


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
