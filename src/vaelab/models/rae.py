"""Regularised autoencoders, RAE-L2 and RAE-GP (Ghosh et al. 2020, "From variational to
deterministic autoencoders", ICLR; arXiv:1903.12436).

A deterministic autoencoder z = E(x) whose loss replaces the VAE's KL by a penalty on the
code and a regulariser of the decoder D (the paper's Eq. 11, with its Eq. 10 terms):

    loss = recon(x, D(z)) + beta * 1/2 ||z||^2 + lambda * L_REG

- ``rae-l2``: L_REG = ||theta||^2, the sum of squares of the decoder's parameters (weights and
  biases: Pythae's decoder weight decay covers every decoder parameter; the encoder is not
  regularised);
- ``rae-gp``: L_REG = ||grad_z D(z)||^2, the squared norm of the gradient, at each image's code,
  of the decoder's output (the likelihood's mean, e.g. the sigmoid of a Bernoulli decoder)
  summed over pixels: the paper's gradient penalty as its authors' code computes it (the
  gradient of the summed outputs, one backward pass, not the full Jacobian). It is built with
  ``create_graph`` so the penalty itself is descended. Per code when the decoder treats images
  independently (a batch norm in training mode mixes the batch's codes).

There is no prior: the model is sampled "ex post", by a density fit on the training codes
(the paper's 10-component GMM: ``vaelab sample RUN --sampler gmm``, or the two-stage VAE of
Dai & Wipf 2019: ``--sampler two-stage``). Its loss bounds no likelihood, so ``eval`` reports
no nll.

Defaults (``model.rae-l2.*``, ``model.rae-gp.*``): Pythae's MNIST configs
(examples/scripts/configs/mnist/rae_{l2,gp}_config.json: embedding_weight 1e-2, reg_weight
1e-4). Where Pythae differs:

- RAE-L2: Pythae puts lambda into the decoder's Adam as ``weight_decay`` (its
  CoupledOptimizerTrainer), which adds lambda * theta to the gradient: the gradient of
  lambda/2 ||theta||^2. Here the term is in the loss as the paper writes it, lambda ||theta||^2,
  so vaelab's default lambda 5e-5 is Pythae's 1e-4 (the same update; bench/pythae_compare.py
  sets Pythae's weight decay to 2 lambda).
- RAE-GP: Pythae (src/pythae/models/rae_gp/rae_gp_model.py, ``_compute_gp``) differentiates the
  summed reconstruction with respect to the *input image* x, through encoder and decoder; the
  paper penalises the decoder's gradient at the code, as here.
- Pythae reconstructs with a summed squared error always; here the run's likelihood
  (``model.loss``; euclidean is Pythae's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vaelab.distributions import Distribution
from vaelab.errors import ConfigError
from vaelab.models.contract import Objective, Parts

L2, GP = "rae-l2", "rae-gp"  # the objectives' registry names and their options sections


def _check_options(name: str, o) -> None:
    if not o.beta >= 0:
        raise ConfigError(f"model.{name}.beta (the code penalty's weight) must be >= 0, got {o.beta}")
    if not o.weight >= 0:
        raise ConfigError(f"model.{name}.weight (lambda, the decoder regulariser's weight) must be >= 0, "
                          f"got {o.weight}")


@dataclass
class RaeL2Options:
    beta: float = field(default=1e-2, metadata={"help": "weight of the code penalty 1/2 ||z||^2 (Pythae's MNIST "
                                                        "config: embedding_weight 1e-2)"})
    weight: float = field(default=5e-5, metadata={
        "help": "lambda: weight of ||theta||^2, the decoder parameters' sum of squares (5e-5 is Pythae's MNIST "
                "decoder weight decay 1e-4, which descends lambda/2 ||theta||^2)"})

    def __post_init__(self) -> None:
        _check_options(L2, self)


@dataclass
class RaeGpOptions:
    beta: float = field(default=1e-2, metadata={"help": "weight of the code penalty 1/2 ||z||^2 (Pythae's MNIST "
                                                        "config: embedding_weight 1e-2)"})
    weight: float = field(default=1e-4, metadata={
        "help": "lambda: weight of the gradient penalty ||grad_z D(z)||^2 (Pythae's MNIST config: reg_weight 1e-4)"})

    def __post_init__(self) -> None:
        _check_options(GP, self)


def code_penalty(z: torch.Tensor) -> torch.Tensor:
    """1/2 ||z||^2 per code (B,), for codes (B, ...) of any shape (a feature map too)."""
    return 0.5 * z.float().flatten(1).square().sum(1)


def decoder_l2(decoder: torch.nn.Module) -> torch.Tensor:
    """||theta||^2: the sum of squares of every trainable parameter of ``decoder`` (a scalar)."""
    params = [p for p in decoder.parameters() if p.requires_grad]
    if not params:
        return torch.zeros(())
    return torch.stack([p.float().square().sum() for p in params]).sum()


def gradient_penalty(out: torch.Tensor, z: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """||grad_z sum(out)||^2 per code (B,): ``out`` the decoder's output computed from codes
    ``z`` (B, ...) that require gradients. ``create_graph`` keeps the gradient's own graph, so
    that a loss holding the penalty is descended through it."""
    (g,) = torch.autograd.grad(out.sum(), z, create_graph=create_graph)
    return g.float().flatten(1).square().sum(1)


def _check(name: str):
    def check(cfg) -> None:
        if cfg.posterior != "point":
            raise ConfigError(f"objective {name} is a deterministic autoencoder's (a code penalty, no KL): it needs "
                              f"model.posterior=point, and model.posterior is {cfg.posterior}; leave it out "
                              f"(model.kind={name} sets it)")
    return check


def rae_l2(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.mean
    r = model.recon_loss(model.decode_logits(z, y), x)
    c = code_penalty(z)
    reg = decoder_l2(model.decoder).to(r.device).expand(len(r))  # the same for every image of the batch
    o = model.cfg.opts(L2)
    return {"loss": r + o.beta * c + o.weight * reg, "recon": r, "code": c, "l2": reg}


def rae_gp(model, x, y, q: Distribution, *, generator=None, progress: float = 1.0, **_) -> Parts:
    z = q.mean
    training = torch.is_grad_enabled()  # off in evaluation: the penalty is then only reported
    with torch.enable_grad():  # the penalty needs grad_z even where the caller takes none
        zg = z if z.requires_grad else z.detach().requires_grad_(True)
        logits = model.decode_logits(zg, y)
        gp = gradient_penalty(model.likelihood.mean(logits.float()), zg, create_graph=training)
        r = model.recon_loss(logits, x)  # the same decoder pass
    c = code_penalty(z)
    if not training:
        gp, r = gp.detach(), r.detach()
    o = model.cfg.opts(GP)
    return {"loss": r + o.beta * c + o.weight * gp, "recon": r, "code": c, "gp": gp}


RAE_L2 = Objective(rae_l2, frozenset({"continuous"}),
                   "RAE-L2: recon + beta 1/2 ||z||^2 + lambda ||decoder parameters||^2 (Ghosh et al. 2020)",
                   options=RaeL2Options, check=_check(L2))
RAE_GP = Objective(rae_gp, frozenset({"continuous"}),
                   "RAE-GP: recon + beta 1/2 ||z||^2 + lambda ||grad_z D(z)||^2 (Ghosh et al. 2020)",
                   options=RaeGpOptions, check=_check(GP))
OBJECTIVES = {L2: RAE_L2, GP: RAE_GP}

__all__ = ["GP", "L2", "OBJECTIVES", "RAE_GP", "RAE_L2", "RaeGpOptions", "RaeL2Options", "code_penalty",
           "decoder_l2", "gradient_penalty", "rae_gp", "rae_l2"]
