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
import os
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
from vaelab.data.cache import cache_options, scan
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
                               "batch_size": batch_size, "lr": lr, "seed": seed, "train_seconds": round(time.perf_counter() - t0, 1)})
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


# ------------------------------------------------------------------------- what a judge was trained on
IMAGE_OPTIONS = (("image_size", "image size", "original"), ("channels", "channels", "auto"),
                 ("crop", "crop", "none"), ("background", "background", "white"))


def _content(data: DataConfig) -> dict:
    """What identifies user data cheaply, without decoding it: for a folder (its train/ and test/
    when it has both, as ``load_data`` reads it) the class names, the number of image files and a
    hash of each one's relative path, size and mtime (the listing the folder cache checks on every
    use, ``vaelab.data.cache.scan``); for an .npz/.npy file its size and mtime. Nothing for the
    standard data sets, and nothing when the data cannot be listed (loading it then says why)."""
    try:
        if data.name == "folder" and data.path:
            root = Path(os.path.abspath(data.path))
            parts = ["train", "test"] if (root / "train").is_dir() and (root / "test").is_dir() else [""]
            h, classes, n = hashlib.sha256(), None, 0
            for part in parts:
                _, names, listing = scan(root / part if part else root)
                classes = names if part in ("", "train") else classes
                h.update(json.dumps([part, listing]).encode())
                n += len(listing)
            return {"classes": classes, "files": n, "fingerprint": h.hexdigest()[:16]}
        if data.name == "npz" and data.path:
            st = os.stat(data.path)
            raw = json.dumps([st.st_size, st.st_mtime_ns]).encode()
            return {"files": 1, "fingerprint": hashlib.sha256(raw).hexdigest()[:16]}
    except (OSError, VaelabError):
        pass
    return {}


def trained_on(data: DataConfig) -> dict:
    """The record a judge keeps of what it was trained on (``meta["trained_on"]`` in its eval.json
    and safetensors metadata): the data set, its path, its image options, and for user data the
    class names and a fingerprint of its files (``_content``). None values are left out."""
    o = cache_options(data.image_size, data.crop, data.background, data.channels)
    rec = {"data": data.name, "path": os.path.abspath(data.path) if data.path else None,
           **{k: o[k] for k, _, _ in IMAGE_OPTIONS}, **_content(data)}
    return {k: v for k, v in rec.items() if v is not None}


def _differences(meta: dict, want: dict, epochs: int | None) -> list[str]:
    """How a judge's record differs from ``want`` (``trained_on`` now) and ``epochs`` (None: any)."""
    rec, diffs = meta.get("trained_on") or {}, []
    if rec.get("data", want["data"]) != want["data"]:
        return [f"trained on {rec['data']}, not {want['data']}"]
    if "fingerprint" in want and rec:
        if rec.get("classes") != want.get("classes"):
            names = [", ".join(c) if c else "none" for c in (rec.get("classes"), want.get("classes"))]
            diffs.append(f"classes {names[0]}, not {names[1]} as now")
        elif rec.get("fingerprint") != want["fingerprint"]:
            diffs.append(f"{rec.get('files', 0):,} files that have changed since ({want['files']:,} now: "
                         "added, removed or modified)")
    if rec:
        for k, label, default in IMAGE_OPTIONS:
            if rec.get(k) != want.get(k):
                diffs.append(f"{label} {rec.get(k, default)}, not {want.get(k, default)}")
    if epochs is not None and meta.get("epochs") != epochs:
        diffs.append(f"{meta.get('epochs')} training epochs, not {epochs}")
    return diffs


def _judge_command(data: DataConfig, folder: Path, epochs: int | None) -> str:
    """The `vaelab judge` command that trains ``data``'s judge into ``folder``."""
    parts = ["vaelab judge --data", data.name]
    if data.path:
        parts += ["--data-path", str(data.path)]
    if data.image_size is not None:
        parts += ["--image-size", str(data.image_size)]
    for k, default in FOLDER_OPTIONS:
        if k != "image_size" and getattr(data, k) != default:
            parts.append(f"--set data.{k}={str(getattr(data, k)).lower() if k == 'skip_bad' else getattr(data, k)}")
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    return " ".join([*parts, "--out", str(folder), "--retrain"])


