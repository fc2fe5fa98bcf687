"""The trainer: the one training loop, for any model (minGPT's trainer: a step plus callbacks).

``Trainer(model, data, train_config).fit()`` knows nothing about the model beyond the
contract ``model(x, y, progress=, dataset_size=) -> {"loss": (B,), part: (B,), ...}``
and, where the model has one, ``model.optimisation_steps()``: the parameter groups it
trains, each with the loss (a key of the forward's parts) it descends and its own
optimizer settings. A model without it trains all its parameters on ``loss``, with one
Adam. A model with a second network (a discriminator) declares two groups: each batch is
one forward, then one backward per group (each over its own parameters, so no group
gets another's gradients), then every group's optimizer steps. That is the coupled
update of Pythae's adversarial trainers and of the GAN-style families' reference code.

Everything else a run needs is a callback (``vaelab.training.callbacks``): validation,
the progress bar and epoch lines, checkpoints and history, the summary, loggers. They see
the trainer (its ``model``, ``config``, ``epoch``, ``history``, ``optimizers``, ``clock``).

The loss is read back from the device once per ``CHECK_EVERY`` steps, never per step (a
per-step ``.item()`` stalls a GPU): a NaN is caught at the end of its interval, before the
epoch's checkpoint. The learning rate is a pure function of (epoch, step)
(``schedules.lr_at``), and every epoch reseeds torch from (seed, epoch), so a resumed run
(weights and every optimizer's state restored, ``restore``) is bit-exact with an
uninterrupted one and needs no scheduler or RNG state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
import torch

from vaelab.errors import ConfigError, TrainingDiverged
from vaelab.models.contract import OptimStep
from vaelab.training.distributed import Ranks
from vaelab.training.precision import compute_precision, forward_context
from vaelab.training.schedules import PER_STEP, lr_at

CHECK_EVERY = 50  # steps between reads of the running loss (finiteness check, progress bar)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def optimisation_steps(model: torch.nn.Module) -> list[OptimStep]:
    """The model's own groups (``model.optimisation_steps()``), or one over all its parameters.
    The groups must split the trainable parameters: none left out, none in two groups."""
    declared = getattr(model, "optimisation_steps", None)
    steps = declared() if declared is not None else None
    if not steps:
        return [OptimStep("model", [p for p in model.parameters() if p.requires_grad])]
    seen: dict[int, str] = {}
    for s in steps:
        for p in s.params:
            if id(p) in seen:
                raise ConfigError(f"a parameter is in two optimisation steps ({seen[id(p)]}, {s.name})")
            seen[id(p)] = s.name
    left = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in seen)
    if left:
        raise ConfigError(f"{left:,} trainable parameters are in no optimisation step ({', '.join(s.name for s in steps)})")
    return list(steps)


def make_adam(params, train, lr: float | None = None, betas: tuple[float, float] | None = None) -> torch.optim.Adam:
    # fused=True: one kernel updates all parameters; on CPU this alone cuts the mlp-vae
    # step time by about a third compared with the default for-each implementation.
    return torch.optim.Adam(params, lr=train.lr if lr is None else lr,
                            betas=(train.adam_beta1, train.adam_beta2) if betas is None else betas,
                            eps=train.adam_eps, weight_decay=train.weight_decay, fused=True)


class Trainer:
    """Trains ``model`` on ``data`` (an ImageSet, or any set with ``len``, ``shuffled(perm)``,
    ``batch(slice)`` and ``y``) as ``train`` (a TrainConfig: epochs, batch size, learning rate
    and schedule, Adam's settings, gradient clipping, seed) says.

    ``labels``: pass the images' labels to the model (a conditional model, a label predictor,
    a classifier). ``config``: what callbacks record (the resolved RunConfig; any object).
    ``ranks``: this process's place in a multi-process run (one process by default)."""

    def __init__(self, model: torch.nn.Module, data, train, *, device: torch.device | str = "cpu",
                 callbacks: Sequence = (), labels: bool = False, precision: str = "fp32",
                 ranks: Ranks | None = None, config=None, run_dir=None,
                 log: Callable[[str], None] = print):
        self.model, self.data, self.train = model, data, train
        self.device = torch.device(device)
        self.callbacks = list(callbacks)
        self.labels, self.precision = labels, precision
        self.ranks = ranks if ranks is not None else Ranks()
        self.config, self.run_dir, self.log = config, run_dir, log
        self.steps = optimisation_steps(model)
        if len(self.steps) > 1 and self.ranks.world > 1:
            raise ConfigError(f"a model with several optimisation steps ({', '.join(s.name for s in self.steps)}) "
                              "trains in one process; leave out --nproc / torchrun")
        self.optimizers = {s.name: make_adam(s.params, train, s.lr, s.betas) for s in self.steps}
        self.epoch = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.failed: BaseException | None = None
        self.clock = {"epochs_s": 0.0}  # seconds by what spent them (callbacks add theirs)

    @property
    def main(self) -> bool:
        """The process that logs and writes (rank 0)."""
        return self.ranks.main

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data) / self.train.batch_size)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """What a resume needs besides the weights and optimizer states (JSON)."""
        return {"epoch": self.epoch, "history": self.history, "train_seconds": self.train_seconds}

    def restore(self, state: dict) -> None:
        """Continue after ``state`` (from ``state()``), the weights and optimizer states already
        loaded; the train config's optimizer settings win over the restored ones (a run resumed
        with ``--lr 1e-4`` trains at 1e-4, the schedule then setting it per epoch)."""
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        t = self.train
        for s in self.steps:
            for g in self.optimizers[s.name].param_groups:
                g.update(lr=t.lr if s.lr is None else s.lr, betas=(t.adam_beta1, t.adam_beta2) if s.betas is None
                         else s.betas, eps=t.adam_eps, weight_decay=t.weight_decay)

    def _set_lr(self, epoch: int, fraction: float = 0.0) -> None:
        t = self.train
        for s in self.steps:
            lr = lr_at(t.lr_schedule, t.lr if s.lr is None else s.lr, epoch, t.epochs, fraction, gamma=t.lr_gamma)
            for g in self.optimizers[s.name].param_groups:
                g["lr"] = lr

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Trainer:
        t, ranks, device = self.train, self.ranks, self.device
        data, n, bs = self.data, len(self.data), self.train.batch_size
        steps = self.steps_per_epoch
        net = ranks.wrap(self.model, device)  # what the steps call: DDP over the model with several ranks
        self.model.train()
        try:
            self._emit("on_fit_start")
            for epoch in range(self.epoch + 1, t.epochs + 1):
                t0 = time.perf_counter()
                torch.manual_seed(epoch_seed(t.seed, epoch))
                shuffled = data.shuffled(torch.randperm(n, device=device))  # this epoch's images (and labels)
                ranks.seed(epoch_seed(t.seed, epoch))  # several ranks: each its own noise from here
                self._set_lr(epoch)
                sums: torch.Tensor | None = None
                keys: list[str] = []
                last = 0
                with compute_precision(self.precision, device):
                    for step in range(steps):
                        sl = ranks.part(step * bs, min((step + 1) * bs, n))  # the batch, or this rank's share
                        x = shuffled.batch(sl)
                        y = shuffled.y[sl] if self.labels else None
                        if t.lr_schedule in PER_STEP:
                            self._set_lr(epoch, step / steps)
                        progress = ((epoch - 1) + step / steps) / t.epochs
                        with forward_context(self.precision, device):
                            parts = net(x, y, progress=progress, dataset_size=n)
                        self._descend(parts, min(bs, n - step * bs))
                        part = torch.stack([v.detach().sum() for v in parts.values()])
                        sums = part if sums is None else sums + part
                        keys = list(parts)
                        if (step + 1) % CHECK_EVERY == 0 or step == steps - 1:
                            total = ranks.sum(sums)  # all ranks' sums (one small all-reduce); sums when alone
                            _check_finite(total, epoch, step, self.run_dir)  # one device sync per interval
                            done = min(n, (step + 1) * bs)
                            self._emit("on_interval", step + 1 - last, float(total[0]) / done)
                            last = step + 1
                seconds = time.perf_counter() - t0
                self.clock["epochs_s"] += seconds
                row = {"epoch": epoch, "train_loss": None, "val_loss": None, "seconds": round(seconds, 3),
                       "lr": self.optimizers[self.steps[0].name].param_groups[0]["lr"]}
                for s in self.steps[1:]:
                    row[f"lr_{s.name}"] = self.optimizers[s.name].param_groups[0]["lr"]
                for k, v in zip(keys, (total / n).tolist()):  # the last interval's total is the epoch's
                    row["train_loss" if k == "loss" else f"train_{k}"] = v
                self.history.append(row)
                self.epoch, self.train_seconds = epoch, self.train_seconds + seconds
                self._emit("on_epoch_end", row)  # callbacks may add columns (val_*) before others read it
        except BaseException as e:
            self.failed = e
            raise
        finally:
            self.model.eval()
            self._emit("on_fit_end")
        return self

    def _descend(self, parts: dict[str, torch.Tensor], batch: int) -> None:
        """One optimisation step per group for this batch's losses."""
        t, ranks = self.train, self.ranks
        if len(self.steps) == 1:  # the common case, as plain as a hand-written loop
            (s,) = self.steps
            opt = self.optimizers[s.name]
            loss = ranks.batch_loss(parts[s.loss], batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(s.params, t.grad_clip)
            opt.step()
            return
        # Several groups: every gradient from this forward first (each loss over its own
        # parameters only), then every update, so no loss sees weights another step moved.
        for i, s in enumerate(self.steps):
            self.optimizers[s.name].zero_grad(set_to_none=True)
            ranks.batch_loss(parts[s.loss], batch).backward(inputs=s.params, retain_graph=i < len(self.steps) - 1)
        for s in self.steps:
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(s.params, t.grad_clip)
            self.optimizers[s.name].step()


def _check_finite(sums: torch.Tensor, epoch: int, step: int, run_dir) -> None:
    if bool(torch.isfinite(sums).all()):
        return
    kept = (f"; the last good checkpoint (epoch {epoch - 1}) is kept in {run_dir}" if run_dir is not None
            and epoch > 1 else "")
    raise TrainingDiverged(f"the loss became {float(sums[0])} at epoch {epoch}, by step {step + 1}{kept}; "
                           "lower --lr, set --set train.grad_clip=1.0, or check the data")


__all__ = ["CHECK_EVERY", "OptimStep", "Trainer", "epoch_seed", "make_adam", "optimisation_steps"]
