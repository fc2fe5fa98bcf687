"""The types of the model contract an objective is made of: its per-image ``Parts``, the
``Objective`` a registry entry holds, and the ``OptimStep`` s it may declare. Below every
part and family module, so each can build its entries without importing the registries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Parts = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OptimStep:
    """One optimisation step per batch (the trainer runs them; ``Objective.steps`` declares
    them): a parameter group, the loss it descends (a key of the forward's parts, a per-image
    (B,) tensor), and its optimizer settings (None: the train config's ``lr`` and Adam betas)."""

    name: str
    params: list[torch.nn.Parameter]
    loss: str = "loss"
    lr: float | None = None
    betas: tuple[float, float] | None = None


@dataclass(frozen=True)
class Objective:
    """What a model minimises: ``fn`` (the per-image loss and its parts), the capabilities it
    ``requires``; optionally its own ``options`` (a dataclass: vaelab.models.options) and
    ``check(cfg)``; ``networks(cfg) -> {name: nn.Module}``, networks of its own the model
    holds (a discriminator: ``model.critics[name]``, saved with the weights); ``steps(model)
    -> [OptimStep, ...]``, several optimisation steps per batch, each over its own parameter
    group (default: one over every parameter, on ``loss``); ``drops``: capabilities a model
    trained this way no longer has (a density its loss does not bound); ``minibatch``: its
    per-image values are estimates whose expectation depends on the batch size (beta-TCVAE's
    q(z) from the minibatch), so the per-epoch validation uses the training batch size:
    ``val_loss`` then estimates what ``train_loss`` does, and costs what an epoch's batches do
    rather than (1000 / batch) times more. eval.json keeps the larger evaluation batch, the
    closer estimate."""

    fn: Callable[..., Parts]
    requires: frozenset[str]  # model capabilities it needs (see vaelab.models.CAPABILITIES)
    description: str
    options: type | None = None
    check: Callable[..., None] | None = None
    networks: Callable[..., dict] | None = None
    steps: Callable[..., list[OptimStep]] | None = None
    drops: frozenset[str] = frozenset()
    minibatch: bool = False


def other_parameters(model: torch.nn.Module, *groups: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The model's trainable parameters in none of ``groups``: the group that, with them,
    splits every trainable parameter between the optimisation steps (the trainer checks it)."""
    taken = {id(p) for g in groups for p in g}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in taken]


__all__ = ["Objective", "OptimStep", "Parts", "other_parameters"]
