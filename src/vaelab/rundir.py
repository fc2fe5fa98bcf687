"""The run directory: one object owns its file names, and says which files belong to which weights.

    RUN/config.json              the full configuration (rebuilds the model)
    RUN/model.safetensors        weights (+ the config in the metadata)
    RUN/checkpoint.safetensors   weights + optimizer + training state, for --resume
    RUN/history.csv              one row per epoch
    RUN/summary.json             parameters, epochs, time, device
    RUN/tensorboard/             TensorBoard event files (train --log tensorboard)
    RUN/mlflow.json              the MLflow run this run logs to (train --log mlflow)
    RUN/eval.json                the evaluation (vaelab eval)
    RUN/samples_eval.json        scores of generated samples (vaelab eval-samples)
    RUN/steer_eval.json          the steering benchmark (vaelab steer-bench)
    RUN/figures/NAME.png         every figure a command draws
    RUN/samplers/                fitted latent samplers (arrays + JSON, never pickle)
    RUN/priors/                  learned priors (the PixelCNN of fit-prior)

Provenance. The first five are the run's primary files; the training's logs (``LOGS``: the
two after them) follow the training as history.csv does, across resumes, and belong to no one
set of weights. Every other file vaelab writes
into a run directory is *derived* from the weights and records which weights: the
checkpoint id, ``checkpoint_id(RUN/model.safetensors)``, the first 16 hex digits of the
SHA-256 of the weights file. It is stored as

    JSON files                   a top-level field "checkpoint_id" (eval.json, samplers/NAME.json
                                 for NAME.npz, onnx.json, samples_eval.json, inpaint_eval.json, ...)
    safetensors files            metadata "checkpoint_id" (priors/pixelcnn.safetensors)
    PNG files                    a tEXt chunk "vaelab-checkpoint-id" (figures/*.png, inpaint.png)
    ONNX files                   metadata_props "vaelab-checkpoint-id" (and onnx.json)
    report.html                  <meta name="vaelab-checkpoint-id" content="...">
    CSV, .npy, other .npz        a sidecar FILE.json with the field (``sidecar(path)``), written
                                 when the file lies in a run (export's CSV, detect's scores.csv and
                                 anomaly_maps.npy, sample --npz)

``recorded_id(path)`` reads it back from any of these. A reader of a derived file compares
it with the current weights' id: a fitted sampler is refit (with a one-line note), other
files are refused or left out in one line; a file that records no id (made by an older
vaelab) counts as stale.

Why a content hash and not a random id written into the weights' metadata at each save:
it needs nothing from the writer, so it also holds for weights saved by older versions,
copied in or replaced by hand, and equal weights get equal ids. It costs one read of the
weights file (about 1 GB/s), cached in-process by (path, inode, mtime, size).

``RunDir.prepare_fresh`` decides whether a fresh training may write into a folder and
clears an old run (``vaelab.api.train``'s overwrite): it removes only entries that are a
run's content and refuses a folder holding anything else.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from vaelab.errors import ConfigError, VaelabError

ID_FIELD = "checkpoint_id"  # JSON field and safetensors metadata key
ID_TEXT = "vaelab-checkpoint-id"  # PNG tEXt key, ONNX metadata_props key, HTML <meta> name
_ID_CACHE: dict[tuple, str] = {}


def checkpoint_id(weights: str | Path) -> str:
    """The id of a weights file: the first 16 hex digits of its SHA-256 (cached by path, inode,
    mtime and size, so a file replaced by an atomic save is hashed again)."""
    path = Path(weights)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _ID_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _ID_CACHE[key] = h.hexdigest()[:16]
    return _ID_CACHE[key]


def _png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file (read by hand: no image library needed)."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return out
        while True:
            head = f.read(8)
            if len(head) < 8:
                return out
            n, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind in (b"IDAT", b"IEND"):  # text chunks that matter come before the pixels
                return out
            data = f.read(n)
            f.seek(4, 1)  # CRC
            if kind == b"tEXt" and b"\0" in data:
                k, v = data.split(b"\0", 1)
                out[k.decode("latin-1")] = v.decode("latin-1")


def sidecar(path: str | Path) -> Path:
    """``FILE.json`` beside ``FILE``: the record of a file that cannot hold one itself (CSV, .npy)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _reads_as_mapping(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False


def _reads_as_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: a header length, then that JSON header."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= path.stat().st_size - 8:
                return False
            return isinstance(json.loads(f.read(n)), dict)
    except (OSError, ValueError):
        return False


def recorded_id(path: str | Path) -> str | None:
    """The checkpoint id a derived file records (see the module docstring), or None."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            d = json.loads(path.read_text())
            return d.get(ID_FIELD) if isinstance(d, dict) else None
        if suffix == ".npz" and path.with_suffix(".json").is_file():  # a fitted sampler: its parameters file
            return recorded_id(path.with_suffix(".json"))
        if suffix in (".npz", ".npy", ".csv"):
            return recorded_id(sidecar(path)) if sidecar(path).is_file() else None
        if suffix == ".png":
            return _png_text(path).get(ID_TEXT)
        if suffix in (".html", ".htm"):
            m = re.search(rf'<meta name="{ID_TEXT}" content="([0-9a-f]+)"', path.read_text(errors="replace"))
            return m.group(1) if m else None
        if suffix == ".safetensors":  # an 8-byte header length, then the JSON header (no tensors read)
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n < 100_000_000:
                    return None
                return (json.loads(f.read(n)).get("__metadata__") or {}).get(ID_FIELD)
        if suffix == ".onnx":
            # DecodeError: onnx's error for a file that is not ONNX
            import onnx
            from google.protobuf.message import DecodeError

            try:
                props = onnx.load(str(path), load_external_data=False).metadata_props
            except DecodeError:
                return None
            return next((p.value for p in props if p.key == ID_TEXT), None)
    except (OSError, ValueError, ImportError, AttributeError):
        return None
    return None


def refuse_run_file(path: str | Path, option: str) -> None:
    """Refuse, in one line, an output ``path`` that is, or whose record (``sidecar``) would be, a
    run's own training file (its config.json, model.safetensors, checkpoint, history.csv or
    summary.json): writing there would lose the run."""
    p = Path(path)
    if not RunDir(p.absolute().parent).is_run():
        return
    for name, what in ((p.name, f"{option} {path} is"), (sidecar(p).name, f"the record of {option} {path} would be")):
        if name in RunDir.PRIMARY:
            raise ConfigError(f"{what} the run's own {name}, which its training wrote; writing there would lose the "
                              "run: give another path")


class RunDir:
    CONFIG = "config.json"
    WEIGHTS = "model.safetensors"
    RESUME = "checkpoint.safetensors"
    HISTORY = "history.csv"
    SUMMARY = "summary.json"
    EVAL = "eval.json"
    SAMPLES_EVAL = "samples_eval.json"
    STEER_EVAL = "steer_eval.json"
    FIGURES = "figures"
    SAMPLERS = "samplers"
    PRIORS = "priors"
    PRIMARY = (CONFIG, WEIGHTS, RESUME, HISTORY, SUMMARY)  # the training's own files: never stamped
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow.json"
    LOGS = (TENSORBOARD, MLFLOW)  # the training's logs (train --log): its own too, never stamped
    # Entries other vaelab commands write into a run (besides any file that records a checkpoint
    # id, and folders holding one of OUTPUT_FILES: an ONNX export, an inpainting folder, a detect --out folder).
    DERIVED = (EVAL, SAMPLES_EVAL, STEER_EVAL, FIGURES, SAMPLERS, PRIORS, "report.html", "inpaint_eval.json",
               "disentanglement.json", "reconstructions.csv", "latents.csv", "onnx")
    OUTPUT_FILES = ("onnx.json", "inpaint_eval.json", "inpaint.png", "samples_eval.json", "steer_eval.json",
                    "eval.json", "anomaly_maps.npy", "anomaly_maps.png", "disentanglement.json", "scores_hist.png")
    TRASH = ".vaelab-replaced-"  # prefix of the hidden folder an overwrite empties the old run into

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def resume(self) -> Path:
        return self.path / self.RESUME

    @property
    def history(self) -> Path:
        return self.path / self.HISTORY

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def eval(self) -> Path:
        return self.path / self.EVAL

    @property
    def samples_eval(self) -> Path:
        return self.path / self.SAMPLES_EVAL

    @property
    def steer_eval(self) -> Path:
        return self.path / self.STEER_EVAL

    @property
    def figures(self) -> Path:
        return self.path / self.FIGURES

    def figure(self, name: str) -> Path:
        """``RUN/figures/NAME.png`` (NAME without the suffix)."""
        return self.figures / f"{name}.png"

    @property
    def samplers(self) -> Path:
        return self.path / self.SAMPLERS

    @property
    def priors(self) -> Path:
        return self.path / self.PRIORS

    def is_run(self) -> bool:
        return self.config.is_file()

    def trained(self) -> bool:
        """Whether training has saved anything here (weights or a resume checkpoint)."""
        return self.weights.is_file() or self.resume.is_file()

    # -------------------------------------------------------------- provenance
    def checkpoint_id(self) -> str | None:
        """The id of ``RUN/model.safetensors`` (None when there are no weights)."""
        return checkpoint_id(self.weights) if self.weights.is_file() else None

    @classmethod
    def owning(cls, path: str | Path, depth: int = 3) -> RunDir | None:
        """The run directory ``path`` lies in (its folder or one of the ``depth`` above it), or None."""
        p = Path(path).absolute().parent
        for _ in range(depth):
            rd = cls(p)
            if rd.is_run() and rd.weights.is_file():
                return rd
            p = p.parent
        return None

    def stale(self, path: str | Path, recorded: str | None = None) -> str | None:
        """Why the derived file ``path`` does not belong to the current weights (one phrase), or None.
        ``recorded``: the id it records, when the caller has read it already."""
        recorded = recorded_id(path) if recorded is None else recorded
        current = self.checkpoint_id()
        if not recorded:
            if Path(path).suffix.lower() == ".json" and not _reads_as_mapping(Path(path)):
                return "it does not read as a JSON mapping (a damaged file)"
            return "it records no checkpoint id (made by an older vaelab)"
        if current is None:
            return f"{self.path} has no {self.WEIGHTS}"
        if recorded != current:
            if not _reads_as_safetensors(self.weights):  # not retrained: the weights file itself is damaged
                return f"{self.weights} does not read as safetensors (a damaged file), so nothing is made from it"
            return f"it was made from other weights (checkpoint {recorded}, now {current})"
        return None

    def summary_stale(self) -> str | None:
        """Why summary.json does not describe the training as it stands (one phrase), or None: a
        resumed training that stopped part-way has written epochs to history.csv after the summary
        of the training before it."""
        try:
            epochs = json.loads(self.summary.read_text()).get("epochs")
            with open(self.history, newline="") as f:
                last = None
                for row in csv.DictReader(f):
                    last = row.get("epoch")
            last = int(last) if last is not None else None
        except (OSError, ValueError, TypeError, AttributeError, csv.Error):
            return None  # no summary or history to hold against each other (a damaged one says so where it is read)
        if last is None or epochs == last:
            return None
        return (f"it is of the training that ended at epoch {epochs}, and {self.HISTORY} goes on to epoch {last} "
                f"(a resumed training stopped part-way: `vaelab train --resume {self.path}` finishes it)")

    # -------------------------------------------------------------- a fresh run
    def _is_content(self, entry: Path) -> bool:
        """Whether a top-level entry is something vaelab writes into a run."""
        name = entry.name
        if name in self.PRIMARY or name in self.LOGS or name in self.DERIVED or name.startswith(self.TRASH):
            return True
        if name.startswith(".") and (name.endswith(".tmp") or name.startswith(".onnx-")):
            return True  # an atomic write's or an export's leftover
        if entry.is_dir():
            return any((entry / f).is_file() for f in self.OUTPUT_FILES)
        return entry.is_file() and recorded_id(entry) is not None

    def prepare_fresh(self, overwrite: bool = False, keep: tuple[str, ...] = ()) -> None:
        """Make this folder ready for a fresh training, or refuse in one line.

        A folder that does not exist or is empty is ready. One holding a trained run is
        refused unless ``overwrite``; then, as for a run that never finished an epoch, its
        content is cleared. A folder holding anything vaelab does not write (user files) is
        refused either way: nothing but a run's content is ever removed. ``keep``: names the
        caller owns in the folder (a sweep's trial.json, train.log), neither refused nor removed.

        Clearing moves the entries into one hidden folder inside the run (derived files first,
        config.json last) and deletes it; a process killed part-way leaves a run that can be
        overwritten again, or an empty folder plus the hidden one, which the next training removes."""
        if not self.path.is_dir():
            if self.path.exists():
                raise VaelabError(f"{self.path} is a file, not a folder; choose another --out")
            return
        entries = [e for e in self.path.iterdir() if e.name not in keep]
        if not entries:
            return
        primary = [e for e in entries if e.name in self.PRIMARY]
        if not primary and not all(e.name.startswith(self.TRASH) for e in entries):
            shown = ", ".join(sorted(e.name for e in entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise VaelabError(f"{self.path} is not empty and is not a vaelab run (it holds {shown}); "
                              "choose a new or empty folder for --out")
        if self.trained() and not overwrite:
            raise VaelabError(f"{self.path} already holds a run; --resume {self.path} (resume=True) to continue it, "
                              "--overwrite (overwrite=True) to replace it, or choose another --out")
        foreign = sorted(e.name for e in entries if not self._is_content(e))
        if foreign:
            raise VaelabError(f"{self.path} holds a run and files vaelab did not write ({', '.join(foreign[:5])}); "
                              "move them out, or choose another --out")
        trash = self.path / f"{self.TRASH}{uuid.uuid4().hex[:8]}"
        trash.mkdir()
        order = {name: i for i, name in enumerate(reversed(self.PRIMARY))}  # config.json last
        for e in sorted(entries, key=lambda e: (order.get(e.name, -1), e.name)):
            if e.name.startswith(self.TRASH):
                shutil.rmtree(e, ignore_errors=True)
            else:
                os.replace(e, trash / e.name)
        shutil.rmtree(trash)


__all__ = ["ID_FIELD", "ID_TEXT", "RunDir", "checkpoint_id", "recorded_id", "sidecar"]
