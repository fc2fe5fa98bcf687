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
  over the first ``model.elbo.kl_warmup`` of training; with ``model.elbo.capacity`` C, the
  capacity-annealed form recon + gamma |KL - C progress| (Burgess et al. 2018).
- ``iwae``: the importance-weighted bound with ``model.iwae.k`` samples (Burda et al. 2016);
  ``nelbo`` is the mean of the k one-sample bounds, for comparison.
- ``miwae``, ``piwae``, ``ciwae``: other poolings of the same log-weights (Rainforth et al.
  2018), in ``vaelab.models.iw_bounds``.
- ``tcvae``: beta-TCVAE (Chen et al. 2018): recon + alpha MI + beta TC + gamma
  dimension-wise KL, the KL split by a minibatch estimator of q(z) (``model.tcvae.estimator``:
  stratified sampling by default, the authors' weighted sampling as an option).
- ``wae-mmd``: the WAE (Tolstikhin et al. 2018): recon + lambda MMD(q(z), p(z)), with a
  deterministic or a Gaussian encoder.
- ``aae``: the adversarial autoencoder (Makhzani et al. 2015): recon + weight BCE(D(z), 1), a
  discriminator on codes against prior draws, trained by its own optimiser (``vaelab.models.aae``).
- ``infovae``: InfoVAE / MMD-VAE (Zhao et al. 2019): recon + (1 - alpha) KL + (alpha +
  lambda - 1) MMD(q(z), p(z)).
- ``factorvae``: FactorVAE (Kim & Mnih 2018): recon + KL + gamma TC, the TC estimated by a
  discriminator on permuted codes, trained by its own optimiser (``vaelab.models.factorvae``).
- ``rae-l2``, ``rae-gp``: regularised autoencoders (Ghosh et al. 2020): recon + beta 1/2 |z|^2
  + lambda times the decoder's squared weights or its gradient penalty (``vaelab.models.rae``).
- ``hamiltonian``: the Hamiltonian VAE (Caterini et al. 2018): the ELBO of q(z|x)'s draws
  moved by tempered leapfrog steps along the gradient of log p(x, z) (``vaelab.models.hamiltonian``).
- ``rhvae``: the Riemannian Hamiltonian VAE (Chadebec et al. 2020): the same with a learned latent
  metric G(z) and generalised leapfrog steps (``vaelab.models.rhvae``).
- ``vq``: VQ-VAE (van den Oord et al. 2017): recon through the quantised code, plus the
  codebook term |sg(z_e) - e|^2 (unless the codebook follows an EMA) and the commitment
  term beta |z_e - sg(e)|^2, summed over the code's elements.

Each objective's options are its own dataclass (``vaelab.models.options``): the section
``model.<objective>`` of the config, read as ``cfg.opts(name)``. A field's ``alias`` is the
flat name it had before (``model.k``), still accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vaelab.distributions import DiagNormal, Distribution, kl_divergence, log_mean_exp, rejection_correction
from vaelab.errors import ConfigError
from vaelab.models.aae import OBJECTIVE as AAE
from vaelab.models.contract import Objective, OptimStep, Parts
from vaelab.models.estimators import mmd, tc_decomposition
from vaelab.models.posteriors import VQOptions, check_vq
from vaelab.models.factorvae import FACTORVAE
from vaelab.models.hamiltonian import HAMILTONIAN
from vaelab.models.iw_bounds import IW_OBJECTIVES
from vaelab.models.rae import OBJECTIVES as RAE_OBJECTIVES
from vaelab.models.rhvae import RHVAE
from vaelab.models.vaegan import OBJECTIVE as VAEGAN


def _opt(default, help: str, alias: str | None = None):
    """A dataclass field with its help and (for options that were model fields) its old flat name."""
    return field(default=default, metadata={"help": help} | ({"alias": alias} if alias else {}))


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass
class ElboOptions:
    beta: float = _opt(1.0, "weight of the KL term", "beta")
    kl_warmup: float = _opt(0.0, "the KL weight ramps from 0 to beta over this fraction of training (above 1: the "
                            "ramp outlasts the run); train.kl_warmup_epochs fills it in", "kl_warmup")
    capacity: float | None = _opt(None, "target KL C in nats, annealed from 0: recon + gamma |KL - C progress| "
                                  "(Burgess et al. 2018)", "capacity")
    capacity_gamma: float = _opt(1000.0, "weight gamma of |KL - C progress| (with capacity)", "capacity_gamma")

    def __post_init__(self) -> None:
        _need(self.beta >= 0, f"model.elbo.beta must be >= 0, got {self.beta}")
        _need(self.kl_warmup >= 0, f"model.elbo.kl_warmup must be >= 0 (a fraction of training), got {self.kl_warmup}")
        _need(self.capacity is None or self.capacity >= 0, f"model.elbo.capacity must be >= 0 nats, got {self.capacity}")
        _need(self.capacity_gamma > 0, f"model.elbo.capacity_gamma must be positive, got {self.capacity_gamma}")


def _check_elbo(cfg) -> None:
    o = cfg.opts("elbo")
    if o.capacity is None:
        _need(o.capacity_gamma == 1000.0, f"model.elbo.capacity_gamma={o.capacity_gamma} is not used: it weighs the "
              "capacity term, and model.elbo.capacity is not set; leave it out")
        return
    for name, default in (("beta", 1.0), ("kl_warmup", 0.0)):
        _need(getattr(o, name) == default, f"model.elbo.{name}={getattr(o, name)} is not used: model.elbo.capacity "
              "replaces the KL weight (recon + gamma |KL - C progress|); leave it out"
              + (" (and train.kl_warmup_epochs)" if name == "kl_warmup" else ""))


@dataclass
class IwaeOptions:
    k: int = _opt(5, "importance samples per image", "k")

    def __post_init__(self) -> None:
        _need(self.k >= 1, f"model.iwae.k (importance samples) must be at least 1, got {self.k}")


TC_ESTIMATORS = ("mss", "mws")


@dataclass
class TcvaeOptions:
    alpha: float = _opt(1.0, "weight of the mutual information term", "tc_alpha")
    beta: float = _opt(1.0, "weight of the total correlation", "beta")
    gamma: float = _opt(1.0, "weight of the dimension-wise KL", "tc_gamma")
    # q(z) from the minibatch: mss (stratified, an unbiased estimate of q(z), so eval.json's
    # mi / tc / dwkl read as what they are named) or mws (the authors' default: every term
    # offset by a constant of log N or log B per dimension, so a dimension-wise KL reads negative)
    estimator: str = _opt("mss", "q(z) from the minibatch: mss (stratified) or mws (the authors' weighted sampling)",
                          "tc_estimator")
    kl_warmup: float = _opt(0.0, "the TC weight ramps from 0 to beta over this fraction of training; "
                            "train.kl_warmup_epochs fills it in", "kl_warmup")

    def __post_init__(self) -> None:
        _need(self.beta >= 0, f"model.tcvae.beta must be >= 0, got {self.beta}")
        _need(self.kl_warmup >= 0, f"model.tcvae.kl_warmup must be >= 0 (a fraction of training), got {self.kl_warmup}")
        _need(self.estimator in TC_ESTIMATORS, f"model.tcvae.estimator must be mss or mws, got {self.estimator!r}")


MMD_KERNELS = ("imq", "rbf")


@dataclass
class MmdOptions:
    """MMD objectives: weight lambda, kernel and its scales s (constants C = s * 2 * latent_dim,
    for a prior of unit variance; kernels summed over s)."""

    weight: float = _opt(10.0, "weight lambda of the MMD term", "mmd_weight")
    kernel: str = _opt("imq", "the MMD kernel: imq or rbf", "mmd_kernel")
    scales: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0],
                                metadata={"help": "the kernel's scales (summed over)", "alias": "mmd_scales"})

    def __post_init__(self) -> None:
        _need(self.weight >= 0, f"model.mmd_weight must be >= 0, got {self.weight}")
        _need(self.kernel in MMD_KERNELS, f"model.mmd_kernel must be imq or rbf, got {self.kernel!r}")
        _need(len(self.scales) >= 1 and all(math.isfinite(s) and s > 0 for s in self.scales),
              f"model.mmd_scales (the MMD kernel scales) must be positive, got {self.scales}")


