"""fit(): the one training loop, for every model.

The model's forward returns per-image ``loss`` and its parts; the loop knows nothing
else about it. Data lives in memory as one uint8 tensor and batches are taken by
index. Each epoch ends with an atomic checkpoint; ``resume=True`` continues from
the last one and gives the same weights as an uninterrupted run (every epoch
reseeds the RNG from (seed, epoch), so no RNG state has to be saved).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from vaelab.training import checkpoint
from vaelab.config import RunConfig
from vaelab.data import ImageSet, Splits, load_data
from vaelab.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from vaelab.io import write_json, write_text
from vaelab.models import build_model, count_params


@dataclass
class FitResult:
    model: torch.nn.Module
    config: RunConfig
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    splits: Splits | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" becomes "mixed" where the hardware computes bf16/TF32 natively, else "fp32"."""
    if precision != "auto":
        return precision
    native = torch.cuda.is_available() if device.type == "cuda" else _cpu_has_bf16()
    return "mixed" if native else "fp32"


@contextmanager
def compute_precision(precision: str, device: torch.device) -> Iterator[None]:
    """On CUDA under "mixed", let fp32 matmuls and convolutions use TF32 for the block.

    On CPU "mixed" is bf16 autocast around each forward pass (``forward_context``);
    parameters, optimizer state and losses stay fp32 either way. Autocast beat letting
    oneDNN compute fp32 products in bf16 (the previous CPU "mixed"): mlp-vae step at 2
    threads, medians of 5 alternating runs, 4.96 ms against 6.27 ms (fp32: 6.56 ms).
    """
    if precision != "mixed" or device.type != "cuda":
        yield
        return
    backends = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "tf32"
        yield
    finally:
        for b, old in zip(backends, saved):
            b.fp32_precision = old


def forward_context(precision: str, device: torch.device):
    """Context for one forward pass: bf16 autocast under "mixed" on CPU.

    It must be entered per step, never around a whole epoch: autocast caches the bf16
    copies of the weights until the outermost autocast region exits, so a long-lived
    region would keep using the weights of its first step while the optimizer moves on.
    """
    if device.type == "cpu" and precision == "mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def make_optimizer(model: torch.nn.Module, config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    t = config.train
    # fused=True: one kernel updates all parameters; on CPU this alone cuts the mlp-vae
    # step time by about a third compared with the default for-each implementation.
    return torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps, weight_decay=t.weight_decay, fused=True)


