"""vaelab explore, server side: the Explorer's answers checked against the model's own
decode/encode and against scikit-learn, through the real app (Starlette's TestClient).

Every picture is compared pixel for pixel with ``round(255 * run.decode(code))`` after the
PNG round trip. Browser tests are in test_explore_browser.py, the command in test_explore_cli.py.
"""

from __future__ import annotations

import base64
import io
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.distributions import kl_per_dim

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from vaelab.explore.app import make_app, read_assets  # noqa: E402
from vaelab.explore.explorer import Explorer, slerp  # noqa: E402


def pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def expected(run, code, cls=None) -> np.ndarray:
    """What the page must show for ``code``: the model's decode, rounded to 8 bits."""
    return to8(run.decode(torch.tensor([code], dtype=torch.float32), cls)[0])


def to8(img: torch.Tensor) -> np.ndarray:
    """A float32 image (C, H, W) in [0, 1] rounded to 8 bits in float32, as any float32 pipeline
    does (float64 arithmetic can round a value a hair from k + 0.5 the other way)."""
    a = (img.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def png_file(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def explorer(trained_run):
    return Explorer(trained_run, n=64)


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(make_app(explorer))


@pytest.fixture(scope="module")
def trained_ae(tmp_path_factory, shapes_npz):
    """A small deterministic autoencoder (latent 4) on the shapes: no prior, no KL."""
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=ae", "model.arch=mlp",
        "model.hidden=64", "model.latent_dim=4", "train.epochs=2", "train.batch_size=32", "train.device=cpu",
        "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "ae4", evaluate_after=False, log=lambda *_: None)


# ------------------------------------------------------------------------------ what the page is told
def test_info_holds_the_map_the_dimensions_and_what_applies(client, trained_run):
    from sklearn.decomposition import PCA

    info = client.get("/api/info").json()
    data = trained_run.split()
    x, y = data.batch(slice(0, 64)), data.y[:64]
    q = trained_run.posterior(x, y)
    codes = q.mean.double().numpy()
    assert (info["continuous"], info["conditional"], info["latent_dim"], info["n"]) == (True, False, 4, 64)
    assert info["labels"] == y.tolist() and info["classes"] == ["0", "1", "2", "3"]
    assert [s["name"] for s in info["samplers"]] == ["prior", "gmm", "class-gaussian", "class-gmm", "two-stage", "maf", "iaf"]
    assert info["interpolation"] == ["linear", "spherical"] and info["notes"] == []
    kl = kl_per_dim(q, trained_run.model.prior(None, 64)).mean(0).numpy()
    np.testing.assert_allclose([d["kl"] for d in info["dims"]], kl, rtol=1e-5)
    assert [d["active"] for d in info["dims"]] == (codes.var(0, ddof=1) > 0.01).tolist()
    pts = PCA(2, random_state=0).fit(codes).transform(codes)
    np.testing.assert_allclose(info["points"], pts, rtol=1e-4, atol=1e-4)
    assert info["projection"]["name"] == "pca" and "inverse projection plus the mean" in info["projection"]["note"]
    top = info["anomalies"]["items"]
    from vaelab.anomaly.scores import score_images

    scores = score_images(trained_run.model, x, "mse", y=y)
    assert [t["index"] for t in top] == np.argsort(-scores, kind="stable")[:16].tolist()
    np.testing.assert_allclose([t["score"] for t in top], np.sort(scores)[::-1][:16], rtol=1e-6)


# ------------------------------------------------------------------------------ decoding
def test_a_decoded_code_is_the_models_decode_pixel_for_pixel(client, trained_run):
    for code in ([0.0, 0.0, 0.0, 0.0], [1.5, -0.25, 0.125, 3.0], [0.1, 0.2, 0.3, 0.4]):
        r = client.post("/api/decode", json={"code": code}).json()
        assert r["code"] == torch.tensor(code, dtype=torch.float32).tolist()
        np.testing.assert_array_equal(pixels(r["png"]), expected(trained_run, r["code"]))


def test_a_spot_on_the_pca_map_decodes_its_inverse_projection_plus_the_mean(client, explorer, trained_run):
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=0).fit(explorer.codes.double().numpy())
    for point in ([0.0, 0.0], [0.7, -0.3], [-2.0, 1.0]):
        r = client.post("/api/decode", json={"point": point}).json()
        np.testing.assert_allclose(r["code"], pca.components_.T @ np.array(point) + pca.mean_, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(pixels(r["png"]), expected(trained_run, r["code"]))
        assert r["nearest"] == int(np.argmin(((explorer.projection.points - point) ** 2).sum(1)))


def test_an_item_is_the_image_its_reconstruction_and_its_code(client, trained_run):
    data = trained_run.split()
    r = client.get("/api/item/5").json()
    x = data.batch(slice(5, 6))
    np.testing.assert_array_equal(pixels(r["image"]), data.x[5, 0].numpy())
    recon = trained_run.reconstruct(x, data.y[5:6])[0, 0].numpy().astype(np.float64)
    np.testing.assert_array_equal(pixels(r["recon"]), np.rint(recon * 255).astype(np.uint8))
    # encoded with the other 63 images: a batch of 64 may differ from a batch of 1 in the last bit
    np.testing.assert_allclose(r["code"], trained_run.encode(x, data.y[5:6])[0], rtol=1e-5, atol=1e-6)
    assert r["label"] == int(data.y[5])


def test_interpolation_linear_and_spherical(client, trained_run):
    a, b, ts = [1.0, 0.0, -1.0, 0.5], [-0.5, 2.0, 0.0, 1.0], [0.0, 0.25, 0.5, 1.0]
    r = client.post("/api/interpolate", json={"a": a, "b": b, "t": ts}).json()
    lin = [(1 - t) * np.array(a) + t * np.array(b) for t in ts]
    np.testing.assert_allclose(r["codes"], lin, rtol=1e-6, atol=1e-7)
    for code, png in zip(r["codes"], r["pngs"]):
        np.testing.assert_array_equal(pixels(png), expected(trained_run, code))
    # spherical, N(0, I) prior: equal norms stay equal along the arc, the angle grows linearly
    a, b = [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]
    r = client.post("/api/interpolate", json={"a": a, "b": b, "t": ts, "mode": "spherical"}).json()
    z = np.array(r["codes"])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 2.0, rtol=1e-6)
    np.testing.assert_allclose(np.arctan2(z[:, 2], z[:, 0]), np.array(ts) * np.pi / 2, atol=1e-6)
    np.testing.assert_array_equal(pixels(r["pngs"][2]), expected(trained_run, r["codes"][2]))


def test_slerp_ends_and_degenerate_cases():
    a, b = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([-4.0, 3.0], dtype=torch.float64)
    t = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    z = slerp(a, b, t)
    torch.testing.assert_close(z[0], a) and torch.testing.assert_close(z[2], b)
    torch.testing.assert_close(z[1].norm(), torch.tensor(5.0, dtype=torch.float64))
    torch.testing.assert_close(slerp(a, 2 * a, t)[1], 1.5 * a)  # parallel: the straight line
    torch.testing.assert_close(slerp(torch.zeros(2, dtype=torch.float64), b, t)[1], 0.5 * b)


def test_samples_are_the_samplers_own(client, trained_run):
    from vaelab.latent.sampling import fitted_sampler, sample_images

    r = client.post("/api/sample", json={"sampler": "gmm", "n": 6, "seed": 3}).json()
    s = sample_images(trained_run, fitted_sampler(trained_run, "gmm"), 6, None, 3)
    np.testing.assert_allclose(r["codes"], s.codes.numpy(), rtol=1e-6)
    # the sampler's own images, decoded as one batch as the server does (the CPU's matrix kernels
    # may round a batch of 6 and a single code differently in the last bits)
    for img, png in zip(s.images, r["pngs"]):
        np.testing.assert_array_equal(pixels(png), to8(img))
    r = client.post("/api/sample", json={"sampler": "class-gaussian", "n": 4, "cls": 2, "seed": 1}).json()
    assert r["classes"] == [2, 2, 2, 2] and len(r["pngs"]) == 4
    r = client.post("/api/sample", json={"sampler": "prior", "n": 3}).json()
    s = sample_images(trained_run, fitted_sampler(trained_run, "prior"), 3, None, 0)
    np.testing.assert_allclose(r["codes"], s.codes.numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------ uploads
def test_an_uploaded_png_is_encoded_reconstructed_and_placed(client, explorer, trained_run):
    data = trained_run.split()
    a = data.x[7, 0].numpy()  # (28, 28) uint8: the PNG round trip is lossless
    r = client.post("/api/upload", content=png_file(a), headers={"content-type": "image/png"}).json()
    np.testing.assert_array_equal(pixels(r["input"]), a)
    code = trained_run.encode(data.batch(slice(7, 8)))[0]
    assert r["code"] == code.tolist() and r["cls"] is None
    np.testing.assert_array_equal(pixels(r["png"]), expected(trained_run, r["code"]))
    np.testing.assert_allclose(r["point"], explorer.projection.pca.transform(code.double().numpy()[None])[0], rtol=1e-6)


def test_an_upload_is_decoded_as_training_images_are(client, tmp_path):
    """RGBA composited on the run's background, then resized to 28x28: vaelab's own decoder."""
    from vaelab.data.decode import DecodeOptions, decode

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (56, 70, 4), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(rgba, "RGBA").save(path)
    r = client.post("/api/upload", content=path.read_bytes(), headers={"content-type": "image/png"}).json()
    want = decode(str(path), DecodeOptions(channels=1, image_size=28, background=(255, 255, 255)))[0]
    np.testing.assert_array_equal(pixels(r["input"]), want)


def test_upload_limits(client):
    big = b"\x89PNG" + b"\0" * (5 * 2**20)
    r = client.post("/api/upload", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "limit is 5 MB" in r.json()["error"]
    bomb = io.BytesIO()
    Image.new("1", (6000, 6000)).save(bomb, format="PNG")  # 6000x6000 pixels in a few kB
    assert len(bomb.getvalue()) < 100_000
    r = client.post("/api/upload", content=bomb.getvalue(), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "6000x6000 pixels" in r.json()["error"]
    for body, kind, status, words in [(b"", "image/png", 400, "empty"), (b"not an image", "image/png", 400, "not an image"),
                                      (png_file(np.zeros((4, 4), np.uint8))[:30], "image/png", 400, "not an image"),
                                      (b"x", "text/plain", 415, "Content-Type image/png")]:
        r = client.post("/api/upload", content=body, headers={"content-type": kind})
        assert r.status_code == status and words in r.json()["error"], (body[:20], r.json())


# ------------------------------------------------------------------------------ bad requests
BAD = [
    ("/api/decode", '{"code": [1, 2, 3]}', "must have 4 numbers"),
    ("/api/decode", '{"code": [1, 2, 3, 4, 5]}', "must have 4 numbers"),
    ("/api/decode", '{"code": [NaN, 0, 0, 0]}', "NaN"),
    ("/api/decode", '{"code": [Infinity, 0, 0, 0]}', "Infinity"),
    ("/api/decode", '{"code": [1e400, 0, 0, 0]}', "finite"),
    ("/api/decode", '{"code": [1e9, 0, 0, 0]}', "finite number in"),
    ("/api/decode", '{"code": [1' + "0" * 400 + ', 0, 0, 0]}', "finite number in"),
    ("/api/decode", '{"point": [0, -1' + "0" * 400 + "]}", "finite number in"),
    ("/api/decode", '{"code": ["a", 0, 0, 0]}', "code[0] must be a number"),
    ("/api/decode", '{"code": [true, 0, 0, 0]}', "must be a number"),
    ("/api/decode", '{"code": [[1], 0, 0, 0]}', "must be a number"),
    ("/api/decode", '{"code": "1,2,3,4"}', "must be a list"),
    ("/api/decode", '{"code": null}', "must be a list"),
    ("/api/decode", '{"code": [0, 0, 0, 0], "point": [0, 0]}', "either code"),
    ("/api/decode", "{}", "either code"),
    ("/api/decode", '{"point": [0]}', "point must have 2"),
    ("/api/decode", '{"code": [0, 0, 0, 0], "cls": 1}', "conditional models only"),
    ("/api/decode", '{"code": [0, 0, 0, 0], "colour": 1}', "unknown field 'colour'"),
    ("/api/decode", '{"code": [0, 0, 0, 0]', "not valid JSON"),
    ("/api/decode", "[0, 0, 0, 0]", "JSON object"),
    ("/api/decode", "", "not valid JSON"),
    ("/api/decode", b"\xff\xfe{}", "not valid JSON"),
    ("/api/interpolate", '{"a": [0, 0, 0, 0]}', "both ends"),
    ("/api/interpolate", '{"a": [0, 0, 0, 0], "b": [1, 1, 1, 1], "t": [1.5]}', "t[0] must be a finite number in [0, 1]"),
    ("/api/interpolate", '{"a": [0, 0, 0, 0], "b": [1, 1, 1, 1], "t": []}', "list of 1 to 64"),
    ("/api/interpolate", '{"a": [0, 0, 0, 0], "b": [1, 1, 1, 1], "t": ' + str([0.5] * 65) + "}", "list of 1 to 64"),
    ("/api/interpolate", '{"a": [0, 0, 0, 0], "b": [1, 1, 1, 1], "mode": "cubic"}', "mode must be one of linear, spherical"),
    ("/api/sample", "{}", "sampler"),
    ("/api/sample", '{"sampler": "magic"}', "sampler must be one of"),
    ("/api/sample", '{"sampler": "gmm", "n": 0}', "n must be between 1 and 64"),
    ("/api/sample", '{"sampler": "gmm", "n": 1000}', "n must be between 1 and 64"),
    ("/api/sample", '{"sampler": "gmm", "n": 2.5}', "whole number"),
    ("/api/sample", '{"sampler": "gmm", "seed": -1}', "seed must be between"),
    ("/api/sample", '{"sampler": "class-gaussian", "cls": 9}', "class 9"),
    ("/api/sample", '{"sampler": "gmm", "cls": 1}', "unconditional"),
    ("/api/sample", '{"sampler": "prior", "cls": 1}', "unconditional"),
]


@pytest.mark.parametrize("path, body, words", BAD)
def test_malformed_requests_get_a_4xx_with_one_clear_line(client, path, body, words):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    assert words in error, error
    assert "\n" not in error and "Traceback" not in error


def test_other_refusals_are_json_too(client):
    r = client.post("/api/decode", content='{"code": [0, 0, 0, 0]}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    r = client.post("/api/decode", content=b"[" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/item/64").status_code == 404 and "0..63" in client.get("/api/item/64").json()["error"]
    assert client.get("/api/item/-1").status_code == 404
    assert client.get("/etc/passwd").json() == {"error": "nothing here: /etc/passwd"}
    assert client.get("/static/../explorer.py").status_code == 404
    assert client.get("/api/decode").status_code == 405 and "not allowed" in client.get("/api/decode").json()["error"]


def test_the_host_header_is_checked_when_asked(explorer):
    c = TestClient(make_app(explorer, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8765")
    assert c.get("/api/item/0").status_code == 200
    assert c.get("/api/item/0", headers={"host": "attacker.example:8765"}).status_code == 400


def test_assets_ship_in_the_package_and_load_nothing_from_elsewhere(client):
    folder = resources.files("vaelab.explore") / "static"
    assets = read_assets()
    assert sorted(assets) == sorted(p.name for p in folder.iterdir())
    for name, text in assets.items():
        low = text.decode().lower()
        assert "http://" not in low and "https://" not in low and "//cdn" not in low, name
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/explore.js"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert sum(len(t) for t in assets.values()) < 60_000  # small, as promised


# ------------------------------------------------------------------------------ other models
def test_a_conditional_model_decodes_under_the_chosen_class(trained_cvae):
    client = TestClient(make_app(Explorer(trained_cvae, n=32)))
    info = client.get("/api/info").json()
    assert info["conditional"] and info["classes"] == ["0", "1", "2", "3"]
    assert any("conditional" in n for n in info["notes"])
    code = [0.5, -0.5, 0.25, 0.0]
    for cls in (0, 3):
        r = client.post("/api/decode", json={"code": code, "cls": cls}).json()
        np.testing.assert_array_equal(pixels(r["png"]), expected(trained_cvae, r["code"], cls))
    assert "give a class cls in 0..3" in client.post("/api/decode", json={"code": code}).json()["error"]
    assert "between 0 and 3" in client.post("/api/decode", json={"code": code, "cls": 4}).json()["error"]
    r = client.post("/api/interpolate", json={"a": code, "b": [0, 0, 0, 0], "t": [0.5], "cls": 2}).json()
    np.testing.assert_array_equal(pixels(r["pngs"][0]), expected(trained_cvae, r["codes"][0], 2))
    data = trained_cvae.split()
    x = data.batch(slice(0, 1))
    r = client.post("/api/upload", content=png_file(data.x[0, 0].numpy()), headers={"content-type": "image/png"}).json()
    inferred = int(trained_cvae.model.infer_labels(x)[0])
    assert r["cls"] == inferred and r["code"] == trained_cvae.encode(x, torch.tensor([inferred]))[0].tolist()
    np.testing.assert_array_equal(pixels(r["png"]), expected(trained_cvae, r["code"], inferred))


def test_an_autoencoder_has_no_prior_sampler_no_kl_and_no_spherical_path(trained_ae):
    client = TestClient(make_app(Explorer(trained_ae, n=32)))
    info = client.get("/api/info").json()
    assert [s["name"] for s in info["samplers"]] == ["gmm", "class-gaussian", "class-gmm", "two-stage", "maf", "iaf"]
    assert all(d["kl"] is None for d in info["dims"]) and info["interpolation"] == ["linear"]
    assert any("lacks a prior p(z) to sample from" in n for n in info["notes"])
    codes = trained_ae.encode(trained_ae.split().batch(slice(0, 32))).double()
    np.testing.assert_allclose([d["spread"] for d in info["dims"]], codes.std(0).numpy(), rtol=1e-5)
    r = client.post("/api/interpolate", json={"a": [0] * 4, "b": [1] * 4, "mode": "spherical"})
    assert r.status_code == 400 and "Gaussian priors" in r.json()["error"]
    r = client.post("/api/sample", json={"sampler": "prior"})
    assert r.status_code == 400 and "sampler must be one of gmm" in r.json()["error"]


def test_a_model_without_a_continuous_latent_says_what_does_not_apply(trained_run, monkeypatch):
    monkeypatch.setattr(trained_run.model, "capabilities", trained_run.model.capabilities - {"continuous"})
    client = TestClient(make_app(Explorer(trained_run, n=16)))
    info = client.get("/api/info").json()
    assert not info["continuous"] and "points" not in info
    assert "lacks a continuous latent space: the map, the sliders and interpolation do not apply" in info["notes"][0]
    assert [s["name"] for s in info["samplers"]] == ["prior"]
    r = client.post("/api/decode", json={"code": [0, 0, 0, 0]})
    assert r.status_code == 400 and "needs a continuous latent space" in r.json()["error"]
    assert "code" not in client.get("/api/item/1").json()
    data = trained_run.split()
    r = client.post("/api/upload", content=png_file(data.x[0, 0].numpy()), headers={"content-type": "image/png"}).json()
    assert set(r) == {"input", "recon"}


def test_a_2d_latent_is_its_own_map(tiny_config, tmp_path):
    from vaelab.api import train

    run = train(tiny_config(), tmp_path / "vae2", evaluate_after=False, log=lambda *_: None)
    ex = Explorer(run, n=32)
    assert ex.projection.name == "identity"
    np.testing.assert_array_equal(ex.projection.points, ex.codes.double().numpy())
    r = TestClient(make_app(ex)).post("/api/decode", json={"point": [0.25, -1.5]}).json()
    assert r["code"] == [0.25, -1.5]
    np.testing.assert_array_equal(pixels(r["png"]), expected(run, [0.25, -1.5]))


def test_tsne_spots_decode_the_nearest_images_code(trained_run):
    ex = Explorer(trained_run, n=24, projection="tsne")
    assert ex.projection.name == "tsne" and "nearest" in ex.projection.note
    for i in (0, 5, 23):
        r = ex.decode_point(ex.projection.points[i].tolist())
        assert r["nearest"] == i and r["code"] == ex.codes[i].tolist()


def test_umap_without_umap_learn_is_one_line_and_with_it_is_used(trained_run, monkeypatch):
    import sys
    import types

    from vaelab.errors import VaelabError

    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    with pytest.raises(VaelabError, match="pip install umap-learn"):
        Explorer(trained_run, n=16, projection="umap")

    class FakeUMAP:  # stands in for umap.UMAP: the first two coordinates
        def __init__(self, n_components, random_state):
            pass

        def fit_transform(self, codes):
            return codes[:, :2] * 10

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    ex = Explorer(trained_run, n=16, projection="umap")
    assert ex.projection.name == "umap" and "UMAP has no inverse" in ex.projection.note
    np.testing.assert_allclose(ex.projection.points, ex.codes.double().numpy()[:, :2] * 10)


def test_random_malformed_bodies_never_reach_a_500(client):
    """A seeded fuzz over every POST endpoint: fields of every JSON type and odd sizes. The
    TestClient re-raises any exception a handler lets through, so a 500 fails here loudly."""
    import json
    import random

    rng = random.Random(0)
    leaves = [None, True, False, 0, -1, 3, 2**31, 10**400, 1e308, -0.0, 0.5, "", "a", "gmm", "prior", "linear",
              "spherical", [], {}, [0.1] * 4, [0.1] * 2, [[0, 0]]]

    def value(depth=0):
        r = rng.random()
        if r < 0.6 or depth > 2:
            return rng.choice(leaves)
        if r < 0.85:
            return [value(depth + 1) for _ in range(rng.choice([0, 1, 2, 4, 5, 65]))]
        return {rng.choice(["code", "a", "x"]): value(depth + 1)}

    fields = {"/api/decode": ["code", "point", "cls"], "/api/interpolate": ["a", "b", "t", "mode", "cls"],
              "/api/sample": ["sampler", "n", "cls", "seed"]}
    statuses = set()
    for _ in range(500):
        path = rng.choice(list(fields))
        body = {f: value() for f in fields[path] if rng.random() < 0.7}
        if rng.random() < 0.1:
            body["extra"] = 1
        r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        statuses.add(r.status_code)
        assert r.status_code in (200, 400, 413), (path, body, r.text)
        assert r.status_code == 200 or r.json()["error"]
    assert 400 in statuses


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("LA", "PNG"), ("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"),
                                       ("1", "PNG"), ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "JPEG"),
                                       ("RGB", "WEBP"), ("RGB", "BMP")])
def test_uploads_of_every_kind_of_image_are_read_as_vaelab_reads_files(client, tmp_path, mode, fmt):
    from vaelab.data.decode import DecodeOptions, decode

    rng = np.random.default_rng(1)
    if mode == "F":
        im = Image.fromarray(rng.random((40, 30)).astype(np.float32), "F")
    elif mode in ("I;16", "I"):
        im = Image.fromarray(rng.integers(0, 65535, (40, 30)).astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        im = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"up.{fmt.lower()}"
    im.save(path, format=fmt)
    r = client.post("/api/upload", content=path.read_bytes(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    want = decode(str(path), DecodeOptions(channels=1, image_size=28))[0]
    np.testing.assert_array_equal(pixels(r.json()["input"]), want)


def test_a_float_image_outside_0_1_is_refused_in_one_line(client, tmp_path):
    path = tmp_path / "bad.tiff"
    Image.fromarray(np.full((8, 8), 3.5, np.float32), "F").save(path)
    r = client.post("/api/upload", content=path.read_bytes(), headers={"content-type": "image/tiff"})
    assert r.status_code == 400 and "values outside [0, 1]" in r.json()["error"]
    assert "the uploaded image" in r.json()["error"]


def test_a_colour_model_gets_colour_pictures_and_colour_uploads(tmp_path):
    from vaelab.api import train
    from vaelab.configure import build_config

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 12, 10, 3), dtype=np.uint8)  # non-square RGB
    np.savez(tmp_path / "rgb.npz", x=x)
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={tmp_path / 'rgb.npz'}", "data.val=0.25", "model.kind=vae", "model.arch=mlp",
        "model.hidden=16", "model.latent_dim=3", "train.epochs=1", "train.batch_size=16", "train.device=cpu",
        "train.progress=false"])
    run = train(cfg, tmp_path / "rgb", evaluate_after=False, log=lambda *_: None)
    client = TestClient(make_app(Explorer(run, n=12)))
    info = client.get("/api/info").json()
    assert info["input_shape"] == [3, 12, 10] and info["classes"] is None and "labels" in info
    r = client.post("/api/decode", json={"code": [0.3, -0.2, 1.0]}).json()
    assert pixels(r["png"]).shape == (12, 10, 3)
    np.testing.assert_array_equal(pixels(r["png"]), expected(run, r["code"]))
    grey = rng.integers(0, 256, (24, 20), dtype=np.uint8)
    r = client.post("/api/upload", content=png_file(grey), headers={"content-type": "image/png"}).json()
    up = pixels(r["input"])
    assert up.shape == (12, 10, 3) and (up[..., 0] == up[..., 1]).all()  # grey, resized bilinear to 10x12
    want = np.asarray(Image.fromarray(grey).resize((10, 12), Image.BILINEAR))
    np.testing.assert_array_equal(up[..., 0], want)
