"""Image sets in memory and memory-mapped, epoch shuffles, data.in_memory, classes by name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_main
from vaelab.config import DataConfig
from vaelab.data import cache as cache_mod
from vaelab.data import load_data, memory
from vaelab.data.sets import ImageSet, MemmapImageSet, concat
from vaelab.errors import DataError


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


def _mapped(tmp_path: Path, x: np.ndarray, name: str = "x") -> np.ndarray:
    np.save(tmp_path / f"{name}.npy", x)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


@pytest.fixture
def pair(tmp_path):
    """The same 23 images (labels, paths) as an in-memory ImageSet and a MemmapImageSet of two parts."""
    x = np.random.default_rng(0).integers(0, 256, (23, 2, 3, 4), dtype=np.uint8)
    y = torch.arange(23) % 5
    paths = [f"img{i}.png" for i in range(23)]
    mem = ImageSet(torch.from_numpy(x), y, "train", paths)
    mapped = MemmapImageSet([_mapped(tmp_path, x[:10], "a"), _mapped(tmp_path, x[10:], "b")], y, "train", paths)
    return mem, mapped


def test_memmap_batches_equal_in_memory_batches(pair):
    mem, mapped = pair
    assert len(mapped) == 23 and mapped.shape == (2, 3, 4) and mapped.nbytes == 23 * 24
    for index in (slice(0, 7), slice(8, 13), slice(20, 40), slice(None),  # within, across parts, past the end
                  torch.tensor([22, 0, 15, 15, 3]), [4, 19, 1], np.array([9, 10])):
        b = mapped.batch(index)
        assert b.dtype == torch.float32 and b.max() <= 1
        torch.testing.assert_close(b, mem.batch(torch.as_tensor(np.arange(23)[index])), rtol=0, atol=0)
    torch.testing.assert_close(mapped.float(), mem.float(), rtol=0, atol=0)


def test_memmap_subset_to_and_in_memory(pair):
    mem, mapped = pair
    idx = torch.tensor([21, 2, 11, 7])
    sm, ss = mem.subset(idx), mapped.subset(idx)
    torch.testing.assert_close(ss.batch(slice(1, 3)), sm.batch(slice(1, 3)), rtol=0, atol=0)
    assert ss.y.tolist() == sm.y.tolist() and ss.paths == sm.paths == ["img21.png", "img2.png", "img11.png", "img7.png"]
    nested = ss.subset([3, 0])  # a subset of a subset reads the right rows
    assert nested.paths == ["img7.png", "img21.png"]
    torch.testing.assert_close(nested.float(), mem.subset(torch.tensor([7, 21])).float(), rtol=0, atol=0)
    on = mapped.to("cpu")
    assert isinstance(on, MemmapImageSet) and on.device == torch.device("cpu")
    assert on.batch(slice(0, 2)).device.type == "cpu"
    back = ss.in_memory()
    assert isinstance(back, ImageSet) and torch.equal(back.x, sm.x) and back.paths == sm.paths


def test_shuffled_in_memory_is_the_gathered_permutation(pair):
    mem, _ = pair
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(7))
    view = mem.shuffled(perm)
    assert isinstance(view, ImageSet) and torch.equal(view.x, mem.x[perm]) and torch.equal(view.y, mem.y[perm])
    assert view.paths == [mem.paths[i] for i in perm.tolist()]


def test_shuffled_memmap_view_equals_the_in_memory_epoch(pair):
    mem, mapped = pair
    for seed in (1, 2):
        perm = torch.randperm(23, generator=torch.Generator().manual_seed(seed))
        a, b = mem.shuffled(perm), mapped.shuffled(perm)
        assert isinstance(b, MemmapImageSet) and torch.equal(a.y, b.y)
        for i in range(0, 23, 5):
            torch.testing.assert_close(b.batch(slice(i, i + 5)), a.batch(slice(i, i + 5)), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["memory", "memmap"])
def test_a_loop_sees_every_image_once_per_epoch(pair, kind):
    """How a training loop uses a set: one shuffled view per epoch, then slices of it."""
    train = pair[0] if kind == "memory" else pair[1]
    gen, bs, seen_orders = torch.Generator().manual_seed(0), 4, []
    for _epoch in range(2):
        view = train.shuffled(torch.randperm(len(train), generator=gen))
        batches = [view.batch(slice(i, i + bs)) for i in range(0, len(view), bs)]
        labels = torch.cat([view.y[i:i + bs] for i in range(0, len(view), bs)])
        got = torch.cat(batches)
        assert got.shape == (23, 2, 3, 4)
        # The same multiset of images as the data, each exactly once, with its own label.
        keys = sorted(tuple(r.flatten().tolist()) + (int(lab),) for r, lab in zip(got, labels))
        assert keys == sorted(tuple(r.flatten().tolist()) + (int(lab),) for r, lab in zip(train.float(), train.y))
        seen_orders.append(view.paths)
    assert seen_orders[0] != seen_orders[1]  # the generator moves on: each epoch its own order


def test_concat_keeps_memmap_lazy_and_matches_memory(pair):
    mem, mapped = pair
    c = concat(mapped.subset([3, 4]), mapped.subset([20]), "train")
    assert isinstance(c, MemmapImageSet) and len(c) == 3 and c.y.tolist() == [3, 4, 0]
    torch.testing.assert_close(c.float(), mem.subset(torch.tensor([3, 4, 20])).float(), rtol=0, atol=0)
    m = concat(mem.subset([1]), mem.subset([2]), "train")
    assert isinstance(m, ImageSet) and torch.equal(m.x, mem.x[1:3])


def _save(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Class folders ant (2), bee (3), cat (1) of 5x5 RGB images."""
    rng = np.random.default_rng(1)
    for cls, n in (("ant", 2), ("bee", 3), ("cat", 1)):
        for i in range(n):
            _save(tmp_path / "f" / cls / f"{i}.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    return tmp_path / "f"


def _cfg(folder, **kw) -> DataConfig:
    return DataConfig(name="folder", path=str(folder), val="none", **kw)


def test_in_memory_auto_true_false(folder, monkeypatch):
    assert isinstance(load_data(_cfg(folder)).train, ImageSet)  # small: in memory
    forced = load_data(_cfg(folder, in_memory="false"))
    assert isinstance(forced.train, MemmapImageSet)
    torch.testing.assert_close(forced.train.float(), load_data(_cfg(folder)).train.float(), rtol=0, atol=0)
    monkeypatch.setattr(memory, "available_memory", lambda: 200)  # 6 images x 75 B x 2 > 0.8 x 200 B
    assert isinstance(load_data(_cfg(folder)).train, MemmapImageSet)
    with pytest.raises(DataError) as e:
        load_data(_cfg(folder, in_memory="true"))
    msg = one_line(e)
    assert "900 B" in msg and "200 B" in msg and "vaelab data prepare" in msg and "in_memory=auto" in msg


def test_npz_too_big_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 8, 8), np.float32))
    np.save(tmp_path / "a.npy", np.zeros((10, 8, 8), np.uint8))
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    for name in ("a.npz", "a.npy"):
        with pytest.raises(DataError) as e:
            load_data(DataConfig(name="npz", path=str(tmp_path / name), val="none"))
        msg = one_line(e)
        assert "10 images" in msg and "1000 B" in msg and "vaelab data prepare" in msg


