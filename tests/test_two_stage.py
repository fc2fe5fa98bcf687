"""The two-stage VAE sampler (Dai & Wipf 2019): a second VAE fit on a run's codes. Its samples'
statistics against the codes', its files (safetensors + JSON) loading back to the same samples,
tampered files refit and never unpickled, its settings, the explorer, `eval-samples` (an FCD
recomputed here) and the one-line refusal on a run without a continuous latent."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch
from conftest import run_main

from vaelab.errors import CheckpointError, ConfigError
from vaelab.latent.sampling import (
    SAMPLERS,
    Sampler,
    TwoStageOptions,
    fitted_sampler,
    make_sampler,
    sample_images,
)
from vaelab.latent.two_stage import TwoStageVAE
from vaelab.rundir import recorded_id

SMALL = {"epochs": 50}  # 192 codes of batch 128: 100 steps


@pytest.fixture(scope="module")
def rae_run(tmp_path_factory, shapes_npz):
    """A small RAE-L2 (latent 4) trained 3 epochs on the labelled shapes, with a validation split."""
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=rae-l2", "model.arch=mlp",
        "model.hidden=64", "model.latent_dim=4", "train.epochs=3", "train.batch_size=32", "train.device=cpu",
        "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "rae", evaluate_after=False, log=lambda *_: None)


def codes_of(run) -> np.ndarray:
    train = run.split("train")
    return run.encode(train.float(), train.y).double().numpy()


def moment_gap(a: np.ndarray, b: np.ndarray) -> float:
    """|mean_a - mean_b| + |cov_a - cov_b|_F."""
    return float(np.linalg.norm(a.mean(0) - b.mean(0)) + np.linalg.norm(np.cov(a, rowvar=False) - np.cov(b, rowvar=False)))


def test_its_samples_match_the_codes_better_than_a_standard_normal(rae_run):
    notes = []
    s = fitted_sampler(rae_run, "two-stage", seed=0, refit=True, log=notes.append, **SMALL)
    codes = codes_of(rae_run)
    z = s.sample(4000, seed=1)
    assert z.shape == (4000, 4) and z.dtype == np.float64
    normal = np.random.default_rng(1).standard_normal((4000, 4))
    assert moment_gap(z, codes) < 0.25 * moment_gap(normal, codes), (moment_gap(z, codes), moment_gap(normal, codes))
    # per dimension: the means within a third of the codes' spread, the spreads within a factor 2
    sd = codes.std(0)
    assert np.all(np.abs(z.mean(0) - codes.mean(0)) < sd / 3)
    assert np.all((z.std(0) > sd / 2) & (z.std(0) < 2 * sd)), (z.std(0), sd)
    assert s.info["config"] == {"dim": 4, "latent": 4, "hidden": 128, "depth": 2} and notes == []
    # the images are the run's decoder applied to those codes
    out = sample_images(rae_run, s, 5, seed=2)
    torch.testing.assert_close(out.codes, torch.from_numpy(s.sample(5, seed=2)).float())
    torch.testing.assert_close(out.images, rae_run.decode(out.codes))


def test_the_saved_files_load_back_to_the_same_samples(rae_run):
    s = fitted_sampler(rae_run, "two-stage", seed=0, refit=True, log=lambda *_: None, **SMALL)
    folder = rae_run.dir.samplers
    weights = folder / "two-stage.safetensors"
    meta = json.loads((folder / "two-stage.json").read_text())
    assert weights.read_bytes()[8:9] == b"{" and not (folder / "two-stage.npz").exists()
    assert meta["params"]["epochs"] == 50 and meta["seed"] == 0 and meta["stage2"]["config"]["dim"] == 4
    # both files record the weights they were fit on
    assert recorded_id(weights) == recorded_id(folder / "two-stage.json") == rae_run.checkpoint_id
    t = Sampler.load(folder, "two-stage")
    np.testing.assert_array_equal(t.sample(64, seed=7), s.sample(64, seed=7))
    assert not np.array_equal(t.sample(64, seed=8), s.sample(64, seed=7))
    # asked again with the same settings: loaded, not fit again (the file is untouched)
    stamp = weights.stat().st_mtime_ns
    notes = []
    u = fitted_sampler(rae_run, "two-stage", seed=0, log=notes.append, **SMALL)
    assert weights.stat().st_mtime_ns == stamp and notes == []
    np.testing.assert_array_equal(u.sample(16, seed=3), s.sample(16, seed=3))
    # other settings (or another seed) fit again
    fitted_sampler(rae_run, "two-stage", seed=1, log=notes.append, **SMALL)
    assert weights.stat().st_mtime_ns != stamp


def test_a_fit_is_deterministic_and_leaves_torchs_random_state(rae_run):
    codes = codes_of(rae_run)
    state = torch.random.get_rng_state()
    a = make_sampler("two-stage", epochs=5).fit(codes, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = make_sampler("two-stage", epochs=5).fit(codes, seed=3)
    c = make_sampler("two-stage", epochs=5).fit(codes, seed=4)
    np.testing.assert_array_equal(a.sample(8, seed=0), b.sample(8, seed=0))
    assert not np.array_equal(a.sample(8, seed=0), c.sample(8, seed=0))


class Trap:
    """Unpickling this touches a file: the proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.path),))


