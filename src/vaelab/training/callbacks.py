"""Callbacks: everything a run does around the training loop, outside it.

The trainer calls, in the order its callbacks are listed:

- ``on_fit_start(trainer)`` before the first epoch (after a resume too);
- ``on_interval(trainer, steps, loss)`` once per logging interval: the steps since the last
  call and the epoch's running mean loss (read back from the device then, never per step);
- ``on_epoch_end(trainer, row)`` with the history row just appended; a callback may add
  columns (validation adds ``val_*``) for the ones after it;
- ``on_evaluation(trainer, metrics)`` and ``on_artifacts(trainer, paths)`` when the caller
  (``api.train``) has evaluated the model and drawn its figures;
- ``on_fit_end(trainer)`` always, also when training failed (``trainer.failed``).

The run's own: ``Validation`` (val_* columns), ``Progress`` (one bar for the run, a line per
epoch), ``Checkpoint`` (config.json, then each epoch the resume file, the weights and
history.csv, atomically), ``Summary`` (summary.json at the end). Loggers
(``vaelab.training.loggers``) are callbacks too.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable

import torch

from vaelab.io import write_json, write_text
from vaelab.progress import bar as progress_bar
from vaelab.progress import duration, write
from vaelab.rundir import RunDir
from vaelab.training import checkpoint


class Callback:
    """A no-op for every event; subclasses override what they need."""

    def on_fit_start(self, trainer) -> None:
        pass

    def on_interval(self, trainer, steps: int, loss: float) -> None:
        pass

    def on_epoch_end(self, trainer, row: dict) -> None:
        pass

    def on_evaluation(self, trainer, metrics: dict) -> None:
        pass

    def on_artifacts(self, trainer, paths: list) -> None:
        pass

    def on_fit_end(self, trainer) -> None:
        pass


@torch.no_grad()
def evaluate_losses(model: torch.nn.Module, data, batch_size: int, device: torch.device, seed: int = 0,
                    labels: bool = False) -> dict[str, float]:
    """Mean per-image loss parts over ``data`` (posterior sampled with a fixed seed).

    Labels go in as in training (conditional models, label predictors), so ``val_loss``
    and ``train_loss`` in history.csv measure the same thing.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    y_all = data.y.to(device) if labels and data.y is not None else None
    sums: dict[str, float] = {}
    for i in range(0, len(data), batch_size):
        x = data.batch(slice(i, i + batch_size), device)
        y = None if y_all is None else y_all[i:i + batch_size]
        for k, v in model(x, y, generator=gen, dataset_size=len(data)).items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
    model.train(was_training)
    return {k: v / len(data) for k, v in sums.items()}


class Validation(Callback):
    """``val_loss`` and ``val_<part>`` on a held-out set after every epoch (rank 0 alone: the
    other ranks go on and wait at the next step's all-reduce)."""

    def __init__(self, data, batch_size: int, seed: int = 0, labels: bool = False):
        self.data, self.batch_size, self.seed, self.labels = data, batch_size, seed, labels

    def on_epoch_end(self, trainer, row: dict) -> None:
        if not trainer.main:
            return
        t0 = time.perf_counter()
        for k, v in evaluate_losses(trainer.model, self.data, self.batch_size, trainer.device, self.seed,
                                    self.labels).items():
            row["val_loss" if k == "loss" else f"val_{k}"] = v
        trainer.clock["val_s"] = trainer.clock.get("val_s", 0.0) + time.perf_counter() - t0


