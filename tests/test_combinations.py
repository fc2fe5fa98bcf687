"""Every combination of parts either trains or is refused when its config is built.

For every family (model.kind) x objective x prior, and every posterior x label condition
x objective x prior, on a tiny batch: the config is built; if it builds, the model is
built and trains one step (the trainer's own step: every optimisation group) and runs one
forward in eval mode, and nothing may raise; if it is refused, the refusal is a ConfigError
raised while building the config, one line, naming both parts that do not go together.
Cells with the same parts are tried once (families that differ only in their name).
"""

from __future__ import annotations

import re

import pytest
import torch

import vaelab
from vaelab.data import ImageSet
from vaelab.errors import ConfigError
from vaelab.models import MODELS, POSTERIORS, PRIORS, build_model
from vaelab.models.objectives import OBJECTIVES
from vaelab.training.trainer import Trainer

SHAPE = (1, 8, 8)
CLASSES = 3
BASE = ["model.latent_dim=2", "train.epochs=1", "train.batch_size=8", "train.device=cpu", "train.progress=false"]


def _data() -> ImageSet:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((8, *SHAPE), generator=g) * 255).to(torch.uint8)
    return ImageSet(x, torch.arange(8) % CLASSES)


def _body(posterior: str) -> list[str]:
    """The tiniest body a posterior takes: a VQ-VAE quantises a conv feature map."""
    if posterior == "vq":
        return ["model.arch=conv", "model.latent=conv", "model.channels=4", "model.vq.codebook_size=4"]
    two = ["model.gaussian2.latent_dims=2,2", "model.gaussian2.hidden2=4"] if posterior == "gaussian2" else []
    return ["model.arch=mlp", "model.hidden=4", *two]


_SEEN: dict[tuple, str] = {}


def _named(msg: str, names: set[str]) -> set[str]:
    return {n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", msg)}


def _try(parts: dict[str, str], posterior: str) -> str:
    """'trained' or 'refused'; anything else raised fails the test."""
    key = tuple(sorted(parts.items())) + (posterior,)
    if key in _SEEN:
        return _SEEN[key]
    sets = [f"model.{k}={v}" for k, v in parts.items()]
    try:
        cfg = vaelab.build_config(None, None, BASE + _body(posterior) + sets)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        m = parts | {"posterior": posterior}
        chosen = {m["posterior"], m.get("prior", ""), m["objective"], m.get("kind", "")} - {""}
        # both parts: two of the chosen names, or the one part and the label condition it needs
        both = len(_named(msg, chosen)) >= 2 or (_named(msg, chosen) and "condition" in msg)
        assert both, f"{parts}: the refusal does not name both parts: {msg}"
        _SEEN[key] = "refused"
        return "refused"
    m = cfg.model
    assert m.posterior == posterior
    m.input_shape = list(SHAPE)
    if m.uses_labels:
        m.num_classes = CLASSES
    torch.manual_seed(0)
    model = build_model(m)
    data = _data()
    Trainer(model, data, cfg.train, labels=m.uses_labels, config=cfg, log=lambda s: None).fit()
    for p in model.parameters():
        assert torch.isfinite(p).all(), f"{parts}: a weight is not finite after one step"
    with torch.no_grad():
        out = model(data.batch(slice(0, 8)), data.y if m.uses_labels else None, dataset_size=8)
    assert out["loss"].shape == (8,) and torch.isfinite(out["loss"]).all(), parts
    _SEEN[key] = "trained"
    return "trained"


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_family_objective_and_prior_trains_or_is_refused_when_built(kind):
    outcomes = {(o, p): _try({"kind": kind, "objective": o, "prior": p}, MODELS[kind].posterior)
                for o in OBJECTIVES for p in PRIORS}
    fam = MODELS[kind]
    # the family's own parts train
    assert outcomes[(fam.objective, fam.prior)] == "trained", kind


@pytest.mark.parametrize("posterior", sorted(POSTERIORS))
def test_every_posterior_with_labels_trains_or_is_refused_when_built(posterior):
    """The families cover every posterior without labels; here each with a one-hot label input."""
    outcomes = {(o, p): _try({"kind": "vae", "posterior": posterior, "condition": "onehot", "objective": o,
                              "prior": p}, posterior)
                for o in OBJECTIVES for p in PRIORS}
    assert "trained" in outcomes.values() or posterior == "vq", posterior