def test_a_tampered_file_is_refit_never_unpickled(rae_run, tmp_path):
    fitted_sampler(rae_run, "two-stage", seed=0, refit=True, log=lambda *_: None, **SMALL)
    folder = rae_run.dir.samplers
    weights, meta_path = folder / "two-stage.safetensors", folder / "two-stage.json"
    good = Sampler.load(folder, "two-stage").sample(32, seed=5)
    # 1. a weight changed in place: the recorded SHA-256 no longer matches
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"two-stage\.safetensors changed after it was fit \(its SHA-256"):
        Sampler.load(folder, "two-stage")
    notes = []
    s = fitted_sampler(rae_run, "two-stage", seed=0, log=notes.append, **SMALL)
    assert len(notes) == 1 and notes[0].startswith("note: refitting the two-stage sampler: ") and "changed" in notes[0]
    np.testing.assert_array_equal(s.sample(32, seed=5), good)  # the same fit again (seeded)
    # 2. a pickle in its place, its hash written into the JSON too: refused before any parsing
    marker = tmp_path / "unpickled"
    weights.write_bytes(pickle.dumps({"w": Trap(marker)}, protocol=4))
    from vaelab.latent.sampling import file_sha256

    meta = json.loads(meta_path.read_text())
    meta["sha256"] = file_sha256(weights)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="is a pickle / torch.save file, which could run code"):
        Sampler.load(folder, "two-stage")
    notes = []
    s = fitted_sampler(rae_run, "two-stage", seed=0, log=notes.append, **SMALL)
    assert not marker.exists() and len(notes) == 1 and "pickle" in notes[0]
    np.testing.assert_array_equal(s.sample(32, seed=5), good)
    # 3. settings in the JSON that do not match the weights (a huge width): refused from the weights'
    # shapes before any network is built
    meta = json.loads(meta_path.read_text())
    meta["stage2"]["config"]["hidden"] = 10**9
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not match its own settings: its weights are a network of "
                                              r"\{'dim': 4, 'latent': 4, 'hidden': 128, 'depth': 2\}"):
        Sampler.load(folder, "two-stage")
    # 4. a JSON that does not read: refit, with a note
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"two-stage\.json does not read as a two-stage sampler's settings"):
        Sampler.load(folder, "two-stage")
    notes = []
    s = fitted_sampler(rae_run, "two-stage", seed=0, log=notes.append, **SMALL)
    assert notes == [f"note: refitting the two-stage sampler: {meta_path} does not read as JSON"]
    np.testing.assert_array_equal(s.sample(32, seed=5), good)
    assert not marker.exists()


def test_a_tampered_gmm_file_is_refit_too(rae_run, tmp_path):
    fitted_sampler(rae_run, "gmm", seed=0, components=2, log=lambda *_: None)
    folder = rae_run.dir.samplers
    marker = tmp_path / "unpickled"
    with open(folder / "gmm.npz", "wb") as f:  # an object array: only readable by unpickling
        np.savez(f, weights=np.array([Trap(marker)], dtype=object))
    notes = []
    s = fitted_sampler(rae_run, "gmm", seed=0, components=2, log=notes.append)
    assert not marker.exists() and len(notes) == 1 and "gmm.npz changed after it was fit" in notes[0]
    assert s.arrays["means"].shape == (2, 4)


