"""FID, KID and precision/recall (vaelab.evaluation.fid), checked against direct computations;
the Inception weights' checks; ``eval-samples --features`` end to end, offline."""

from __future__ import annotations

import hashlib
import json
import sys
import types
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error as one_line_error
from conftest import run_main
from scipy import linalg
from torch import nn

from vaelab.errors import CheckpointError, VaelabError
from vaelab.evaluation import fid

pytest.importorskip("torchmetrics")


class TinyFeatures(nn.Module):
    """A fixed random projection of 1x8x8 images to 6 features, then tanh."""

    dim = 6

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 64, generator=torch.Generator().manual_seed(1)))
            self.proj.bias.zero_()

    def forward(self, x):
        return torch.tanh(self.proj(x.flatten(1)) / 4)


def images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * (1 - shift) + shift).clamp(0, 1)


def direct_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU features make the product singular; sqrtm still converges
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def direct_kid(a, b):
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3 (KID's), on whole sets of equal size."""
    d, m = a.shape[1], len(a)
    k = lambda x, y: (x @ y.T / d + 1) ** 3
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def direct_precision_recall(fake, real, k):
    from sklearn.neighbors import NearestNeighbors

    def radii(x):  # distance to the k-th nearest other point
        return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]

    from scipy.spatial.distance import cdist

    d = cdist(fake, real)  # (fake, real)
    precision = float((d <= radii(real)[None]).any(1).mean())
    recall = float((d.T <= radii(fake)[None]).any(1).mean())
    return precision, recall


def test_fid_kid_precision_recall_of_a_tiny_extractor_match_direct_computations():
    net = TinyFeatures()
    samples, reference = images(40, 0, shift=0.3), images(40, 1)
    r = fid.feature_scores(net, samples, reference, seed=0)
    with torch.no_grad():
        f_s, f_r = net(samples).double().numpy(), net(reference).double().numpy()
    assert r["dim"] == 6
    assert r["fid"] == pytest.approx(direct_fid(f_s, f_r), rel=1e-6) and r["fid"] > 0.01
    # 40 images per set, fewer than one subset of 1000: every subset is the whole set
    assert r["kid_subset_size"] == 40
    assert r["kid_mean"] == pytest.approx(direct_kid(f_s, f_r), rel=1e-6, abs=1e-12) and r["kid_std"] < 1e-9
    p, rec = direct_precision_recall(f_s, f_r, 3)
    assert (r["precision"], r["recall"]) == (pytest.approx(p), pytest.approx(rec))
    # the same set against itself: FID 0, everything covered
    same = fid.feature_scores(net, reference, reference)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0


def test_kid_subsets_are_seeded_and_precision_recall_see_mode_dropping():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(200, 4, generator=g, dtype=torch.float64) * 0.3  # the centre only
    a = fid.fid_kid(fake, real, subsets=5, subset_size=50, seed=3)
    assert a == fid.fid_kid(fake, real, subsets=5, subset_size=50, seed=3)
    assert a["kid_std"] > 0 and a != fid.fid_kid(fake, real, subsets=5, subset_size=50, seed=4)
    pr = fid.precision_recall(fake, real)
    p, rec = direct_precision_recall(fake.numpy(), real.numpy(), 3)
    assert (pr["precision"], pr["recall"]) == (pytest.approx(p), pytest.approx(rec))
    assert pr["precision"] > 0.9 and pr["recall"] < 0.6  # good samples, poor coverage


def test_too_few_images_are_refused_with_the_number_needed():
    with pytest.raises(VaelabError, match="needs at least 7 samples and 7 reference images"):
        fid.feature_scores(TinyFeatures(), images(6, 0), images(40, 1))
    with pytest.raises(VaelabError, match="needs at least 2049 samples"):
        fid.check_sizes(fid.INCEPTION_DIM, 10000, 2000)
    fid.check_sizes(fid.INCEPTION_DIM, 2049, 2049)


