"""Shared fixtures for the vaelab test suite.

Everything here is small on purpose: the suite must run in well under two minutes
on a 2-core machine that is also used for benchmarks. Real MNIST / Fashion-MNIST are
only read by tests that ask for ``mnist_dir`` / ``fashion_dir``; those skip with a
clear message when ``$VAELAB_DATA`` is unset or does not hold the files.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

# Before torch is imported anywhere: no progress bars, one thread (the machine is shared).
os.environ["VAELAB_NO_PROGRESS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# IDX type codes, written here from the format description (not taken from vaelab).
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


# ----------------------------------------------------------------------------- IDX writer
def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    a = np.asarray(array)
    if a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder(">"))
    code = _IDX_CODES[a.dtype]
    header = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
    return header + a.tobytes()


def write_idx_file(path: str | os.PathLike, array: np.ndarray, gz: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip it when ``gz`` (default: when the name ends in .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gz if gz is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def write_idx():
    """``write_idx(path, array, gz=None)``: write an IDX file (gzip when the name ends in .gz)."""
    return write_idx_file


def make_idx_dataset(root: Path, name: str = "mnist", n_train: int = 20, n_test: int = 10,
                     size: int = 28, seed: int = 0, gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four IDX files of a tiny fake ``name`` data set under ``root/name``."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, a in arrays.items():
        write_idx_file(root / name / (stem + (".gz" if gz else "")), a, gz=gz)
    return arrays


@pytest.fixture
def idx_dataset():
    """``idx_dataset(root, name='mnist', ...)``: write a tiny fake IDX data set; returns its arrays."""
    return make_idx_dataset


# ----------------------------------------------------------------------------- synthetic images
def make_shapes(n: int = 256, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 (n, size, size) images of simple shapes, labels 0-3:
    0 filled square, 1 disc, 2 plus sign, 3 horizontal bar; random position and size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    x = np.zeros((n, size, size), dtype=np.uint8)
    y = np.arange(n) % 4
    rng.shuffle(y)
    for i in range(n):
        r = int(rng.integers(size // 8 + 1, size // 4 + 1))
        cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
        if y[i] == 0:
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif y[i] == 1:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif y[i] == 2:
            m = ((abs(yy - cy) <= 1) & (abs(xx - cx) <= r)) | ((abs(xx - cx) <= 1) & (abs(yy - cy) <= r))
        else:
            m = (abs(yy - cy) <= max(1, r // 3)) & (abs(xx - cx) <= r + 2)
        x[i][m] = int(rng.integers(160, 256))
    return x, y.astype(np.int64)


@pytest.fixture(scope="session")
def shapes_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (256, 28, 28), y int64 (256,)) synthetic shapes, labels 0-3."""
    return make_shapes()


@pytest.fixture(scope="session")
def shapes_npz(tmp_path_factory) -> Path:
    """The synthetic shapes (``shapes_arrays``) saved as ``shapes.npz`` with keys x and y."""
    return save_shapes(tmp_path_factory.mktemp("shapes") / "shapes.npz", 256, seed=0)


def save_shapes(path: Path, n: int, seed: int) -> Path:
    """``make_shapes(n, seed=seed)`` saved as an .npz with keys x and y."""
    x, y = make_shapes(n, seed=seed)
    np.savez(path, x=x, y=y)
    return path


def train_tiny(root: Path, *extra: str) -> Path:
    """A 1-epoch VAE (mlp 784-8-2, bce) on 64 labelled synthetic shapes, trained into ROOT/run
    (``extra``: more overrides); for tests that change a run's files, each on its own copy."""
    from vaelab.api import train
    from vaelab.configure import build_config

    npz = save_shapes(root / "shapes.npz", 64, seed=0)
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={npz}", "data.val=none", "model.kind=vae", "model.arch=mlp",
        "model.hidden=8", "model.latent_dim=2", "train.epochs=1", "train.batch_size=64", "train.device=cpu",
        "train.progress=false", *extra])
    train(cfg, root / "run", evaluate_after=False, log=lambda *_: None)
    return root / "run"


