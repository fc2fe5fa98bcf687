"""The judge: a small CNN classifier that scores generated, inpainted or steered images.

Trained once per labelled data set and cached under ``~/.cache/vaelab/judge/NAME``
(safetensors weights + JSON). Its penultimate-layer features define the Frechet
classifier distance (FCD): the Frechet distance between Gaussians fitted to the
features of two image sets, as FID does with Inception features (an in-domain
classifier is the usual choice for MNIST-like data, and Inception weights cannot be
downloaded everywhere).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import FOLDER_OPTIONS, DataConfig, TrainConfig
from vaelab.data import Splits, load_data
from vaelab.data.download import cache_dir
from vaelab.errors import CheckpointError, DataError, VaelabError
from vaelab.evaluation.metrics import frechet_distance
from vaelab.io import write_json
from vaelab.progress import announce
from vaelab.rundir import RunDir
from vaelab.tensorfiles import load_tensors, save_tensors
from vaelab.training.callbacks import Progress
from vaelab.training.trainer import Trainer

FEATURES = 128


class JudgeNet(nn.Module):
    """Conv 32 - pool - Conv 64 - pool - Dense 128 (features) - Dense classes."""

    def __init__(self, channels: int, size: tuple[int, int], classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (size[0] // 4) * (size[1] // 4), FEATURES), nn.ReLU(),
        )
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


@dataclass
class Judge:
    net: JudgeNet
    meta: dict

    @property
    def accuracy(self) -> float:
        return self.meta["accuracy"]

    @torch.no_grad()
    def _map(self, fn: Callable, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        self.net.eval()
        return torch.cat([fn(x[i:i + batch_size].float()) for i in range(0, len(x), batch_size)])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(self.net, x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class index per image (N,); images (N, C, H, W) in [0, 1]."""
        return self.logits(x).argmax(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, 128)."""
        return self._map(self.net.features, x)

    def feature_stats(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        f = self.features(x).double().numpy()
        return f.mean(0), np.cov(f, rowvar=False)

    def fcd(self, x1: torch.Tensor, x2: torch.Tensor) -> float:
        """Frechet classifier distance between two image sets."""
        return frechet_distance(*self.feature_stats(x1), *self.feature_stats(x2))


def _shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (one shift per batch: cheap, and
    enough augmentation for a 99% MNIST classifier), from torch's random stream (which the
    trainer seeds per epoch)."""
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,)))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


class JudgeFit(nn.Module):
    """The judge as the trainer trains a model: ``forward(x, y) -> {"loss": cross-entropy per
    image}`` on randomly shifted images."""

    def __init__(self, net: JudgeNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **_) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.net(_shift(x)), y, reduction="none")}


def train_judge(splits: Splits, name: str, epochs: int = 6, batch_size: int = 128, lr: float = 2e-3,
                seed: int = 0, log: Callable[[str], None] = print, callbacks: Sequence = ()) -> Judge:
    """Train the judge on ``splits.train`` (labels required) and measure test accuracy.

    It trains through the one trainer (``vaelab.training.trainer.Trainer``): Adam at a 1cycle
    learning rate peaking at ``lr`` (``train.lr_schedule=onecycle``), a line per epoch;
    ``callbacks`` run after the progress one."""
    train, test = splits.train, splits.test or splits.val
    if train.y is None:
        raise DataError(f"the judge needs labelled data, and {name} has no labels")
    if test is None or test.y is None:
        raise DataError(f"the judge needs a labelled test or validation split to report accuracy ({name})")
    classes = int(max(int(train.y.max()), int(test.y.max())) + 1)
    torch.manual_seed(seed)
    c, h, w = train.shape
    net = JudgeNet(c, (h, w), classes)
    t0 = time.perf_counter()
    settings = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule="onecycle", seed=seed,
                           device="cpu", precision="fp32")
    progress = Progress(log, name="judge", losses=lambda row: f"loss {row['train_loss']:.4f}")
    Trainer(JudgeFit(net), train.to("cpu"), settings, labels=True, callbacks=[progress, *callbacks], log=log).fit()
    judge = Judge(net.eval(), {"dataset": name, "classes": classes, "shape": [c, h, w], "epochs": epochs,
                               "seed": seed, "train_seconds": round(time.perf_counter() - t0, 1)})
    judge.meta["accuracy"] = float((judge.predict(test.float()) == test.y).float().mean())
    judge.meta["n_train"], judge.meta["n_test"] = len(train), len(test)
    return judge


