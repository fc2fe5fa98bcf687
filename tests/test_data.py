"""Data: IDX reader, data-set location and download, image folders, arrays, load_data."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IDX_FILES, idx_bytes
from vaelab.config import DataConfig
from vaelab.data import load_data
from vaelab.data import download as dl
from vaelab.data.idx import read_idx, read_idx_pair
from vaelab.data.cache import load_folder
from vaelab.data.images import load_array
from vaelab.errors import DataError


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


# ============================================================================ IDX reader
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_round_trip_uint8(tmp_path, write_idx, gz):
    a = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), a, gz=gz)
    b = read_idx(path)
    assert b.dtype == np.uint8 and b.shape == (7, 5, 4)
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("dtype", [np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_idx_other_types_are_native_and_writable(tmp_path, write_idx, dtype):
    a = (np.random.default_rng(1).standard_normal((3, 4)) * 100).astype(dtype)
    b = read_idx(write_idx(tmp_path / "x.idx", a))
    np.testing.assert_array_equal(b, a.astype(np.dtype(dtype).newbyteorder("=")))
    assert b.dtype.isnative
    b[0, 0] = 1  # a copy, not a read-only view of the file bytes


def test_idx_gzip_detected_by_magic_not_name(tmp_path, write_idx):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_idx(tmp_path / "labels-without-suffix", a, gz=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(path), a)


def _good_idx() -> bytes:
    return idx_bytes(np.random.default_rng(2).integers(0, 256, (4, 6, 6), dtype=np.uint8))


def _corrupt_gzip(raw: bytes) -> bytes:
    """A gzip file whose deflate stream is invalid (first block has the reserved type 11):
    gzip.decompress raises zlib.error on it, not OSError."""
    g = bytearray(gzip.compress(raw))
    g[10] = 0x07  # BFINAL=1, BTYPE=11 (reserved)
    blob = bytes(g)
    with pytest.raises(zlib.error):
        gzip.decompress(blob)
    return blob


BAD_IDX = {
    "wrong-magic": lambda: b"\x12\x34" + _good_idx()[2:],
    "unknown-type-code": lambda: b"\x00\x00\x07\x03" + _good_idx()[4:],
    "empty": lambda: b"",
    "truncated-header": lambda: _good_idx()[:9],
    "zero-dims": lambda: b"\x00\x00\x08\x00",
    "truncated-body": lambda: _good_idx()[:-5],
    "extra-bytes": lambda: _good_idx() + b"\x00\x00",
    "truncated-gzip": lambda: gzip.compress(_good_idx())[:40],
    "corrupt-gzip": lambda: _corrupt_gzip(_good_idx()),
    "gzip-bad-crc": lambda: gzip.compress(_good_idx())[:-8] + b"\xde\xad\xbe\xef" + gzip.compress(_good_idx())[-4:],
}


@pytest.mark.parametrize("kind", list(BAD_IDX))
def test_idx_bad_file_is_a_one_line_data_error_naming_it(tmp_path, kind):
    path = tmp_path / f"bad-{kind}-idx3-ubyte"
    path.write_bytes(BAD_IDX[kind]())
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert str(path) in one_line(e)


def test_idx_messages_say_what_is_wrong(tmp_path):
    p = tmp_path / "a"
    p.write_bytes(BAD_IDX["wrong-magic"]())
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)
    p.write_bytes(BAD_IDX["truncated-header"]())
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(p)
    p.write_bytes(BAD_IDX["truncated-body"]())
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(p)
    p.write_bytes(BAD_IDX["truncated-gzip"]())
    with pytest.raises(DataError, match="gzip"):
        read_idx(p)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_idx(tmp_path / "nope.gz")
    assert str(tmp_path / "nope.gz") in one_line(e)


def test_idx_pair_reads_images_and_int64_labels(tmp_path, write_idx):
    x = np.random.default_rng(3).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    xi, yi = read_idx_pair(write_idx(tmp_path / "i.gz", x), write_idx(tmp_path / "l.gz", y))
    np.testing.assert_array_equal(xi, x)
    assert yi.dtype == np.int64 and yi.tolist() == [3, 1, 4, 1, 5]


def test_idx_pair_count_mismatch_names_both_files(tmp_path, write_idx):
    xp = write_idx(tmp_path / "imgs.gz", np.zeros((5, 4, 4), np.uint8))
    yp = write_idx(tmp_path / "labs.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError) as e:
        read_idx_pair(xp, yp)
    msg = one_line(e)
    assert str(xp) in msg and str(yp) in msg and "5" in msg and "4" in msg


def test_idx_pair_wrong_ranks(tmp_path, write_idx):
    xp = write_idx(tmp_path / "imgs", np.zeros((5, 16), np.uint8))
    yp = write_idx(tmp_path / "labs", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="images"):
        read_idx_pair(xp, yp)
    xp = write_idx(tmp_path / "imgs", np.zeros((5, 4, 4), np.uint8))
    yp = write_idx(tmp_path / "labs", np.zeros((5, 1), np.uint8))
    with pytest.raises(DataError, match="labels"):
        read_idx_pair(xp, yp)


# ============================================================================ locate
def _touch_dataset(root: Path, name: str = "mnist", gz: bool = True) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    for stem in IDX_FILES:
        (root / name / (stem + (".gz" if gz else ""))).write_bytes(b"x")


def test_locate_search_order(tmp_path, no_data_env, monkeypatch):
    explicit, env_root, cache_root = tmp_path / "explicit", tmp_path / "env", no_data_env / "vaelab"
    for r in (explicit, env_root, cache_root):
        _touch_dataset(r)
    monkeypatch.setenv("VAELAB_DATA", str(env_root))

    def where(found):
        assert set(found) == set(IDX_FILES)
        roots = {p.parent.parent for p in found.values()}
        assert len(roots) == 1
        return roots.pop()

    assert where(dl.locate("mnist", str(explicit), download=False)) == explicit
    assert where(dl.locate("mnist", None, download=False)) == env_root
    monkeypatch.delenv("VAELAB_DATA")
    assert where(dl.locate("mnist", None, download=False)) == cache_root


def test_locate_falls_through_incomplete_roots_but_not_past_an_explicit_one(tmp_path, no_data_env, monkeypatch):
    explicit, env_root = tmp_path / "explicit", tmp_path / "env"
    _touch_dataset(explicit)
    (explicit / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()  # only 3 of 4 here
    _touch_dataset(env_root, gz=False)  # raw files count too
    monkeypatch.setenv("VAELAB_DATA", str(env_root))
    # a data_dir given is the only place looked in: not quietly $VAELAB_DATA instead
    with pytest.raises(DataError, match=f"mnist not found; place .* in {explicit / 'mnist'}"):
        dl.locate("mnist", str(explicit), download=False)
    found = dl.locate("mnist", None, download=False)  # without one: $VAELAB_DATA
    assert all(p.parent == env_root / "mnist" for p in found.values())
    assert found["train-images-idx3-ubyte"].name == "train-images-idx3-ubyte"
    monkeypatch.setenv("VAELAB_DATA", str(explicit))  # an incomplete $VAELAB_DATA falls through to the cache
    _touch_dataset(no_data_env / "vaelab")
    found = dl.locate("mnist", None, download=False)
    assert all(p.parent == no_data_env / "vaelab" / "mnist" for p in found.values())


def test_locate_prefers_gz_over_raw(tmp_path, no_data_env):
    _touch_dataset(tmp_path, gz=False)
    _touch_dataset(tmp_path, gz=True)
    found = dl.locate("mnist", str(tmp_path), download=False)
    assert all(p.suffix == ".gz" for p in found.values())


def test_locate_offline_absent_names_folder_and_files(tmp_path, no_data_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        dl.locate("fashion-mnist", str(empty), download=False)
    msg = one_line(e)
    assert str(empty / "fashion-mnist") in msg
    for stem in IDX_FILES:
        assert stem + ".gz" in msg


def test_locate_offline_absent_without_data_dir_names_cache(no_data_env):
    with pytest.raises(DataError) as e:
        dl.locate("mnist", None, download=False)
    assert str(no_data_env / "vaelab" / "mnist") in one_line(e)


def test_locate_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        dl.locate("cifar", None, download=False)


# ============================================================================ download (offline)
class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _tiny_mnist_blobs() -> dict[str, bytes]:
    """Tiny synthetic IDX files (uncompressed) for the four MNIST names."""
    rng = np.random.default_rng(5)
    return {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, 6, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, 3, dtype=np.uint8)),
    }


@pytest.fixture
def fake_server(monkeypatch):
    """Serve ``blobs[stem]`` (gzipped) for any mirror URL ending in ``stem.gz``; record the URLs.
    The expected SHA-256 of MNIST is patched to the hashes of these tiny files."""
    blobs = _tiny_mnist_blobs()
    served = {stem: gzip.compress(b) for stem, b in blobs.items()}
    calls: list[str] = []
    failing: set[str] = set()  # mirror prefixes that refuse connections

    def urlopen(url, timeout=None, **kw):
        calls.append(url)
        if any(url.startswith(m) for m in failing):
            raise urllib.error.URLError("connection refused (test)")
        stem = url.rsplit("/", 1)[1][:-3]
        return _FakeResponse(served[stem])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setitem(dl.SOURCES["mnist"], "sha256",
                        {stem: hashlib.sha256(b).hexdigest() for stem, b in blobs.items()})

    class Server:
        pass

    s = Server()
    s.blobs, s.served, s.calls, s.failing = blobs, served, calls, failing
    return s


def test_download_writes_verified_files_and_loads(tmp_path, no_data_env, fake_server):
    found = dl.locate("mnist", str(tmp_path), download=True)
    folder = tmp_path / "mnist"
    assert {p.name for p in folder.iterdir()} == {s + ".gz" for s in IDX_FILES}  # no temp files left
    for stem in IDX_FILES:
        assert found[stem] == folder / f"{stem}.gz"
        assert gzip.decompress(found[stem].read_bytes()) == fake_server.blobs[stem]
    mirror = dl.SOURCES["mnist"]["mirrors"][0]
    assert sorted(fake_server.calls) == sorted(mirror + s + ".gz" for s in IDX_FILES)
    # The downloaded files are what load_data then reads.
    splits = load_data(DataConfig(name="mnist", data_dir=str(tmp_path), download=False))
    assert len(splits.train) == 6 and len(splits.test) == 3 and splits.train.shape == (1, 28, 28)
    # Already there: no second download.
    fake_server.calls.clear()
    dl.locate("mnist", str(tmp_path), download=True)
    assert fake_server.calls == []


def test_download_goes_to_cache_without_data_dir(no_data_env, fake_server):
    found = dl.locate("mnist", None, download=True)
    assert all(p.parent == no_data_env / "vaelab" / "mnist" for p in found.values())


def test_download_falls_back_to_next_mirror(tmp_path, no_data_env, fake_server):
    m1, m2 = dl.SOURCES["mnist"]["mirrors"][:2]
    fake_server.failing.add(m1)
    found = dl.locate("mnist", str(tmp_path), download=True)
    assert all(p.is_file() for p in found.values())
    assert any(c.startswith(m1) for c in fake_server.calls) and any(c.startswith(m2) for c in fake_server.calls)


def test_download_all_mirrors_fail(tmp_path, no_data_env, fake_server):
    fake_server.failing.update(dl.SOURCES["mnist"]["mirrors"])
    with pytest.raises(DataError) as e:
        dl.locate("mnist", str(tmp_path), download=True)
    msg = one_line(e)
    assert "could not download" in msg and str(tmp_path / "mnist") in msg
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").iterdir())


def test_download_bad_hash_writes_nothing(tmp_path, no_data_env, fake_server):
    stem = "train-labels-idx1-ubyte"
    fake_server.served[stem] = gzip.compress(fake_server.blobs[stem][:-1] + b"\x07")  # one byte changed
    with pytest.raises(DataError) as e:
        dl.fetch("mnist", stem, tmp_path / "mnist")
    assert "SHA-256" in one_line(e)
    assert not (tmp_path / "mnist").exists() or list((tmp_path / "mnist").iterdir()) == []


def test_download_truncated_gzip_is_a_data_error(tmp_path, no_data_env, fake_server):
    stem = "t10k-images-idx3-ubyte"
    fake_server.served[stem] = fake_server.served[stem][:50]
    with pytest.raises(DataError):
        dl.fetch("mnist", stem, tmp_path / "mnist")
    assert not (tmp_path / "mnist" / f"{stem}.gz").exists()


def test_download_corrupt_gzip_is_a_data_error(tmp_path, no_data_env, fake_server):
    stem = "t10k-images-idx3-ubyte"
    fake_server.served[stem] = _corrupt_gzip(fake_server.blobs[stem])
    with pytest.raises(DataError):
        dl.fetch("mnist", stem, tmp_path / "mnist")
    assert not (tmp_path / "mnist" / f"{stem}.gz").exists()


def test_download_write_is_atomic(tmp_path, no_data_env, fake_server, monkeypatch):
    """A write that dies half-way leaves neither the file nor a temp file behind."""
    real_write = Path.write_bytes

    def half_write(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_write)
    stem = "train-images-idx3-ubyte"
    with pytest.raises(DataError) as e:
        dl.fetch("mnist", stem, tmp_path / "mnist")
    assert "cannot write" in one_line(e)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_renames_temp_file_over_target(tmp_path, no_data_env, fake_server, monkeypatch):
    import os

    import vaelab.io

    renames = []
    real_replace = os.replace

    def replace(src, dst):
        assert not Path(dst).exists(), "target visible before the rename"
        assert Path(src).read_bytes() == fake_server.served["train-labels-idx1-ubyte"]
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(vaelab.io.os, "replace", replace)
    dest = dl.fetch("mnist", "train-labels-idx1-ubyte", tmp_path / "mnist")
    assert len(renames) == 1
    src, dst = renames[0]
    assert dst == dest and src.parent == dest.parent and src != dest


# ============================================================================ image folders
def _save_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_folder_grey_pngs(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(imgs):
        _save_png(tmp_path / f"img{i}.png", a)
    x, y, classes, paths = load_folder(tmp_path)
    assert x.dtype == np.uint8 and x.shape == (3, 1, 6, 5)
    assert type(x) is np.ndarray  # an in-memory copy, not the cache's memmap
    assert y is None and classes is None
    for i, a in enumerate(imgs):
        np.testing.assert_array_equal(x[i, 0], a)
    assert [Path(p).name for p in paths] == ["img0.png", "img1.png", "img2.png"]


def test_folder_rgb_pngs(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (4, 7, 3), dtype=np.uint8) for _ in range(2)]
    for i, a in enumerate(imgs):
        _save_png(tmp_path / f"{i}.png", a)
    x, _, _, _ = load_folder(tmp_path)
    assert x.shape == (2, 3, 4, 7)
    for i, a in enumerate(imgs):
        np.testing.assert_array_equal(x[i], a.transpose(2, 0, 1))


def test_folder_channels_forced(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    _save_png(tmp_path / "a.png", a)
    x, _, _, _ = load_folder(tmp_path, channels=1)
    expected = np.asarray(Image.fromarray(a).convert("L"))
    np.testing.assert_array_equal(x[0, 0], expected)


def test_folder_class_subfolders_give_labels(tmp_path):
    layout = {"cat": 2, "ant": 1, "dog": 3}
    for cls, n in layout.items():
        for i in range(n):
            _save_png(tmp_path / cls / f"{i}.png", np.full((4, 4), 10 * len(cls) + i, np.uint8))
    (tmp_path / ".hidden").mkdir()  # ignored
    x, y, classes, paths = load_folder(tmp_path)
    assert classes == ["ant", "cat", "dog"]
    for label, p in zip(y.tolist(), paths):
        assert Path(p).parent.name == classes[label]
    assert np.bincount(y).tolist() == [1, 2, 3]
    assert x.shape == (6, 1, 4, 4)


def test_folder_image_size_resizes(tmp_path):
    _save_png(tmp_path / "a.png", np.full((10, 12), 77, np.uint8))
    _save_png(tmp_path / "b.png", np.full((20, 9), 200, np.uint8))
    x, _, _, _ = load_folder(tmp_path, image_size=8)
    assert x.shape == (2, 1, 8, 8)
    assert (x[0] == 77).all() and (x[1] == 200).all()  # a constant image stays constant


def test_folder_mixed_sizes_is_one_line_error(tmp_path):
    _save_png(tmp_path / "a.png", np.zeros((10, 12), np.uint8))
    _save_png(tmp_path / "b.png", np.zeros((20, 9), np.uint8))
    with pytest.raises(DataError) as e:
        load_folder(tmp_path)
    msg = one_line(e)
    assert "mixed sizes" in msg and "a.png" in msg and "b.png" in msg and "--image-size" in msg


def test_data_errors_name_files_relative_to_the_data_folder(tmp_path):
    # Two files called 0.png: the error names a/0.png and b/0.png, not 0.png twice.
    _save_png(tmp_path / "a" / "0.png", np.zeros((8, 8), np.uint8))
    _save_png(tmp_path / "b" / "0.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError) as e:
        load_folder(tmp_path)
    assert one_line(e).startswith(f"images in {tmp_path} have mixed sizes (8x8 in a/0.png, 10x10 in b/0.png)")
    with pytest.raises(DataError) as e:  # a crop larger than an image: the same naming
        load_folder(tmp_path, crop="center:9")
    assert f"larger than image a/0.png in {tmp_path} (8x8)" in one_line(e)
    (tmp_path / "b" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        load_folder(tmp_path)
    assert one_line(e).startswith(f"cannot read image b/0.png in {tmp_path}: ")


def test_train_and_test_folders_of_different_sizes_are_one_line_error(tmp_path):
    from vaelab.data.cache import prepare_splits

    for split, size in (("train", 8), ("test", 10)):
        _save_png(tmp_path / split / "a" / "0.png", np.zeros((size, size), np.uint8))
    with pytest.raises(DataError) as e:  # was a shape error deep in the model
        prepare_splits(tmp_path)
    assert one_line(e).startswith(f"images in {tmp_path} have mixed sizes (8x8 in train/, 10x10 in test/)")
    assert {s: c.images.shape for s, c in prepare_splits(tmp_path, image_size=6).items()} == {
        "train": (1, 1, 6, 6), "test": (1, 1, 6, 6)}


def test_folder_unreadable_file_is_one_line_error(tmp_path):
    _save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError) as e:
        load_folder(tmp_path)
    assert f"image b.png in {tmp_path}" in one_line(e) and "--skip-bad" in str(e.value)
    x, _, _, paths = load_folder(tmp_path, skip_bad=True)  # left out, the rest kept
    assert x.shape == (1, 1, 4, 4) and [Path(p).name for p in paths] == ["a.png"]


def test_folder_truncated_png_is_one_line_error(tmp_path):
    _save_png(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    blob = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as e:
        load_folder(tmp_path)
    assert "a.png" in one_line(e)


def test_folder_huge_image_is_a_data_error(tmp_path):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    (tmp_path / "huge.png").write_bytes(png)
    with pytest.raises(DataError):
        load_folder(tmp_path)


def test_folder_empty_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        load_folder(tmp_path)
    assert "holds no images" in one_line(e) and str(tmp_path) in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nowhere")


def test_load_data_folder_with_train_test_and_train_plus_test(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _save_png(tmp_path / split / cls / f"{i}.png", np.full((5, 5), i, np.uint8))
    s = load_data(DataConfig(name="folder", path=str(tmp_path)))
    assert len(s.train) == 6 and len(s.test) == 2 * 2 and s.val is s.test and s.classes == ["a", "b"]
    s2 = load_data(DataConfig(name="folder", path=str(tmp_path), train_split="train+test"))
    assert len(s2.train) == 10 and s2.val is None
    assert torch.equal(s2.train.x, torch.cat([s.train.x, s.test.x]))
    assert torch.equal(s2.train.y, torch.cat([s.train.y, s.test.y]))


def test_load_data_folder_needs_path():
    with pytest.raises(DataError, match="data.path"):
        load_data(DataConfig(name="folder"))


# ============================================================================ arrays
def _grey(n=3, h=5, w=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def _rgb(n=3, h=5, w=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


ARRAY_CASES = {
    # name: (stored array, expected uint8 NCHW)
    "NHW-uint8": lambda: (_grey(), _grey()[:, None]),
    "NHW1-uint8": lambda: (_grey()[..., None], _grey()[:, None]),
    "N1HW-uint8": lambda: (_grey()[:, None], _grey()[:, None]),
    "NHW3-uint8": lambda: (_rgb(), _rgb().transpose(0, 3, 1, 2)),
    "N3HW-uint8": lambda: (_rgb().transpose(0, 3, 1, 2), _rgb().transpose(0, 3, 1, 2)),
    "NHW-float32-01": lambda: (_grey().astype(np.float32) / 255, _grey()[:, None]),
    "NHW3-float64-01": lambda: (_rgb().astype(np.float64) / 255, _rgb().transpose(0, 3, 1, 2)),
    "NHW-int64": lambda: (_grey().astype(np.int64), _grey()[:, None]),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
@pytest.mark.parametrize("fmt", ["npy", "npz-x", "npz-images", "npz-x_train", "npz-arr_0"])
def test_array_shapes(tmp_path, case, fmt):
    stored, expected = ARRAY_CASES[case]()
    if fmt == "npy":
        path = tmp_path / "a.npy"
        np.save(path, stored)
    elif fmt == "npz-arr_0":
        path = tmp_path / "a.npz"
        np.savez(path, stored)
    else:
        path = tmp_path / "a.npz"
        np.savez(path, **{fmt[4:]: stored})
    x, y = load_array(path)
    assert x.dtype == np.uint8 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(x, expected)
    assert y is None


@pytest.mark.parametrize("key", ["y", "labels", "y_train"])
def test_array_labels(tmp_path, key):
    path = tmp_path / "a.npz"
    np.savez(path, x=_grey(n=4), **{key: np.array([[3], [1], [2], [0]], dtype=np.uint8)})
    x, y = load_array(path)
    assert y.dtype == np.int64 and y.tolist() == [3, 1, 2, 0]


def test_array_labels_as_strings_one_hot_whole_floats_or_bools(tmp_path):
    from vaelab.data.images import read_array

    cases = {"str": (np.array(["dog", "cat", "owl", "cat"]), [1, 0, 2, 0], ["cat", "dog", "owl"]),
             "bytes": (np.array([b"dog", b"cat", b"owl", b"cat"]), [1, 0, 2, 0], ["cat", "dog", "owl"]),
             "one-hot": (np.eye(3, dtype=np.float32)[[2, 0, 1, 1]], [2, 0, 1, 1], None),
             "floats": (np.array([2.0, 0.0, 1.0, 1.0]), [2, 0, 1, 1], None),
             "bools": (np.array([True, False, False, True]), [1, 0, 0, 1], None)}
    for name, (labels, want, classes) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=_grey(n=4), y=labels)
        _, y, names = read_array(path)
        assert (y.dtype, y.tolist(), names) == (np.int64, want, classes), name


@pytest.mark.parametrize("labels, says", [
    (np.array([0, -1, 1]), "found -1"), (np.array([0.5, 1.0, 0.0]), "found 0.5"), (np.array([0, np.nan, 1]), "nan"),
    (np.ones((3, 2)), "not one-hot"), (np.zeros((3, 2, 2)), "3 images but 12 labels")])
def test_array_labels_that_name_no_class_are_refused(tmp_path, labels, says):
    path = tmp_path / "a.npz"
    np.savez(path, x=_grey(n=3), y=labels)
    with pytest.raises(DataError) as e:
        load_array(path)
    assert says in one_line(e) and str(path) in one_line(e)


def test_an_npz_with_two_candidate_image_or_label_arrays_is_refused_not_guessed(tmp_path):
    for extra, says in (({"x": _grey(), "images": _grey(seed=1)}, "(x, images); keep one"),
                        ({"x": _grey(), "y": np.zeros(3), "labels": np.ones(3)}, "(y, labels); keep one")):
        np.savez(tmp_path / "a.npz", **extra)
        with pytest.raises(DataError) as e:
            load_array(tmp_path / "a.npz")
        assert says in one_line(e)


def test_bool_images_are_black_and_white(tmp_path):
    np.save(tmp_path / "b.npy", np.array([[[True, False], [False, True]]]))
    x, _ = load_array(tmp_path / "b.npy")
    assert x.tolist() == [[[[255, 0], [0, 255]]]]


def test_string_labels_name_the_classes_of_an_npz_run(tmp_path):
    from vaelab.config import DataConfig
    from vaelab.data import load_data

    path = tmp_path / "a.npz"
    np.savez(path, x=_grey(n=6), y=np.array(["owl", "cat", "owl", "dog", "cat", "owl"]))
    splits = load_data(DataConfig(name="npz", path=str(path), val="none", classes=["owl"]))
    assert splits.classes == ["cat", "dog", "owl"] and splits.train.y.tolist() == [2, 2, 2]


BAD_ARRAYS = {
    "float-above-1": lambda: np.full((2, 4, 4), 1.5, np.float32),
    "float-negative": lambda: np.full((2, 4, 4), -0.1, np.float32),
    "float-nan": lambda: np.full((2, 4, 4), np.nan, np.float32),
    "int-above-255": lambda: np.full((2, 4, 4), 256, np.int32),
    "2d": lambda: np.zeros((4, 4), np.uint8),
    "5d": lambda: np.zeros((1, 1, 4, 4, 1), np.uint8),
    "2-channels": lambda: np.zeros((2, 2, 4, 4), np.uint8),
    "complex": lambda: np.zeros((2, 4, 4), np.complex64),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_array_bad_content(tmp_path, case):
    path = tmp_path / "bad.npy"
    np.save(path, BAD_ARRAYS[case]())
    with pytest.raises(DataError) as e:
        load_array(path)
    assert str(path) in one_line(e)


def test_array_npz_problems(tmp_path):
    p = tmp_path / "nokey.npz"
    np.savez(p, pixels=_grey())
    with pytest.raises(DataError, match="no image array"):
        load_array(p)
    p = tmp_path / "count.npz"
    np.savez(p, x=_grey(n=3), y=np.arange(4))
    with pytest.raises(DataError, match="3 images but 4 labels"):
        load_array(p)
    with pytest.raises(DataError, match="does not exist"):
        load_array(tmp_path / "absent.npz")
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"definitely not numpy")
    with pytest.raises(DataError) as e:
        load_array(p)
    assert str(p) in one_line(e)


class _Marker:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _object_array(marker: Path) -> np.ndarray:
    a = np.empty(2, dtype=object)
    a[0], a[1] = _Marker(marker), 1
    return a


def test_pickled_npy_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.npy"
    np.save(path, _object_array(marker), allow_pickle=True)
    with pytest.raises(DataError) as e:
        load_array(path)
    assert str(path) in one_line(e)
    assert not marker.exists()


def test_pickled_npz_is_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.npz"
    np.savez(path, x=_object_array(marker))
    with pytest.raises(Exception):
        load_array(path)
    assert not marker.exists()


@pytest.mark.parametrize("member", ["x", "y"])
def test_pickled_npz_is_a_data_error(tmp_path, member):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.npz"
    arrays = {"x": _grey(n=2), "y": np.arange(2)}
    arrays[member] = _object_array(marker)
    np.savez(path, **arrays)
    with pytest.raises(DataError):
        load_array(path)
    assert not marker.exists()


# ============================================================================ load_data (npz)
@pytest.fixture
def indexed_npz(tmp_path):
    """200 images whose first two pixels encode their index; labels i % 4."""
    n = 200
    x = np.zeros((n, 8, 8), np.uint8)
    x[:, 0, 0] = np.arange(n) % 256
    x[:, 0, 1] = np.arange(n) // 256
    y = np.arange(n) % 4
    path = tmp_path / "indexed.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


def _ids(s) -> list[int]:
    return (s.x[:, 0, 0, 0].long() + 256 * s.x[:, 0, 0, 1].long()).tolist()


def test_load_data_npz_basic(indexed_npz):
    path, x, y = indexed_npz
    s = load_data(DataConfig(name="npz", path=str(path)))
    assert s.val is None and s.test is None  # no test split in an array file
    assert s.train.shape == (1, 8, 8) and s.train.x.dtype == torch.uint8
    assert _ids(s.train) == list(range(200))
    b = s.train.batch(slice(0, 5))
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, torch.from_numpy(x[:5, None].astype(np.float32) / 255))


def test_load_data_classes_filter(indexed_npz):
    path, x, y = indexed_npz
    s = load_data(DataConfig(name="npz", path=str(path), classes=[1, 3]))
    assert set(s.train.y.tolist()) == {1, 3}
    assert _ids(s.train) == [i for i in range(200) if y[i] in (1, 3)]


def test_load_data_limit_is_a_seeded_random_subset(indexed_npz):
    path, _, _ = indexed_npz
    cfg = DataConfig(name="npz", path=str(path), limit=17)
    s = load_data(cfg, seed=3)
    ids = _ids(s.train)
    expected = torch.randperm(200, generator=torch.Generator().manual_seed(3))[:17].sort().values.tolist()
    assert ids == expected and ids != list(range(17))  # a sample, not the first 17
    assert (s.train.y.numpy() == np.array(ids) % 4).all()  # labels follow their images
    assert _ids(load_data(cfg, seed=3).train) == ids  # reproducible
    assert _ids(load_data(cfg, seed=4).train) != ids  # and drawn by the seed
    s = load_data(DataConfig(name="npz", path=str(path), classes=[2], limit=5))
    assert len(s.train) == 5 and all(i % 4 == 2 for i in _ids(s.train))  # drawn from the kept class
    s = load_data(DataConfig(name="npz", path=str(path), limit=10_000))
    assert _ids(s.train) == list(range(200))  # more than there are: all, in order


def test_limit_on_class_ordered_data_keeps_every_class(tmp_path):
    # 100 images of class 0, then 100 of class 1 (a folder sorted by class): the first 20 would be class 0 only
    x = np.zeros((200, 4, 4), np.uint8)
    path = tmp_path / "ordered.npz"
    np.savez(path, x=x, y=np.repeat([0, 1], 100))
    s = load_data(DataConfig(path=str(path), limit=20))
    assert set(s.train.y.tolist()) == {0, 1}


def test_load_data_val_fraction_disjoint_and_deterministic(indexed_npz):
    path, _, _ = indexed_npz
    cfg = DataConfig(name="npz", path=str(path), val="0.25")
    a, b = load_data(cfg), load_data(DataConfig(name="npz", path=str(path), val="0.25"))
    tr, va = _ids(a.train), _ids(a.val)
    assert len(va) == 50 and len(tr) == 150
    assert set(tr).isdisjoint(va) and sorted(tr + va) == list(range(200))
    assert tr == sorted(tr)  # training images keep their order
    assert set(va) != set(range(50))  # a shuffled hold-out, not the first 50
    assert tr == _ids(b.train) and va == _ids(b.val)
    # labels follow their images
    assert (a.val.y.numpy() == np.array(va) % 4).all()


def test_load_data_val_fraction_with_limit(indexed_npz):
    path, _, _ = indexed_npz
    s = load_data(DataConfig(name="npz", path=str(path), val="0.1", limit=40))
    assert len(s.val) == 4 and len(s.train) == 36
    kept = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:40].sort().values.tolist()
    assert sorted(_ids(s.train) + _ids(s.val)) == kept  # the hold-out comes out of the limited subset


def test_load_data_errors(indexed_npz, tmp_path):
    path, _, _ = indexed_npz
    with pytest.raises(DataError, match="train\\+test"):
        load_data(DataConfig(name="npz", path=str(path), train_split="train+test"))
    with pytest.raises(DataError, match="no training images"):
        load_data(DataConfig(name="npz", path=str(path), classes=[7]))
    with pytest.raises(DataError, match="leaves no training images"):
        load_data(DataConfig(name="npz", path=str(path), val="0.999", limit=3))
    with pytest.raises(DataError, match="unknown dataset"):
        load_data(DataConfig(name="cifar10"))
    with pytest.raises(DataError, match="data.path"):
        load_data(DataConfig(name="npz"))
    nolabels = tmp_path / "nolabels.npy"
    np.save(nolabels, np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DataError, match="labelled"):
        load_data(DataConfig(name="npz", path=str(nolabels), classes=[0]))


def test_splits_get(indexed_npz):
    path, _, _ = indexed_npz
    s = load_data(DataConfig(name="npz", path=str(path)))
    assert s.get("train") is s.train
    with pytest.raises(DataError, match="no test split"):
        s.get("test")
    with pytest.raises(DataError, match="unknown split"):
        s.get("holdout")


def test_load_data_idx_from_synthetic_files(tmp_path, no_data_env, idx_dataset):
    arrays = idx_dataset(tmp_path, "fashion-mnist", n_train=12, n_test=5, gz=False)
    s = load_data(DataConfig(name="fashion-mnist", data_dir=str(tmp_path), download=False, classes=[0, 1, 2, 3, 4]))
    keep = np.isin(arrays["train-labels-idx1-ubyte"], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(s.train.x.numpy()[:, 0], arrays["train-images-idx3-ubyte"][keep])
    assert len(s.test) == 5  # the test set keeps every class
    assert s.val is s.test and s.classes == [str(i) for i in range(10)]
    s2 = load_data(DataConfig(name="fashion-mnist", data_dir=str(tmp_path), download=False,
                              train_split="train+test"))
    assert len(s2.train) == 17 and s2.val is None


# ============================================================================ real MNIST
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist(mnist_dir):
    s = load_data(DataConfig(name="mnist", data_dir=str(mnist_dir), download=False))
    assert tuple(s.train.x.shape) == (60000, 1, 28, 28) and tuple(s.test.x.shape) == (10000, 1, 28, 28)
    assert s.train.x.dtype == torch.uint8
    train_counts = torch.bincount(s.train.y, minlength=10).tolist()
    test_counts = torch.bincount(s.test.y, minlength=10).tolist()
    assert train_counts[1] == 6742 and test_counts[1] == 1135
    assert train_counts == MNIST_TRAIN_COUNTS and test_counts == MNIST_TEST_COUNTS
    assert int(s.train.x.max()) == 255 and int(s.train.x.min()) == 0


def test_real_mnist_matches_published_sha256(mnist_dir):
    found = dl.locate("mnist", str(mnist_dir), download=False)
    for stem, path in found.items():
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert hashlib.sha256(raw).hexdigest() == dl.SOURCES["mnist"]["sha256"][stem], stem


def test_real_fashion_mnist(fashion_dir):
    s = load_data(DataConfig(name="fashion-mnist", data_dir=str(fashion_dir), download=False))
    assert tuple(s.train.x.shape) == (60000, 1, 28, 28) and tuple(s.test.x.shape) == (10000, 1, 28, 28)
    assert torch.bincount(s.train.y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(s.test.y, minlength=10).tolist() == [1000] * 10
    found = dl.locate("fashion-mnist", str(fashion_dir), download=False)
    for stem, path in found.items():
        assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == \
            dl.SOURCES["fashion-mnist"]["sha256"][stem], stem


def test_array_with_no_images_is_a_data_error(tmp_path):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((0, 28, 28), np.float32))
    with pytest.raises(DataError):
        load_array(path)


def test_default_val_without_a_test_split_says_so(indexed_npz):
    path, _, _ = indexed_npz
    notes: list[str] = []
    s = load_data(DataConfig(path=str(path)), log=notes.append)
    assert s.val is None and s.notes == notes
    expected = f"no validation split: {path} has no test split (data.val=test); --val 0.1 holds out a tenth"
    assert notes == [expected + " of the training images"]
    assert load_data(DataConfig(path=str(path), val="none")).notes == []


def test_train_plus_test_without_a_test_split_says_what_to_pass(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=_grey(n=4))
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="npz", path=str(path), train_split="train+test"))
    assert f"npz {path} has none" in one_line(e) and "pass --set data.train_split=train" in one_line(e)
    assert len(load_data(DataConfig(name="npz", path=str(path), train_split="train", val="none")).train) == 4