# ----------------------------------------------------------------------------- small configs
@pytest.fixture
def tiny_config(shapes_npz):
    """``tiny_config(*overrides)``: a small, fast RunConfig on the synthetic shapes:
    mlp VAE 784-32-2, 2 epochs, batch 64, no validation, CPU."""
    from vaelab.configure import build_config

    def make(*overrides: str):
        # model.hidden is an mlp option: a conv config given here would refuse it (not read)
        mlp = [] if "model.arch=conv" in overrides else ["model.hidden=32"]
        base = ["data.name=npz", f"data.path={shapes_npz}", "data.val=none",
                "model.kind=vae", "model.arch=mlp", *mlp, "model.latent_dim=2",
                "train.epochs=2", "train.batch_size=64", "train.device=cpu", "train.progress=false",
                "train.eval_batch_size=128"]
        return build_config(None, None, base + list(overrides))

    return make


# ----------------------------------------------------------------------------- environment
@pytest.fixture
def no_data_env(tmp_path, monkeypatch) -> Path:
    """No $VAELAB_DATA and an empty $XDG_CACHE_HOME: nothing to find but what a test puts there.
    Returns the cache base folder (vaelab looks in ``<it>/vaelab``)."""
    cache = tmp_path / "xdg-cache"
    cache.mkdir()
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def _real_data_dir(name: str) -> Path:
    root = os.environ.get("VAELAB_DATA")
    if not root:
        pytest.skip(f"real {name} not available: set VAELAB_DATA to a folder holding {name}/ "
                    f"with the four IDX files ({', '.join(IDX_FILES)}, .gz or raw)")
    folder = Path(root) / name
    missing = [s for s in IDX_FILES if not ((folder / s).is_file() or (folder / f"{s}.gz").is_file())]
    if missing:
        pytest.skip(f"real {name} not available: {folder} lacks {', '.join(missing)}")
    return Path(root)


@pytest.fixture
def mnist_dir() -> Path:
    """The root (``$VAELAB_DATA``) holding real ``mnist/``; skips when absent."""
    return _real_data_dir("mnist")


@pytest.fixture
def fashion_dir() -> Path:
    """The root (``$VAELAB_DATA``) holding real ``fashion-mnist/``; skips when absent."""
    return _real_data_dir("fashion-mnist")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for ``python -m vaelab`` subprocesses: quiet, single-threaded."""
    env = dict(os.environ)
    env.update({"VAELAB_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONWARNINGS": "ignore"})
    env.pop("VAELAB_DEBUG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shapes_npz):
    """A small VAE (latent 4) trained for 3 epochs on the labelled shapes, with a test split."""
    from vaelab.api import train
    from vaelab.configure import build_config

    run_dir = tmp_path_factory.mktemp("runs") / "vae4"
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vae", "model.arch=mlp",
        "model.hidden=64", "model.latent_dim=4", "train.epochs=3", "train.batch_size=32", "train.device=cpu",
        "train.progress=false"])
    return train(cfg, run_dir, evaluate_after=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def trained_cvae(tmp_path_factory, shapes_npz):
    """A small conditional VAE (latent 4, one-hot labels) trained for 3 epochs on the labelled shapes."""
    from vaelab.api import train
    from vaelab.configure import build_config

    run_dir = tmp_path_factory.mktemp("runs") / "cvae4"
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=cvae", "model.arch=mlp",
        "model.hidden=64", "model.latent_dim=4", "train.epochs=3", "train.batch_size=32", "train.device=cpu",
        "train.progress=false"])
    return train(cfg, run_dir, evaluate_after=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def shapes_judge(tmp_path_factory, shapes_npz):
    """The judge classifier of the synthetic shapes, trained once for the whole session (16
    epochs on 192 of the 256 shapes: 0.92-0.95 held-out accuracy over six seeds, where 8
    gave 0.78-0.84) and saved: (Judge, its folder, the splits it saw)."""
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.evaluation.judge import save_judge, train_judge

    folder = tmp_path_factory.mktemp("judge") / "shapes"
    splits = load_data(DataConfig(name="npz", path=str(shapes_npz), val="0.25"))
    judge = train_judge(splits, "shapes", epochs=16, batch_size=32, log=lambda *_: None)
    save_judge(judge, folder)
    return judge, folder, splits


# ----------------------------------------------------------------------------- CLI helpers
def assert_one_line_error(rc: int, out: str, err: str) -> str:
    """A user error: exit code 2 and exactly one line ``vaelab: error: ...``, no traceback."""
    assert "Traceback" not in out + err, out + err
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vaelab: error: "), err
    return lines[0]


def run_main(capsys, *args) -> tuple[int, str, str]:
    """Run ``vaelab ARGS`` in-process; (exit code, stdout, stderr)."""
    from vaelab.cli import main

    try:
        main([str(a) for a in args])
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def cli_error(capsys, *args) -> str:
    return assert_one_line_error(*run_main(capsys, *args))


# ----------------------------------------------------------------------------- image folder helpers
def one_line(e: pytest.ExceptionInfo) -> str:
    """The message of a raised user error, checked to be one line."""
    msg = str(e.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


def save_image(path: Path, im, **kw) -> Path:
    """Save a PIL image, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def prep_folder(folder, **kw):
    """vaelab.data.cache.prepare_folder in this process, no progress bar."""
    from vaelab.data.cache import prepare_folder

    return prepare_folder(folder, workers=kw.pop("workers", 0), progress=False, **kw)


