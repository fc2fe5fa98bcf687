"""Objectives over the importance-weighted bound: MIWAE, PIWAE and CIWAE (Rainforth et al.
2018, "Tighter Variational Bounds are Not Necessarily Better", ICML, arXiv:1802.04537).

All three start from the same log-weights as ``iwae``, ``log w = log p(x|z) + log p(z) -
log q(z|x)`` of draws z ~ q(z|x) (``model.log_weights``, (N, B)), and differ in how they
pool them. With IWAE_K = log (1/K) sum_k w_k and ELBO = the mean of the log w:

- ``miwae``: M independent groups of K draws, the bound (1/M) sum_m IWAE_K(group m) (the
  paper's eq. 9): an IWAE bound whose gradient is averaged over M estimates. M = 1 is IWAE_K;
  K = 1 is the ELBO of M draws. Loss: its negative.
- ``piwae``: one forward, two optimisation steps (``steps``): the generative network (decoder
  body, likelihood, prior) descends the IWAE bound of all M x K draws (``loss``), the
  inference network (encoder body and posterior head) the MIWAE(M, K) bound of the same
  draws (``loss_encoder``) (the paper, Section 5: "PIWAE uses the IWAE target for the
  generative network and MIWAE for the inference network"). The groups partition the
  trainable parameters; ``check`` refuses parts that belong to both networks or add a loss
  to one step that the other's parameters need (a learned label embedding, a label
  predictor, a sparsity penalty on the code).
- ``ciwae``: the convex mixture beta ELBO + (1 - beta) IWAE_K of the same K draws (eq. 10);
  beta = 1 is the VAE (a K-draw Monte-Carlo ELBO), beta = 0 IWAE_K.

Every loss is the negative of a lower bound on log p(x), so a model trained this way keeps its
density (``requires`` density, as ``iwae``); each also reports ``nelbo``, the negative mean of
its one-draw bounds, for comparison, as ``iwae`` does (ciwae adds ``niwae``, its IWAE term).

Defaults follow the paper's MNIST experiments as Pythae reproduces them
(clementchadebec/benchmark_VAE, examples/scripts/reproducibility/{miwae,piwae,ciwae}.py: the
IWAE paper's 784-200-200-50 network, M = K = 8 for MIWAE and PIWAE, K = 64 and beta = 0.5 for
CIWAE; its README quotes the paper's test NLL 84.97, 84.46, 84.57 and its own 85.09, 84.58,
84.74, and names CIWAE's beta 0.05 where its script sets 0.5). Pythae's config classes default
to M = 5, K = 10 (MIWAE, PIWAE) and K = 10, beta = 0.5 (CIWAE); we take the paper's settings,
those of the published numbers (bench/likelihood.py).

Where Pythae differs: its MIWAE and PIWAE normalise the weights over the M axis of (B, M, K)
(``log_w.max(1)``, ``w.sum(axis=1)``), so its MIWAE(M, K) is the paper's MIWAE(K, M); at the
paper's M = K = 8 the two agree (bench/peers/iw_bounds_pythae.py compares the gradients: equal
to 1e-6 with M and K swapped). Its losses are the self-normalised surrogates
sum_k sg(w~_k) log w_k, which have the bound's gradient but not its value; here the loss is
the bound itself (log-mean-exp), so the number in the history and eval.json is the bound.
Its PIWAE sums both losses into ``loss``; here ``loss`` is the decoder's IWAE bound (the
density bound eval reports) and the encoder's MIWAE bound is ``loss_encoder``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vaelab.distributions import Distribution, log_mean_exp
from vaelab.errors import ConfigError
from vaelab.models.contract import Objective, OptimStep, Parts, other_parameters


def _at_least_one(where: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{where} must be >= 1, got {value}")


@dataclass
class MiwaeOptions:
    m: int = field(default=8, metadata={"help": "M: independent groups of draws (gradient estimates averaged)"})
    k: int = field(default=8, metadata={"help": "K: importance samples in each group"})

    def __post_init__(self):
        _at_least_one("model.miwae.m", self.m)
        _at_least_one("model.miwae.k", self.k)


@dataclass
class PiwaeOptions:
    m: int = field(default=8, metadata={"help": "M: groups of draws for the encoder's MIWAE(M, K) bound"})
    k: int = field(default=8, metadata={"help": "K: draws per group; the decoder's IWAE bound uses all M x K"})

    def __post_init__(self):
        _at_least_one("model.piwae.m", self.m)
        _at_least_one("model.piwae.k", self.k)


@dataclass
class CiwaeOptions:
    beta: float = field(default=0.5, metadata={"help": "weight of the ELBO; 1 - beta on the IWAE bound (0..1)"})
    k: int = field(default=64, metadata={"help": "K: importance samples, shared by both terms"})

    def __post_init__(self):
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"model.ciwae.beta must be in [0, 1] (1: the ELBO, 0: the IWAE bound), got {self.beta}")
        _at_least_one("model.ciwae.k", self.k)


def grouped_log_weights(model, x, y, q: Distribution, m: int, k: int, generator=None) -> torch.Tensor:
    """Log-weights of M x K posterior draws as (M, K, B): group m holds draws m K .. m K + K - 1
    of ``model.log_weights`` (one decoder pass for all of them)."""
    log_w = model.log_weights(x, y, m * k, generator=generator, q=q)  # (M K, B)
    return log_w.view(m, k, -1)


def miwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """(1/M) sum_m log (1/K) sum_k w_mk for log-weights (M, K, B): (B,)."""
    return log_mean_exp(log_w, 1).mean(0)


def miwae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    o = model.cfg.opts("miwae")
    log_w = grouped_log_weights(model, x, y, q, o.m, o.k, generator)
    return {"loss": -miwae_bound(log_w), "nelbo": -log_w.mean((0, 1))}


def piwae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    o = model.cfg.opts("piwae")
    log_w = grouped_log_weights(model, x, y, q, o.m, o.k, generator)
    return {"loss": -log_mean_exp(log_w.flatten(0, 1), 0), "loss_encoder": -miwae_bound(log_w),
            "nelbo": -log_w.mean((0, 1))}


def ciwae(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    o = model.cfg.opts("ciwae")
    log_w = model.log_weights(x, y, o.k, generator=generator, q=q)  # (K, B)
    nelbo, niwae = -log_w.mean(0), -log_mean_exp(log_w, 0)
    return {"loss": o.beta * nelbo + (1 - o.beta) * niwae, "nelbo": nelbo, "niwae": niwae}


def encoder_parameters(model) -> list[torch.nn.Parameter]:
    """The inference network's trainable parameters: encoder body and posterior head."""
    return [p for mod in (model.encoder, model.posterior_head) for p in mod.parameters() if p.requires_grad]