def test_settings_are_checked_and_listed():
    with pytest.raises(ConfigError, match="sampler two-stage: epochs must be >= 1, got 0"):
        make_sampler("two-stage", epochs=0)
    with pytest.raises(ConfigError, match="sampler two-stage: scale must be positive, got -1.0"):
        make_sampler("two-stage", scale=-1)
    with pytest.raises(ConfigError, match="sampler two-stage does not take the parameter components"):
        make_sampler("two-stage", components=3)
    s = make_sampler("two-stage", hidden=16, latent=2)
    assert s.params == {"epochs": 20, "hidden": 16, "depth": 2, "latent": 2, "batch_size": 128, "lr": 1e-3,
                        "scale": 1.0}
    assert SAMPLERS["two-stage"].options is TwoStageOptions
    from vaelab.cli.parts import parts_table

    row = next(r for r in parts_table(["samplers"])["samplers"] if r["name"] == "two-stage")
    listed = {o["name"]: o for o in row["options"]}
    assert list(listed) == ["epochs", "hidden", "depth", "latent", "batch_size", "lr", "scale", "codes"]
    assert listed["hidden"]["default"] == 128 and "1024" in listed["hidden"]["help"]


def test_stage_two_loss_is_its_gaussian_nll_and_kl():
    torch.manual_seed(0)
    net = TwoStageVAE(3, 2, 8, 1)
    with torch.no_grad():
        net.log_gamma.fill_(-1.0)
        net.shift.copy_(torch.tensor([1.0, -1.0, 0.5]))
        net.spread.copy_(torch.tensor([2.0, 0.5, 1.0]))
    z = torch.randn(5, 3)
    torch.manual_seed(1)
    parts = net(z)
    torch.manual_seed(1)
    zs = (z - net.shift) / net.spread
    q = net.posterior(zs)
    u = q.mean + q.std * torch.randn(5, 2)
    zhat = net.out(torch.cat([u, net.dec(u)], 1))
    nll = -torch.distributions.Normal(zhat, torch.tensor(-0.5).exp()).log_prob(zs).sum(1)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(q.mean, q.std),
                                           torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(parts["recon"], nll)
    torch.testing.assert_close(parts["kl"], kl)
    torch.testing.assert_close(parts["loss"], nll + kl)
    torch.testing.assert_close(net.decode(u), zhat * net.spread + net.shift)


def test_the_explorer_offers_it_and_draws_its_samples(rae_run):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    explorer = Explorer(rae_run, n=32)
    names = [s["name"] for s in explorer.supported_samplers()]
    assert "two-stage" in names and "gmm" in names and "prior" not in names  # an RAE has no prior
    client = TestClient(make_app(explorer))
    assert "two-stage" in [s["name"] for s in client.get("/api/info").json()["samplers"]]
    r = client.post("/api/sample", json={"sampler": "two-stage", "n": 4, "seed": 2}).json()
    s = sample_images(rae_run, fitted_sampler(rae_run, "two-stage", seed=explorer.seed), 4, None, 2)
    np.testing.assert_allclose(r["codes"], s.codes.numpy(), rtol=1e-6)


def test_eval_samples_writes_its_fcd(rae_run, shapes_judge, tmp_path, capsys):
    from vaelab.evaluation.metrics import frechet_distance

    judge, folder, _ = shapes_judge
    rc, _, err = run_main(capsys, "eval-samples", rae_run.run_dir, "--sampler", "two-stage", "--n", 64,
                          "--judge", folder, "--out", tmp_path / "ev")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    assert r["sampler"] == "two-stage" and r["params"]["epochs"] == 20 and r["n"] == 64
    imgs = rae_run.decode(torch.from_numpy(fitted_sampler(rae_run, "two-stage").sample(64, seed=0)).float())
    f_s = judge.features(imgs).double().numpy()
    f_t = judge.features(rae_run.split("val").float()).double().numpy()
    fcd = frechet_distance(f_s.mean(0), np.cov(f_s, rowvar=False), f_t.mean(0), np.cov(f_t, rowvar=False))
    assert r["fcd"] == pytest.approx(fcd, rel=1e-6) and r["fcd"] > 0
    rc, _, err = run_main(capsys, "sample", rae_run.run_dir, "--sampler", "two-stage", "--n", 4, "--scale", "0.5",
                          "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert json.loads((rae_run.dir.samplers / "two-stage.json").read_text())["params"]["scale"] == 0.5


def test_a_run_without_a_continuous_latent_is_refused_in_one_line(tmp_path, shapes_npz, capsys):
    from vaelab.api import train
    from vaelab.configure import build_config

    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=none", "data.limit=64",
                                    "model.kind=vq-vae", "model.arch=conv", "model.latent=conv",
                                    "model.channels=[4,4]", "model.codebook_size=8", "model.loss=bce",
                                    "train.epochs=1", "train.batch_size=32", "train.progress=false"])
    run = train(cfg, tmp_path / "vq", evaluate_after=False, log=lambda *_: None)
    assert SAMPLERS["two-stage"].missing(run) == "the model lacks a continuous latent space"
    rc, _, err = run_main(capsys, "sample", run.run_dir, "--sampler", "two-stage", "--n", 4)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "the two-stage sampler needs a continuous latent space" in err
    assert not (run.run_dir / "samplers" / "two-stage.json").exists()


