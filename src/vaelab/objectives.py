"""Objectives: what a model minimises, one function each, in the registry ``OBJECTIVES``.

An objective is called by the model's forward pass as
``fn(model, x, y, q, generator=..., progress=...)`` with images ``x`` (B, C, H, W) in
[0, 1], labels ``y`` (B,) or None, the posterior ``q = model.posterior(x, y)`` (computed
once by the model, which also feeds it to the label predictor), a ``torch.Generator``
for the noise, and ``progress`` in [0, 1], the fraction of training done (1 outside
training). It returns per-image (B,) tensors: ``loss`` and its named parts, which the
training history and ``evaluate`` report as they are.

It uses only the model contract (``decode_logits``, ``recon_loss``, ``prior``,
``log_weights``, ``cfg``) and ``vaelab.distributions``, so every family that offers
what an objective ``requires`` can be trained with it, and a sweep can grid over it.

- ``recon``: the reconstruction loss through the posterior mean (autoencoders).
- ``elbo``: recon + beta * KL(q(z|x) || p(z)) with the KL in closed form where there
  is one (else a one-sample Monte-Carlo estimate), the KL weight warmed up linearly
  over the first ``model.kl_warmup`` of training; with ``model.capacity`` C, the
  capacity-annealed form recon + gamma |KL - C progress| (Burgess et al. 2018).
- ``iwae``: the importance-weighted bound with ``model.k`` samples (Burda et al. 2016);
  ``nelbo`` is the mean of the k one-sample bounds, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vaelab.distributions import Distribution, kl_divergence, log_mean_exp

Parts = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    fn: Callable[..., Parts]
    requires: frozenset[str]  # model capabilities it needs (see vaelab.models.CAPABILITIES)
    description: str


def recon(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0) -> Parts:
    r = model.recon_loss(model.decode_logits(q.mean, y), x)
    return {"loss": r, "recon": r}


def kl_weight(cfg, progress: float) -> float:
    """beta, ramped linearly from 0 over the first ``cfg.kl_warmup`` of training. Progress 1
    (the default outside training: evaluation, validation) is the objective itself, full beta."""
    if cfg.kl_warmup and cfg.kl_warmup > 0 and progress < 1:
        return cfg.beta * min(1.0, progress / cfg.kl_warmup)
    return cfg.beta


def elbo(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0) -> Parts:
    z = q.rsample(generator=generator)  # (B, D), reparameterised
    r = model.recon_loss(model.decode_logits(z, y), x)
    kl = kl_divergence(q, model.prior(y, len(x)), z)
    cfg = model.cfg
    if cfg.capacity is not None:
        # Burgess et al. (2018): push the KL to a target capacity that grows during training.
        loss = r + cfg.capacity_gamma * (kl - cfg.capacity * progress).abs()
    else:
        loss = r + kl_weight(cfg, progress) * kl
    return {"loss": loss, "recon": r, "kl": kl}


def iwae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0) -> Parts:
    log_w = model.log_weights(x, y, model.cfg.k, generator=generator, q=q)  # (k, B)
    return {"loss": -log_mean_exp(log_w, 0), "nelbo": -log_w.mean(0)}


# Registry: model.objective -> Objective. Adding one is a function and an entry.
OBJECTIVES: dict[str, Objective] = {
    "recon": Objective(recon, frozenset(), "reconstruction loss through the posterior mean"),
    "elbo": Objective(elbo, frozenset({"prior", "stochastic"}),
                      "negative ELBO: recon + beta * KL (warm-up and capacity annealing as options)"),
    "iwae": Objective(iwae, frozenset({"density"}), "importance-weighted bound with model.k samples"),
}

__all__ = ["OBJECTIVES", "Objective", "elbo", "iwae", "kl_weight", "recon"]
