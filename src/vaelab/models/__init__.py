"""Models assembled from parts, and the registry of families.

A family (``model.kind``) names a default choice of parts: posterior, prior, objective
and conditioning. ``resolve_model`` (called when a config is built) fills in whatever the
user left unset from its family, so a config may also mix parts freely (``--set
model.objective=iwae``), types each chosen part's options and refuses parts that do not
go together.
Every family is built by one class, ``LatentModel``; the parts have their own
registries: ``BODIES`` (model.arch), ``POSTERIORS``, ``PRIORS``, ``LIKELIHOODS``
(model.loss), and ``vaelab.models.objectives.OBJECTIVES``. Adding a family is one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vaelab.errors import ConfigError, VaelabError
from vaelab.models.bodies import BODIES, feature_map_code
from vaelab.models.likelihoods import LIKELIHOODS
from vaelab.models.model import LatentModel, capabilities
from vaelab.models.options import aliases, fold, option_fields, resolve
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
    "miwae": Family("MIWAE: the IWAE bound of K draws averaged over M groups (Rainforth et al. 2018)", "gaussian",
                    "normal", "miwae"),
    "piwae": Family("PIWAE: the decoder trained on the IWAE bound, the encoder on the MIWAE bound", "gaussian",
                    "normal", "piwae"),
    "ciwae": Family("CIWAE: a beta mixture of the ELBO and the IWAE bound", "gaussian", "normal", "ciwae"),
    "beta-tcvae": Family("beta-TCVAE: the KL split into MI, total correlation and dimension-wise KL",
                         "gaussian", "normal", "tcvae"),
    "wae": Family("Wasserstein autoencoder, MMD penalty, deterministic encoder", "point", "normal", "wae-mmd"),
    "aae": Family("adversarial autoencoder: a discriminator on codes matches q(z) to the prior", "point", "normal",
                  "aae"),
    "infovae": Family("InfoVAE / MMD-VAE: KL and MMD to the prior", "gaussian", "normal", "infovae"),
    "vamp": Family("VAE with the VampPrior (a mixture of posteriors at learned pseudo-inputs)", "gaussian", "vamp",
                   "elbo"),
    "hvae": Family("two stochastic layers z1, z2 (the IWAE paper's second architecture)", "gaussian2",
                   "hierarchical", "elbo"),
    "vq-vae": Family("VQ-VAE: a grid of codes from a learned codebook", "vq", "none", "vq"),
    "factor-vae": Family("FactorVAE: the total correlation penalised through a discriminator on permuted codes",
                         "gaussian", "normal", "factorvae"),
    "vae-gan": Family("VAE-GAN: reconstruction in a discriminator's features, the decoder also a GAN generator",
                      "gaussian", "normal", "vaegan"),
    "rae-l2": Family("RAE-L2: a deterministic autoencoder, a code penalty and weight decay on the decoder "
                     "(Ghosh et al. 2020); sampled by a density fit on its codes", "point", "none", "rae-l2"),
    "rae-gp": Family("RAE-GP: a deterministic autoencoder, a code penalty and a gradient penalty on the decoder "
                     "(Ghosh et al. 2020); sampled by a density fit on its codes", "point", "none", "rae-gp"),
    "hamiltonian-vae": Family("Hamiltonian VAE: q(z|x)'s draws flowed by tempered leapfrog steps of log p(x, z) "
                              "(Caterini et al. 2018; not hvae)", "gaussian", "normal", "hamiltonian"),
    "rhvae": Family("Riemannian Hamiltonian VAE: the Hamiltonian VAE's flow with a learned latent metric G(z) "
                    "(Chadebec et al. 2020)", "gaussian", "normal", "rhvae"),
    "svae": Family("hyperspherical VAE: a von Mises-Fisher posterior, the uniform prior on the sphere "
                   "(Davidson et al. 2018)", "vmf", "spherical-uniform", "elbo"),
    "pvae": Family("Poincaré VAE: a wrapped normal posterior and prior in the Poincaré ball of curvature -c "
                   "(Mathieu et al. 2019)", "wrapped-normal", "wrapped-normal-prior", "elbo"),
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
    "spherical": "codes on the unit hypersphere (model.posterior=vmf)",
    "hyperbolic": "codes in the Poincaré ball (model.posterior=wrapped-normal)",
}

# Capabilities that put codes on a space other than R^D: a posterior that has one takes only a
# prior that declares it too (models.check_parts); the space in words.
GEOMETRIES: dict[str, str] = {"spherical": "on the unit sphere", "hyperbolic": "in the Poincaré ball"}


# The parts a config chooses, by role: (the ModelConfig field that names it, its registry).
PARTS: dict[str, tuple[str, dict]] = {
    "body": ("arch", BODIES), "posterior": ("posterior", POSTERIORS), "prior": ("prior", PRIORS),
    "likelihood": ("loss", LIKELIHOODS), "objective": ("objective", OBJECTIVES),
}


def resolve_options(cfg: ModelConfig) -> None:
    """Each chosen part's options section as its dataclass, and each part's own check (one line)."""
    resolve(cfg, PARTS)


def chosen_parts(model: dict[str, Any]) -> dict[str, str]:
    """Config field -> the part it names, for a model section as read (a family fills in
    what it leaves unset). Unknown names are left for ``resolve_model`` to refuse."""
    from vaelab.config import ModelConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    family = MODELS.get(model.get("kind") or defaults["kind"])
    out = {}
    for field in ("arch", "posterior", "prior", "objective", "loss", "condition"):
        value = model.get(field)
        if value is None:
            value = getattr(family, field, None) if field in ("posterior", "prior", "objective", "condition") \
                else defaults[field]
        out[field] = value
    return out


def fold_section(model: dict[str, Any], chosen: dict[str, str] | None = None) -> dict[str, Any]:
    """A model section (one layer of a config as read: a preset, a YAML file, overrides) with
    each old flat option name (``k``) moved into the section of the part that reads it
    (``iwae: {k: ...}``; ``chosen``: the parts of the whole config, see ``chosen_parts``), so
    that layers given in different spellings merge in their order."""
    return fold(model, chosen_parts(model) if chosen is None else chosen, PARTS)


def _unused_alias(key: str, value: Any, owners: list, cfg: ModelConfig) -> str:
    by_path: dict[str, list[str]] = {}  # the vq section serves two parts: name it once
    for role, _, part, option in owners:
        by_path.setdefault(f"model.{part}.{option}", []).append(f"the {role} {part}")
    what = " or ".join(f"{' and '.join(parts)} ({path})" for path, parts in by_path.items())
    now = ", ".join(dict.fromkeys(f"model.{field} is {getattr(cfg, field)}" for _, field, _, _ in owners))
    shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
    return f"model.{key}={shown} is not used: it is an option of {what}, and {now}; leave it out"


def resolve_model(cfg: ModelConfig, explicit: frozenset[str] | set[str] = frozenset(), strict: bool = True) -> ModelConfig:
    """Make ``cfg`` whole and check it, in place (again on a resolved config: a no-op but for the
    checks): the family's parts where it leaves them unset; the part names checked against
    their registries; old flat option names (``model.k``) moved into their part's section; each
    chosen part's options typed (its dataclass) and checked; every pairing of parts checked
    (``check_parts``). Refusals are ConfigErrors of one line.

    An old flat name that no chosen part reads is refused when ``explicit`` (the "model.NAME"
    keys a user set) names it or its value is not the default; otherwise (a config.json
    written before parts owned their options lists every option) it is dropped, as it is
    anyway with ``strict=False`` (a saved run loads: its model never read it)."""
    _check_name("model.kind", cfg.kind, MODELS)
    family = MODELS[cfg.kind]
    for part in ("posterior", "prior", "objective", "condition"):
        if getattr(cfg, part) is None:
            setattr(cfg, part, getattr(family, part))
    for field, registry in (("arch", BODIES), ("posterior", POSTERIORS), ("prior", PRIORS), ("objective", OBJECTIVES),
                            ("loss", LIKELIHOODS)):
        _check_name(f"model.{field}", getattr(cfg, field), registry)
    names = {n for _, registry in PARTS.values() for n in registry}
    # model.PART=null clears a section (a preset's options of a part the user swaps out)
    cfg.options = {k: v for k, v in cfg.options.items() if not (v is None and k in names)}
    cfg.options = fold(cfg.options, {f: getattr(cfg, f) for f, _ in PARTS.values()}, PARTS)
    table = aliases(PARTS)
    for key in [k for k, v in cfg.options.items() if not isinstance(v, dict) and not dataclasses.is_dataclass(v)]:
        value = cfg.options.pop(key)
        if key not in table:
            fields = sorted(f.name for f in dataclasses.fields(cfg) if f.name != "options")
            raise ConfigError(f"unknown model option 'model.{key}'; valid: {', '.join(fields)}, or a part's "
                              "options as model.PART.OPTION")
        owners = table[key]
        _, field, part, option = owners[0]
        entry = PARTS[owners[0][0]][1][part]
        default = next(f for f in option_fields(entry) if f.name == option)
        default = default.default_factory() if default.default is dataclasses.MISSING else default.default
        if strict and (f"model.{key}" in explicit or (value is not None and value != default)):
            raise ConfigError(_unused_alias(key, value, owners, cfg))
    resolve(cfg, PARTS)
    check_parts(cfg)
    return cfg


def _check_name(key: str, value: str, registry) -> None:
    if value not in registry:
        raise ConfigError(f"{key} must be one of {', '.join(sorted(registry))}, got {value!r}")


def unread_fields(cfg: ModelConfig) -> dict[str, str]:
    """The ModelConfig fields that a part declares it reads (``reads``: the point posterior's
    code activation) and no chosen part of that role
    reads: "model.FIELD" -> why, in words (for ``vaelab.config.unused_options``)."""
    out: dict[str, str] = {}
    for role, (field, registry) in PARTS.items():
        chosen = getattr(cfg, field)
        read = set(getattr(registry.get(chosen), "reads", ()))
        readers: dict[str, list[str]] = {}
        for name, entry in registry.items():
            for f in getattr(entry, "reads", ()):
                readers.setdefault(f, []).append(name)
        for f, names in readers.items():
            if f not in read:
                out[f"model.{f}"] = (f"it is an option of the {role} {' and '.join(names)} (model.{field}="
                                     f"{names[0]}), and model.{field} is {chosen}")
    return out


def check_parts(cfg: ModelConfig) -> None:
    """Refuse, in one line naming both parts, an objective or a prior the other parts cannot serve."""
    have = capabilities(cfg)
    if feature_map_code(cfg) and not getattr(POSTERIORS[cfg.posterior], "feature_map", False):
        raise ConfigError(f"model.{cfg.arch}.latent=conv (the feature map is the code) is for autoencoders and "
                          f"VQ-VAEs (model.posterior=point or vq), and model.posterior is {cfg.posterior}; VAEs need "
                          f"a dense latent (model.{cfg.arch}.latent=dense)")
    prior = PRIORS[cfg.prior]
    for geometry, where in GEOMETRIES.items():
        if getattr(POSTERIORS[cfg.posterior], geometry, False) and prior is not None and not getattr(
                prior, geometry, False):
            there = ", ".join(n for n, p in PRIORS.items() if getattr(p, geometry, False))
            other = next((w for g, w in GEOMETRIES.items() if getattr(prior, g, False)), "on R^D")
            raise ConfigError(f"model.posterior={cfg.posterior} puts codes {where}, and model.prior={cfg.prior} "
                              f"is a density {other}; use model.prior={there}")
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
    resolve_model(cfg)  # a config made by hand is checked as a built one is
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
    "chosen_parts",
    "count_params",
    "fold_section",
    "frozen",
    "glorot_init",
    "require",
    "resolve_model",
    "resolve_options",
    "unread_fields",
]
