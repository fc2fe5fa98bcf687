"""dSprites, generated: factor indexing, the drawing against independent geometry and
against pixel counts read off the original's animation, the cache, the registry entry.

Everything draws a few sprites only; the full 737,280-image set is built by one test
that runs when VAELAB_SLOW=1.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data import DATASETS, load_data
from vaelab.data import dsprites as ds
from vaelab.errors import DataError


def classes(shape=0, scale=5, orient=0, px=0, py=0) -> np.ndarray:
    return np.array([0, shape, scale, orient, px, py])


def draw(**kw) -> np.ndarray:
    """One image as a (64, 64) bool mask."""
    return ds.render_dsprites([ds.factor_index(classes(**kw))])[0][0, 0] > 0


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    r, c = np.nonzero(mask)
    return int(r.min()), int(r.max()), int(c.min()), int(c.max())


def centre(i: int) -> float:
    # Where the original puts the shape's centre for position class i, in pixels.
    return 16.0 + 32.0 * i / 31


# ---------------------------------------------------------------- factors and indices
def test_sizes_and_values_follow_the_original():
    assert ds.N_IMAGES == 737_280 == int(np.prod(ds.FACTOR_SIZES))
    assert ds.FACTOR_NAMES == ("color", "shape", "scale", "orientation", "posX", "posY")
    values = ds.factor_values()
    assert [len(v) for v in values] == list(ds.FACTOR_SIZES)
    # The original's metadata: orientation includes 2pi (step 2pi/39), positions 0..1.
    assert values[3][1] == pytest.approx(0.16110732) and values[3][-1] == pytest.approx(2 * np.pi)
    assert values[2].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert values[4][1] == pytest.approx(0.03225806)


def test_index_is_the_mixed_radix_number_and_round_trips():
    assert ds.factor_index([0, 0, 0, 0, 0, 1]) == 1
    assert ds.factor_index([0, 0, 0, 0, 1, 0]) == 32  # as the original's notebook says
    assert ds.factor_index([0, 2, 5, 39, 31, 31]) == ds.N_IMAGES - 1
    assert isinstance(ds.factor_index([0, 1, 2, 3, 4, 5]), int)
    idx = np.random.default_rng(0).integers(0, ds.N_IMAGES, 500)
    f = ds.index_factors(idx)
    assert f.shape == (500, 6) and f.dtype == np.int64
    assert np.array_equal(ds.factor_index(f), idx)
    assert ds.index_factors(ds.N_IMAGES - 1).tolist() == [0, 2, 5, 39, 31, 31]


@pytest.mark.parametrize("bad, words", [([0, 3, 0, 0, 0, 0], "shape = 3 is out of range 0..2"),
                                        ([0, 0, 0, 40, 0, 0], "orientation = 40 is out of range 0..39"),
                                        ([0, 0, 0, 0, -1, 0], "posX = -1 is out of range 0..31")])
def test_out_of_range_factor_is_one_line(bad, words):
    with pytest.raises(DataError) as e:
        ds.factor_index(bad)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="out of range 0..737279"):
        ds.index_factors([ds.N_IMAGES])
    with pytest.raises(DataError, match="shape"):
        ds.factor_index([0, 0, 0])


# ---------------------------------------------------------------- the drawing
def test_square_matches_axis_aligned_geometry_at_sub_pixel_positions():
    # Independent expectation: at orientation 0 the square is |x|, |y| < 9.6 * scale
    # around its centre, tested on pixel centres.
    for scale, px, py in [(5, 0, 0), (5, 7, 20), (0, 31, 3), (2, 13, 31)]:
        s = 0.5 + 0.1 * scale
        xs = np.arange(64) + 0.5
        inside_x = np.abs(xs - centre(px)) < 9.6 * s
        inside_y = np.abs(xs - centre(py)) < 9.6 * s
        assert np.array_equal(draw(scale=scale, px=px, py=py), inside_y[:, None] & inside_x[None, :])
    full = draw(scale=5)
    assert full.sum() == 400 and bbox(full) == (6, 25, 6, 25)  # 20 x 20, as in the original


def test_square_turned_a_quarter_is_the_square():
    dy = np.linspace(-12, 12, 97)
    for scale in (0.5, 1.0):
        a = ds._row_intervals(0, scale, 0.0, dy)
        b = ds._row_intervals(0, scale, np.pi / 2, dy)
        assert np.allclose(np.where(np.isinf(a), 99, a), np.where(np.isinf(b), 99, b), atol=1e-9)


def test_orientation_2pi_draws_orientation_0():
    idx = [ds.factor_index(classes(shape=s, scale=sc, orient=o, px=9, py=4)) for s in range(3)
           for sc in (0, 5) for o in (0, 39)]
    imgs = ds.render_dsprites(idx)[0].reshape(6, 2, 64, 64)
    assert np.array_equal(imgs[:, 0], imgs[:, 1])


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_mirror_symmetry_fixes_the_rotation_centre_and_direction(shape):
    # Every shape is symmetric about its vertical axis, so mirroring the image left-right
    # equals turning the other way (orientation k <-> 39 - k) at the mirrored posX.
    for k, px, py in [(3, 5, 11), (10, 20, 0), (17, 31, 30)]:
        a = draw(shape=shape, orient=k, px=px, py=py)
        b = draw(shape=shape, orient=39 - k, px=31 - px, py=py)
        assert np.sum(a[:, ::-1] != b) <= 2  # pixel centres exactly on an edge may differ


def test_ellipse_area_is_pi_a_b():
    a, b = 9.6 * 1.33, 9.6 / 1.33
    for orient in (0, 7, 13, 25):
        for scale in (0, 5):
            s = 0.5 + 0.1 * scale
            count = draw(shape=1, scale=scale, orient=orient, px=11, py=17).sum()
            assert count == pytest.approx(np.pi * a * b * s * s, rel=0.06)


def test_positions_move_the_centroid_linearly():
    for shape in range(3):
        idx = [ds.factor_index(classes(shape=shape, scale=3, orient=8, px=i, py=20)) for i in range(32)]
        masks = ds.render_dsprites(idx)[0][:, 0] > 0
        cols = np.array([np.nonzero(m)[1].mean() + 0.5 for m in masks])
        slope, offset = np.polyfit(np.arange(32), cols, 1)
        assert slope == pytest.approx(32 / 31, abs=0.01)
        assert np.abs(cols - (offset + slope * np.arange(32))).max() < 0.35
        rows = np.array([np.nonzero(m)[0].mean() for m in masks])
        assert np.ptp(rows) < 0.35  # posX does not move it vertically


# Pixel counts and bounding boxes (rows, then columns) of frames of the original's
# animation (deepmind/dsprites-dataset, dsprites.gif), at known factor classes.
ORIGINAL_FRAMES = [
    ({"shape": 2}, 222, (7, 23, 6, 25)),
    ({"shape": 2, "px": 31, "py": 31}, 222, (39, 55, 38, 57)),
    ({"shape": 2, "px": 10, "py": 31}, 224, (39, 56, 17, 35)),
    ({"shape": 2, "orient": 12}, 225, (8, 26, 5, 23)),
    ({"shape": 1}, 288, (9, 22, 3, 28)),
    ({"shape": 1, "orient": 20}, 290, (9, 22, 3, 28)),
    ({"shape": 0}, 400, (6, 25, 6, 25)),
    ({"shape": 0, "orient": 5}, 364, (3, 28, 3, 28)),
]


@pytest.mark.parametrize("factors, count, box", ORIGINAL_FRAMES)
def test_frames_of_the_original(factors, count, box):
    mask = draw(**factors)
    assert mask.sum() == count and bbox(mask) == box


def test_arrays_and_values():
    idx = np.array([0, 1, 32, 1024, ds.N_IMAGES - 1])
    images, cls, values = ds.render_dsprites(idx)
    assert images.shape == (5, 1, 64, 64) and images.dtype == np.uint8
    assert set(np.unique(images)) == {0, 255}
    assert np.array_equal(cls, ds.index_factors(idx))
    assert values[-1].tolist() == pytest.approx([1.0, 3.0, 1.0, 2 * np.pi, 1.0, 1.0])
    assert values[2].tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 1 / 31, 0.0])
    # Every image stays off the border (the original's positions are chosen so).
    assert not images[:, 0, [0, 63]].any() and not images[:, 0, :, [0, 63]].any()


def test_deterministic_and_a_subset_equals_the_same_images_of_a_larger_draw():
    rng = np.random.default_rng(1)
    sprites = [5, 300, 601]  # a square, an ellipse and a heart
    block = np.concatenate([np.arange(s * 1024, (s + 1) * 1024) for s in sprites])
    pick = np.sort(rng.choice(block, 40, replace=False))
    a = ds.render_dsprites(pick)[0]
    b = ds.render_dsprites(pick)[0]
    assert a.tobytes() == b.tobytes()
    whole = ds.render_dsprites(block)[0]
    assert np.array_equal(whole[np.searchsorted(block, pick)], a)


# ---------------------------------------------------------------- the cache
def test_cache_is_written_reused_and_rebuilt_when_damaged(tmp_path):
    images, cls, values = ds.load_dsprites(tmp_path, limit=2048)
    assert images.shape == (2048, 1, 64, 64) and cls.shape == (2048, 6) and values.shape == (2048, 6)
    assert {p.name for p in tmp_path.iterdir()} == {"images.npy", "classes.npy", "values.npy", "meta.json"}
    expected = np.array(images)
    assert np.array_equal(expected, ds.render_dsprites(np.arange(2048))[0])
    stamp = (tmp_path / "images.npy").stat().st_mtime_ns
    again = ds.load_dsprites(tmp_path, limit=1000, mmap=False)  # a smaller limit reuses it
    assert type(again[0]) is np.ndarray and np.array_equal(again[0], expected[:1000])
    assert (tmp_path / "images.npy").stat().st_mtime_ns == stamp

    path = tmp_path / "images.npy"
    with open(path, "r+b") as f:  # truncated: rebuilt
        f.truncate(path.stat().st_size - 4096)
    assert np.array_equal(ds.load_dsprites(tmp_path, limit=2048)[0], expected)
    np.save(tmp_path / "classes.npy", np.zeros((2048, 5), np.int64))  # wrong shape: rebuilt
    assert np.array_equal(ds.load_dsprites(tmp_path, limit=2048)[1], cls)
    arr = np.load(path, mmap_mode="r+")  # right shape, wrong pixels: the spot check rebuilds
    arr[0] = 255 - arr[0]
    arr.flush()
    del arr
    assert np.array_equal(ds.load_dsprites(tmp_path, limit=2048)[0], expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_bad_limit_is_one_line(tmp_path):
    with pytest.raises(DataError, match="limit must be in 1..737280"):
        ds.load_dsprites(tmp_path, limit=0)


# ---------------------------------------------------------------- the registry entry
def test_registry_entry_gives_shapes_as_labels_and_the_factors(monkeypatch, tmp_path):
    idx = np.arange(0, ds.N_IMAGES, 9001)  # all three shapes
    monkeypatch.setattr(ds, "load_dsprites", lambda root=None, **kw: ds.render_dsprites(idx))
    assert "dsprites" in DATASETS
    _train, test, names = DATASETS["dsprites"](DataConfig(name="dsprites"))
    assert test is None and names == ["square", "ellipse", "heart"]
    splits = load_data(DataConfig(name="dsprites", val="0.25"))
    assert splits.test is None and splits.classes == names
    total = len(splits.train) + len(splits.val)
    assert total == len(idx) and splits.train.factors.shape == (len(splits.train), 6)
    assert splits.train.factors.dtype == torch.int64
    assert torch.equal(splits.train.y, splits.train.factors[:, 1])
    assert torch.equal(splits.val.y, splits.val.factors[:, 1])
    assert set(splits.train.y.tolist()) == {0, 1, 2}
    sub = splits.train.subset([2, 0])
    assert torch.equal(sub.factors, splits.train.factors[[2, 0]])
    assert torch.equal(splits.train.to("cpu").factors, splits.train.factors)


@pytest.mark.skipif(os.environ.get("VAELAB_SLOW") != "1", reason="draws all 737,280 images (3 GB); set VAELAB_SLOW=1")
def test_full_set(tmp_path):
    start = time.perf_counter()
    images, cls, _values = ds.load_dsprites(tmp_path)
    seconds = time.perf_counter() - start
    print(f"dSprites: {ds.N_IMAGES} images drawn and cached in {seconds:.1f}s, "
          f"{(tmp_path / 'images.npy').stat().st_size / 1e9:.2f} GB")
    assert seconds < 60
    assert images.shape == (ds.N_IMAGES, 1, 64, 64) and images.dtype == np.uint8
    assert np.array_equal(cls[-1], [0, 2, 5, 39, 31, 31])
    pick = np.random.default_rng(0).choice(ds.N_IMAGES, 64, replace=False)
    assert np.array_equal(images[pick], ds.render_dsprites(pick)[0])
    area = (images[::997, 0] > 0).sum(axis=(1, 2))
    assert area.min() >= 50 and area.max() <= 400


def test_limit_takes_a_seeded_random_subset_not_the_first_small_squares(monkeypatch):
    # 120 images in the original's factor order: the first ones are all squares
    idx = np.sort(np.random.default_rng(0).choice(ds.N_IMAGES, 120, replace=False))
    monkeypatch.setattr(ds, "load_dsprites", lambda root=None, **kw: ds.render_dsprites(idx))
    assert set(ds.index_factors(idx[:20])[:, 1].tolist()) == {0}  # the first 20: one shape
    cfg = DataConfig(name="dsprites", val="none", limit=20)
    s = load_data(cfg, seed=1)
    assert len(s.train) == 20 and len(set(s.train.factors[:, 1].tolist())) > 1
    assert len(set(s.train.factors[:, 2].tolist())) > 1  # and more than one scale
    keep = torch.randperm(120, generator=torch.Generator().manual_seed(1))[:20].sort().values
    assert torch.equal(s.train.factors, torch.from_numpy(ds.index_factors(idx[keep.numpy()])))
    assert torch.equal(load_data(cfg, seed=1).train.factors, s.train.factors)  # reproducible


def test_factor_names_and_sizes_come_with_the_data_not_its_name():
    """A loader's FactorLabels reach ImageSet (names, sizes) through subset, to and concat;
    bare classes (a loader that states no names) leave them None."""
    import numpy as np
    import torch

    from vaelab.data.load import _to_set
    from vaelab.data.sets import FactorLabels, concat

    x = np.zeros((6, 1, 4, 4), np.uint8)
    classes = np.array([[0, 1], [1, 0], [2, 1], [0, 0], [1, 1], [2, 0]])
    a = _to_set((x, None, None, FactorLabels(classes, ("hue", "size"), (3, 2))), "train", False)
    assert a.factor_names == ("hue", "size") and a.factor_sizes == (3, 2)
    assert torch.equal(a.factors, torch.from_numpy(classes))
    sub = a.subset([1, 3]).to("cpu")
    assert sub.factor_names == ("hue", "size") and sub.factors.tolist() == [[1, 0], [0, 0]]
    both = concat(a, sub, "all")
    assert both.factor_sizes == (3, 2) and len(both.factors) == 8
    bare = _to_set((x, None, None, classes), "train", False)
    assert bare.factor_names is None and bare.factor_sizes is None and bare.factors.shape == (6, 2)
    assert concat(a, bare, "mixed").factor_names is None  # the two disagree: names are not guessed
