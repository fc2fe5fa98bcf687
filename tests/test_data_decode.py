"""Decoding image files as they come (vaelab.data.decode, through prepare_folder).

Every expected pixel is computed here from the stored values and the formula (the alpha
blend, the 16-bit scaling, the rotation, the crop), not by calling the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import one_line
from conftest import prep_folder as prep
from conftest import save_image as save
from PIL import Image

from vaelab.data import decode as dec
from vaelab.errors import ConfigError, DataError

RNG = np.random.default_rng(0)



def blend(colour: np.ndarray, alpha: np.ndarray, bg) -> np.ndarray:
    """The alpha blend, in floats: round((c * a + bg * (255 - a)) / 255)."""
    c, a = colour.astype(np.float64), alpha.astype(np.float64)[..., None]
    return np.rint((c * a + np.asarray(bg, np.float64) * (255 - a)) / 255).astype(np.uint8)


# ============================================================================ how images come
@pytest.mark.parametrize("background,bg", [("white", (255, 255, 255)), ("black", (0, 0, 0)),
                                           ("#1a80ff", (0x1A, 0x80, 0xFF))])
def test_rgba_is_composited_on_the_background(tmp_path, background, bg):
    rgba = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent and fully opaque pixels
    save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    x = prep(tmp_path, background=background).images
    assert x.shape == (1, 3, 5, 7)
    expected = blend(rgba[..., :3], rgba[..., 3], bg)
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), expected)
    assert tuple(x[0, :, 0, 0]) == bg  # the noise under a transparent pixel is gone
    np.testing.assert_array_equal(x[0, :, 0, 1], rgba[0, 1, :3])


def test_la_is_composited_and_stays_grey_on_a_grey_background(tmp_path):
    la = RNG.integers(0, 256, (4, 6, 2), dtype=np.uint8)
    save(tmp_path / "a.png", Image.fromarray(la, "LA"))
    x = prep(tmp_path, background="#404040").images
    assert x.shape == (1, 1, 4, 6)
    np.testing.assert_array_equal(x[0, 0], blend(la[..., :1], la[..., 1], (0x40,))[..., 0])


def test_la_on_a_coloured_background_becomes_rgb(tmp_path):
    la = RNG.integers(0, 256, (4, 6, 2), dtype=np.uint8)
    save(tmp_path / "a.png", Image.fromarray(la, "LA"))
    x = prep(tmp_path, background="#ff0000").images
    assert x.shape == (1, 3, 4, 6)
    expected = blend(np.repeat(la[..., :1], 3, -1), la[..., 1], (255, 0, 0))
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), expected)


def test_palette_with_transparency_is_composited(tmp_path):
    idx = RNG.integers(0, 4, (5, 5), dtype=np.uint8)
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0, 7, 7, 7]
    im = Image.fromarray(idx, "P")
    im.putpalette(palette)
    save(tmp_path / "p.png", im, transparency=1)  # index 1 is transparent
    x = prep(tmp_path, background="#336699").images
    rgb = np.asarray(palette, np.uint8).reshape(-1, 3)[idx]
    alpha = np.where(idx == 1, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), blend(rgb, alpha, (0x33, 0x66, 0x99)))
    # A palette with an alpha per entry (PNG keeps it as a tRNS list): partial transparency.
    im = Image.fromarray(idx, "P")
    im.putpalette([10, 20, 30, 0, 200, 100, 50, 255, 0, 255, 0, 128, 7, 7, 7, 40], "RGBA")
    save(tmp_path / "q" / "p.png", im)
    x = prep(tmp_path / "q", background="#336699").images
    pal = np.asarray([10, 20, 30, 0, 200, 100, 50, 255, 0, 255, 0, 128, 7, 7, 7, 40], np.uint8).reshape(-1, 4)
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), blend(pal[idx, :3], pal[idx, 3], (0x33, 0x66, 0x99)))


def test_grey_with_a_transparent_value_and_grey_palette(tmp_path):
    a = np.array([[0, 50], [100, 150]], np.uint8)
    save(tmp_path / "l.png", Image.fromarray(a), transparency=50)  # tRNS: value 50 is transparent
    x = prep(tmp_path, background="black").images
    assert x.shape == (1, 1, 2, 2) and x[0, 0].tolist() == [[0, 0], [100, 150]]
    p = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    p.putpalette([30, 30, 30, 220, 220, 220])
    save(tmp_path / "g" / "p.png", p)
    g = prep(tmp_path / "g").images  # a grey palette is a grey image
    assert g.shape == (1, 1, 1, 2) and g[0, 0].tolist() == [[30, 220]]


@pytest.mark.parametrize("mode,suffix", [("I;16", ".png"), ("I", ".tif")])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, mode, suffix):
    v = np.array([[0, 1, 128, 129], [257, 32767, 32768, 65535]], np.int64)
    arr = v.astype(np.uint16 if mode == "I;16" else np.int32)
    save(tmp_path / f"a{suffix}", Image.fromarray(arr))
    assert Image.open(tmp_path / f"a{suffix}").mode == mode
    x = prep(tmp_path).images
    np.testing.assert_array_equal(x[0, 0], np.rint(v * 255 / 65535).astype(np.uint8))
    assert x[0, 0, 1].tolist() == [1, 127, 128, 255]


def test_float_images_are_0_to_1_and_out_of_range_is_a_bad_file(tmp_path):
    f = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    save(tmp_path / "f.tif", Image.fromarray(f))
    np.testing.assert_array_equal(prep(tmp_path).images[0, 0], np.rint(f * 255).astype(np.uint8))
    save(tmp_path / "b" / "g.tif", Image.fromarray(f * 255))
    with pytest.raises(DataError) as e:
        prep(tmp_path / "b")
    assert "g.tif" in one_line(e) and "[0, 1]" in str(e.value) and "--skip-bad" in str(e.value)


def test_cmyk_and_1_bit(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [51, 102, 0, 0]]], np.uint8)
    save(tmp_path / "c" / "a.tif", Image.fromarray(cmyk, "CMYK"))
    x = prep(tmp_path / "c").images[0].transpose(1, 2, 0)
    # PIL's CMYK -> RGB: channel = (255 - ink) * (255 - K) / 255
    expected = (255 - cmyk[..., :3].astype(int)) * (255 - cmyk[..., 3:].astype(int)) / 255
    assert np.abs(x.astype(int) - expected).max() <= 1 and x[0, 0].tolist() == [255, 255, 255]
    save(tmp_path / "b" / "a.png", Image.fromarray(np.array([[True, False]])).convert("1"))
    assert prep(tmp_path / "b").images[0, 0].tolist() == [[255, 0]]


@pytest.mark.parametrize("orientation,turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                              (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_honoured(tmp_path, orientation, turn):
    a = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)  # not square: a rotation changes the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    save(tmp_path / "a.png", Image.fromarray(a), exif=exif)
    x = prep(tmp_path).images
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), turn(a))


def test_grey_and_colour_mixed_become_rgb_with_a_note(tmp_path):
    g = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    c = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    save(tmp_path / "a.png", Image.fromarray(g))
    save(tmp_path / "b.png", Image.fromarray(c))
    notes = []
    res = prep(tmp_path, log=notes.append)
    assert res.images.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(res.images[0], np.stack([g, g, g]))
    np.testing.assert_array_equal(res.images[1], c.transpose(2, 0, 1))
    assert len(res.notes) == 1 and "1 of the 2 images" in res.notes[0] and "RGB" in res.notes[0]
    # logged through the callback, not printed: first what is about to be decoded, then the notes
    assert notes[0] == (f"decoding the 2 images of {tmp_path} (no cache yet; once: later runs read the cache): "
                        f"in this process, a bar on a terminal; cached in {res.path}")
    assert notes[1:] == res.notes


def test_all_grey_gives_one_channel_and_channels_can_be_forced(tmp_path):
    g = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    save(tmp_path / "a.png", Image.fromarray(g))
    assert prep(tmp_path).images.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(prep(tmp_path, channels=3).images[0], np.stack([g, g, g]))


def test_centre_crop_then_resize(tmp_path):
    a = RNG.integers(0, 256, (6, 9), dtype=np.uint8)
    save(tmp_path / "a.png", Image.fromarray(a))
    np.testing.assert_array_equal(prep(tmp_path, crop="center:4").images[0, 0], a[1:5, 2:6])  # round(2.5) = 2
    np.testing.assert_array_equal(prep(tmp_path, crop="center:2x5").images[0, 0], a[2:4, 2:7])
    x = prep(tmp_path, crop="center:4", image_size=2).images
    assert x.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(x[0, 0], np.asarray(Image.fromarray(a[1:5, 2:6]).resize((2, 2), Image.BILINEAR)))
    with pytest.raises(DataError) as e:
        prep(tmp_path, crop="center:148")
    assert "larger than image" in one_line(e) and "a.png" in str(e.value) and "--crop" in str(e.value)


@pytest.mark.parametrize("kw,field", [({"image_size": 0}, "image_size"), ({"image_size": 5000}, "4096"),
                                      ({"crop": "148"}, "crop"), ({"background": "pink"}, "background"),
                                      ({"channels": 2}, "channels")])
def test_bad_options_are_one_line_config_errors(tmp_path, kw, field):
    save(tmp_path / "a.png", Image.fromarray(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ConfigError) as e:
        prep(tmp_path, **kw)
    assert field in one_line(e)


def test_decompression_bomb_limit_stays_on(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL errors at twice the limit
    save(tmp_path / "a.png", Image.fromarray(np.zeros((8, 8), np.uint8)))
    with pytest.raises(DataError, match="DecompressionBomb"):
        prep(tmp_path)


def test_a_large_image_decodes_quietly_and_one_past_pils_limit_is_a_bad_file(tmp_path, monkeypatch):
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the warning from 100 pixels, PIL's error from 200
    big = tmp_path / "big.png"
    Image.fromarray(np.full((12, 12), 9, np.uint8)).save(big)  # 144 pixels: in the warning zone
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        assert dec.decode(str(big), dec.DecodeOptions(channels=1)).shape == (1, 12, 12)
        assert dec.probe(str(big), (255, 255, 255)) == (True, None)
    huge = tmp_path / "huge.png"
    Image.fromarray(np.zeros((15, 15), np.uint8)).save(huge)  # 225 pixels: PIL refuses it
    grey, error = dec.probe(str(huge), (255, 255, 255))
    assert grey is None and "DecompressionBombError" in error
