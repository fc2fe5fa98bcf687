"""fit(): the one training loop, for every model.

The model's forward returns per-image ``loss`` and its parts; the loop knows nothing
else about it. Data lives in memory as one uint8 tensor and batches are taken by
index. The loop tells the objective how far training has come (``progress`` in
[0, 1]) and sets the learning rate from the schedule. Each epoch ends with an atomic
checkpoint; ``resume=True`` continues from the last one and gives the same weights as
an uninterrupted run (every epoch reseeds the RNG from (seed, epoch), so no RNG state
has to be saved). The loss is read back from the device once per logging interval,
never per step (a per-step ``.item()`` stalls a GPU): a NaN is caught at the end of
its interval, and never checkpointed. Under torchrun every process runs this loop on its
share of each batch (``training/distributed.py`` holds the plumbing; a single process
never touches it): rank 0 writes the run directory, every rank stops together.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaelab.config import RunConfig, check_options_used
from vaelab.data import ImageSet, Splits, load_data
from vaelab.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from vaelab.io import write_json, write_text
from vaelab.models import build_model, count_params
from vaelab.progress import bar as progress_bar
from vaelab.progress import duration, write
from vaelab.rundir import RunDir
from vaelab.training import checkpoint
from vaelab.training.distributed import RankFailed, Ranks, session
from vaelab.training.precision import (
    compute_precision,
    forward_context,
    resolve_device,  # noqa: F401  (imported from here by callers)
    resolve_precision,
)
from vaelab.training.schedules import PER_STEP, lr_at

CHECK_EVERY = 50  # steps between reads of the running loss (finiteness check, progress bar)


@dataclass
class FitResult:
    model: torch.nn.Module
    config: RunConfig  # the resolved config (input shape, classes filled in), a copy of the caller's
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    splits: Splits | None = None
    main: bool = True  # the process that writes (False on the other ranks of a multi-process run)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    t = config.train
    # fused=True: one kernel updates all parameters; on CPU this alone cuts the mlp-vae
    # step time by about a third compared with the default for-each implementation.
    return torch.optim.Adam(model.parameters(), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                            weight_decay=t.weight_decay, fused=True)


def apply_settings(opt: torch.optim.Optimizer, config: RunConfig) -> None:
    """The config's optimizer settings win over those restored from a checkpoint: a run
    resumed with ``--lr 1e-4`` trains at 1e-4 (the schedule then sets it per epoch)."""
    t = config.train
    for g in opt.param_groups:
        g.update(lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps, weight_decay=t.weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def uses_labels(model) -> bool:
    return bool(model.conditional or model.has_predictor)


@torch.no_grad()
def evaluate_losses(model: torch.nn.Module, data: ImageSet, batch_size: int, device: torch.device,
                    seed: int = 0) -> dict[str, float]:
    """Mean per-image loss parts over ``data`` (posterior sampled with a fixed seed).

    Labels go in as in training (conditional models, label predictors), so ``val_loss``
    and ``train_loss`` in history.csv measure the same thing.
    """
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = data.y.to(device) if uses_labels(model) and data.y is not None else None
    sums: dict[str, float] = {}
    for i in range(0, len(data), batch_size):
        x = data.batch(slice(i, i + batch_size), device)
        y = None if labels is None else labels[i:i + batch_size]
        for k, v in model(x, y, generator=gen, dataset_size=len(data)).items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
    model.train()
    return {k: v / len(data) for k, v in sums.items()}


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for row in history for k in row))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def fit(config: RunConfig, run_dir: str | Path | None = None, splits: Splits | None = None,
        resume: bool = False, log: Callable[[str], None] = print) -> FitResult:
    """Train the model ``config`` describes; checkpoint into ``run_dir`` each epoch.

    ``config`` is not changed: the resolved copy (input shape and classes filled in from
    the data) is ``FitResult.config`` and ``RUN/config.json``. The loop seeds torch's random
    generator from ``train.seed`` and gives the caller's generator state back afterwards.

    Started by torchrun, each process trains on its share of every batch (``train.batch_size``
    is the global batch) and only rank 0 logs and writes."""
    check_options_used(config)  # an option the model, objective or data would not read is an error
    try:
        with session(config.train.device) as (ranks, device), \
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _fit(config.copy(), device, ranks, run_dir, splits, resume, log if ranks.main else _silent)
    except RankFailed as e:  # a multi-process run that another process ended: where to continue from
        raise RankFailed(f"{e}{checkpoint.resume_note(run_dir)}") from e.__cause__


def _silent(msg: str) -> None:
    pass


def _fit(config: RunConfig, device: torch.device, ranks: Ranks, run_dir, splits: Splits | None, resume: bool,
         log: Callable[[str], None]) -> FitResult:
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    rd = RunDir(run_dir) if run_dir is not None else None
    out = rd if ranks.main else None  # where this process writes: rank 0 alone
    clock = {"start": time.perf_counter(), "epochs_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0}  # summary's timing
    splits = splits if splits is not None else ranks.main_first(lambda: load_data(config.data, log=log, seed=t.seed))
    train = splits.train.to(device)
    val = splits.val.to(device) if splits.val is not None else None
    clock["data_s"] = time.perf_counter() - clock["start"]
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
    model.train()
    opt = make_optimizer(model, config)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    if resume:
        if rd is None or not rd.resume.is_file():
            raise CheckpointError(f"nothing to resume in {run_dir}: no {RunDir.RESUME}")
        state = checkpoint.load_resume(rd, model, opt)
        apply_settings(opt, config)
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    if out is not None:
        out.path.mkdir(parents=True, exist_ok=True)
        write_text(out.config, config.to_json())
    precision = resolve_precision(t.precision, device)
    procs = f"; {ranks.world} processes" if ranks.world > 1 else ""
    mapped = " (read per batch from the memory-mapped cache)" if train.memory_mapped else ""
    d = config.data
    source = f"data {d.name}" + (f" {d.path}" if d.path else "") + (" (data.limit: a seeded random subset)" if d.limit else "")
    log(f"model {config.model.kind}/{config.model.arch}: {count_params(model):,} parameters; {source}: "
        f"{len(train):,} training images {tuple(shape)}{mapped}; device {device}; precision {precision}{procs}")

    n, bs = len(train), t.batch_size
    steps = math.ceil(n / bs)
    _check_shares(n, bs, ranks)
    net = ranks.wrap(model, device)  # what the steps call: DDP over the model with several ranks
    clock["setup_s"] = time.perf_counter() - clock["start"] - clock["data_s"]
    history: list[dict] = state["history"]
    first = state["epoch"] + 1
    # One bar for the whole run (a terminal only): the epoch, the running loss, the time left.
    bar = progress_bar(steps * (t.epochs - first + 1), f"epoch {first}/{t.epochs}", t.progress and ranks.main)
    started = time.perf_counter()
    try:
        for epoch in range(first, t.epochs + 1):
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(t.seed, epoch))
            perm = torch.randperm(n, device=device)
            shuffled = train.shuffled(perm)  # this epoch's images (and labels) in order
            ranks.seed(epoch_seed(t.seed, epoch))  # several ranks: each its own noise from here
            set_lr(opt, lr_at(t.lr_schedule, t.lr, epoch, t.epochs, gamma=t.lr_gamma))
            sums: torch.Tensor | None = None
            keys: list[str] = []
            if bar is not None:
                bar.set_description(f"epoch {epoch}/{t.epochs}", refresh=False)
            with compute_precision(precision, device):
                for step in range(steps):
                    sl = ranks.part(step * bs, min((step + 1) * bs, n))  # the batch, or this rank's share
                    x = shuffled.batch(sl)
                    y = None if labels is None else shuffled.y[sl]
                    if t.lr_schedule in PER_STEP:
                        set_lr(opt, lr_at(t.lr_schedule, t.lr, epoch, t.epochs, step / steps, gamma=t.lr_gamma))
                    progress = ((epoch - 1) + step / steps) / t.epochs
                    with forward_context(precision, device):
                        parts = net(x, y, progress=progress, dataset_size=n)
                    loss = ranks.batch_loss(parts["loss"], min(bs, n - step * bs))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if t.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                    opt.step()
                    part = torch.stack([v.detach().sum() for v in parts.values()])
                    sums = part if sums is None else sums + part
                    keys = list(parts)
                    if (step + 1) % CHECK_EVERY == 0 or step == steps - 1:
                        total = ranks.sum(sums)  # all ranks' sums (one small all-reduce); sums when alone
                        _check_finite(total, epoch, step, rd)  # one device sync per interval
                        if bar is not None:
                            bar.set_postfix(loss=f"{float(total[0]) / min(n, (step + 1) * bs):.2f}", refresh=False)
                    if bar is not None:
                        bar.update(1)
            seconds = time.perf_counter() - t0
            clock["epochs_s"] += seconds
            row = {"epoch": epoch, "train_loss": None, "val_loss": None, "seconds": round(seconds, 3),
                   "lr": opt.param_groups[0]["lr"]}
            for k, v in zip(keys, (total / n).tolist()):  # the last interval's total is the epoch's
                row["train_loss" if k == "loss" else f"train_{k}"] = v
            if val is not None and ranks.main:  # the others go on; they wait at the next step's all-reduce
                t_val = time.perf_counter()
                for k, v in evaluate_losses(model, val, t.eval_batch_size, device, seed=t.seed).items():
                    row["val_loss" if k == "loss" else f"val_{k}"] = v
                clock["val_s"] += time.perf_counter() - t_val
            history.append(row)
            state = {"epoch": epoch, "history": history, "train_seconds": state["train_seconds"] + seconds}
            msg = f"epoch {epoch}/{t.epochs}  train_loss {row['train_loss']:.4f}"
            if row["val_loss"] is not None:
                msg += f"  val_loss {row['val_loss']:.4f}"
            # The time left: this session's mean epoch time, times the epochs still to go.
            eta = (time.perf_counter() - started) / (epoch - first + 1) * (t.epochs - epoch)
            write(log, msg + f"  ({seconds:.1f}s, eta {duration(eta)})")
            if out is not None:
                t_save = time.perf_counter()
                save_epoch(out, model, opt, config, state)
                clock["checkpoint_s"] += time.perf_counter() - t_save
    finally:
        if bar is not None:
            bar.close()
    if out is not None:
        write_json(out.summary, {k: v for k, v in {
            "params": count_params(model), "epochs": state["epoch"],
            "train_seconds": round(state["train_seconds"], 3),
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "final_val_loss": history[-1]["val_loss"] if history else None,
            "device": str(device), "threads": torch.get_num_threads(), "precision": precision,
            "torch": torch.__version__,
            "preset": config.preset,
            "data_memory_mapped": train.memory_mapped,
            **({"processes": ranks.world} if ranks.world > 1 else {}),
            # Seconds spent by this process (api.train adds the evaluation's, the figures' and
            # the start-up's): epochs_s is the sum of history.csv's seconds of this session.
            "timing": {k: round(clock[k], 3) for k in ("data_s", "setup_s", "epochs_s", "val_s", "checkpoint_s")}
            | {"fit_s": round(time.perf_counter() - clock["start"], 3)},
        }.items() if v is not None})  # no None: no val split, no preset, no epoch trained
    model.eval()
    return FitResult(model=model, config=config, history=history, run_dir=rd.path if rd else None, splits=splits,
                     main=ranks.main)


def _check_finite(sums: torch.Tensor, epoch: int, step: int, rd: RunDir | None) -> None:
    if bool(torch.isfinite(sums).all()):
        return
    kept = (f"; the last good checkpoint (epoch {epoch - 1}) is kept in {rd}" if rd is not None and epoch > 1
            else "")
    raise TrainingDiverged(f"the loss became {float(sums[0])} at epoch {epoch}, by step {step + 1}{kept}; "
                           "lower --lr, set --set train.grad_clip=1.0, or check the data")


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


def save_epoch(rd: RunDir, model, opt, config: RunConfig, state: dict) -> None:
    # The resume file is written first and alone decides where a resume starts.
    checkpoint.save_resume(rd, model, opt, state)
    checkpoint.save_weights(rd, model, config)
    write_text(rd.history, _history_csv(state["history"]))


__all__ = ["FitResult", "apply_settings", "epoch_seed", "evaluate_losses", "fit", "make_optimizer", "save_epoch"]