def test_train_and_test_folders_memmapped_and_joined(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _save(tmp_path / split / cls / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    mem = load_data(DataConfig(name="folder", path=str(tmp_path), train_split="train+test"))
    mm = load_data(DataConfig(name="folder", path=str(tmp_path), train_split="train+test", in_memory="false"))
    assert isinstance(mm.train, MemmapImageSet) and len(mm.train.parts) == 2 and len(mm.train) == 10
    torch.testing.assert_close(mm.train.float(), mem.train.float(), rtol=0, atol=0)
    assert mm.train.y.tolist() == mem.train.y.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_classes_by_name_and_by_number(folder):
    s = load_data(_cfg(folder, classes=["bee"]))
    assert len(s.train) == 3 and set(s.train.y.tolist()) == {1}
    assert all(Path(p).parent.name == "bee" for p in s.train.paths)
    both = load_data(_cfg(folder, classes=["cat", 0]))  # names and label numbers mix
    assert sorted(Path(p).parent.name for p in both.train.paths) == ["ant", "ant", "cat"]
    with pytest.raises(DataError) as e:
        load_data(_cfg(folder, classes=["dog"]))
    assert "unknown class 'dog'" in one_line(e) and "ant, bee, cat" in str(e.value)


def test_numeric_class_folders_are_picked_by_name(tmp_path):
    for name in ("1", "10", "2"):  # sorted as text: 1, 10, 2
        _save(tmp_path / name / "a.png", np.full((3, 3), int(name), np.uint8))
    s = load_data(_cfg(tmp_path, classes=[2]))
    assert [Path(p).parent.name for p in s.train.paths] == ["2"] and s.train.y.tolist() == [2]


def test_class_names_need_named_classes(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3, 3), np.uint8), y=np.array([0, 1, 0, 1]))
    assert len(load_data(DataConfig(name="npz", path=str(tmp_path / "a.npz"), classes=[1], val="none")).train) == 2
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="npz", path=str(tmp_path / "a.npz"), classes=["cats"], val="none"))
    assert "--classes" in one_line(e) and "label numbers" in str(e.value)


def test_cli_classes_flag_passes_names_through(monkeypatch, capsys, tmp_path):
    import vaelab.api

    seen = {}
    monkeypatch.setattr(vaelab.api, "train", lambda config, run_dir, **kw: seen.update(config=config))
    rc, _, err = run_main(capsys, "train", "--data", "folder", "--data-path", tmp_path, "--classes",
                          "smileys-emotion, 3", "--no-eval", "--out", tmp_path / "run")
    assert rc == 0, err
    assert seen["config"].data.classes == ["smileys-emotion", 3]