def test_onnx_export_of_the_two_stage_sampler(rae_run, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from vaelab.errors import VaelabError
    from vaelab.export.onnx import export_onnx

    # a stage-2 latent of 2 for codes of 4 (noise U != code D), and a scale below 1
    s = fitted_sampler(rae_run, "two-stage", seed=3, log=lambda *_: None, latent=2, scale=0.5, **SMALL)
    rc, out, err = run_main(capsys, "export", rae_run.run_dir, "--onnx", tmp_path / "onnx", "--sampler", "two-stage")
    assert rc == 0, err
    assert "fitting" not in out and "refitting" not in out  # the saved fit (its settings, its seed) is exported
    manifest = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert manifest["sampler"] == "two-stage" and list(manifest["parts"]) == ["encoder", "decoder", "scorer", "sampler"]
    part = manifest["parts"]["sampler"]
    assert part["inputs"] == [{"name": "noise", "dtype": "float32", "shape": ["batch", 2]}]
    assert part["outputs"][0]["shape"] == ["batch", 1, 28, 28] and part["max_abs_diff"] <= 1e-4
    assert "two-stage sampler's draws" in part["what"]
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    got = ort.InferenceSession(str(tmp_path / "onnx" / "sampler.onnx")).run(None, {"noise": noise.numpy()})[0]
    with torch.no_grad():
        want = rae_run.decode(s.onnx_codes()(noise))
        # the same module as the sampler's own draws: u = sqrt(scale) noise through stage 2's decoder mean
        np.testing.assert_allclose(s.onnx_codes()(noise).numpy(), s.net.decode(noise * 0.5 ** 0.5).numpy(), atol=1e-6)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    # no separate part any more; and the prior's sampler part is refused in one line: an RAE has no prior
    with pytest.raises(VaelabError, match="unknown ONNX part 'two-stage'"):
        export_onnx(rae_run, tmp_path / "none", parts=["two-stage"])
    rc, _, err = run_main(capsys, "export", rae_run.run_dir, "--onnx", tmp_path / "p", "--parts", "sampler")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "the ONNX sampler needs a prior" in err, err


def test_its_settings_from_the_command_line(rae_run, tmp_path, capsys):
    rc, _, err = run_main(capsys, "sample", rae_run.run_dir, "--sampler", "two-stage", "--epochs", 3, "--hidden", 16,
                          "--depth", 1, "--latent", 2, "--batch-size", 32, "--lr", 0.002, "--n", 4,
                          "--out", tmp_path / "s.png")
    assert rc == 0, err
    meta = json.loads((rae_run.dir.samplers / "two-stage.json").read_text())
    assert {k: meta["params"][k] for k in ("epochs", "hidden", "depth", "latent", "batch_size", "lr")} == {
        "epochs": 3, "hidden": 16, "depth": 1, "latent": 2, "batch_size": 32, "lr": 0.002}
    assert meta["stage2"]["config"] == {"dim": 4, "latent": 2, "hidden": 16, "depth": 1}
    for args, want in (
        (["--epochs", "0"], "sampler two-stage: epochs must be >= 1, got 0"),
        (["--latent", "0"], "sampler two-stage: latent must be >= 1"),
        (["--blocks", "3"], ("--blocks does not apply to --sampler two-stage (it takes --batch-size, --codes, --depth, "
                             "--epochs, --hidden, --latent, --lr, --scale)")),
        (["--components", "3"], "--components does not apply to --sampler two-stage"),
    ):
        rc, _, err = run_main(capsys, "sample", rae_run.run_dir, "--sampler", "two-stage", *args, "--n", 4,
                              "--out", tmp_path / "t.png")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and want in err, (args, err)
    for sampler, flag in (("gmm", "--depth"), ("maf", "--latent")):
        rc, _, err = run_main(capsys, "sample", rae_run.run_dir, "--sampler", sampler, flag, 3)
        assert rc == 2 and f"{flag} does not apply to --sampler {sampler}" in err, err
    # the help of each option names the samplers that take it, from the registry
    rc, out, _ = run_main(capsys, "sample", "--help")
    text = re.sub(r"-\s+", "-", " ".join(out.split()))  # click may wrap "two-stage" after its hyphen
    assert rc == 0 and "(two-stage default 2)" in text and "(two-stage default None)" in text
    assert "(two-stage default 128, maf default 256, iaf default 256)" in text  # --batch-size
