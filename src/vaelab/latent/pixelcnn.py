"""A learned prior over a VQ-VAE's code grid: a small gated PixelCNN (van den Oord et al.
2016, "Conditional image generation with PixelCNN decoders"), optionally class-conditional.

``fit_pixelcnn(run)`` encodes the run's training images to code indices (N, h, w) and
trains the PixelCNN on them by cross-entropy, through the one trainer; ``save`` / ``load`` keep it beside the run
(``RUN/priors/pixelcnn.safetensors``, its settings in the metadata: never a pickle);
``sample`` draws index grids in raster order, which the VQ-VAE's codebook and decoder turn
into images (``vaelab sample --sampler pixelcnn``).

Causality comes from masked kernels: a vertical stack that sees only the rows above, and
a horizontal stack that sees the pixels to the left in the same row, joined so that no
blind spot remains (the "gated" PixelCNN). The first layer's masks exclude the centre;
the tests check that no logit depends on its own or a later position.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import TrainConfig
from vaelab.data import TensorSet
from vaelab.errors import CheckpointError, VaelabError
from vaelab.progress import announce
from vaelab.rundir import ID_FIELD, RunDir
from vaelab.tensorfiles import load_tensors, read_metadata, save_tensors
from vaelab.training import checkpoint
from vaelab.training.callbacks import Callback, Progress
from vaelab.training.trainer import Trainer

FILE = "pixelcnn.safetensors"
# A fit in progress: RUN/priors/pixelcnn-fit/checkpoint.safetensors after every epoch (the network,
# Adam's state, the epoch and the settings), removed once the prior is saved. A killed
# `vaelab fit-prior` run again with the same settings continues from it.
FIT_DIR = "pixelcnn-fit"


@dataclass
class PixelCNNConfig:
    codes: int  # K, the codebook size
    height: int
    width: int
    channels: int = 64
    layers: int = 8
    kernel: int = 5
    num_classes: int | None = None  # class-conditional when set


class GatedLayer(nn.Module):
    """One gated layer: tanh(a) * sigmoid(b) on a vertical and a horizontal stack."""

    def __init__(self, c: int, k: int, first: bool, num_classes: int | None):
        super().__init__()
        self.first = first
        self.vertical = nn.Conv2d(c, 2 * c, (k // 2 + 1, k), padding=(k // 2, k // 2))
        self.horizontal = nn.Conv2d(c, 2 * c, (1, k // 2 + 1), padding=(0, k // 2))
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)
        self.label = nn.Embedding(num_classes, 2 * c) if num_classes else None
        # Masks: the vertical kernel's last row is the current row and the horizontal kernel's
        # last column the current pixel; the first layer must not see either.
        vm = torch.ones_like(self.vertical.weight)
        hm = torch.ones_like(self.horizontal.weight)
        if first:
            vm[:, :, -1] = 0
            hm[:, :, :, -1] = 0
        self.register_buffer("v_mask", vm, persistent=False)
        self.register_buffer("h_mask", hm, persistent=False)

    @staticmethod
    def _gate(a: torch.Tensor) -> torch.Tensor:
        t, s = a.chunk(2, dim=1)
        return torch.tanh(t) * torch.sigmoid(s)

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None):
        height, width = v.shape[-2:]
        # Padding k//2 on every side then keeping the first rows / columns makes each output
        # see only what lies above (vertical) or to the left (horizontal).
        hv = F.conv2d(v, self.vertical.weight * self.v_mask, self.vertical.bias,
                      padding=self.vertical.padding)[:, :, :height, :]
        hh = F.conv2d(h, self.horizontal.weight * self.h_mask, self.horizontal.bias,
                      padding=self.horizontal.padding)[:, :, :, :width]
        bias = 0 if cond is None else self.label(cond)[:, :, None, None]
        v_new = self._gate(hv + bias)
        out = self._gate(self.v_to_h(hv) + hh + bias)
        h_new = self.h_out(out) + (0 if self.first else h)  # a residual after the first layer
        return v_new, h_new


class GatedPixelCNN(nn.Module):
    """p(indices | class) = prod over positions in raster order of p(index | earlier ones)."""

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.codes, cfg.channels)
        self.layers = nn.ModuleList(GatedLayer(cfg.channels, cfg.kernel, i == 0, cfg.num_classes)
                                    for i in range(cfg.layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(cfg.channels, 2 * cfg.channels, 1), nn.ReLU(),
                                  nn.Conv2d(2 * cfg.channels, cfg.codes, 1))

    def forward(self, idx: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K, h, w) for index grids (B, h, w)."""
        x = self.embed(idx).permute(0, 3, 1, 2)  # (B, C, h, w)
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, y)
        return self.head(h)

    def nll(self, idx: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(indices) per grid (B,), in nats."""
        return F.cross_entropy(self(idx, y), idx, reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n index grids (n, h, w), drawn position by position in raster order."""
        device = self.embed.weight.device
        idx = torch.zeros(n, self.cfg.height, self.cfg.width, dtype=torch.long, device=device)
        for i in range(self.cfg.height):
            # Row i's logits depend on rows 0..i only (every convolution here is masked to look up
            # and left), so the pass runs on those rows: the same numbers, about 1.75x less work
            # over a 7 x 7 grid than passing the whole grid every time.
            for j in range(self.cfg.width):
                p = torch.softmax(self(idx[:, :i + 1], y)[:, :, i, j].float(), 1)
                idx[:, i, j] = torch.multinomial(p, 1, generator=generator)[:, 0]
        return idx


# ------------------------------------------------------------------------------------ fit, save, load
def code_indices(run, split: str, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The VQ-VAE's code indices (N, h, w) of a split's images, and their labels."""
    data = run.split(split)
    out = []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            out.append(run.model.posterior(data.batch(slice(i, i + batch_size), run.device)).indices.cpu())
    return torch.cat(out), data.y


def check_finished(run_dir: Path) -> None:
    """A prior is fit on a finished run only: not one still training, stopped or half deleted."""
    rd = RunDir(run_dir)
    if not rd.is_run() or not rd.weights.is_file():
        raise CheckpointError(f"{run_dir} holds no trained model (no {RunDir.CONFIG} or {RunDir.WEIGHTS}); "
                              "train one with `vaelab train`")
    summary = json.loads(rd.summary.read_text()) if rd.summary.is_file() else None
    planned = json.loads(rd.config.read_text())["train"]["epochs"]
    if summary is None or summary.get("epochs") != planned:
        done = summary.get("epochs") if summary else "an unknown number"
        raise VaelabError(f"{run_dir} is still training or stopped part-way ({done} of {planned} epochs); "
                          f"finish it with `vaelab train --resume {run_dir}`, then fit the prior")


class PriorFit(nn.Module):
    """The PixelCNN as the trainer trains a model: ``forward(idx, y) -> {"loss": NLL per code
    grid}`` (``y`` only when class-conditional)."""

    def __init__(self, net: GatedPixelCNN):
        super().__init__()
        self.net = net

    def forward(self, idx: torch.Tensor, y: torch.Tensor | None = None, **_) -> dict[str, torch.Tensor]:
        return {"loss": self.net.nll(idx, y)}


class _FitCheckpoint(Callback):
    """After every epoch: the fit's state in ``folder`` (``checkpoint.save_resume``: the
    network, Adam's state, and the trainer's state with the fit's ``settings``)."""

    def __init__(self, folder: Path, settings: dict):
        self.folder, self.settings = folder, settings

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        checkpoint.save_resume(self.folder, trainer.model, trainer.optimizers,
                               {**trainer.state(), "settings": self.settings})


def _resumable(folder: Path | None, settings: dict, epochs: int, log: Callable[[str], None]) -> int | None:
    """The epochs a killed fit in ``folder`` has done, when it can go on to ``epochs`` (None: start
    afresh). A checkpoint of other settings or weights is left to be overwritten, and said so; one
    of these settings that has done more epochs than ``epochs`` is refused (continuing it would
    train nothing and save a prior labelled with fewer epochs than its network had)."""
    if folder is None or (done := checkpoint.saved_epoch(folder)) is None:
        return None
    try:
        saved = json.loads(read_metadata(folder / RunDir.RESUME)["state"]).get("settings")
    except (CheckpointError, KeyError, ValueError):
        saved = None
    if saved != settings:
        log(f"note: {folder} holds a PixelCNN fit with other settings or of other weights; starting afresh")
        return None
    if done > epochs:
        raise VaelabError(f"{folder} holds a killed PixelCNN fit with these settings that has done {done} epochs, "
                          f"more than the {epochs} asked; ask --epochs {done} or more to continue it, or delete "
                          f"{folder} to start afresh with {epochs}")
    return done


def _resume_fit(trainer: Trainer, folder: Path, log: Callable[[str], None]) -> None:
    """Continue a killed fit from ``folder`` (``_resumable`` said it may)."""
    state = checkpoint.load_resume(folder, trainer.model, trainer.optimizers)
    state.pop("settings", None)
    trainer.restore(state)
    done = "" if trainer.epoch < trainer.train.epochs else f"; all {trainer.epoch} epochs are done, saving it"
    log(f"resuming the PixelCNN fit from epoch {trainer.epoch} ({folder}){done}")


def fit_pixelcnn(run, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, channels: int = 64,
                 layers: int = 8, kernel: int = 5, conditional: bool = False, seed: int = 0,
                 log: Callable[[str], None] = print, callbacks: Sequence = ()) -> tuple[GatedPixelCNN, dict]:
    """Train a PixelCNN on the run's training codes; report its NLL on the test split.

    It trains through the one trainer (``vaelab.training.trainer.Trainer``: Adam at a constant
    ``lr``), a line per epoch; ``callbacks`` run after the progress one. For a run with a
    folder, every epoch is checkpointed in ``RUN/priors/pixelcnn-fit/`` (``FIT_DIR``), and a
    fit with the same settings continues from there; ``save`` removes it.

    A continued fit may be asked for more epochs than its checkpoint has done (it goes on) or
    as many (it is returned as it is: a fit killed after its last epoch). Asked for fewer, it
    is refused (``VaelabError``: ask for at least as many, or delete ``RUN/priors/pixelcnn-fit/``
    to start afresh), not continued, since it would train nothing and the prior would claim
    fewer epochs than its network had; the work done is kept rather than silently thrown away.
    ``info["epochs"]`` is always the epochs the returned network was trained for."""
    from vaelab.models import require

    require(run.model, "codebook", "a PixelCNN prior")
    run.model.eval()
    idx, labels = code_indices(run, "train")
    if conditional and labels is None:
        raise VaelabError("a class-conditional PixelCNN needs labelled training images, and this run's data has none")
    k = run.model.cfg.opts("vq").codebook_size
    cfg = PixelCNNConfig(k, idx.shape[1], idx.shape[2], channels, layers, kernel,
                         int(labels.max()) + 1 if conditional else None)
    folder = RunDir(run.run_dir).priors / FIT_DIR if run.run_dir is not None else None
    # What must agree for a fit to continue another: the network, the optimisation, the weights it reads.
    same = {"config": asdict(cfg), "batch_size": batch_size, "lr": lr, "seed": seed, ID_FIELD: run.checkpoint_id}
    done = _resumable(folder, same, epochs, log)  # before the announcement: a refusal says nothing else
    torch.manual_seed(seed)
    net = GatedPixelCNN(cfg).to(run.device)
    steps = math.ceil(len(idx) / batch_size)
    where = f"written to {Path(run.run_dir) / 'priors' / FILE}" if run.run_dir is not None else None
    announce(log, f"fitting a PixelCNN prior on {len(idx):,} code grids {tuple(idx.shape[1:])}",
             why="sampling through the codebook draws codes from it", where=where,
             cost=f"{epochs} epochs of {steps:,} steps, minutes on a CPU (--epochs sets how many)")
    t0 = time.perf_counter()
    settings = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, precision="fp32")
    progress = Progress(log, name="pixelcnn", losses=lambda row: f"nll {row['train_loss']:.3f} nats per code grid")
    codes = TensorSet(idx, labels if conditional else None).to(run.device)
    saving = [_FitCheckpoint(folder, same)] if folder is not None else []
    trainer = Trainer(PriorFit(net), codes, settings, device=run.device, labels=conditional,
                      callbacks=[progress, *saving, *callbacks], log=log)
    if done is not None:
        _resume_fit(trainer, folder, log)
    trainer.fit()
    train_nll = trainer.history[-1]["train_loss"] if trainer.history else None
    net.eval()
    # "epochs": what the network was trained for (a resumed fit's too), which the refusal above keeps equal to ``epochs``
    info = {"config": asdict(cfg), ID_FIELD: run.checkpoint_id, "epochs": trainer.epoch, "batch_size": batch_size,
            "lr": lr, "seed": seed, "train_nll": train_nll, "train_seconds": round(time.perf_counter() - t0, 1)}
    split = run.default_split()
    if split != "train":
        test_idx, test_y = code_indices(run, split)
        with torch.no_grad():
            nll = [net.nll(test_idx[i:i + 500].to(run.device),
                           test_y[i:i + 500].to(run.device) if conditional else None).sum()
                   for i in range(0, len(test_idx), 500)]
        info.update({"test_split": split, "test_nll": float(sum(nll)) / len(test_idx)})
    return net, info


# Registry: `vaelab fit-prior --prior` -> its fit function (run, epochs=, ...) -> (network, info).
LEARNED_PRIORS: dict[str, Callable[..., tuple[GatedPixelCNN, dict]]] = {"pixelcnn": fit_pixelcnn}


def save(net: GatedPixelCNN, info: dict, run_dir: str | Path) -> Path:
    """``RUN/priors/pixelcnn.safetensors``; its metadata records the weights it was fit on
    (``info["checkpoint_id"]``, from ``fit_pixelcnn``)."""
    path = RunDir(run_dir).priors / FILE
    save_tensors(path, net.state_dict(), {"info": json.dumps(info), ID_FIELD: info.get(ID_FIELD) or ""})
    fit = RunDir(run_dir).priors / FIT_DIR  # the finished fit's checkpoint: no longer needed
    (fit / RunDir.RESUME).unlink(missing_ok=True)
    if fit.is_dir() and not any(fit.iterdir()):
        fit.rmdir()
    return path


def stale(run_dir: str | Path) -> str | None:
    """Why the run's PixelCNN prior does not belong to its weights (one phrase), or None."""
    return RunDir(run_dir).stale(RunDir(run_dir).priors / FILE)


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GatedPixelCNN, dict]:
    """The run's prior; one fit on other weights than RUN/model.safetensors now holds is refused."""
    path = RunDir(run_dir).priors / FILE
    if not path.is_file():
        raise VaelabError(f"{run_dir} has no PixelCNN prior ({path}); fit one with `vaelab fit-prior {run_dir}`")
    why = stale(run_dir)
    if why is not None:
        raise VaelabError(f"{path} does not belong to {RunDir(run_dir).weights}: {why}; "
                          f"fit it again with `vaelab fit-prior {run_dir}`")
    tensors, meta = load_tensors(path)
    info = json.loads(meta["info"])
    net = GatedPixelCNN(PixelCNNConfig(**info["config"]))
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match its own settings: {str(e).splitlines()[0]}") from None
    return net.to(device).eval(), info


__all__ = ["FILE", "LEARNED_PRIORS", "GatedPixelCNN", "PixelCNNConfig", "PriorFit", "check_finished", "code_indices",
           "fit_pixelcnn", "load", "save"]
