"""The maf and iaf samplers: their density against a direct change of variables, their fit
on known densities, saving (safetensors, never a pickle), the CLI and the explorer, and ONNX
(the VampPrior run whose sampler cannot be exported, and the flows that can)."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from conftest import cli_error, run_main
from vaelab.api import Run
from vaelab.errors import CheckpointError
from vaelab.latent.flow_samplers import AutoregressiveFlow, IAFSampler, MAFSampler
from vaelab.latent.sampling import SAMPLERS, fitted_sampler, make_sampler

SMALL = {"epochs": 2, "hidden": 16, "batch_size": 64}  # a quick fit on the 192 training codes of a tiny run


def random_flow(reads: str, dim: int = 2) -> AutoregressiveFlow:
    """A flow with random weights (not the identity it starts as), in float64."""
    torch.manual_seed(3)
    flow = AutoregressiveFlow(dim, blocks=2, hidden=8, layers=2, reads=reads).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(0.4 * torch.randn_like(p))
        flow.mean.copy_(torch.tensor([0.5, -1.0][:dim], dtype=torch.float64))
        flow.std.copy_(torch.tensor([2.0, 0.5][:dim], dtype=torch.float64))
    return flow


@pytest.mark.parametrize("reads", ["data", "noise"])
def test_log_density_is_the_change_of_variables(reads):
    """log p(z) = log N(u(z)) + log |det du/dz|, the Jacobian taken by autograd; sampling inverts u."""
    flow = random_flow(reads)
    z = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    want = []
    for zi in z:
        u = flow.to_noise(zi[None])[0][0]
        jac = torch.autograd.functional.jacobian(lambda v: flow.to_noise(v[None])[0][0], zi)
        want.append(-0.5 * (u.square().sum() + 2 * math.log(2 * math.pi)) + torch.linalg.slogdet(jac)[1])
    with torch.no_grad():
        got = flow.log_prob(z)
        torch.testing.assert_close(got, torch.stack(want).detach(), rtol=1e-9, atol=1e-9)
        # the autoregressive Jacobian is triangular (in each block's order): not a constant map
        assert got.std() > 0.1
        u, _ = flow.to_noise(z)
        torch.testing.assert_close(flow(u), z, rtol=1e-9, atol=1e-9)  # sampling is the exact inverse


def test_a_mafs_density_integrates_to_one():
    flow = random_flow("data")
    g = torch.linspace(-12, 12, 301, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=1e-3)


def banana(n: int, rng) -> np.ndarray:
    a = rng.standard_normal(n)
    return np.stack([a, a ** 2 + 0.5 * rng.standard_normal(n)], 1)


@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_a_fit_on_a_banana_beats_a_gaussian_and_nears_the_truth(name):
    rng = np.random.default_rng(0)
    x, held = banana(2000, rng), banana(1000, rng)
    true = -(norm.logpdf(held[:, 0]) + norm.logpdf(held[:, 1], held[:, 0] ** 2, 0.5)).mean()  # 2.12 nats
    gauss = -multivariate_normal(x.mean(0), np.cov(x, rowvar=False)).logpdf(held).mean()  # 3.17 nats
    s = make_sampler(name, epochs=20, hidden=32, batch_size=128).fit(x, seed=0)
    nll = -s.log_prob(held).mean()
    assert nll < gauss - 0.8 and nll < true + 0.15, (nll, gauss, true)
    assert s.train_nll == pytest.approx(-s.log_prob(x).mean(), abs=0.1)  # the trainer's last epoch


@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_samples_have_the_datas_mean_and_covariance(name):
    rng = np.random.default_rng(1)
    mean, cov = np.array([3.0, -2.0]), np.array([[4.0, 1.5], [1.5, 1.0]])  # codes in their own units
    x = rng.multivariate_normal(mean, cov, 3000)
    s = make_sampler(name, epochs=5, hidden=32).fit(x, seed=0)
    z = s.sample(5000, seed=1)
    assert z.shape == (5000, 2) and z.dtype == np.float64
    np.testing.assert_allclose(z.mean(0), mean, atol=0.12)
    np.testing.assert_allclose(np.cov(z, rowvar=False), cov, atol=0.25)
    assert -s.log_prob(x).mean() == pytest.approx(-multivariate_normal(mean, cov).logpdf(x).mean(), abs=0.05)
    np.testing.assert_array_equal(s.sample(7, seed=4), s.sample(7, seed=4))
    # scale < 1 narrows the noise, so the draws
    narrow = make_sampler(name, epochs=5, hidden=32, scale=0.25).fit(x, seed=0).sample(5000, seed=1)
    assert np.trace(np.cov(narrow, rowvar=False)) < 0.5 * np.trace(cov)


def test_bad_options_are_one_line():
    from vaelab.errors import ConfigError

    with pytest.raises(ConfigError, match="blocks of the maf sampler must be >= 1"):
        make_sampler("maf", blocks=0)
    with pytest.raises(ConfigError, match="lr of the iaf sampler must be positive"):
        make_sampler("iaf", lr=0)
    with pytest.raises(ConfigError, match="unconditional"):
        make_sampler("maf", **SMALL).fit(np.random.default_rng(0).standard_normal((50, 2))).sample(2, cls=1)


# ------------------------------------------------------------------------------ on a run: save, load, tamper
@pytest.fixture
def run_copy(trained_run, tmp_path):
    """The session's small VAE (latent 4), copied: these tests write into RUN/samplers."""
    shutil.copytree(trained_run.run_dir, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "samplers", ignore_errors=True)
    return Run.load(tmp_path / "run", device="cpu")