def _emoji() -> Path:
    root = Path(os.environ.get("VAELAB_DATA", "")) / "emoji-google-64"
    if not os.environ.get("VAELAB_DATA") or not (root / "smileys-emotion").is_dir():
        pytest.skip("real emoji set not available: set VAELAB_DATA to a folder holding emoji-google-64/ "
                    "(one sub-folder of PNGs per category)")
    return root


def test_real_emoji_classes_smileys_emotion(monkeypatch, tmp_path):
    root = _emoji()
    # Never write into the shared data folder: the cache goes to a user cache under tmp_path.
    monkeypatch.setattr(cache_mod, "_writable", lambda d: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    s = load_data(DataConfig(name="folder", path=str(root), image_size=16, classes=["smileys-emotion"], val="none"))
    want = sorted(p.name for p in (root / "smileys-emotion").glob("*.png"))
    assert len(want) == 169 and sorted(Path(p).name for p in s.train.paths) == want
    assert all(Path(p).parent.name == "smileys-emotion" for p in s.train.paths)
    assert set(s.train.y.tolist()) == {s.classes.index("smileys-emotion")} and s.train.shape == (3, 16, 16)
    # Transparent corners come out as the white background, not the noise under them.
    corners = s.train.x[:, :, 0, 0]
    assert (corners == 255).float().mean() > 0.9


def test_load_folder_refuses_what_does_not_fit(folder, monkeypatch):
    from vaelab.data.cache import load_folder

    assert load_folder(folder)[0].shape == (6, 3, 5, 5)
    monkeypatch.setattr(memory, "available_memory", lambda: 300)
    with pytest.raises(DataError) as e:
        load_folder(folder)
    assert "450 B" in one_line(e) and "300 B" in str(e.value) and "memory-mapped" in str(e.value)


def _cgroup_tree(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        p = tmp_path / "sys" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "sys"


def test_cgroup_headroom_v1_takes_the_tightest_level(tmp_path):
    from vaelab.data.memory import cgroup_headroom

    unlimited = str((1 << 63) - 4096)  # what cgroup v1 writes for "no limit"
    mount = _cgroup_tree(tmp_path, {
        "memory/memory.usage_in_bytes": "999", "memory/memory.limit_in_bytes": unlimited,
        "memory/box/memory.limit_in_bytes": str(4 << 30), "memory/box/memory.usage_in_bytes": str(1 << 30),
        "memory/box/job/memory.limit_in_bytes": unlimited, "memory/box/job/memory.usage_in_bytes": "5",
    })
    proc = tmp_path / "cgroup"
    proc.write_text("9:pids:/\n4:memory:/box/job\n0::/\n")
    assert cgroup_headroom(proc, mount) == 3 << 30  # the parent's 4 GiB limit binds the child
    proc.write_text("4:memory:/\n")
    assert cgroup_headroom(proc, mount) is None  # no level sets a limit


def test_cgroup_headroom_v2(tmp_path):
    from vaelab.data.memory import cgroup_headroom

    mount = _cgroup_tree(tmp_path, {
        "cgroup.controllers": "memory", "svc/memory.max": "max", "svc/memory.current": "7",
        "svc/a/memory.max": "1000", "svc/a/memory.current": "400",
    })
    proc = tmp_path / "cgroup"
    proc.write_text("0::/svc/a\n")
    assert cgroup_headroom(proc, mount) == 600
    proc.write_text("0::/svc\n")
    assert cgroup_headroom(proc, mount) is None
    assert cgroup_headroom(tmp_path / "absent", mount) is None


def test_training_on_the_memory_map_matches_training_in_memory(folder, tmp_path):
    """Same seed, same batches: the losses and weights agree, and the run says which path it took."""
    import json

    from vaelab.config import RunConfig
    from vaelab.training.loop import fit

    def run(in_memory: str):
        cfg = RunConfig()
        cfg.data = _cfg(folder, in_memory=in_memory)
        cfg.model.options["mlp"], cfg.model.latent_dim = {"hidden": [8]}, 2  # the mlp body's section
        cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 2, 4, False
        out = tmp_path / f"run-{in_memory}"
        res = fit(cfg, out, log=lambda *_: None)
        return res, json.loads((out / "summary.json").read_text())

    mem, mem_summary = run("true")
    mapped, mapped_summary = run("false")
    assert isinstance(mapped.splits.train, MemmapImageSet) and isinstance(mem.splits.train, ImageSet)
    assert mem_summary["data_memory_mapped"] is False and mapped_summary["data_memory_mapped"] is True
    assert [h["train_loss"] for h in mem.history] == pytest.approx([h["train_loss"] for h in mapped.history],
                                                                   rel=1e-6)
    for a, b in zip(mem.model.parameters(), mapped.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