@torch.no_grad()
def evaluate_losses(model: torch.nn.Module, data: ImageSet, batch_size: int, device: torch.device,
                    seed: int = 0) -> dict[str, float]:
    """Mean per-image loss parts over ``data`` (posterior sampled with a fixed seed).

    With a label predictor and labelled ``data`` the loss includes the predictor term, as
    in training, so ``val_loss`` and ``train_loss`` in history.csv measure the same thing.
    """
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = data.y.to(device) if getattr(model, "has_predictor", False) and data.y is not None else None
    sums: dict[str, float] = {}
    for i in range(0, len(data), batch_size):
        x = data.batch(slice(i, i + batch_size), device)
        kw = {} if labels is None else {"y": labels[i:i + batch_size]}
        out = model(x, generator=gen, **kw) if model.is_vae else model(x, **kw)
        for k, v in out.items():
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
    """Train the model ``config`` describes; checkpoint into ``run_dir`` each epoch."""
    t = config.train
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = Path(run_dir) if run_dir is not None else None
    splits = splits if splits is not None else load_data(config.data)
    train = splits.train.to(device)
    val = splits.val.to(device) if splits.val is not None else None
    shape = list(train.shape)
    if config.model.input_shape is None:
        config.model.input_shape = shape
    elif list(config.model.input_shape) != shape:
        raise ConfigError(f"model.input_shape is {config.model.input_shape} but the data has images of {shape}")
    # Labels ride along only when the model has a label predictor to train.
    labels = _predictor_labels(config, splits, train) if config.model.predictor_weight > 0 else None

    torch.manual_seed(t.seed)
    model = build_model(config.model).to(device)
    model.train()
    opt = make_optimizer(model, config, device)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    if resume:
        if run_dir is None or not (run_dir / checkpoint.RESUME).is_file():
            raise CheckpointError(f"nothing to resume in {run_dir}: no {checkpoint.RESUME}")
        state = checkpoint.load_resume(run_dir, model, opt)
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / checkpoint.CONFIG, config.to_json())
    log(f"model {config.model.kind}/{config.model.arch}: {count_params(model):,} parameters; "
        f"{len(train):,} training images {tuple(shape)}; device {device}; "
        f"precision {resolve_precision(t.precision, device)}")

    n, bs = len(train), t.batch_size
    steps = math.ceil(n / bs)
    precision = resolve_precision(t.precision, device)
    history: list[dict] = state["history"]
    for epoch in range(state["epoch"] + 1, t.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(t.seed, epoch))
        perm = torch.randperm(n, device=device)
        # One gather per epoch (uint8, cheap), then each batch is a contiguous slice:
        # no per-step index gather in the hot loop.
        shuffled = ImageSet(train.x[perm], None if labels is None else labels[perm])
        sums: torch.Tensor | None = None
        bar = _progress(steps, f"epoch {epoch}/{t.epochs}", t.progress)
        with compute_precision(precision, device):
            for step in range(steps):
                x = shuffled.batch(slice(step * bs, (step + 1) * bs))
                warm = min(1.0, ((epoch - 1) + step / steps) / t.kl_warmup_epochs) if t.kl_warmup_epochs else 1.0
                with forward_context(precision, device):
                    if labels is None:
                        out = model(x, kl_scale=warm)
                    else:
                        out = model(x, kl_scale=warm, y=shuffled.y[step * bs:(step + 1) * bs])
                loss = out["loss"].mean()
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    kept = f"; the last good checkpoint (epoch {epoch - 1}) is kept in {run_dir}" if run_dir and epoch > 1 else ""
                    raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch}, step {step + 1}{kept}; "
                                           "lower --lr, set --set train.grad_clip=1.0, or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                part = torch.stack([v.detach().sum() for v in out.values()])
                sums = part if sums is None else sums + part
                if bar is not None:
                    bar.update(1)
                    if step % 20 == 0:
                        bar.set_postfix(loss=f"{loss_value:.2f}", refresh=False)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": None, "val_loss": None, "seconds": round(seconds, 3)}
        for k, v in zip(out.keys(), (sums / n).tolist()):
            row["train_loss" if k == "loss" else f"train_{k}"] = v
        if val is not None:
            for k, v in evaluate_losses(model, val, t.eval_batch_size, device, seed=t.seed).items():
                row["val_loss" if k == "loss" else f"val_{k}"] = v
        history.append(row)
        state = {"epoch": epoch, "history": history, "train_seconds": state["train_seconds"] + seconds}
        msg = f"epoch {epoch}/{t.epochs}  train_loss {row['train_loss']:.4f}"
        if row["val_loss"] is not None:
            msg += f"  val_loss {row['val_loss']:.4f}"
        log(msg + f"  ({seconds:.1f}s)")
        if run_dir is not None:
            save_epoch(run_dir, model, opt, config, state)
    if run_dir is not None:
        write_json(run_dir / "summary.json", {
            "params": count_params(model), "epochs": state["epoch"],
            "train_seconds": round(state["train_seconds"], 3),
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "final_val_loss": history[-1]["val_loss"] if history else None,
            "device": str(device), "threads": torch.get_num_threads(), "precision": precision,
            "torch": torch.__version__,
            "preset": config.preset,
        })
    model.eval()
    return FitResult(model=model, config=config, history=history, run_dir=run_dir, splits=splits)


def _predictor_labels(config: RunConfig, splits: Splits, train: ImageSet) -> torch.Tensor:
    """Training labels (N,) for the label predictor; fills in ``model.num_classes``."""
    if train.y is None:
        where = config.data.path or config.data.name
        raise DataError(f"model.predictor_weight={config.model.predictor_weight:g} needs labelled training data, "
                        f"and {where} has no labels (use image sub-folders per class, or y in the .npz), "
                        "or set model.predictor_weight=0")
    seen = int(train.y.max()) + 1
    for s in (splits.val, splits.test):
        if s is not None and s.y is not None and len(s):
            seen = max(seen, int(s.y.max()) + 1)
    if int(train.y.min()) < 0:
        raise DataError(f"labels must be 0, 1, 2, ... for the label predictor; {config.data.name} has "
                        f"{int(train.y.min())}")
    if config.model.num_classes is None:
        config.model.num_classes = max(seen, len(splits.classes or []), 2)
    elif seen > config.model.num_classes:
        raise ConfigError(f"model.num_classes is {config.model.num_classes} but the data has labels up to {seen - 1}")
    return train.y


def save_epoch(run_dir: Path, model, opt, config: RunConfig, state: dict) -> None:
    # The resume file is written first and alone decides where a resume starts.
    checkpoint.save_resume(run_dir, model, opt, state)
    checkpoint.save_weights(run_dir, model, config)
    write_text(run_dir / "history.csv", _history_csv(state["history"]))


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or os.environ.get("VAELAB_NO_PROGRESS"):
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs, pipes).
    return tqdm(total=total, desc=desc, leave=False, disable=None, mininterval=0.5)