# ----------------------------------------------------------------------------- Inception weights
@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache in a temporary folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_weights_with_the_wrong_checksum_are_refused(tmp_path, hub_dir):
    bad = tmp_path / fid.INCEPTION_FILE
    bad.write_bytes(b"not the Inception weights")
    with pytest.raises(CheckpointError, match=f"sha256 is {hashlib.sha256(bad.read_bytes()).hexdigest()}, "
                                              f"expected {fid.INCEPTION_SHA256}"):
        fid.inception_weights(bad)
    hub_dir.mkdir(parents=True)
    (hub_dir / fid.INCEPTION_FILE).write_bytes(b"a corrupt cached copy")
    with pytest.raises(CheckpointError, match="is not the Inception weights"):
        fid.inception_weights()
    with pytest.raises(CheckpointError, match="no such file"):
        fid.inception_weights(tmp_path / "missing.pth")


def test_offline_without_weights_names_file_checksum_and_folder(hub_dir, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(VaelabError) as e:
        fid.inception_weights()
    msg = str(e.value)
    assert "\n" not in msg
    for part in (fid.INCEPTION_FILE, fid.INCEPTION_SHA256, str(hub_dir), fid.INCEPTION_URL, "--inception-weights"):
        assert part in msg


def test_download_goes_through_torch_hub_with_the_checksum(hub_dir, monkeypatch):
    payload = b"pretend weights"
    monkeypatch.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(payload).hexdigest())
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        with open(dst, "wb") as f:
            f.write(payload)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert fid.inception_weights() == hub_dir / fid.INCEPTION_FILE
    assert calls == [(fid.INCEPTION_URL, str(hub_dir / fid.INCEPTION_FILE), fid.INCEPTION_SHA256)]
    assert fid.inception_weights() == hub_dir / fid.INCEPTION_FILE and len(calls) == 1  # cached: no second download

    def refused(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    (hub_dir / fid.INCEPTION_FILE).unlink()
    monkeypatch.setattr(torch.hub, "download_url_to_file", refused)
    with pytest.raises(CheckpointError, match="was refused: invalid hash value"):
        fid.inception_weights()


@pytest.fixture
def fake_torch_fidelity(monkeypatch, tmp_path):
    """A stand-in for torch-fidelity's Inception extractor (8 features, not 2048) that loads its
    weights the way torch-fidelity does, and a weights file whose checksum is the expected one."""
    seen = {}

    class FakeInception(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            import os

            seen["weights_only_forced"] = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
            self.proj = nn.Linear(3, 8)
            self.proj.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=False))

        def forward(self, x):
            seen["input"] = (x.dtype, tuple(x.shape[1:]))
            return (self.proj(x.float().mean((2, 3)) / 255).tanh(),)

    weights = tmp_path / "w.pth"
    torch.save(nn.Linear(3, 8).state_dict(), weights)
    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    monkeypatch.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(weights.read_bytes()).hexdigest())
    monkeypatch.setattr(fid.InceptionFeatures, "dim", 8)
    import importlib.metadata as md

    real_version = md.version
    monkeypatch.setattr(md, "version", lambda name: "0-fake" if name == "torch-fidelity" else real_version(name))
    return weights, seen


def test_eval_samples_inception_path_with_a_stand_in_network(trained_run, shapes_judge, fake_torch_fidelity,
                                                              hub_dir, monkeypatch, tmp_path, capsys):
    weights, seen = fake_torch_fidelity

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    line = one_line_error(*run_main(capsys, "eval-samples", trained_run.run_dir, "--n", 64, "--judge",
                                    shapes_judge[1], "--features", "inception"))
    assert fid.INCEPTION_FILE in line and fid.INCEPTION_SHA256 in line and f"in {hub_dir}," in line
    rc, out, err = run_main(capsys, "eval-samples", trained_run.run_dir, "--n", 64, "--judge", shapes_judge[1],
                            "--features", "inception", "--inception-weights", weights, "--out", tmp_path / "ev")
    assert rc == 0, err
    assert seen["weights_only_forced"] == "1"
    assert seen["input"] == (torch.uint8, (3, 28, 28))  # grey repeated to RGB, uint8; the network resizes
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    p = r["fid_protocol"]
    assert p["features"] == "inception" and p["dim"] == 8 and p["reference"] == "val" and p["n_reference"] == 64
    assert p["weights"] == {"file": fid.INCEPTION_FILE, "sha256": fid.INCEPTION_SHA256, "network": "torch-fidelity 0-fake"}
    extractor = fid.inception_extractor(weights)
    f_s = fid.features_of(extractor, trained_run.sample_prior(64, seed=0)).numpy()
    f_r = fid.features_of(extractor, trained_run.split("val").float()).numpy()
    assert r["fid"] == pytest.approx(direct_fid(f_s, f_r), rel=1e-6)
    assert "fid" in out and "vs the val split, 64 images" in out
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"x")
    assert "sha256" in one_line_error(*run_main(capsys, "eval-samples", trained_run.run_dir, "--n", 64, "--judge",
                                                shapes_judge[1], "--features", "inception",
                                                "--inception-weights", wrong))