def piwae_steps(model) -> list[OptimStep]:
    """The decoder step (every parameter not in the inference network: decoder body,
    likelihood, prior) on ``loss``, the IWAE bound; the encoder step on ``loss_encoder``."""
    enc = encoder_parameters(model)
    return [OptimStep("decoder", other_parameters(model, enc)), OptimStep("encoder", enc, loss="loss_encoder")]


def piwae_check(cfg) -> None:
    """Refuse parts the split between inference and generative networks cannot place."""
    if cfg.condition == "embedding":
        raise ConfigError("objective piwae trains the encoder and the decoder in separate steps, and "
                          "model.condition=embedding learns a label embedding both read; use model.condition=onehot")
    if cfg.predictor_weight > 0:
        raise ConfigError("objective piwae trains the encoder on its own bound, and the label predictor "
                          f"(model.predictor_weight={cfg.predictor_weight}) adds its loss to the decoder's step only; "
                          "set model.predictor_weight=0 or use model.objective=miwae")
    if cfg.sparsity != "none" and cfg.sparsity_weight > 0:
        raise ConfigError(f"objective piwae trains the encoder on its own bound, and model.sparsity={cfg.sparsity} "
                          "adds its penalty on the code to the decoder's step only; set model.sparsity=none "
                          "or use model.objective=miwae")


# The registry entries, merged into vaelab.models.objectives.OBJECTIVES.
IW_OBJECTIVES = {
    "miwae": Objective(miwae, frozenset({"density"}),
                       "MIWAE: the IWAE bound of K draws averaged over M groups (Rainforth et al. 2018)",
                       options=MiwaeOptions),
    "piwae": Objective(piwae, frozenset({"density"}),
                       "PIWAE: the decoder on the IWAE bound of M x K draws, the encoder on MIWAE(M, K)",
                       options=PiwaeOptions, check=piwae_check, steps=piwae_steps),
    "ciwae": Objective(ciwae, frozenset({"density"}), "CIWAE: beta * ELBO + (1 - beta) * IWAE bound of K draws",
                       options=CiwaeOptions),
}

__all__ = ["IW_OBJECTIVES", "CiwaeOptions", "MiwaeOptions", "PiwaeOptions", "ciwae", "encoder_parameters",
           "grouped_log_weights", "miwae", "miwae_bound", "piwae", "piwae_check", "piwae_steps"]