@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_saved_as_safetensors_and_json_and_loaded_to_the_same_samples(run_copy, name):
    notes = []
    s = fitted_sampler(run_copy, name, seed=2, log=notes.append, **SMALL)
    folder = run_copy.dir.samplers
    assert sorted(p.name for p in folder.iterdir()) == [f"{name}.json", f"{name}.safetensors"]
    meta = json.loads((folder / f"{name}.json").read_text())
    assert meta["params"] == s.params and meta["seed"] == 2 and meta["checkpoint_id"] == run_copy.checkpoint_id
    assert meta["sha256"] == hashlib.sha256((folder / f"{name}.safetensors").read_bytes()).hexdigest()
    assert notes and f"fitting the {name} sampler on 192 codes of 4 dimensions" in notes[0]
    notes.clear()
    again = fitted_sampler(run_copy, name, seed=2, log=notes.append, **SMALL)
    assert notes == [] and again is not s  # loaded, not fit again
    np.testing.assert_array_equal(again.sample(9, seed=5), s.sample(9, seed=5))
    codes = run_copy.encode(run_copy.split("train").float()).double().numpy()
    np.testing.assert_allclose(again.log_prob(codes), s.log_prob(codes), rtol=0, atol=0)


class _Boom:
    """Unpickling this writes a file: the test below proves the sampler file is never unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_tampered_or_truncated_file_is_refit_never_unpickled(run_copy, tmp_path):
    first = fitted_sampler(run_copy, "maf", log=lambda s: None, **SMALL)
    draws = first.sample(6, seed=1)
    path = run_copy.dir.samplers / "maf.safetensors"
    marker = tmp_path / "unpickled"
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF  # a weight changed in place: still a valid safetensors file
    for bad in (pickle.dumps(_Boom(marker)), good[: len(good) // 2], bytes(flipped)):
        path.write_bytes(bad)
        with pytest.raises(CheckpointError) as e:
            MAFSampler.load(run_copy.dir.samplers, "maf")
        assert len(str(e.value).splitlines()) == 1 and "maf.safetensors" in str(e.value)
        assert "changed after it was fit (its SHA-256 is not the one maf.json records)" in str(e.value)
        notes = []
        s = fitted_sampler(run_copy, "maf", log=notes.append, **SMALL)
        assert notes[0].startswith("note: refitting the maf sampler: its saved file is refused (")
        np.testing.assert_array_equal(s.sample(6, seed=1), draws)  # the same seeded fit
        assert not marker.exists()
    # settings in the JSON that the weights do not carry: refused, then refit
    meta = json.loads((run_copy.dir.samplers / "maf.json").read_text())
    tensors_meta = __import__("vaelab.tensorfiles", fromlist=["x"]).read_metadata(path)
    assert json.loads(tensors_meta["params"]) == meta["params"]
    meta["params"]["hidden"] = 17
    (run_copy.dir.samplers / "maf.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match maf.json"):
        IAFSampler.load(run_copy.dir.samplers, "maf")
    (run_copy.dir.samplers / "maf.json").write_text("{not json")
    notes = []
    fitted_sampler(run_copy, "maf", log=notes.append, **SMALL)
    assert notes[0] == f"note: refitting the maf sampler: {run_copy.dir.samplers / 'maf'}.json does not read as JSON"


# ------------------------------------------------------------------------------ a run without a continuous latent
@pytest.fixture(scope="module")
def vq_run(tmp_path_factory, shapes_npz):
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25",
                                    "model.kind=vq-vae", "model.arch=conv", "model.latent=conv",
                                    "model.channels=[8,4]", "model.codebook_size=16", "train.epochs=1",
                                    "train.batch_size=64", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "vq", evaluate_after=False, log=lambda *_: None)


@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_a_run_without_a_continuous_latent_is_refused_in_one_line(vq_run, capsys, name):
    assert SAMPLERS[name].missing(vq_run) == "the model lacks a continuous latent space"
    msg = cli_error(capsys, "sample", vq_run.run_dir, "--sampler", name)
    assert f"the {name} sampler needs a continuous latent space" in msg
    assert not (vq_run.run_dir / "samplers").exists()


# ------------------------------------------------------------------------------ the CLI and the explorer
def test_sample_and_eval_samples_through_the_cli(run_copy, shapes_judge, tmp_path, capsys):
    rc, out, err = run_main(capsys, "sample", run_copy.run_dir, "--sampler", "maf", "--n", 8, "--epochs", 2,
                            "--hidden", 16, "--blocks", 1, "--lr", 3e-3, "--npz", tmp_path / "s.npz")
    assert rc == 0, err
    assert "fitting the maf sampler on 192 codes of 4 dimensions" in out and "samples_maf.png" in out
    with np.load(tmp_path / "s.npz") as z:
        images, codes = z["images"], z["codes"]
    assert images.shape == (8, 1, 28, 28) and images.dtype == np.uint8 and images.max() > 0
    s = fitted_sampler(run_copy, "maf", epochs=2, hidden=16, blocks=1, lr=3e-3)  # loaded: the same settings
    assert s.params["blocks"] == 1 and s.params["lr"] == 3e-3
    np.testing.assert_allclose(codes, s.sample(8, seed=0).astype(np.float32), rtol=1e-6)
    rc, out, err = run_main(capsys, "eval-samples", run_copy.run_dir, "--sampler", "iaf", "--n", 64, "--epochs", 2,
                            "--hidden", 16, "--judge", shapes_judge[1], "--out", tmp_path / "ev")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    assert math.isfinite(r["fcd"]) and r["fcd"] > 0 and sum(r["class_histogram"]) == 64
    assert "--epochs does not apply to --sampler gmm" in cli_error(capsys, "sample", run_copy.run_dir,
                                                                  "--sampler", "gmm", "--epochs", 2)


def test_the_explorer_lists_and_draws_the_flows(run_copy):
    pytest.importorskip("starlette")
    from vaelab.explore.explorer import Explorer

    ex = Explorer(run_copy, n=16)
    names = [s["name"] for s in ex.supported_samplers()]
    assert names[-2:] == ["maf", "iaf"] and {"prior", "gmm"} <= set(names)
    r = ex.sample("maf", n=4, seed=1)  # the page's button: a fit with the defaults, saved in RUN/samplers
    assert len(r["pngs"]) == 4 and r["classes"] is None
    s = fitted_sampler(run_copy, "maf", log=lambda m: pytest.fail(f"refit: {m}"))  # loaded, the same draws
    np.testing.assert_allclose(r["codes"], s.sample(4, seed=1).astype(np.float32), rtol=1e-6)


def test_parts_lists_the_flow_options():
    from vaelab.cli.parts import parts_table

    rows = {r["name"]: r for r in parts_table(["samplers"])["samplers"]}
    opts = {o["name"]: o["default"] for o in rows["iaf"]["options"]}
    assert opts == {"blocks": 2, "hidden": 128, "layers": 3, "epochs": 20, "lr": 1e-3, "batch_size": 256,
                    "scale": 1.0, "codes": "mean"}
    assert "inverse autoregressive flow" in rows["iaf"]["help"]


# ------------------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def vamp_run(tmp_path_factory, shapes_npz):
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vamp",
                                    "model.vamp.components=4", "model.arch=mlp", "model.hidden=32",
                                    "model.latent_dim=3", "train.epochs=1", "train.batch_size=64",
                                    "train.device=cpu", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "vamp", evaluate_after=False, log=lambda *_: None)


def test_a_vampprior_export_writes_the_rest_and_says_which_part_it_could_not(vamp_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "onnx"
    rc, stdout, err = run_main(capsys, "export", vamp_run.run_dir, "--onnx", out)
    assert rc == 0, err
    skipped = [line for line in stdout.splitlines() if line.startswith("not exported")]
    assert len(skipped) == 1 and skipped[0].startswith("not exported: the sampler: the ONNX sampler needs a Gaussian "
                                                       "prior draw per label; the vamp prior")
    assert "wrote encoder.onnx, decoder.onnx, scorer.onnx and onnx.json" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "onnx.json", "scorer.onnx"]
    manifest = json.loads((out / "onnx.json").read_text())
    assert list(manifest["parts"]) == ["encoder", "decoder", "scorer"] and list(manifest["not_exported"]) == ["sampler"]
    # asked for by name, the sampler is still refused as a whole, in one line
    assert "the vamp prior" in cli_error(capsys, "export", vamp_run.run_dir, "--onnx", tmp_path / "o2",
                                         "--parts", "sampler")
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())
    assert "--sampler gmm cannot be exported to ONNX; exportable: prior, two-stage, maf, iaf" in cli_error(
        capsys, "export", vamp_run.run_dir, "--onnx", tmp_path / "o3", "--sampler", "gmm")


@pytest.mark.parametrize("name", ["iaf", "maf"])
def test_a_flow_sampler_exports_as_noise_to_images(vamp_run, tmp_path, capsys, name):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vaelab.export.onnx import export_onnx

    run = Run.load(shutil.copytree(vamp_run.run_dir, tmp_path / "run"), device="cpu")
    s = fitted_sampler(run, name, log=lambda m: None, **SMALL)
    manifest = export_onnx(run, tmp_path / "onnx", parts=["sampler"], sampler=s)
    assert manifest["sampler"] == name and f"the {name} sampler's draws" in manifest["parts"]["sampler"]["what"]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "sampler.onnx"), providers=["CPUExecutionProvider"])
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    (img,) = session.run(None, {"noise": noise.numpy()})
    with torch.no_grad():
        want = run.decode(s.onnx_codes()(noise)).numpy()
    assert img.shape == (5, 1, 28, 28) and np.abs(img - want).max() <= 1e-4
    # the same noise the sampler draws with its seed: the images sample_images decodes
    seeded = torch.randn((4, 3), generator=torch.Generator().manual_seed(7))
    (img,) = session.run(None, {"noise": seeded.numpy()})
    np.testing.assert_allclose(img, run.decode(torch.from_numpy(s.sample(4, seed=7)).float()).numpy(), atol=1e-4)


def test_export_reuses_the_flow_that_sample_fit(run_copy, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    rc, out, err = run_main(capsys, "sample", run_copy.run_dir, "--sampler", "iaf", "--n", 4, "--epochs", 1,
                            "--hidden", 8, "--seed", 3)
    assert rc == 0 and "fitting the iaf sampler" in out, err
    rc, out, err = run_main(capsys, "export", run_copy.run_dir, "--onnx", tmp_path / "o", "--sampler", "iaf",
                            "--parts", "sampler")
    assert rc == 0, err
    assert "fitting" not in out and "wrote sampler.onnx and onnx.json" in out  # the saved fit, not a new one
    s = fitted_sampler(run_copy, "iaf", seed=3, epochs=1, hidden=8)
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(tmp_path / "o" / "sampler.onnx"), providers=["CPUExecutionProvider"])
    (img,) = session.run(None, {"noise": noise.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(img, run_copy.decode(s.onnx_codes()(noise)).numpy(), atol=1e-4)
    assert "--sampler applies to --onnx exports" in cli_error(capsys, "export", run_copy.run_dir, "--sampler", "iaf")


def test_a_default_export_leaves_out_a_part_that_fails_its_check_file_and_all(vamp_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import vaelab.export.onnx as onnx_export
    from vaelab.errors import VaelabError

    real = onnx_export._check

    def failing(model, name, *args):
        if name == "scorer":  # written to the temporary folder, then refused
            raise VaelabError("the exported scorer differs from PyTorch by 1 on random inputs")
        return real(model, name, *args)

    monkeypatch.setattr(onnx_export, "_check", failing)
    lines = []
    manifest = onnx_export.export_onnx(vamp_run, tmp_path / "o", log=lines.append)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["decoder.onnx", "encoder.onnx", "onnx.json"]
    assert list(manifest["parts"]) == ["encoder", "decoder"] and sorted(manifest["not_exported"]) == ["sampler", "scorer"]
    assert "not exported: the scorer: the exported scorer differs from PyTorch by 1 on random inputs" in lines
