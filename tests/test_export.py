"""CSV export: exact layouts, values to the written precision, and streaming in chunks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from vaelab.api import Run
from vaelab.configure import build_config
from vaelab.errors import VaelabError
from vaelab.export.table import export, export_latents, export_reconstructions, latent_header, reconstruction_header
from vaelab.training.loop import fit


def _run(shapes_npz, kind: str) -> Run:
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=none", f"model.kind={kind}", "model.arch=mlp",
        "model.hidden=16", "model.latent_dim=3", "train.epochs=1", "train.batch_size=64", "train.device=cpu",
        "train.progress=false"])
    r = fit(cfg, None, log=lambda s: None)
    return Run(config=r.config, model=r.model, _splits=r.splits)


@pytest.fixture(scope="module")
def vae(shapes_npz):
    return _run(shapes_npz, "vae")


@pytest.fixture(scope="module")
def ae(shapes_npz):
    return _run(shapes_npz, "ae")


def read(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_headers():
    assert reconstruction_header(3) == ["row_id", "orig_px0", "recon_px0", "orig_px1", "recon_px1",
                                        "orig_px2", "recon_px2"]
    assert latent_header(2, ["mu", "logvar"]) == ["row_id", "label", "mu0", "mu1", "logvar0", "logvar1"]
    assert latent_header(2, ["mu"]) == ["row_id", "label", "mu0", "mu1"]


def test_reconstructions_layout_and_values(vae, tmp_path):
    r = export_reconstructions(vae, tmp_path / "p.csv", n=30)
    header, rows = read(tmp_path / "p.csv")
    assert r == {"what": "reconstructions", "rows": 30, "columns": 1 + 2 * 784, "out": str(tmp_path / "p.csv")}
    assert header[:5] == ["row_id", "orig_px0", "recon_px0", "orig_px1", "recon_px1"]
    assert header[-2:] == ["orig_px783", "recon_px783"] and len(header) == 1 + 2 * 784
    assert len(rows) == 30 and [int(row[0]) for row in rows] == list(range(30))
    values = np.array([[float(v) for v in row[1:]] for row in rows])
    x = vae.split("train").batch(slice(0, 30))
    recon = vae.reconstruct(x)
    assert np.abs(values[:, 0::2] - x.flatten(1).numpy()).max() <= 0.5e-4 + 1e-7
    assert np.abs(values[:, 1::2] - recon.flatten(1).numpy()).max() <= 0.5e-4 + 1e-7
    assert all(len(v.split(".")[1]) == 4 for v in rows[0][1:])  # fixed precision
    assert values.min() >= 0 and values.max() <= 1


def test_latents_layout_and_values(vae, ae, tmp_path):
    export_latents(vae, tmp_path / "z.csv")
    header, rows = read(tmp_path / "z.csv")
    assert header == ["row_id", "label", "mu0", "mu1", "mu2", "logvar0", "logvar1", "logvar2"]
    data = vae.split("train")
    assert len(rows) == len(data) == 256  # default: every image of the split
    assert [int(row[1]) for row in rows] == data.y.tolist()
    q = vae.posterior(data.float())
    mu, logvar = q.mean, q.logvar
    values = np.array([[float(v) for v in row[2:]] for row in rows])
    assert np.abs(values - torch.cat([mu, logvar], 1).numpy()).max() <= 0.5e-6 + 1e-6
    export(ae, "latents", tmp_path / "a.csv", n=5)
    header, rows = read(tmp_path / "a.csv")
    assert header == ["row_id", "label", "mu0", "mu1", "mu2"] and len(rows) == 5


def test_unlabelled_data_leaves_label_empty(vae, tmp_path):
    data = vae.split("train")
    run = Run(config=vae.config, model=vae.model)
    run._splits = type(vae.splits())(train=type(data)(data.x, None, "train"), val=None, test=None)
    export_latents(run, tmp_path / "z.csv", n=3)
    _, rows = read(tmp_path / "z.csv")
    assert [row[1] for row in rows] == ["", "", ""]


@pytest.mark.parametrize("what", ["reconstructions", "latents"])
def test_chunked_writes_give_the_same_file(vae, tmp_path, what):
    """The same rows, columns and values whatever the chunking. Values may differ in their last
    written digit: the CPU's matrix kernels (oneDNN/MKL on AVX-512) block differently for 7
    rows than for 50, so the float32 results differ in the last bits and can round either way."""
    export(vae, what, tmp_path / "one.csv", n=50, chunk_size=1000)
    export(vae, what, tmp_path / "many.csv", n=50, chunk_size=7)
    one, many = ((tmp_path / f).read_text().splitlines() for f in ("one.csv", "many.csv"))
    assert one[0] == many[0] and len(one) == len(many) == 51  # header and row count
    a = np.array([[float(v or "nan") for v in row.split(",")] for row in one[1:]])
    b = np.array([[float(v or "nan") for v in row.split(",")] for row in many[1:]])
    last_digit = 10.0 ** -(4 if what == "reconstructions" else 6)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # row ids
    np.testing.assert_allclose(a, b, rtol=0, atol=1.01 * last_digit, equal_nan=True)


def test_streams_one_chunk_at_a_time(vae, tmp_path, monkeypatch):
    """The model sees at most chunk_size images per call, and rows reach the file as chunks are done."""
    sizes, file_sizes = [], []
    real = vae.reconstruct

    def spy(x, *a, **k):
        sizes.append(len(x))
        tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".r.csv.")]
        file_sizes.append(tmp[0].stat().st_size if tmp else -1)
        return real(x, *a, **k)

    monkeypatch.setattr(vae, "reconstruct", spy)
    export_reconstructions(vae, tmp_path / "r.csv", n=25, chunk_size=10)
    assert sizes == [10, 10, 5]
    # the temporary file grows chunk by chunk (each chunk of 10 rows is ~110 kB, past any buffer)
    assert 0 <= file_sizes[0] < file_sizes[1] < file_sizes[2]


def test_a_failed_export_leaves_no_file(vae, tmp_path, monkeypatch):
    calls = []

    def boom(x, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return torch.zeros_like(x)

    (tmp_path / "r.csv").write_text("old\n")
    monkeypatch.setattr(vae, "reconstruct", boom)
    with pytest.raises(RuntimeError):
        export_reconstructions(vae, tmp_path / "r.csv", n=20, chunk_size=10)
    assert (tmp_path / "r.csv").read_text() == "old\n"  # untouched: the new file was never renamed in
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # and the temporary file is gone


def test_bad_arguments(vae, tmp_path):
    with pytest.raises(VaelabError, match="unknown export 'images'"):
        export(vae, "images", tmp_path / "x.csv")
    with pytest.raises(VaelabError, match="at least 1"):
        export(vae, "latents", tmp_path / "x.csv", n=0)
    with pytest.raises(VaelabError, match="chunk size"):
        export(vae, "latents", tmp_path / "x.csv", chunk_size=0)
    assert export(vae, "reconstructions", tmp_path / "d.csv")["rows"] == 100  # default n
