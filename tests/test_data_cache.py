"""Folder caches (vaelab.data.cache): bad files, reuse, rebuilds, damage, kills,
parallel decoding, and `vaelab data prepare`. Decoding itself: test_data_decode.py."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_error, one_line, run_main
from conftest import prep_folder as prep
from conftest import save_image as save
from PIL import Image

from vaelab.data import cache as cache_mod
from vaelab.data import decode as dec
from vaelab.data.cache import prepare_folder
from vaelab.errors import DataError

RNG = np.random.default_rng(0)



# ============================================================================ bad files
def _bad_folder(root: Path) -> Path:
    """Two classes; one garbage file (fails at open) and one truncated PNG (fails at decode)."""
    for cls, v in (("a", 10), ("b", 20)):
        for i in range(2):
            save(root / cls / f"{i}.png", Image.fromarray(np.full((8, 8), v + i, np.uint8)))
    (root / "a" / "junk.png").write_bytes(b"not a png at all")
    big = save(root / "b" / "cut.png", Image.fromarray(RNG.integers(0, 256, (32, 32), dtype=np.uint8)))
    big.write_bytes(big.read_bytes()[:200])
    return root


def test_the_bad_file_errors_advice_works_as_written_on_train(tmp_path, capsys):
    """The one line names an option that `vaelab train` takes, and following it trains."""
    root = _bad_folder(tmp_path / "d")
    (root / "b" / "cut.png").unlink()
    common = ("train", "--data", "folder", "--data-path", root, "--image-size", 8, "--epochs", 1, "--no-eval",
              "--set", "model.latent_dim=2", "--set", "model.hidden=[8]")
    line = cli_error(capsys, *common, "--out", tmp_path / "r0")
    assert "a/junk.png" in line and "--set data.skip_bad=true" in line
    assert not (tmp_path / "r0").exists()
    rc, out, err = run_main(capsys, *common, "--set", "data.skip_bad=true", "--out", tmp_path / "r1")
    assert rc == 0, err
    assert "skipped 1 unreadable file(s)" in out + err and "a/junk.png" in out + err
    assert json.loads((tmp_path / "r1" / "summary.json").read_text())["epochs"] == 1


def test_bad_files_raise_or_are_skipped_and_listed(tmp_path):
    root = _bad_folder(tmp_path / "d")
    with pytest.raises(DataError) as e:
        prep(root)
    assert f"image a/junk.png in {root}:" in one_line(e) and "--skip-bad" in str(e.value)
    assert not (root / cache_mod.CACHE_DIRNAME).exists()  # a failed build leaves no empty cache folder behind
    (root / "a" / "junk.png").unlink()
    with pytest.raises(DataError) as e:
        prep(root)
    assert f"image b/cut.png in {root}:" in one_line(e)
    (root / "a" / "junk.png").write_bytes(b"not a png at all")
    res = prep(root, skip_bad=True)
    assert res.images.shape == (4, 1, 8, 8) and res.labels.tolist() == [0, 0, 1, 1]
    assert [int(v) for v in res.images[:, 0, 0, 0]] == [10, 11, 20, 21]
    assert [Path(p).name for p in res.paths] == ["0.png", "1.png", "0.png", "1.png"]
    assert sorted(s["path"] for s in res.skipped) == ["a/junk.png", "b/cut.png"]
    m = json.loads((res.path / "manifest.json").read_text())
    assert m["skipped"] == res.skipped and m["shape"] == [4, 1, 8, 8]
    assert any("skipped 2" in n for n in res.notes)
    with pytest.raises(DataError) as e:  # the cache left files out: not without asking for it
        prep(root)
    assert f"image a/junk.png in {root}:" in one_line(e) and "--skip-bad" in str(e.value)
    assert not prep(root, skip_bad=True).built


def test_a_clean_cache_serves_skip_bad_too(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    first = prep(root)
    monkeypatch.setattr(dec, "decode_chunk", lambda *a: pytest.fail("decoded again"))
    again = prep(root, skip_bad=True)
    assert not again.built and again.path == first.path


def test_empty_and_unreadable_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as e:
        prep(tmp_path)
    assert "holds no images" in one_line(e)
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError) as e:
        prep(tmp_path, skip_bad=True)
    assert "no readable images" in one_line(e)


# ============================================================================ the cache
def _folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        save(root / ("a" if i % 2 else "b") / f"{i}.png", Image.fromarray(RNG.integers(0, 256, (6, 6, 3), np.uint8)))
    return root


def test_cache_layout_and_manifest(tmp_path):
    root = _folder(tmp_path / "d")
    res = prep(root, image_size=4)
    assert res.built and res.path.parent == root / ".vaelab-cache"
    on_disk = np.load(res.path / "images.npy", mmap_mode="r")
    assert isinstance(res.images, np.memmap) and on_disk.shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(on_disk, res.images)
    np.testing.assert_array_equal(np.load(res.path / "labels.npy"), res.labels)
    m = json.loads((res.path / "manifest.json").read_text())
    st = (root / "a" / "1.png").stat()
    assert ["a/1.png", st.st_size, st.st_mtime_ns] in m["files"]
    assert m["classes"] == ["a", "b"] and m["skipped"] == [] and m["shape"] == [3, 3, 4, 4]
    assert m["options"] == {"image_size": 4, "crop": None, "background": "#ffffff", "channels": None}
    assert m["arrays"]["images"]["bytes"] == (res.path / "images.npy").stat().st_size
    assert prep(root, image_size=2).path != res.path  # other options, another cache beside it


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    first = prep(root)
    mtime = (first.path / "images.npy").stat().st_mtime_ns
    monkeypatch.setattr(dec, "decode_chunk", lambda *a: pytest.fail("decoded again"))
    again = prep(root)
    assert not again.built and again.path == first.path
    assert (first.path / "images.npy").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.images, first.images)


def _count_decodes(monkeypatch) -> list:
    calls: list = []
    real = dec.decode_chunk

    def counting(paths, opts):
        calls.extend(paths)
        return real(paths, opts)
    monkeypatch.setattr(dec, "decode_chunk", counting)
    return calls


@pytest.mark.parametrize("change", ["touch", "add", "remove", "rewrite"])
def test_cache_is_rebuilt_when_the_folder_changes(tmp_path, monkeypatch, change):
    root = _folder(tmp_path / "d")
    prep(root)
    new = RNG.integers(0, 256, (6, 6, 3), np.uint8)
    target = root / "a" / "1.png"
    if change == "touch":
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "add":
        save(root / "a" / "9.png", Image.fromarray(new))
    elif change == "remove":
        target.unlink()
    else:
        save(target, Image.fromarray(new))
    calls = _count_decodes(monkeypatch)
    logged: list = []
    res = prep(root, log=logged.append)
    assert res.built and calls and "the folder changed" in res.reason
    want = {"touch": ("0 added, 0 removed, 1 modified", 3), "add": ("1 added, 0 removed, 0 modified", 4),
            "remove": ("0 added, 1 removed, 0 modified", 2), "rewrite": ("0 added, 0 removed, 1 modified", 3)}
    assert want[change][0] in res.reason and len(res.images) == want[change][1]
    assert any("stale" in line for line in logged)
    if change in ("add", "rewrite"):
        row = res.paths.index(str(root / "a" / ("9.png" if change == "add" else "1.png")))
        np.testing.assert_array_equal(res.images[row], new.transpose(2, 0, 1))


@pytest.mark.parametrize("damage", ["truncate", "flip", "flip-labels", "manifest"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, damage):
    root = _folder(tmp_path / "d")
    good = prep(root)
    expected = np.array(good.images)
    f = good.path / ("labels.npy" if damage == "flip-labels" else "images.npy")
    blob = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(blob[:-7])
    elif damage == "manifest":
        (good.path / "manifest.json").write_text("{ half a manifest")
    else:
        blob[-3] ^= 0x01
        f.write_bytes(bytes(blob))
    calls = _count_decodes(monkeypatch)
    res = prep(root)
    assert res.built and calls
    reason = {"truncate": "truncated", "flip": "checksum", "flip-labels": "checksum", "manifest": "unreadable"}
    assert reason[damage] in res.reason
    np.testing.assert_array_equal(res.images, expected)
    assert res.labels.tolist() == good.labels.tolist()


def test_big_caches_use_a_sampled_checksum_and_verify_checks_all(tmp_path, monkeypatch):
    # Pretend the array is big: blocks of 16 bytes at 4 places, the whole file only on verify.
    monkeypatch.setattr(cache_mod, "FULL_HASH_LIMIT", 0)
    monkeypatch.setattr(cache_mod, "SAMPLE_BLOCK", 16)
    monkeypatch.setattr(cache_mod, "SAMPLE_BLOCKS", 2)
    root = _folder(tmp_path / "d", n=8)
    good = prep(root)
    f = good.path / "images.npy"
    blob = bytearray(f.read_bytes())
    size = len(blob)
    sampled = {o + k for o in np.linspace(0, size - 16, 4).astype(int).tolist() for k in range(16)}
    gap = next(i for i in range(size // 3, size) if i not in sampled)
    blob[gap] ^= 0x01
    f.write_bytes(bytes(blob))
    assert not prep(root).built  # a flip between sampled blocks passes the quick check ...
    assert prep(root, verify=True).built  # ... and not the full one
    blob = bytearray(f.read_bytes())
    blob[size - 1] ^= 0x01  # the last block is always sampled
    f.write_bytes(bytes(blob))
    assert prep(root).built


def test_killed_prepare_leaves_no_cache_that_validates(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d", n=4)
    old = prep(root)
    save(root / "a" / "9.png", Image.fromarray(np.zeros((6, 6, 3), np.uint8)))  # now stale
    monkeypatch.setattr(cache_mod, "CHUNK", 1)
    real = dec.decode_chunk
    calls = []

    def dies(paths, opts):
        calls.append(paths)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of the decode
        return real(paths, opts)
    monkeypatch.setattr(dec, "decode_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        prep(root)
    assert sorted(p.name for p in old.path.iterdir()) == ["images.npy", "labels.npy"]  # no manifest, no tmp
    monkeypatch.setattr(dec, "decode_chunk", real)
    res = prep(root)
    assert res.built and len(res.images) == 5


def test_read_only_folder_caches_in_the_user_cache(tmp_path, monkeypatch, no_data_env):
    root = _folder(tmp_path / "d")
    monkeypatch.setattr(cache_mod, "_writable", lambda d: False)
    res = prep(root)
    assert res.path.parent == no_data_env / "vaelab" / "folders" and not (root / ".vaelab-cache").exists()
    assert not prep(root).built  # found there next time


def test_parallel_decode_equals_serial_byte_for_byte(tmp_path):
    root = tmp_path / "d"
    for i in range(24):  # mixed modes, so every conversion runs in the workers too
        a = RNG.integers(0, 256, (9, 7, 4), dtype=np.uint8)
        im = [Image.fromarray(a, "RGBA"), Image.fromarray(a[..., :3]), Image.fromarray(a[..., 0]),
              Image.fromarray(a[..., :2], "LA")][i % 4]
        save(root / f"c{i % 3}" / f"{i:02d}.png", im)
    serial = prep(root, image_size=5, background="#102030")
    serial_bytes = (serial.path / "images.npy").read_bytes()
    serial_manifest = json.loads((serial.path / "manifest.json").read_text())
    for f in serial.path.iterdir():
        f.unlink()
    parallel = prep(root, image_size=5, background="#102030", workers=2)
    assert parallel.built and (parallel.path / "images.npy").read_bytes() == serial_bytes
    assert json.loads((parallel.path / "manifest.json").read_text()) == serial_manifest


def test_progress_bar_follows_vaelab_no_progress_and_shows_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    _folder(tmp_path / "d")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    prepare_folder(tmp_path / "d", workers=0)  # VAELAB_NO_PROGRESS=1 (conftest): no bar
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("VAELAB_NO_PROGRESS")
    prepare_folder(tmp_path / "d", image_size=3, workers=0)
    assert "decoding d" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file or a pipe: no bar in it
    prepare_folder(tmp_path / "d", image_size=4, workers=0)
    assert capsys.readouterr().err == ""


# ============================================================================ vaelab data prepare
def test_cli_prepare_prints_a_summary(tmp_path, capsys):
    root = _bad_folder(tmp_path / "d")
    t0 = time.time()
    rc, out, err = run_main(capsys, "data", "prepare", root, "--image-size", "4", "--skip-bad", "--workers", "0")
    assert rc == 0, err
    line = out.strip().splitlines()[-1]
    assert f"{root}: 4 images, 2 classes, shape (1, 4, 4), 2 skipped; cache {root / '.vaelab-cache'}" in line
    assert "decoded in" in line and time.time() - t0 < 30
    assert "skipped 2 unreadable" in out
    rc, out, _ = run_main(capsys, "data", "prepare", root, "--image-size", "4", "--skip-bad")
    assert rc == 0 and "cache checked" in out


def test_cli_prepare_train_and_test_splits(tmp_path, capsys):
    for split in ("train", "test"):
        _folder(tmp_path / "d" / split, n=2)
    rc, out, err = run_main(capsys, "data", "prepare", tmp_path / "d", "--workers", "0")
    assert rc == 0, err
    assert f"{tmp_path / 'd'}/train: 2 images" in out and f"{tmp_path / 'd'}/test: 2 images" in out


def test_cli_prepare_errors_are_one_line(tmp_path, capsys):
    root = _bad_folder(tmp_path / "d")
    assert "--skip-bad" in cli_error(capsys, "data", "prepare", root, "--workers", "0")
    assert "image_size" in cli_error(capsys, "data", "prepare", root, "--image-size", "0")
    assert "4096" in cli_error(capsys, "data", "prepare", root, "--image-size", "100000")
    assert "larger than image" in cli_error(capsys, "data", "prepare", root, "--crop", "center:99", "--skip-bad")
    assert "background" in cli_error(capsys, "data", "prepare", root, "--background", "teal")
    assert "does not exist" in cli_error(capsys, "data", "prepare", tmp_path / "nowhere")