def get_judge(data: DataConfig, folder: str | Path | None = None, retrain: bool = False,
              log: Callable[[str], None] = print, epochs: int | None = None) -> Judge:
    """Load the judge from ``folder`` (default: the user cache, keyed by data set) or train it.

    A judge records what it was trained on (``trained_on``: the data set, its image options, for a
    folder or .npz a fingerprint of its files and the class names) and its epochs. One whose record
    does not match ``data`` now (or ``epochs``, when given: None takes a judge of any epochs and
    trains a new one for 6) is trained again when it is the cached default, with a note, and
    refused in one line when ``folder`` was given (``--judge``/``--out``), saying what differs and
    what to do. A cached judge of a folder or .npz made before judges kept this record is trained
    again too; one in a given folder is taken as it is (only its data set's name can be checked)."""
    given = folder is not None
    folder = Path(folder) if folder else cache_dir() / "judge" / judge_key(data)
    want = trained_on(data)
    if not retrain and (folder / "judge.safetensors").is_file():
        judge, key = load_judge(folder), judge_key(data)
        # A judge of another data set would give meaningless accuracies (a user folder's key also
        # hashes its path, so only a standard data set's name is held against it).
        if judge.meta.get("dataset") != key and {judge.meta.get("dataset"), key} & {"mnist", "fashion-mnist"}:
            raise VaelabError(f"the judge in {folder} was trained on {judge.meta.get('dataset')}, not {key}; "
                              f"pass another judge folder, or train one with `vaelab judge --data {data.name} --out DIR`")
        diffs = _differences(judge.meta, want, epochs)
        if not given and "trained_on" not in judge.meta and data.name in ("folder", "npz"):
            diffs.insert(0, "it does not record which files it was trained on (an older vaelab made it)")
        what = data.name + (f" {data.path}" if data.path else "")
        if not diffs:
            return judge
        if given:
            raise VaelabError(f"the judge in {folder} does not fit {what}: {'; '.join(diffs)}; train it again there "
                              f"with `{_judge_command(data, folder, epochs)}`, or pass another judge folder")
        log(f"note: the cached judge in {folder} does not fit {what} ({'; '.join(diffs)}); training it again")
    if RunDir(folder).config.is_file():  # its eval.json would replace the run's
        raise VaelabError(f"{folder} is a run directory, not a judge folder; pass another folder to --judge/--out "
                          "(or leave it out for the cached judge)")
    epochs = 6 if epochs is None else epochs
    # The judge trains on the standard split of the data set, whatever the run used.
    # The images are the run's (every folder option: size, channels, crop, background, skip_bad).
    judge_data = DataConfig(val="test" if data.name in ("mnist", "fashion-mnist") else "0.1",
                            **{k: getattr(data, k) for k in DATA_READ})
    announce(log, f"training the judge for {judge_key(data)}",
             why="a small CNN classifier that scores generated, inpainted and steered images; once per data set",
             cost=f"{epochs} epochs over its training images, a few minutes on a CPU for MNIST",
             where=f"cached in {folder} for every later use")
    judge = train_judge(load_data(judge_data), judge_key(data), epochs=epochs, log=log)
    judge.meta["trained_on"] = want  # listed before training: a file changed meanwhile makes it stale, not trusted
    save_judge(judge, folder)
    log(f"judge test accuracy {judge.accuracy:.4f}; saved in {folder}")
    return judge


def resolve_judge(data: DataConfig, judge=None, log: Callable[[str], None] = print) -> Judge:
    """``judge`` may be a loaded Judge, a judge folder, or None (the cached default for ``data``)."""
    if judge is not None and hasattr(judge, "predict"):
        return judge
    return get_judge(data, folder=judge, log=log)