# ----------------------------------------------------------------------------- image pairs for metrics
def image_pairs(kind: str, c: int, h: int, w: int, n: int = 3, waves: tuple[int, int] = (3, 2)):
    """(n, c, h, w) float64 image pairs in [0, 1] of several kinds, for metrics against their oracles:
    random, noisy (x and x plus noise), shapes (partly similar), checker (a board and its shifted
    copy), smooth (sine waves of ``waves`` frequencies and a brightness/contrast change of them),
    blurred (the same waves and a 5x5 box blur of them: structure lost at the fine scales only)."""
    rng = np.random.default_rng({"random": 0, "noisy": 1, "shapes": 2, "checker": 3, "smooth": 4, "blurred": 5}[kind])
    if kind == "random":
        x, y = rng.random((n, c, h, w)), rng.random((n, c, h, w))
    elif kind == "noisy":
        x = rng.random((n, c, h, w))
        y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    elif kind == "shapes":
        s, _ = make_shapes(2 * n * c, size=max(h, w), seed=5)
        s = s[:, :h, :w].astype(np.float64) / 255
        x, y = s[: n * c].reshape(n, c, h, w), s[n * c:].reshape(n, c, h, w)
        y = 0.6 * y + 0.4 * x  # partly similar
    elif kind == "checker":
        yy, xx = np.mgrid[0:h, 0:w]
        board = ((yy // 3 + xx // 3) % 2).astype(np.float64)
        x = np.broadcast_to(board, (n, c, h, w)).copy()
        y = np.roll(x, shift=1, axis=-1) * 0.8 + 0.1
    else:
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        fx, fy = waves
        base = np.stack([np.sin(fx * xx + k) * np.cos(fy * yy - k) for k in range(n * c)]).reshape(n, c, h, w)
        x = (base + 1) / 2
        if kind == "smooth":
            y = np.clip(0.7 * x + 0.2 + rng.normal(0, 0.02, x.shape), 0, 1)
        else:
            y = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 5, stride=1, padding=2,
                                               count_include_pad=False).numpy()
    return x, y


# ----------------------------------------------------------------------------- model configs
def model_config(**kw):
    """A ModelConfig from keyword values, built as a config is (``vaelab.models.resolve_model``):
    old flat names of part options (``k=5``, ``vamp_components=10``) are accepted as they are
    in YAML and overrides, and moved into their part's section."""
    import dataclasses

    from vaelab.config import ModelConfig
    from vaelab.models import resolve_model

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    options = {k: v for k, v in kw.items() if k not in fields}
    cfg = ModelConfig(**{k: v for k, v in kw.items() if k in fields and k != "options"},
                      options={**kw.get("options", {}), **options})
    return resolve_model(cfg)
