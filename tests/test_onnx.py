"""ONNX export: each file run by onnxruntime against the PyTorch contract (max abs difference
<= 1e-4) at two batch sizes through the same file, for mlp and conv bodies (both paddings),
a VAE, an AE and a conditional VAE; onnx.json; one-line refusals; nothing half-written."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import cli_error, run_main
from vaelab.api import Run
from vaelab.configure import build_config
from vaelab.errors import VaelabError
from vaelab.training.loop import fit

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from vaelab.anomaly.scores import score_images  # noqa: E402
from vaelab.export.onnx import MANIFEST, OPSET, export_onnx  # noqa: E402

TOL = 1e-4
BATCHES = (2, 7)  # neither is the traced batch (3): the dynamic dimension is really dynamic

MODELS = {
    # name -> overrides; conv-same: TensorFlow padding on flipped maps and a final stride-1 layer
    "mlp-vae": ["model.kind=vae", "model.arch=mlp", "model.hidden=32"],
    "conv-same-vae": ["model.kind=vae", "model.arch=conv", "model.channels=8,16", "model.padding=same",
                      "model.final_kernel=3", "model.dense=16"],
    "conv-cvae": ["model.kind=cvae", "model.arch=conv", "model.channels=8,16", "model.dense=16"],
    "mlp-ae-tanh": ["model.kind=ae", "model.arch=mlp", "model.hidden=32", "model.loss=mse",
                    "model.output_activation=tanh"],
}


def _train(shapes_npz, run_dir, overrides):
    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=none", "model.latent_dim=3", "train.epochs=1",
        "train.batch_size=64", "train.device=cpu", "train.progress=false", *overrides])
    fit(cfg, run_dir, log=lambda s: None)
    return Run.load(run_dir, device="cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes_npz):
    root = tmp_path_factory.mktemp("onnx-runs")
    return {name: _train(shapes_npz, root / name, o) for name, o in MODELS.items()}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """name -> (run, folder, manifest): every part (the conv-same VAE: no sampler, the decoder's
    twin); the AE is exported by the CLI test below."""
    out = {}
    for name in ("mlp-vae", "conv-same-vae", "conv-cvae"):
        folder = tmp_path_factory.mktemp(f"onnx-{name}")
        parts = ["encoder", "decoder", "scorer"] if name == "conv-same-vae" else None  # None: all it has
        out[name] = (runs[name], folder, export_onnx(runs[name], folder, parts=parts))
    return out


def session(folder, part):
    return ort.InferenceSession(str(folder / f"{part}.onnx"), providers=["CPUExecutionProvider"])


def images(run, n, offset=0):
    data = run.split("train")
    sl = slice(offset, offset + n)
    return data.batch(sl), data.y[sl]


def close(got, want):
    want = want.detach().numpy() if torch.is_tensor(want) else np.asarray(want)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()


@pytest.mark.parametrize("name", ["mlp-vae", "conv-same-vae", "conv-cvae"])
def test_encoder_decoder_scorer_match_pytorch_at_two_batch_sizes(exported, name):
    run, folder, manifest = exported[name]
    cond = run.model.conditional
    assert list(manifest["parts"]) == ["encoder", "decoder", "scorer"] + (["sampler"] if name != "conv-same-vae" else [])
    enc, dec, sco = session(folder, "encoder"), session(folder, "decoder"), session(folder, "scorer")
    for n, offset in zip(BATCHES, (0, 50)):
        x, y = images(run, n, offset)
        feed = {"image": x.numpy(), **({"label": y.numpy()} if cond else {})}
        mu, logvar = enc.run(None, feed)
        q = run.posterior(x, y if cond else None)
        close(mu, q.mean)
        close(logvar, q.logvar)
        z = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
        (img,) = dec.run(None, {"code": z.numpy(), **({"label": y.numpy()} if cond else {})})
        close(img, run.decode(z, y if cond else None))
        assert img.min() >= 0 and img.max() <= 1
        (score,) = sco.run(None, {"image": x.numpy()})  # no label: the most probable class, as score_images
        close(score, score_images(run.model, x, "mse").astype(np.float32))
        assert score.shape == (n,) and (score > 0).all()


@pytest.mark.parametrize("name", ["mlp-vae", "conv-cvae"])
def test_sampler_decodes_prior_draws_from_given_noise(exported, name):
    run, folder, _ = exported[name]
    sampler = session(folder, "sampler")
    for n in BATCHES:
        y = torch.arange(n) % 4 if run.model.conditional else None
        # rsample draws its noise first from the generator: the same seed gives the same noise
        z = run.model.prior(y, n).sample(generator=torch.Generator().manual_seed(5))
        noise = torch.randn((n, 3), generator=torch.Generator().manual_seed(5))
        (img,) = sampler.run(None, {"noise": noise.numpy(), **({"label": y.numpy()} if y is not None else {})})
        close(img, run.decode(z, y))


def test_manifest_describes_files_shapes_and_the_check(exported):
    _, folder, manifest = exported["conv-cvae"]
    on_disk = json.loads((folder / MANIFEST).read_text())
    assert on_disk == manifest
    assert manifest["opset"] == OPSET and manifest["input_shape"] == [1, 28, 28] and manifest["latent_dim"] == 3
    assert manifest["num_classes"] == 4
    enc = manifest["parts"]["encoder"]
    assert enc["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28]},
                             {"name": "label", "dtype": "int64", "shape": ["batch"]}]
    assert [o["name"] for o in enc["outputs"]] == ["mu", "logvar"]
    assert enc["outputs"][0]["shape"] == ["batch", 3]
    assert manifest["parts"]["scorer"]["inputs"] == [{"name": "image", "dtype": "float32",
                                                     "shape": ["batch", 1, 28, 28]}]
    assert manifest["parts"]["scorer"]["outputs"] == [{"name": "score", "dtype": "float32", "shape": ["batch"]}]
    assert manifest["checked"]["batch_sizes"] == [1, 5]
    for part in manifest["parts"].values():
        assert 0 <= part["max_abs_diff"] <= TOL
        model = __import__("onnx").load(str(folder / part["file"]))
        assert {o.version for o in model.opset_import if o.domain == ""} == {OPSET}
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert not dims[0].HasField("dim_value")  # the batch dimension is symbolic
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["onnx.json", "encoder.onnx", "decoder.onnx", "scorer.onnx", "sampler.onnx"])  # no temp files left


def test_autoencoder_through_the_cli(runs, tmp_path, capsys):
    run = runs["mlp-ae-tanh"]
    out = tmp_path / "onnx"
    rc, stdout, err = run_main(capsys, "export", run.run_dir, "--onnx", out)
    assert rc == 0, err
    assert "wrote encoder.onnx, decoder.onnx, scorer.onnx and onnx.json" in stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert list(manifest["parts"]) == ["encoder", "decoder", "scorer"]  # no prior: no sampler
    enc = manifest["parts"]["encoder"]
    assert [o["name"] for o in enc["outputs"]] == ["mu"] and "no posterior variance" in enc["note"]
    x, _ = images(run, 7)
    (mu,) = session(out, "encoder").run(None, {"image": x.numpy()})
    close(mu, run.encode(x))
    (img,) = session(out, "decoder").run(None, {"code": mu})
    close(img, run.decode(torch.from_numpy(mu)))  # tanh model: images back in [0, 1]
    (score,) = session(out, "scorer").run(None, {"image": x.numpy()})
    close(score, score_images(run.model, x, "mse").astype(np.float32))
    # a part the model lacks is refused in one line; an unknown part too
    msg = cli_error(capsys, "export", run.run_dir, "--onnx", tmp_path / "s", "--parts", "sampler")
    assert "the ONNX sampler needs a prior p(z) to sample from" in msg and "(ae:" in msg
    assert not (tmp_path / "s").exists()
    assert "unknown ONNX part 'prior'" in cli_error(capsys, "export", run.run_dir, "--onnx", tmp_path / "s",
                                                      "--parts", "encoder,prior")


def test_csv_options_do_not_mix_with_onnx(runs, tmp_path, capsys):
    rd = runs["mlp-vae"].run_dir
    assert "--what, --n applies to CSV exports" in cli_error(capsys, "export", rd, "--onnx", tmp_path,
                                                             "--what", "latents", "--n", "5")
    assert "--parts applies to --onnx" in cli_error(capsys, "export", rd, "--parts", "encoder")
    # the CSV export is unchanged
    rc, stdout, _ = run_main(capsys, "export", rd, "--what", "latents", "--n", "4", "--out", tmp_path / "z.csv")
    assert rc == 0 and "wrote 4 rows x 8 columns" in stdout


def test_a_failed_check_writes_nothing(runs, tmp_path, monkeypatch):
    import vaelab.export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # every file now "differs"
    with pytest.raises(VaelabError, match=r"the exported decoder differs from PyTorch by .*nothing was written"):
        export_onnx(runs["mlp-vae"], tmp_path / "out", parts=["decoder"])
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_exporter_packages_are_one_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    msg = cli_error(capsys, "export", runs["mlp-vae"].run_dir, "--onnx", tmp_path / "o")
    assert "ONNX export needs the onnx and onnxscript packages (onnxscript is missing)" in msg
    assert "pip install 'vaelab[onnx]'" in msg


def test_a_batch_size_fixed_by_the_trace_is_refused(runs, tmp_path, monkeypatch):
    import vaelab.export.onnx as onnx_export

    # len() of a tensor makes torch.export fix the batch size (the model avoids it); the
    # exporter would silently ship a file that runs at one batch size only.
    monkeypatch.setattr(onnx_export.Decoder, "forward",
                        lambda self, code, label=None: self.model.decode(code.reshape(len(code), -1), label))
    with pytest.raises(VaelabError, match=r"could not be exported for any batch size: torch.export fixed the batch "
                                          r"of its input code at the 3 images it was traced with; nothing was written"):
        export_onnx(runs["mlp-vae"], tmp_path / "out", parts=["encoder", "decoder"])
    assert list((tmp_path / "out").iterdir()) == []