@dataclass
class InfovaeOptions(MmdOptions):
    alpha: float = _opt(0.0, "recon + (1 - alpha) KL + (alpha + lambda - 1) MMD", "info_alpha")

def recon(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    r = model.recon_loss(model.decode_logits(q.mean, y), x)
    return {"loss": r, "recon": r}


def kl_weight(cfg, progress: float) -> float:
    """beta, ramped linearly from 0 over the first ``kl_warmup`` of training: both options of
    the config's objective (``cfg.opts(cfg.objective)``). Progress 1 (the default outside
    training: evaluation, validation) is the objective itself, full beta."""
    o = cfg.opts(cfg.objective)
    if o.kl_warmup and o.kl_warmup > 0 and progress < 1:
        return o.beta * min(1.0, progress / o.kl_warmup)
    return o.beta


def elbo(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.rsample(generator=generator)  # (B, D), reparameterised
    r = model.recon_loss(model.decode_logits(z, y), x)
    kl = kl_divergence(q, model.prior(y, len(x)), z)
    cfg = model.cfg
    o = cfg.opts("elbo")
    if o.capacity is not None:
        # Burgess et al. (2018): push the KL to a target capacity that grows during training.
        loss = r + o.capacity_gamma * (kl - o.capacity * progress).abs()
    else:
        loss = r + kl_weight(cfg, progress) * kl
    # value 0; its gradient is a rejection sampler's score term (the vMF posterior's g_cor), 0 for others
    loss = loss + rejection_correction(q, z, r)
    return {"loss": loss, "recon": r, "kl": kl}


def iwae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    log_w = model.log_weights(x, y, model.cfg.opts("iwae").k, generator=generator, q=q)  # (k, B)
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
    o = model.cfg.opts("tcvae")
    t = tc_decomposition(z, q.loc, q.logvar, dataset_size, prior=p.log_prob(z), estimator=o.estimator)
    loss = r + o.alpha * t["mi"] + kl_weight(model.cfg, progress) * t["tc"] + o.gamma * t["dwkl"]
    return {"loss": loss, "recon": r, "kl": kl_divergence(q, p, z), "mi": t["mi"], "tc": t["tc"],
            "dwkl": t["dwkl"]}


def _mmd_to_prior(model, z: torch.Tensor, y, generator) -> torch.Tensor:
    """MMD^2 between the batch's codes z (B, D) and as many prior draws, as a (B,) tensor."""
    o = model.cfg.opts(model.cfg.objective)
    zp = model.prior(y, len(z)).sample(generator=generator).to(z.dtype)
    return mmd(z, zp, kernel=o.kernel, scale=o.scales).expand(len(z))


def wae_mmd(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.rsample(generator=generator)  # the code itself for a deterministic encoder
    r = model.recon_loss(model.decode_logits(z, y), x)
    m = _mmd_to_prior(model, z, y, generator)
    return {"loss": r + model.cfg.opts("wae-mmd").weight * m, "recon": r, "mmd": m}


def infovae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.rsample(generator=generator)
    r = model.recon_loss(model.decode_logits(z, y), x)
    kl = kl_divergence(q, model.prior(y, len(x)), z)
    m = _mmd_to_prior(model, z, y, generator)
    o = model.cfg.opts("infovae")
    a, lam = o.alpha, o.weight
    return {"loss": r + (1 - a) * kl + (a + lam - 1) * m, "recon": r, "kl": kl, "mmd": m}


def vq(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    r = model.recon_loss(model.decode_logits(q.mean, y), x)  # q.mean: straight-through z_q
    ze, e = q.encoded, q.quantized  # (B, D') each
    commit = (ze - e.detach()).square().sum(1)
    o = model.cfg.opts("vq")
    loss = r + o.commitment * commit
    parts = {"loss": loss, "recon": r, "commit": commit}
    if not o.ema:  # with an EMA codebook the codebook term is the update itself
        parts["codebook"] = (ze.detach() - e).square().sum(1)
        parts["loss"] = loss + parts["codebook"]
    return parts


# Registry: model.objective -> Objective. Adding one is a function and an entry.
OBJECTIVES: dict[str, Objective] = {
    "recon": Objective(recon, frozenset(), "reconstruction loss through the posterior mean"),
    "elbo": Objective(elbo, frozenset({"prior", "stochastic"}),
                      "negative ELBO: recon + beta * KL (warm-up and capacity annealing as options)",
                      options=ElboOptions, check=_check_elbo),
    "iwae": Objective(iwae, frozenset({"density"}), "importance-weighted bound with model.iwae.k samples",
                      options=IwaeOptions),
    "tcvae": Objective(tcvae, frozenset({"prior", "stochastic", "diagonal"}),
                       "beta-TCVAE: recon + alpha MI + beta TC + gamma dimension-wise KL", options=TcvaeOptions,
                       minibatch=True),
    "wae-mmd": Objective(wae_mmd, frozenset({"prior", "continuous"}), "WAE: recon + lambda MMD(q(z), p(z))",
                         options=MmdOptions),
    "infovae": Objective(infovae, frozenset({"prior", "stochastic"}),
                         "InfoVAE: recon + (1 - alpha) KL + (alpha + lambda - 1) MMD", options=InfovaeOptions),
    # Shares the section model.vq (and its check) with the posterior vq: one part, two roles.
    "vq": Objective(vq, frozenset({"codebook"}), "VQ-VAE: recon + codebook + commitment terms", options=VQOptions,
                    check=check_vq),
    **IW_OBJECTIVES,  # miwae, piwae, ciwae (Rainforth et al. 2018): vaelab.models.iw_bounds
    "aae": AAE,
    "factorvae": FACTORVAE,
    "vaegan": VAEGAN,
    **RAE_OBJECTIVES,  # rae-l2, rae-gp (Ghosh et al. 2020): vaelab.models.rae
    "hamiltonian": HAMILTONIAN,
    "rhvae": RHVAE,
}

__all__ = ["OBJECTIVES", "ElboOptions", "InfovaeOptions", "IwaeOptions", "MmdOptions", "Objective", "OptimStep",
           "TcvaeOptions", "elbo", "infovae", "iwae", "kl_weight", "recon", "tcvae", "vq", "wae_mmd"]