class Progress(Callback):
    """One tqdm bar for the whole run (a terminal only): the epoch, the running loss, the time
    left; and a line per epoch through ``log`` (``epoch 3/10  train_loss ...  (12.0s, eta 1m24s)``).

    ``name`` goes before "epoch" (``judge epoch 3/6``) and ``losses(row)`` says what the line
    reports of the history row (by default ``train_loss ...  val_loss ...``)."""

    def __init__(self, log: Callable[[str], None], bar: bool = True, name: str = "",
                 losses: Callable[[dict], str] | None = None):
        self.log, self.show = log, bar
        self.prefix = f"{name} " if name else ""
        self.losses = losses or _losses
        self.bar = None

    def on_fit_start(self, trainer) -> None:
        first, epochs = trainer.epoch + 1, trainer.train.epochs
        self.first, self.started = first, time.perf_counter()
        self.bar = progress_bar(trainer.steps_per_epoch * max(0, epochs - first + 1),
                                f"{self.prefix}epoch {first}/{epochs}", self.show and trainer.main)

    def on_interval(self, trainer, steps: int, loss: float) -> None:
        if self.bar is not None:
            desc = f"{self.prefix}epoch {trainer.epoch + 1}/{trainer.train.epochs}"
            self.bar.set_description(desc, refresh=False)
            self.bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
            self.bar.update(steps)

    def on_epoch_end(self, trainer, row: dict) -> None:
        if not trainer.main:
            return
        epoch, epochs = row["epoch"], trainer.train.epochs
        msg = f"{self.prefix}epoch {epoch}/{epochs}  {self.losses(row)}"
        # The time left: this session's mean epoch time, times the epochs still to go.
        eta = (time.perf_counter() - self.started) / (epoch - self.first + 1) * (epochs - epoch)
        write(self.log, msg + f"  ({row['seconds']:.1f}s, eta {duration(eta)})")

    def on_fit_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _losses(row: dict) -> str:
    msg = f"train_loss {row['train_loss']:.4f}"
    if row.get("val_loss") is not None:
        msg += f"  val_loss {row['val_loss']:.4f}"
    return msg


def history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for row in history for k in row))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def save_epoch(rd: RunDir, model, optimizers, config, state: dict) -> None:
    # The resume file is written first and alone decides where a resume starts.
    checkpoint.save_resume(rd, model, optimizers, state)
    checkpoint.save_weights(rd, model, config)
    write_text(rd.history, history_csv(state["history"]))


class Checkpoint(Callback):
    """The run directory (rank 0): ``config.json`` at the start; after every epoch the resume
    file (weights, every optimizer's state, the history), the weights and ``history.csv``."""

    def __init__(self, run_dir: RunDir):
        self.rd = run_dir

    def on_fit_start(self, trainer) -> None:
        self.rd.path.mkdir(parents=True, exist_ok=True)
        write_text(self.rd.config, trainer.config.to_json())

    def on_epoch_end(self, trainer, row: dict) -> None:
        t0 = time.perf_counter()
        save_epoch(self.rd, trainer.model, trainer.optimizers, trainer.config, trainer.state())
        trainer.clock["checkpoint_s"] = trainer.clock.get("checkpoint_s", 0.0) + time.perf_counter() - t0


class Summary(Callback):
    """``summary.json`` after a finished fit (rank 0): parameters, epochs, seconds, the final
    losses, device, threads, precision, and where the time went (``timing``)."""

    def __init__(self, run_dir: RunDir, extra: dict | None = None):
        self.rd, self.extra = run_dir, extra or {}

    def on_fit_end(self, trainer) -> None:
        if trainer.failed is not None:
            return
        history, clock = trainer.history, trainer.clock
        timing = {k: round(clock.get(k, 0.0), 3) for k in ("data_s", "setup_s", "epochs_s", "val_s", "checkpoint_s")}
        if "start" in clock:
            timing["fit_s"] = round(time.perf_counter() - clock["start"], 3)
        write_json(self.rd.summary, {k: v for k, v in {
            "params": sum(p.numel() for p in trainer.model.parameters()), "epochs": trainer.epoch,
            "train_seconds": round(trainer.train_seconds, 3),
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "final_val_loss": history[-1]["val_loss"] if history else None,
            "device": str(trainer.device), "threads": torch.get_num_threads(), "precision": trainer.precision,
            "torch": torch.__version__,
            **self.extra,
            # Seconds spent by this process (api.train adds the evaluation's, the figures' and
            # the start-up's): epochs_s is the sum of history.csv's seconds of this session.
            "timing": timing,
        }.items() if v is not None})  # no None: no val split, no preset, no epoch trained


__all__ = ["Callback", "Checkpoint", "Progress", "Summary", "Validation", "evaluate_losses", "history_csv",
           "save_epoch"]
