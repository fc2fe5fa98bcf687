"""The trainer: a loop that knows no model, callbacks, several optimisation steps per batch,
and parts that own their options (a toy objective with a critic network, registered here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from vaelab.errors import ConfigError
from vaelab.models.objectives import OBJECTIVES, Objective, OptimStep
from vaelab.training import checkpoint
from vaelab.training.callbacks import Callback
from vaelab.training.loop import fit
from vaelab.training.trainer import Trainer


def quiet(msg: str) -> None:
    pass


# ---------------------------------------------------------------------------- a toy adversarial objective
@dataclass
class ToyOptions:
    weight: float = field(default=0.5, metadata={"help": "weight of the critic's term in the model's loss"})
    critic_lr: float = field(default=3e-3, metadata={"help": "the critic's learning rate"})
    hidden: list[int] = field(default_factory=lambda: [8], metadata={"help": "the critic's widths"})

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"model.toy.weight must be >= 0, got {self.weight}")


def _toy(model, x, y, q, *, generator=None, progress=1.0, **_):
    z = q.rsample(generator=generator)
    r = model.recon_loss(model.decode_logits(z, y), x)
    critic = model.critics["critic"]
    # The critic learns to tell codes from prior draws; the model's loss asks the opposite.
    zp = torch.randn(z.shape, generator=generator, dtype=z.dtype)
    real, fake = critic(zp).squeeze(1), critic(z.detach()).squeeze(1)
    critic_loss = nn.functional.softplus(-real) + nn.functional.softplus(fake)
    fool = nn.functional.softplus(-critic(z).squeeze(1))
    w = model.cfg.opts("toy").weight
    return {"loss": r + w * fool, "recon": r, "critic": critic_loss}


def _toy_networks(cfg):
    o = cfg.opts("toy")
    widths = [cfg.latent_dim, *o.hidden]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return {"critic": nn.Sequential(*layers, nn.Linear(widths[-1], 1))}


def _toy_steps(model):
    critic = list(model.critics.parameters())
    ids = {id(p) for p in critic}
    return [OptimStep("model", [p for p in model.parameters() if id(p) not in ids]),
            OptimStep("critic", critic, loss="critic", lr=model.cfg.opts("toy").critic_lr, betas=(0.5, 0.9))]


def _toy_check(cfg):
    if cfg.posterior != "gaussian":
        raise ConfigError(f"objective toy needs model.posterior=gaussian, got {cfg.posterior}")


TOY = Objective(_toy, frozenset({"prior", "stochastic"}), "toy adversarial objective", options=ToyOptions,
                check=_toy_check, networks=_toy_networks, steps=_toy_steps)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "toy", TOY)


# ---------------------------------------------------------------------------- options owned by the part
def test_a_part_owns_its_options_section(toy, tiny_config):
    cfg = tiny_config("model.objective=toy", "model.toy.weight=2", "model.toy.hidden=4,4")
    o = cfg.model.opts("toy")
    assert (o.weight, o.critic_lr, o.hidden) == (2.0, 3e-3, [4, 4])
    d = cfg.to_dict()["model"]
    assert d["toy"] == {"weight": 2.0, "critic_lr": 3e-3, "hidden": [4, 4]} and "options" not in d
    from vaelab.configure import config_from_dict

    again = config_from_dict(cfg.to_dict())  # config.json round trip
    assert again.model.opts("toy") == o
    assert tiny_config("model.objective=toy").model.opts("toy") == ToyOptions()  # defaults filled in


def test_bad_part_options_are_one_line(toy, tiny_config):
    with pytest.raises(ConfigError, match=r"model\.toy\.weight must be float, got 'much'"):
        tiny_config("model.objective=toy", "model.toy.weight=much")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) model\.toy\.wieght of toy; its options: weight, "
                                          r"critic_lr, hidden"):
        tiny_config("model.objective=toy", "model.toy.wieght=1")
    with pytest.raises(ConfigError, match="model.toy.weight must be >= 0"):
        tiny_config("model.objective=toy", "model.toy.weight=-1")
    with pytest.raises(ConfigError, match="model.toy holds options of the objective toy, and model.objective is "
                                          "elbo; leave it out, or set model.objective=toy"):
        tiny_config("model.toy.weight=1")
    with pytest.raises(ConfigError, match="objective toy needs model.posterior=gaussian, got point"):
        tiny_config("model.kind=ae", "model.prior=normal", "model.objective=toy")


# ---------------------------------------------------------------------------- several optimisation steps
def test_each_step_moves_only_its_group_with_its_own_optimizer(toy, tiny_config):
    cfg = tiny_config("model.objective=toy", "train.epochs=1")
    from vaelab.models import build_model

    torch.manual_seed(0)
    model = build_model(type(cfg.model)(**{**vars(cfg.model), "input_shape": [1, 28, 28]}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(cfg, None, log=quiet)
    trainer = result.trainer
    assert list(trainer.optimizers) == ["model", "critic"]
    critic_opt = trainer.optimizers["critic"]
    assert critic_opt.param_groups[0]["lr"] == pytest.approx(3e-3)
    assert critic_opt.param_groups[0]["betas"] == (0.5, 0.9)
    assert {id(p) for p in critic_opt.param_groups[0]["params"]} == {id(p) for p in result.model.critics.parameters()}
    assert all(critic_opt.state[p]["step"] > 0 for p in result.model.critics.parameters())
    row = result.history[-1]
    assert {"train_loss", "train_recon", "train_critic", "lr", "lr_critic"} <= set(row)
    assert row["lr_critic"] == pytest.approx(3e-3) and row["lr"] == pytest.approx(1e-3)
    moved = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("critics.") for k in moved) and any(k.startswith("encoder.") for k in moved)


def test_the_critic_step_descends_the_critic_loss_alone(toy, tiny_config, monkeypatch):
    """The model's loss pushes the critic the other way; its gradient must not reach the critic's step."""
    cfg = tiny_config("model.objective=toy", "model.toy.weight=100", "train.epochs=1")
    grads: list[torch.Tensor] = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        if self.param_groups[0]["betas"] == (0.5, 0.9):
            grads.append(torch.cat([p.grad.flatten() for p in self.param_groups[0]["params"]]).clone())
        return real_step(self, *a, **k)

    original_fn = TOY.fn
    seen = []

    def fn(model, x, y, q, **k):
        parts = original_fn(model, x, y, q, **k)
        if not seen:  # the first batch: the gradient the critic's loss alone gives its parameters
            crit = list(model.critics.parameters())
            seen.append(torch.cat([g.flatten() for g in torch.autograd.grad(parts["critic"].mean(), crit,
                                                                            retain_graph=True)]))
        return parts

    monkeypatch.setitem(OBJECTIVES, "toy", Objective(fn, TOY.requires, TOY.description, options=TOY.options,
                                                     networks=TOY.networks, steps=TOY.steps))
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    fit(cfg, None, log=quiet)
    assert torch.allclose(grads[0], seen[0], atol=1e-6)


def test_resume_restores_every_optimizer_bit_exact(toy, tiny_config, tmp_path):
    cfg = tiny_config("model.objective=toy", "train.epochs=3")
    whole = fit(cfg, tmp_path / "whole", log=quiet)
    cfg2 = tiny_config("model.objective=toy", "train.epochs=2")
    fit(cfg2, tmp_path / "part", log=quiet)
    _, meta = checkpoint._load(tmp_path / "part" / "checkpoint.safetensors")
    assert "param_groups-critic" in meta and "optim_scalars-critic" in meta
    resumed = fit(tiny_config("model.objective=toy", "train.epochs=3"), tmp_path / "part", resume=True, log=quiet)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for name in ("model", "critic"):
        sa, sb = whole.trainer.optimizers[name].state_dict(), resumed.trainer.optimizers[name].state_dict()
        for i in sa["state"]:
            assert torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"])


def test_resume_with_a_new_lr_sets_the_model_step_and_keeps_the_critics(toy, tiny_config, tmp_path):
    fit(tiny_config("model.objective=toy", "train.epochs=1"), tmp_path / "r", log=quiet)
    res = fit(tiny_config("model.objective=toy", "train.epochs=2", "train.lr=1e-4"), tmp_path / "r", resume=True,
              log=quiet)
    assert res.history[-1]["lr"] == pytest.approx(1e-4) and res.history[-1]["lr_critic"] == pytest.approx(3e-3)


def test_a_checkpoint_of_another_optimizer_set_is_refused(toy, tiny_config, tmp_path):
    from vaelab.errors import CheckpointError

    fit(tiny_config("model.objective=toy", "train.epochs=1"), tmp_path / "r", log=quiet)
    from vaelab.models import build_model

    cfg = tiny_config("model.objective=toy")
    cfg.model.input_shape = [1, 28, 28]
    model = build_model(cfg.model)
    with pytest.raises(CheckpointError, match=r"holds the state of the optimizers \['model', 'critic'\]"):
        checkpoint.load_resume(tmp_path / "r", model, {"model": torch.optim.Adam(model.parameters())})


# ---------------------------------------------------------------------------- a model the trainer does not know
class _Pairs:
    """The smallest data set the trainer takes: len, shuffled(perm), batch(slice), y."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def shuffled(self, perm):
        return _Pairs(self.x[perm], self.y[perm])

    def batch(self, sl, device=None):
        return self.x[sl]


