"""Anomaly detection: scores, the detector on images, input handling, the one-class protocol.
(scikit-learn's checks, PyOD's conventions and tables (N, F): test_detector_sklearn.py.)"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_shapes, write_idx_file
from vaelab.evaluation import metrics
from vaelab.anomaly.estimator import AnomalyDetector
from vaelab.models import CAPABILITIES
from vaelab.anomaly.scores import SCORES, as_images, load_input, score_images, threshold_at
from sklearn.exceptions import NotFittedError

from vaelab.api import Run
from vaelab.configure import build_config
from vaelab.errors import DataError, VaelabError
from vaelab.anomaly.one_class import one_class_benchmark
from vaelab.training.loop import fit

TINY = ["model.hidden=32", "model.latent_dim=4", "train.batch_size=32", "train.lr=0.005", "train.device=cpu",
        "train.progress=false", "train.precision=fp32"]


@pytest.fixture(scope="module")
def vae(shapes_npz):
    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=none", "model.kind=vae",
                                    "model.arch=mlp", "train.epochs=3"] + TINY)
    return fit(cfg, None, log=lambda s: None).model


@pytest.fixture(scope="module")
def squares(shapes_arrays):
    """Normal data: the filled squares (class 0) of the synthetic shapes, uint8 (N, 28, 28)."""
    x, y = shapes_arrays
    return x[y == 0]


@pytest.fixture(scope="module")
def detector(squares):
    return AnomalyDetector(preset="mlp-ae", anomaly_score="mse", contamination=0.1, epochs=15,
                           overrides=TINY).fit(squares)


def noise(n: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


# ------------------------------------------------------------------------------------ scores
def test_mse_and_bce_scores_match_their_definitions(vae, shapes_arrays):
    x = torch.from_numpy(shapes_arrays[0][:50, None]).float() / 255
    with torch.no_grad():
        r = vae.reconstruct(x)
    assert np.allclose(score_images(vae, x, "mse"), metrics.mse(r, x).double().numpy(), rtol=1e-6)
    bce = F.binary_cross_entropy(r, x, reduction="none").sum((1, 2, 3))
    assert np.allclose(score_images(vae, x, "bce", batch_size=7), bce.double().numpy(), rtol=1e-5)
    assert np.allclose(score_images(vae, x, "ssim"), 1 - metrics.ssim(r, x).double().numpy(), atol=1e-6)


def test_vae_scores_elbo_and_iwnll(vae, shapes_arrays):
    x = torch.from_numpy(shapes_arrays[0][:40, None]).float() / 255
    elbo = score_images(vae, x, "elbo", samples=20)
    iw = score_images(vae, x, "iwnll", samples=20)
    assert elbo.shape == iw.shape == (40,) and np.isfinite(elbo).all() and np.isfinite(iw).all()
    # the IWAE bound is tighter than the ELBO: -log p(x) estimate below the negative ELBO
    assert iw.mean() < elbo.mean()
    # the same seed gives the same scores; -ELBO is recon + KL of the model's own loss at beta = 1
    assert np.array_equal(elbo, score_images(vae, x, "elbo", samples=20))
    with torch.no_grad():
        q = vae.posterior(x)
        mu, logvar = q.mean, q.logvar
        recon = vae.recon_loss(vae.decode_logits(mu), x)
        kl = (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(1)
    # with the posterior sample near its mean the score is close to recon(mu) + KL
    assert np.corrcoef(elbo, (recon + kl).numpy())[0, 1] > 0.9


def test_vae_only_scores_refuse_an_autoencoder(detector, shapes_arrays):
    x = torch.rand(4, 1, 28, 28)
    for score in ("elbo", "iwnll"):
        with pytest.raises(VaelabError, match=f"score '{score}' needs a density.*this run's model \\(ae:"):
            score_images(detector.run_.model, x, score)
    with pytest.raises(VaelabError, match="unknown anomaly score 'l1'; known: mse, bce, ssim, elbo, iwnll"):  # and later ones
        score_images(detector.run_.model, x, "l1")
    assert {"mse", "bce", "ssim", "elbo", "iwnll"} <= set(SCORES)  # more may be added
    for name, s in SCORES.items():  # each says what it needs, by a capability name
        assert callable(s.fn) and (s.needs is None or s.needs in CAPABILITIES), name


def test_threshold_is_the_contamination_quantile():
    s = np.arange(101, dtype=float)  # 0..100
    assert threshold_at(s, 0.1) == 90.0
    assert threshold_at(s, 0.25) == 75.0
    assert threshold_at(np.array([0.0, 1.0]), 0.5) == 0.5  # linear interpolation between order statistics
    for bad in (0, -0.1, 0.6, 1.0):
        with pytest.raises(VaelabError, match=r"contamination must be in \(0, 0.5\]"):
            threshold_at(s, bad)


# ------------------------------------------------------------------------------------ detector
def test_detector_threshold_and_training_labels(detector, squares):
    d = detector
    assert d.decision_scores_.shape == (len(squares),)
    assert d.threshold_ == np.percentile(d.decision_scores_, 100 * (1 - 0.1))  # as PyOD computes it
    assert np.array_equal(d.labels_, (d.decision_scores_ > d.threshold_).astype(int))
    # about a contamination fraction of the training images lies above the threshold
    assert abs(d.labels_.mean() - 0.1) <= 1 / len(squares) + 1e-9
    assert np.allclose(d.decision_function(squares), d.decision_scores_)
    assert np.array_equal(d.predict(squares), d.labels_)


def test_detector_semantics(detector, squares):
    d = detector
    x = np.concatenate([squares[:10], noise(10)])
    s = d.decision_function(x)  # PyOD: the raw anomaly score, not shifted by the threshold
    assert np.array_equal(d.predict(x), (s > d.threshold_).astype(int))
    assert set(np.unique(d.predict(x))) <= {0, 1}
    # higher = more anomalous: every noise image scores above every normal square
    assert s[10:].min() > s[:10].max()
    assert d.predict(noise(10)).tolist() == [1] * 10
    assert metrics.auroc(s, np.r_[np.zeros(10), np.ones(10)]) == 1.0


def test_detector_input_forms_agree(detector, squares):
    x8 = squares[:8]
    base = detector.decision_function(x8)
    xf = x8.astype(np.float32) / 255
    for form in (x8[:, None], x8[..., None], xf, torch.from_numpy(xf[:, None]), x8.astype(np.int64)):
        assert np.allclose(detector.decision_function(form), base, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bad,match", [
    (np.full((2, 28, 28), 2.0, np.float32), r"float images must lie in \[0, 1\]"),
    (np.zeros((2, 32, 32), np.uint8), r"takes images of shape \(C, H, W\) = \(1, 28, 28\) .*got \(2, 32, 32\)"),
    (np.zeros((2, 3, 28, 28), np.uint8), r"= \(1, 28, 28\) .*got \(2, 3, 28, 28\)"),
    (np.zeros((2, 28), np.uint8), r"takes images of shape .*got \(2, 28\)"),
    (np.zeros((28, 28), np.uint8), r"one image without its batch axis; give a batch of images, e.g. x\[None\]"),
    (np.zeros((0, 28, 28), np.uint8), "holds no images"),
])
def test_detector_bad_inputs(detector, bad, match):
    with pytest.raises(DataError, match=match):
        detector.decision_function(bad)


def test_detector_argument_checks():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        AnomalyDetector().decision_function(noise(2))
    # scikit-learn's rule: __init__ only stores its arguments; fit checks them, before training
    with pytest.raises(VaelabError, match="unknown anomaly score 'nope'"):
        AnomalyDetector(anomaly_score="nope").fit(noise(2))
    with pytest.raises(VaelabError, match=r"contamination must be in \(0, 0.5\], got 0.9"):
        AnomalyDetector(contamination=0.9).fit(noise(2))


def test_detector_saves_a_run_and_from_run_reuses_it(squares, tmp_path, monkeypatch):
    run_dir = tmp_path / "det"
    d = AnomalyDetector(preset="mlp-ae", contamination=0.2, epochs=2, overrides=TINY, run_dir=run_dir).fit(squares)
    assert (run_dir / "model.safetensors").is_file()
    assert np.array_equal(np.load(run_dir / "train.npz")["x"][:, 0], squares)
    # the run reloads with its training data, so `vaelab detect RUN` can recompute the threshold
    run = Run.load(run_dir, device="cpu")
    assert np.allclose(score_images(run.model, run.split("train").float()), d.decision_scores_, rtol=1e-5)
    # from_run uses an existing run as it is: nothing is trained (fit always trains)
    monkeypatch.setattr("vaelab.training.loop.fit", lambda *a, **k: pytest.fail("trained again"))
    d2 = AnomalyDetector.from_run(run_dir, squares, contamination=0.2)
    assert np.allclose(d2.decision_scores_, d.decision_scores_, rtol=1e-5)
    assert d2.threshold_ == pytest.approx(d.threshold_, rel=1e-5)
    # without X the threshold comes from the run's own training images, as `vaelab detect` does
    d3 = AnomalyDetector.from_run(run_dir, contamination=0.2)
    assert np.allclose(d3.decision_scores_, d.decision_scores_, rtol=1e-5)
    assert np.array_equal(d3.predict(squares), d.predict(squares))


def test_fit_predict_and_vae_detector(squares):
    d = AnomalyDetector(preset="mlp-vae", anomaly_score="iwnll", samples=3, contamination=0.05, epochs=2,
                        overrides=TINY)
    labels = d.fit_predict(squares)
    assert np.array_equal(labels, d.labels_) and "density" in d.run_.capabilities
    assert d.threshold_ == np.percentile(d.decision_scores_, 100 * (1 - 0.05))


# ------------------------------------------------------------------------------------ inputs
def test_as_images_layouts():
    a = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    assert as_images(a).shape == (2, 3, 4, 5)
    assert torch.equal(as_images(a)[:, 1], torch.from_numpy(a[..., 1]).float() / 255)


def test_load_input_idx_with_labels(tmp_path):
    x, y = make_shapes(12, seed=3)
    write_idx_file(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    d = load_input(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert d["labels"] is None and d["x"].shape == (12, 1, 28, 28)
    write_idx_file(tmp_path / "t10k-labels-idx1-ubyte.gz", y.astype(np.uint8))
    d = load_input(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert d["labels"] == y.tolist() and np.array_equal(d["x"][:, 0], x)
    with pytest.raises(DataError, match="cannot tell what --input"):
        (tmp_path / "x.txt").write_text("hi")
        load_input(tmp_path / "x.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_input(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------ protocol
@pytest.fixture(scope="module")
def shapes_idx_root(tmp_path_factory):
    """A labelled train/test data set in the MNIST file layout, made of the synthetic shapes."""
    root = tmp_path_factory.mktemp("idxshapes")
    xtr, ytr = make_shapes(240, seed=1)
    xte, yte = make_shapes(120, seed=2)
    for stem, a in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr.astype(np.uint8)),
                    ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte.astype(np.uint8))):
        write_idx_file(root / "mnist" / f"{stem}.gz", a)
    return root


def test_one_class_protocol(shapes_idx_root, tmp_path):
    out = tmp_path / "bench"
    r = one_class_benchmark("mnist", [0, 2], out=out, preset="mlp-ae", epochs=2, overrides=TINY,
                            data_dir=str(shapes_idx_root), keep_runs=True, log=lambda s: None)
    assert [row["class"] for row in r["per_class"]] == [0, 2]
    assert r["mean_auroc"] == pytest.approx(np.mean([row["auroc"] for row in r["per_class"]]), abs=1e-4)
    _, ytr = make_shapes(240, seed=1)
    xte, yte = make_shapes(120, seed=2)
    for row in r["per_class"]:
        c = row["class"]
        assert row["n_train"] == int((ytr == c).sum()) and row["n_test"] == 120
        # trained on class c of the training split only, with no validation split
        run = Run.load(out / "runs" / f"class-{c}", device="cpu")
        assert run.config.data.classes == [c] and run.config.data.train_split == "train"
        assert run.config.data.val == "none"
        # AUROC over the whole test set, every other class anomalous
        s = score_images(run.model, torch.from_numpy(xte[:, None]).float() / 255)
        assert row["auroc"] == pytest.approx(metrics.auroc(s, (yte != c).astype(int)), abs=1e-4)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [x["class"] for x in rows] == ["0", "2", "mean"]
    assert float(rows[-1]["auroc"]) == r["mean_auroc"]
    md = (out / "results.md").read_text()
    assert "| **mean** |" in md and "mlp-ae" in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["mean_auroc"] == r["mean_auroc"]
    # a test split: no holdout; no --limit: none of them written as null
    assert None not in saved.values() and not {"holdout", "limit", "test_limit"} & set(saved)
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_protocol_errors(shapes_idx_root, shapes_npz):
    with pytest.raises(VaelabError, match=r"normal class\(es\) \[7\] not in the training labels \[0, 1, 2, 3\]"):
        one_class_benchmark("mnist", [7], data_dir=str(shapes_idx_root), log=lambda s: None)
    unlabelled = shapes_npz.parent / "unlabelled.npz"
    np.savez(unlabelled, x=np.load(shapes_npz)["x"])
    with pytest.raises(DataError, match="the one-class benchmark needs labelled images, and .*unlabelled.npz has none"):
        one_class_benchmark("npz", [0], data_path=str(unlabelled), log=lambda s: None)
    with pytest.raises(VaelabError, match="unknown normal class 'disc'; .* has: 0, 1, 2, 3"):
        one_class_benchmark("mnist", ["disc"], data_dir=str(shapes_idx_root), log=lambda s: None)
    with pytest.raises(VaelabError, match="unknown anomaly score"):
        one_class_benchmark("mnist", [0], score="x", data_dir=str(shapes_idx_root), log=lambda s: None)


def test_detector_defaults(squares):
    # training_config reads what fit would train, without training
    d = AnomalyDetector()
    cfg = d.training_config(squares[:32])
    assert (cfg.preset, cfg.train.epochs, cfg.model.kind, d.anomaly_score) == ("mlp-vae", 30, "vae", "mse")
    assert (cfg.data.val, cfg.data.train_split, d.contamination) == ("none", "train", 0.1)
    assert not hasattr(d, "run_")  # still unfitted