def test_eval_samples_feature_errors_are_one_line(trained_run, shapes_judge, capsys):
    run, judge = trained_run.run_dir, shapes_judge[1]
    line = one_line_error(*run_main(capsys, "eval-samples", run, "--judge", judge, "--features", "clip"))
    assert "unknown --features 'clip'; available: inception, judge" in line
    line = one_line_error(*run_main(capsys, "eval-samples", run, "--judge", judge, "--n", 64, "--features", "judge"))
    assert "needs at least 129 samples and 129 reference images" in line and line.endswith(
        "got 64 samples (raise --n, or use a larger --reference split)")
    line = one_line_error(*run_main(capsys, "eval-samples", run, "--judge", judge, "--n", 200, "--features", "judge"))
    assert "got 200 samples and 64 reference images" in line  # the shapes' validation split: 64 images
    line = one_line_error(*run_main(capsys, "eval-samples", run, "--judge", judge, "--inception-weights", __file__))
    assert "--features inception only" in line
    line = one_line_error(*run_main(capsys, "eval-samples", run, "--judge", judge, "--reference", "train"))
    assert "--reference applies to --features only" in line


def test_eval_samples_features_judge_on_tiny_mnist(mnist_dir, tmp_path, capsys):
    """A 1-epoch VAE on 256 MNIST digits and a judge trained on 512: FID, KID, precision and
    recall on the judge's features against the 256 training digits (--reference train), recomputed
    here (the test split, the default, is what the stand-in Inception test above uses)."""
    from vaelab.api import Run
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.evaluation.judge import save_judge, train_judge

    run_dir = tmp_path / "run"
    rc, out, err = run_main(capsys, "train", "--data", "mnist", "--data-dir", mnist_dir, "--limit", 256, "--epochs", 1,
                            "--latent-dim", 4, "--device", "cpu", "--no-eval", "--out", run_dir)
    assert rc == 0, err
    splits = load_data(DataConfig(name="mnist", data_dir=str(mnist_dir), download=False, limit=512, val="test"))
    splits.test = splits.test.subset(torch.arange(500))  # the judge's accuracy on 500 test digits: enough here
    judge = train_judge(splits, "mnist", epochs=1, batch_size=64, log=lambda *_: None)
    save_judge(judge, tmp_path / "judge")
    rc, out, err = run_main(capsys, "eval-samples", run_dir, "--n", 200, "--judge", tmp_path / "judge",
                            "--features", "judge", "--reference", "train", "--out", tmp_path / "ev")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    assert r["fid_protocol"] == {"features": "judge", "dim": 128, "reference": "train", "n_reference": 256,
                                 "n_samples": 200, "kid_subsets": 100, "kid_subset_size": 200, "pr_neighbours": 3,
                                 "library": r["fid_protocol"]["library"]}
    run = Run.load(run_dir, device="cpu")
    f_s = judge.features(run.sample_prior(200, seed=0)).double().numpy()
    f_r = judge.features(run.split("train").float()).double().numpy()
    assert r["fid"] == pytest.approx(direct_fid(f_s, f_r), rel=1e-5) and r["fid"] > 0
    # KID: 100 subsets of 200 (all the samples, 200 of the 256 references), drawn as torchmetrics draws them
    torch.manual_seed(0)
    kids = []
    for _ in range(100):
        pr, pf = torch.randperm(256)[:200].numpy(), torch.randperm(200)[:200].numpy()
        kids.append(direct_kid(f_r[pr], f_s[pf]))
    assert (r["kid_mean"], r["kid_std"]) == (pytest.approx(np.mean(kids), rel=1e-6), pytest.approx(np.std(kids), rel=1e-5))
    assert r["kid_mean"] > 0 and r["kid_std"] > 0
    p, rec = direct_precision_recall(f_s, f_r, 3)
    assert (r["precision"], r["recall"]) == (pytest.approx(p), pytest.approx(rec))
    assert "vs the train split, 256 images" in out
