"""fit(): train the run a config describes, through the one trainer.

``fit`` assembles a run: it reads the data, builds the model from the config, and hands
both to ``Trainer`` (training/trainer.py: the loop, which knows no model) with the run's
callbacks: validation, the progress bar and epoch lines, the checkpoint each epoch and
the summary (training/callbacks.py), plus the caller's (loggers). ``resume=True``
restores the weights and every optimizer's state from the last checkpoint and gives the
same weights as an uninterrupted run. Under torchrun every process runs this on its
share of each batch (``training/distributed.py`` holds the plumbing; a single process
never touches it): rank 0 writes the run directory, every rank stops together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaelab.config import RunConfig
from vaelab.configure import resolve_run
from vaelab.data import ImageSet, Splits, load_data
from vaelab.data.sets import check_given
from vaelab.errors import CheckpointError, ConfigError, DataError, VaelabError
from vaelab.models import build_model, count_params
from vaelab.rundir import RunDir
from vaelab.training import checkpoint
from vaelab.training.callbacks import (
    Checkpoint,
    Progress,
    Summary,
    Validation,
    evaluate_losses,
    save_epoch,
)
from vaelab.training.distributed import RankFailed, Ranks, session
from vaelab.training.precision import (
    resolve_device,  # noqa: F401  (imported from here by callers)
    resolve_precision,
)
from vaelab.training.trainer import Trainer, epoch_seed, make_adam


@dataclass
class FitResult:
    model: torch.nn.Module
    config: RunConfig  # the resolved config (input shape, classes filled in), a copy of the caller's
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    splits: Splits | None = None
    main: bool = True  # the process that writes (False on the other ranks of a multi-process run)
    trainer: Trainer | None = None  # the trainer it ran (its callbacks, optimizers and clock)


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """The Adam of a model with one optimisation step (all its parameters), as the trainer makes it."""
    return make_adam(model.parameters(), config.train)


def fit(config: RunConfig, run_dir: str | Path | None = None, splits: Splits | None = None,
        resume: bool = False, log: Callable[[str], None] = print, callbacks: Sequence = (),
        splits_from_config: bool = False) -> FitResult:
    """Train the model ``config`` describes; checkpoint into ``run_dir`` each epoch.

    ``splits``: train on these images instead of loading ``config.data``. They are checked
    first (``vaelab.data.sets.check_given``), and the run records that its data came from the
    caller (summary.json ``data_given``), so ``Run.load`` asks for them rather than reading
    ``config.data`` as if the run had been trained on it. ``splits_from_config=True`` says they
    are what ``config.data`` loads (the caller loaded them already), so the run can reload them.

    ``config`` is not changed: the resolved copy (input shape and classes filled in from
    the data) is ``FitResult.config`` and ``RUN/config.json``. The loop seeds torch's random
    generator from ``train.seed`` and gives the caller's generator state back afterwards.
    ``callbacks`` (``vaelab.training.callbacks.Callback``) run after the run's own.

    Started by torchrun, each process trains on its share of every batch (``train.batch_size``
    is the global batch) and only rank 0 logs and writes."""
    # Built and checked as build_config does (a config assembled in code too): an option the
    # model, objective or data would not read is an error. A copy: the caller's is not changed.
    config = resolve_run(config.copy())
    try:
        with session(config.train.device) as (ranks, device), \
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _fit(config.copy(), device, ranks, run_dir, splits, resume, log if ranks.main else _silent,
                        callbacks, given=splits is not None and not splits_from_config)
    except RankFailed as e:  # a multi-process run that another process ended: where to continue from
        raise RankFailed(f"{e}{checkpoint.resume_note(run_dir)}") from e.__cause__


def _silent(msg: str) -> None:
    pass


def _fit(config: RunConfig, device: torch.device, ranks: Ranks, run_dir, splits: Splits | None, resume: bool,
         log: Callable[[str], None], callbacks: Sequence, given: bool) -> FitResult:
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    rd = RunDir(run_dir) if run_dir is not None else None
    out = rd if ranks.main else None  # where this process writes: rank 0 alone
    if out is not None and not resume and out.trained():  # vaelab.train cleared it first when asked to overwrite
        raise VaelabError(f"{out} already holds a trained run; resume=True continues it, vaelab.train(..., "
                          "overwrite=True) replaces it, or give another run_dir")
    start = time.perf_counter()
    if given:
        check_given(splits)
    splits = splits if splits is not None else ranks.main_first(lambda: load_data(config.data, log=log, seed=t.seed))
    train = splits.train.to(device)
    val = splits.val.to(device) if splits.val is not None else None
    data_s = time.perf_counter() - start
    shape = list(train.shape)
    if config.model.input_shape is None:
        config.model.input_shape = shape
    elif list(config.model.input_shape) != shape:
        raise ConfigError(f"model.input_shape is {config.model.input_shape} but the data has images of {shape}")
    labels = _labels(config, splits, train) if config.model.uses_labels else None

    torch.manual_seed(t.seed)
    model = build_model(config.model).to(device)
    if model.conditional and not resume:
        model.class_log_prior.copy_(_class_log_prior(labels, config.model.num_classes))
    precision = resolve_precision(t.precision, device)
    n, bs = len(train), t.batch_size
    _check_shares(n, bs, ranks)
    # An objective estimated from the minibatch is validated on batches of the training size
    # (Objective.minibatch; a rank's share of it under torchrun): the same estimator as
    # train_loss, at an epoch's cost.
    val_batch = -(-bs // ranks.world) if model.objective.minibatch else t.eval_batch_size
    runs: list = [Validation(val, val_batch, seed=t.seed, labels=labels is not None)] if val is not None else []
    runs.append(Progress(log, bar=t.progress))
    if out is not None:
        runs += [Checkpoint(out), Summary(out, {
            "preset": config.preset, "data_memory_mapped": train.memory_mapped,
            # class names (folders, .npz string labels): commands take --class NAME by them
            **({"classes": list(splits.classes)} if splits.classes else {}),
            **({"data_given": True} if given else {}),
            **({"processes": ranks.world} if ranks.world > 1 else {})})]
    trainer = Trainer(model, train, t, device=device, callbacks=[*runs, *callbacks], labels=labels is not None,
                      precision=precision, ranks=ranks, config=config, run_dir=rd.path if rd else None, log=log)
    if resume:
        if rd is None or not rd.resume.is_file():
            raise CheckpointError(f"nothing to resume in {run_dir}: no {RunDir.RESUME}")
        trainer.restore(checkpoint.load_resume(rd, model, trainer.optimizers))
        log(f"resuming {run_dir} after epoch {trainer.epoch}")
    procs = f"; {ranks.world} processes" if ranks.world > 1 else ""
    mapped = " (read per batch from the memory-mapped cache)" if train.memory_mapped else ""
    d = config.data
    source = ("data given to fit()" if given else f"data {d.name}" + (f" {d.path}" if d.path else "")
              + (" (data.limit: a seeded random subset)" if d.limit else ""))
    log(f"model {config.model.kind}/{config.model.arch}: {count_params(model):,} parameters; {source}: "
        f"{n:,} training images {tuple(shape)}{mapped}; device {device}; precision {precision}{procs}")
    trainer.clock.update(start=start, data_s=data_s, setup_s=time.perf_counter() - start - data_s)
    trainer.fit()
    return FitResult(model=model, config=config, history=trainer.history, run_dir=rd.path if rd else None,
                     splits=splits, main=ranks.main, trainer=trainer)


def _check_shares(n: int, bs: int, ranks: Ranks) -> None:
    """Every rank needs images in every batch (each takes part in every gradient all-reduce)."""
    last = n - (math.ceil(n / bs) - 1) * bs
    if ranks.world > 1 and min(bs, last) < ranks.world:
        raise ConfigError(f"with {ranks.world} processes every batch needs at least {ranks.world} images, and "
                          f"train.batch_size {bs} (the global batch) over {n:,} images leaves {min(bs, last)} in "
                          "the smallest; change --batch-size (or --limit)")


def _labels(config: RunConfig, splits: Splits, train: ImageSet) -> torch.Tensor:
    """Training labels (N,) for a conditional model or a label predictor; fills in ``model.num_classes``."""
    m = config.model
    why = (f"model.predictor_weight={m.predictor_weight:g}" if m.condition == "none"
           else f"a conditional model (model.kind={m.kind}, model.condition={m.condition})")
    if train.y is None:
        where = config.data.path or config.data.name
        fix = "set model.predictor_weight=0" if m.condition == "none" else "train an unconditional model"
        raise DataError(f"{why} needs labelled training data, and {where} has no labels "
                        f"(use image sub-folders per class, or y in the .npz), or {fix}")
    if int(train.y.min()) < 0:
        raise DataError(f"labels must be 0, 1, 2, ... for {why}; {config.data.name} has {int(train.y.min())}")
    seen = int(train.y.max()) + 1
    for s in (splits.val, splits.test):
        if s is not None and s.y is not None and len(s):
            seen = max(seen, int(s.y.max()) + 1)
    if m.num_classes is None:
        m.num_classes = max(seen, len(splits.classes or []), 2)
    elif seen > m.num_classes:
        raise ConfigError(f"model.num_classes is {m.num_classes} but the data has labels up to {seen - 1}")
    return train.y


def _class_log_prior(labels: torch.Tensor, k: int) -> torch.Tensor:
    """log p(y) from the training label frequencies (add-one smoothed: no class gets -inf)."""
    counts = torch.bincount(labels.cpu(), minlength=k).double() + 1
    return (counts / counts.sum()).log().float()


__all__ = ["FitResult", "epoch_seed", "evaluate_losses", "fit", "make_optimizer", "save_epoch"]
