"""Likelihoods p(x|z): ``LIKELIHOODS[model.loss](output_activation)``.

Each turns decoder logits (..., C, H, W) and a target in the model's data space into a
per-image reconstruction loss (...) in the convention users compare across tools:

- ``bce``: Bernoulli; binary cross-entropy summed over pixels (from logits);
- ``mse``: Gaussian with fixed variance; squared error averaged over pixels;
- ``euclidean``: Gaussian with fixed variance; squared error summed over pixels;
- ``msssim``: 1 - MS-SSIM of the reconstruction (not a density; see ``MSSSIM``).

A Gaussian loss is its negative log-density up to a constant: the summed squared error
is -log N(x; mu, s^2 I) with s^2 = 1/2, less (P/2) log(pi) for P pixels, and the
per-pixel mean is the same with s^2 = P/2. ``nll_offset`` is that constant (plus the
change of variables for tanh models, which see data in [-1, 1]), so that a number
called a negative log-likelihood (``nll_iw``) is one, in nats, for images in [0, 1].
The Bernoulli loss is its own negative log-likelihood (offset 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vaelab.errors import ConfigError
from vaelab.similarity import ms_ssim, ms_ssim_min_size

IMAGE_DIMS = (-3, -2, -1)  # (C, H, W): a loss sums or averages over these, keeping any leading dims


def apply_output(logits: torch.Tensor, output_activation: str) -> torch.Tensor:
    if output_activation == "sigmoid":
        return torch.sigmoid(logits)
    if output_activation == "tanh":
        return torch.tanh(logits)
    return logits


class Likelihood:
    """Base: ``loss(logits, target)`` per image; ``mean(logits)`` the model-space image."""

    name = ""
    density = True  # loss + nll_offset is a negative log-density

    def __init__(self, output_activation: str):
        self.output_activation = output_activation

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return apply_output(logits, self.output_activation)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def nll_offset(self, shape, signed: bool) -> float:
        """c such that -log p(x | z) = loss + c for images x in [0, 1] of ``shape`` (C, H, W)."""
        return 0.0

    def check_shape(self, shape) -> None:
        """Refuse, in one line, images (C, H, W) this loss cannot measure."""


class Bernoulli(Likelihood):
    """Bernoulli pixels: binary cross-entropy from the logits, summed over pixels."""

    name = "bce"

    @staticmethod
    def check(cfg) -> None:
        if cfg.output_activation != "sigmoid":
            raise ConfigError(f"model.loss=bce needs model.output_activation=sigmoid (outputs in [0, 1]), got "
                              f"{cfg.output_activation}")

    def loss(self, logits, target):
        # From logits: one fused, numerically stable op instead of sigmoid then log.
        return F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none").sum(IMAGE_DIMS)


class Gaussian(Likelihood):
    """Fixed-variance Gaussian; ``reduction`` "mean" (the ``mse`` loss) or "sum" (``euclidean``)."""

    def __init__(self, output_activation: str, reduction: str):
        super().__init__(output_activation)
        self.reduction = reduction
        self.name = "mse" if reduction == "mean" else "euclidean"

    def loss(self, logits, target):
        sq = (self.mean(logits) - target).square()
        return sq.mean(IMAGE_DIMS) if self.reduction == "mean" else sq.sum(IMAGE_DIMS)

    def nll_offset(self, shape, signed: bool) -> float:
        p = math.prod(shape)
        var = 0.5 if self.reduction == "sum" else p / 2  # the variance the loss convention implies
        offset = 0.5 * p * math.log(2 * math.pi * var)
        # tanh models see x' = 2x - 1: p(x) = p'(x') 2^P, so -log p(x) = -log p'(x') - P log 2.
        return offset - p * math.log(2) if signed else offset


class MSSSIM(Likelihood):
    """1 - MS-SSIM of each reconstruction: a loss, not a density.

    1 - MS-SSIM (``vaelab.similarity.ms_ssim``) of each reconstruction, on images in [0, 1]
    (a tanh model's output and data mapped back from [-1, 1]: MS-SSIM's luminance term is not
    shift-invariant), nothing else mixed in. PyTorch-VAE's MSSIMVAE trains the VanillaVAE on
    the same 1 - MS-SSIM + kld_weight * KL (their MS-SSIM of the batch; here per image).

    Not a density: no normalised p(x | z) has it as its negative log, so the tools that need
    one (nll_iw, the elbo and iwnll scores, the iwae objective) refuse a model trained on it.
    Images need ``ms_ssim_min_size()`` pixels a side (48 for the five scales).
    """

    name = "msssim"
    density = False

    def loss(self, logits, target):
        x_hat = self.mean(logits)
        target = target.expand_as(x_hat)
        if self.output_activation == "tanh":
            x_hat, target = (x_hat + 1) / 2, (target + 1) / 2
        lead = x_hat.shape[:-3]  # posterior samples and images: (..., C, H, W) -> (...)
        # fp32 even under bf16 autocast: the local variances are differences of close moments.
        with torch.autocast(x_hat.device.type, enabled=False):
            s = ms_ssim(x_hat.float().reshape(-1, *x_hat.shape[-3:]), target.float().reshape(-1, *x_hat.shape[-3:]))
        return 1 - s.reshape(lead)

    def check_shape(self, shape) -> None:
        least = ms_ssim_min_size()
        if shape is not None and min(shape[-2:]) < least:
            raise ConfigError(f"model.loss=msssim needs images of at least {least}x{least} (MS-SSIM's five scales), "
                              f"and these are {shape[-2]}x{shape[-1]}; use mse or bce")


def _mse(output_activation: str) -> Gaussian:
    """Fixed-variance Gaussian: the squared error averaged over pixels."""
    return Gaussian(output_activation, "mean")


def _euclidean(output_activation: str) -> Gaussian:
    """Fixed-variance Gaussian: the squared error summed over pixels (variance 1/2)."""
    return Gaussian(output_activation, "sum")


# Registry: model.loss -> likelihood (built with the model's output activation).
LIKELIHOODS = {
    "bce": Bernoulli,
    "mse": _mse,
    "euclidean": _euclidean,
    "msssim": MSSSIM,
}


def build_likelihood(name: str, output_activation: str, shape=None) -> Likelihood:
    """The likelihood ``name``; with the images' ``shape`` (C, H, W), checked to serve them."""
    likelihood = LIKELIHOODS[name](output_activation)
    likelihood.check_shape(shape)
    return likelihood


def classification(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy (B,) in nats of class logits (B, K) against labels (B,)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


__all__ = [
    "LIKELIHOODS",
    "MSSSIM",
    "Bernoulli",
    "Gaussian",
    "Likelihood",
    "apply_output",
    "build_likelihood",
    "classification",
]