class _Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x, y=None, **_):
        return {"loss": (self.lin(x).squeeze(1) - y).square()}


class _Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append("start")

    def on_interval(self, trainer, steps, loss):
        self.events.append(("interval", steps))

    def on_epoch_end(self, trainer, row):
        self.events.append(("epoch", row["epoch"], round(row["train_loss"], 6)))

    def on_fit_end(self, trainer):
        self.events.append(("end", trainer.failed is None))


def test_the_trainer_fits_any_model_and_calls_its_callbacks_in_order():
    from vaelab.config import TrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    torch.manual_seed(0)
    model = _Regression()
    rec = _Recorder()
    t = TrainConfig(epochs=40, batch_size=32, lr=0.05, device="cpu", progress=False)
    Trainer(model, _Pairs(x, y), t, callbacks=[rec], labels=True, log=quiet).fit()
    assert torch.allclose(model.lin.weight, torch.tensor([[1.0, -2.0, 0.5]]), atol=1e-2)
    assert rec.events[0] == "start" and rec.events[-1] == ("end", True)
    assert rec.events[1:3] == [("interval", 3), ("epoch", 1, rec.events[2][2])]
    assert len([e for e in rec.events if e[0] == "epoch"]) == 40
    # The reported loss is the epoch's mean per-item loss, recomputed here for the last epoch would
    # need the pre-step weights; instead: it falls as the fit converges.
    losses = [e[2] for e in rec.events if e[0] == "epoch"]
    assert losses[-1] < 1e-3 < losses[0]