def save_judge(judge: Judge, folder: str | Path) -> None:
    folder = Path(folder)
    save_tensors(folder / "judge.safetensors", judge.net.state_dict(), {"meta": json.dumps(judge.meta)})
    write_json(folder / "eval.json", judge.meta)


def load_judge(folder: str | Path) -> Judge:
    path = Path(folder) / "judge.safetensors"
    meta_path = Path(folder) / "eval.json"
    if not path.is_file() or not meta_path.is_file():
        raise CheckpointError(f"{folder} holds no judge (judge.safetensors + eval.json); train one with `vaelab judge`")
    tensors, _ = load_tensors(path)
    meta = json.loads(meta_path.read_text())
    c, h, w = meta["shape"]
    net = JudgeNet(c, (h, w), meta["classes"])
    try:
        net.load_state_dict(tensors)
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"{path} does not hold a judge for {meta.get('dataset')}: {e}") from None
    return Judge(net.eval(), meta)


# The data options a judge reads (get_judge); the others (classes, val, limit, ...) are a run's own.
DATA_READ = ("name", "path", "data_dir", "download", *(k for k, _ in FOLDER_OPTIONS))


def judge_key(data: DataConfig) -> str:
    """Cache key: the data set name, plus a hash of the path for user data."""
    if data.name in ("mnist", "fashion-mnist"):
        return data.name
    raw = f"{data.name}:{Path(data.path or '').resolve()}:{data.image_size}:{data.channels}"
    # A crop or background changes the images; at their defaults the key is what it was before
    # they counted, so a cached judge stays valid.
    raw += "".join(f":{k}={getattr(data, k)}" for k, default in (("crop", None), ("background", "white"))
                   if getattr(data, k) != default)
    return f"{data.name}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def get_judge(data: DataConfig, folder: str | Path | None = None, retrain: bool = False,
              log: Callable[[str], None] = print, epochs: int = 6) -> Judge:
    """Load the judge from ``folder`` (default: the user cache, keyed by data set) or train it."""
    folder = Path(folder) if folder else cache_dir() / "judge" / judge_key(data)
    if not retrain and (folder / "judge.safetensors").is_file():
        judge, want = load_judge(folder), judge_key(data)
        # A judge of another data set would give meaningless accuracies (a user folder's key also
        # hashes its path, so only a standard data set's name is held against it).
        if judge.meta.get("dataset") != want and {judge.meta.get("dataset"), want} & {"mnist", "fashion-mnist"}:
            raise VaelabError(f"the judge in {folder} was trained on {judge.meta.get('dataset')}, not {want}; "
                              f"pass another judge folder, or train one with `vaelab judge --data {data.name} --out DIR`")
        return judge
    if RunDir(folder).config.is_file():  # its eval.json would replace the run's
        raise VaelabError(f"{folder} is a run directory, not a judge folder; pass another folder to --judge/--out "
                          "(or leave it out for the cached judge)")
    # The judge trains on the standard split of the data set, whatever the run used.
    # The images are the run's (every folder option: size, channels, crop, background, skip_bad).
    judge_data = DataConfig(val="test" if data.name in ("mnist", "fashion-mnist") else "0.1",
                            **{k: getattr(data, k) for k in DATA_READ})
    announce(log, f"training the judge for {judge_key(data)}",
             why="a small CNN classifier that scores generated, inpainted and steered images; once per data set",
             cost=f"{epochs} epochs over its training images, a few minutes on a CPU for MNIST",
             where=f"cached in {folder} for every later use")
    judge = train_judge(load_data(judge_data), judge_key(data), epochs=epochs, log=log)
    save_judge(judge, folder)
    log(f"judge test accuracy {judge.accuracy:.4f}; saved in {folder}")
    return judge


def resolve_judge(data: DataConfig, judge=None, log: Callable[[str], None] = print) -> Judge:
    """``judge`` may be a loaded Judge, a judge folder, or None (the cached default for ``data``)."""
    if judge is not None and hasattr(judge, "predict"):
        return judge
    return get_judge(data, folder=judge, log=log)
