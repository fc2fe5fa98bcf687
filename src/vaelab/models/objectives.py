"""Objectives: what a model minimises, one function each, in the registry ``OBJECTIVES``.

An objective is called by the model's forward pass as
``fn(model, x, y, q, generator=..., progress=..., dataset_size=...)`` with images ``x``
(B, C, H, W) in [0, 1], labels ``y`` (B,) or None, the posterior ``q = model.posterior(x,
y)`` (computed once by the model, which also feeds it to the label predictor), a
``torch.Generator`` for the noise, ``progress`` in [0, 1], the fraction of training done
(1 outside training), and the size of the data set the batch is drawn from (which
minibatch estimators of q(z) need; None when the caller does not say). It returns
per-image (B,) tensors: ``loss`` and its named parts, which the training history and
``evaluate`` report as they are. A batch statistic (an MMD) is reported for every image
of its batch.

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
- ``tcvae``: beta-TCVAE (Chen et al. 2018): recon + alpha MI + beta TC + gamma
  dimension-wise KL, the KL split by a minibatch estimator of q(z) (``model.tc_estimator``:
  stratified sampling by default, the authors' weighted sampling as an option).
- ``wae-mmd``: the WAE (Tolstikhin et al. 2018): recon + lambda MMD(q(z), p(z)), with a
  deterministic or a Gaussian encoder.
- ``infovae``: InfoVAE / MMD-VAE (Zhao et al. 2019): recon + (1 - alpha) KL + (alpha +
  lambda - 1) MMD(q(z), p(z)).
- ``vq``: VQ-VAE (van den Oord et al. 2017): recon through the quantised code, plus the
  codebook term |sg(z_e) - e|^2 (unless the codebook follows an EMA) and the commitment
  term beta |z_e - sg(e)|^2, summed over the code's elements.
"""

from __future__ import annotations

import torch

from vaelab.distributions import DiagNormal, Distribution, kl_divergence, log_mean_exp
from vaelab.errors import ConfigError
from vaelab.models.contract import Objective, OptimStep, Parts
from vaelab.models.estimators import mmd, tc_decomposition

def recon(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    r = model.recon_loss(model.decode_logits(q.mean, y), x)
    return {"loss": r, "recon": r}


def kl_weight(cfg, progress: float) -> float:
    """beta, ramped linearly from 0 over the first ``cfg.kl_warmup`` of training. Progress 1
    (the default outside training: evaluation, validation) is the objective itself, full beta."""
    if cfg.kl_warmup and cfg.kl_warmup > 0 and progress < 1:
        return cfg.beta * min(1.0, progress / cfg.kl_warmup)
    return cfg.beta


def elbo(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
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


def iwae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    log_w = model.log_weights(x, y, model.cfg.k, generator=generator, q=q)  # (k, B)
    return {"loss": -log_mean_exp(log_w, 0), "nelbo": -log_w.mean(0)}


def tcvae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, dataset_size=None, **_) -> Parts:
    if not isinstance(q, DiagNormal):
        raise ConfigError("objective tcvae splits the KL of a diagonal Gaussian posterior (model.posterior=gaussian)")
    if dataset_size is None:
        raise ConfigError("objective tcvae estimates q(z) from the minibatch and needs the size of the data set "
                          "the batch comes from (dataset_size)")
    z = q.rsample(generator=generator)  # (B, D)
    r = model.recon_loss(model.decode_logits(z, y), x)
    p = model.prior(y, len(x))
    cfg = model.cfg
    t = tc_decomposition(z, q.loc, q.logvar, dataset_size, prior=p.log_prob(z), estimator=cfg.tc_estimator)
    loss = r + cfg.tc_alpha * t["mi"] + kl_weight(cfg, progress) * t["tc"] + cfg.tc_gamma * t["dwkl"]
    return {"loss": loss, "recon": r, "kl": kl_divergence(q, p, z), "mi": t["mi"], "tc": t["tc"],
            "dwkl": t["dwkl"]}


def _mmd_to_prior(model, z: torch.Tensor, y, generator) -> torch.Tensor:
    """MMD^2 between the batch's codes z (B, D) and as many prior draws, as a (B,) tensor."""
    cfg = model.cfg
    zp = model.prior(y, len(z)).sample(generator=generator).to(z.dtype)
    return mmd(z, zp, kernel=cfg.mmd_kernel, scale=cfg.mmd_scales).expand(len(z))


def wae_mmd(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.rsample(generator=generator)  # the code itself for a deterministic encoder
    r = model.recon_loss(model.decode_logits(z, y), x)
    m = _mmd_to_prior(model, z, y, generator)
    return {"loss": r + model.cfg.mmd_weight * m, "recon": r, "mmd": m}


def infovae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.rsample(generator=generator)
    r = model.recon_loss(model.decode_logits(z, y), x)
    kl = kl_divergence(q, model.prior(y, len(x)), z)
    m = _mmd_to_prior(model, z, y, generator)
    a, lam = model.cfg.info_alpha, model.cfg.mmd_weight
    return {"loss": r + (1 - a) * kl + (a + lam - 1) * m, "recon": r, "kl": kl, "mmd": m}


def vq(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    r = model.recon_loss(model.decode_logits(q.mean, y), x)  # q.mean: straight-through z_q
    ze, e = q.encoded, q.quantized  # (B, D') each
    commit = (ze - e.detach()).square().sum(1)
    loss = r + model.cfg.commitment * commit
    parts = {"loss": loss, "recon": r, "commit": commit}
    if not model.cfg.vq_ema:  # with an EMA codebook the codebook term is the update itself
        parts["codebook"] = (ze.detach() - e).square().sum(1)
        parts["loss"] = loss + parts["codebook"]
    return parts


# Registry: model.objective -> Objective. Adding one is a function and an entry.
OBJECTIVES: dict[str, Objective] = {
    "recon": Objective(recon, frozenset(), "reconstruction loss through the posterior mean"),
    "elbo": Objective(elbo, frozenset({"prior", "stochastic"}),
                      "negative ELBO: recon + beta * KL (warm-up and capacity annealing as options)"),
    "iwae": Objective(iwae, frozenset({"density"}), "importance-weighted bound with model.k samples"),
    "tcvae": Objective(tcvae, frozenset({"prior", "stochastic", "diagonal"}),
                       "beta-TCVAE: recon + alpha MI + beta TC + gamma dimension-wise KL"),
    "wae-mmd": Objective(wae_mmd, frozenset({"prior", "continuous"}), "WAE: recon + lambda MMD(q(z), p(z))"),
    "infovae": Objective(infovae, frozenset({"prior", "stochastic"}),
                         "InfoVAE: recon + (1 - alpha) KL + (alpha + lambda - 1) MMD"),
    "vq": Objective(vq, frozenset({"codebook"}), "VQ-VAE: recon + codebook + commitment terms"),
}

__all__ = ["OBJECTIVES", "Objective", "OptimStep", "elbo", "infovae", "iwae", "kl_weight", "recon", "tcvae", "vq", "wae_mmd"]
