"""Models assembled from parts, and the registry of families.

A family (``model.kind``) names a default choice of parts: posterior, prior, objective
and conditioning. ``ModelConfig`` fills in whatever the user left unset from its
family, so a config may also mix parts freely (``--set model.objective=iwae``).
Every family is built by one class, ``LatentModel``; the parts have their own
registries: ``BODIES`` (model.arch), ``POSTERIORS``, ``PRIORS``, ``LIKELIHOODS``
(model.loss), and ``vaelab.models.objectives.OBJECTIVES``. Adding a family is one entry here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vaelab.errors import ConfigError, VaelabError
from vaelab.models.bodies import BODIES
from vaelab.models.likelihoods import LIKELIHOODS
from vaelab.models.model import LatentModel, capabilities
from vaelab.models.options import resolve
from vaelab.models.posteriors import POSTERIORS
from vaelab.models.priors import PRIORS
from vaelab.models.objectives import OBJECTIVES

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


@dataclass(frozen=True)
class Family:
    description: str
    posterior: str
    prior: str
    objective: str
    condition: str = "none"


# Registry: model.kind -> the parts it stands for (any of them can be overridden).
MODELS: dict[str, Family] = {
    "ae": Family("deterministic autoencoder", posterior="point", prior="none", objective="recon"),
    "vae": Family("variational autoencoder, Gaussian posterior, N(0, I) prior", "gaussian", "normal", "elbo"),
    "cvae": Family("conditional VAE: encoder q(z|x,y) and decoder p(x|z,y) see the label",
                   "gaussian", "normal", "elbo", condition="onehot"),
    "iwae": Family("importance-weighted autoencoder (a VAE trained on the k-sample bound)", "gaussian", "normal",
                   "iwae"),
    "beta-tcvae": Family("beta-TCVAE: the KL split into MI, total correlation and dimension-wise KL",
                         "gaussian", "normal", "tcvae"),
    "wae": Family("Wasserstein autoencoder, MMD penalty, deterministic encoder", "point", "normal", "wae-mmd"),
    "infovae": Family("InfoVAE / MMD-VAE: KL and MMD to the prior", "gaussian", "normal", "infovae"),
    "vamp": Family("VAE with the VampPrior (a mixture of posteriors at learned pseudo-inputs)", "gaussian", "vamp",
                   "elbo"),
    "hvae": Family("two stochastic layers z1, z2 (the IWAE paper's second architecture)", "gaussian2",
                   "hierarchical", "elbo"),
    "vq-vae": Family("VQ-VAE: a grid of codes from a learned codebook", "vq", "none", "vq"),
}

# What tools ask of a model (vaelab.models.require): capability -> what it is, in words.
CAPABILITIES: dict[str, str] = {
    "density": "a density p(x) (a stochastic posterior, a prior and a normalised likelihood)",
    "continuous": "a continuous latent space",
    "stochastic": "a stochastic posterior q(z|x)",
    "prior": "a prior p(z) to sample from",
    "labels": "a conditional model p(x|z, y)",
    "predictor": "a label predictor on the code (train with --set model.predictor_weight=10)",
    "codebook": "a discrete codebook (a VQ-VAE)",
    "diagonal": "a diagonal-Gaussian posterior q(z|x) (a mean and a variance per dimension: model.posterior=gaussian)",
    "two_layers": "codes [z1, z2] from two stochastic layers (model.posterior=gaussian2)",
}


# The parts a config chooses, by role: (the ModelConfig field that names it, its registry).
PARTS: dict[str, tuple[str, dict]] = {
    "body": ("arch", BODIES), "posterior": ("posterior", POSTERIORS), "prior": ("prior", PRIORS),
    "likelihood": ("loss", LIKELIHOODS), "objective": ("objective", OBJECTIVES),
}


def resolve_options(cfg: ModelConfig) -> None:
    """Each chosen part's options section as its dataclass, and each part's own check (one line)."""
    resolve(cfg, PARTS)


def check_parts(cfg: ModelConfig) -> None:
    """Refuse, in one line naming both parts, an objective or a prior the other parts cannot serve."""
    have = capabilities(cfg)
    prior = PRIORS[cfg.prior]
    missing = (getattr(prior, "requires", frozenset()) if prior is not None else frozenset()) - have
    if missing:
        raise ConfigError(f"model.prior={cfg.prior} needs {'; '.join(CAPABILITIES[m] for m in sorted(missing))}, and "
                          f"this model (model.kind={cfg.kind}: posterior {cfg.posterior}, condition {cfg.condition}) "
                          "has none; choose another prior or posterior")
    missing = OBJECTIVES[cfg.objective].requires - have
    if missing:
        raise ConfigError(f"model.objective={cfg.objective} needs {'; '.join(CAPABILITIES[m] for m in sorted(missing))}"
                          f", and model.kind={cfg.kind} (posterior {cfg.posterior}, prior {cfg.prior}) has none; "
                          "choose another objective or model")


def build_model(cfg: ModelConfig) -> LatentModel:
    """Build the model a ``ModelConfig`` describes (``cfg.input_shape`` must be set)."""
    if cfg.input_shape is None:
        raise ConfigError("model.input_shape is unset; it is filled in from the data when training")
    model = LatentModel(cfg)
    if cfg.init == "glorot":
        glorot_init(model)
    if BODIES[cfg.arch].channels_last:
        # Channels-last conv weights match the channels-last activations (no reorder per call).
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model


def require(model, capability: str, tool: str) -> None:
    """One clear line when ``model`` lacks what ``tool`` needs (instead of a wrong number)."""
    if capability not in model.capabilities:
        raise VaelabError(f"{tool} needs {CAPABILITIES[capability]}; {model.describe()} has none")


def glorot_init(model) -> None:
    """Keras's default initialisation: Glorot-uniform weights, zero biases."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def frozen(model) -> Iterator[None]:
    """Weights need no gradients while only the codes are optimised (inpainting, steering);
    the flags are restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


__all__ = [
    "BODIES",
    "CAPABILITIES",
    "LIKELIHOODS",
    "MODELS",
    "OBJECTIVES",
    "PARTS",
    "POSTERIORS",
    "PRIORS",
    "Family",
    "LatentModel",
    "build_model",
    "capabilities",
    "check_parts",
    "count_params",
    "frozen",
    "glorot_init",
    "require",
    "resolve_options",
]
