"""AnomalyDetector as a scikit-learn estimator with PyOD's conventions: scikit-learn's own
estimator checks, clone / Pipeline / GridSearchCV, PyOD's threshold, labels and
probabilities checked by value, flat tables (N, F), fit vs from_run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import erf
from scipy.stats import binom
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from vaelab.anomaly.estimator import AnomalyDetector
from vaelab.errors import ConfigError, DataError

# Small enough that all of scikit-learn's checks run in a few seconds.
TINY = dict(hidden=8, latent_dim=2, epochs=2, device="cpu")
IMAGE_TINY = ["train.device=cpu", "train.progress=false", "train.precision=fp32"]

# Checks that cannot pass while the detector keeps PyOD's conventions, which it must.
EXPECTED_FAILURES = {
    "check_outliers_fit_predict": "PyOD's labels: fit_predict gives 0 (inlier) / 1 (outlier); "
                                  "the check demands scikit-learn's -1 / +1",
    "check_outliers_train": "PyOD's conventions: predict gives 0 / 1, not -1 / +1, and decision_function "
                            "is the raw outlier score (higher = more anomalous), not score_samples - offset_ "
                            "(>= 0 for inliers); there is no score_samples",
}


def table(n: int = 200, n_out: int = 20, seed: int = 0):
    """Normal rows near a 2-D plane in 6-D (the same plane for every seed), then ``n_out`` rows
    off it; y = 1 for those."""
    plane = np.random.default_rng(12345).normal(size=(2, 6))
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, 2)) @ plane + 0.05 * rng.normal(size=(n, 6))
    return np.r_[normal, 2 * rng.normal(size=(n_out, 6))], np.r_[np.zeros(n), np.ones(n_out)].astype(int)


@pytest.fixture(scope="module")
def fitted():
    X, _ = table()
    return AnomalyDetector(contamination=0.1, random_state=0, **TINY).fit(X), X


# ------------------------------------------------------------------------------------ scikit-learn's checks
@parametrize_with_checks([AnomalyDetector(**TINY)], expected_failed_checks=lambda est: EXPECTED_FAILURES,
                         xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_clone_pipeline_and_grid_search():
    X, y = table()
    det = AnomalyDetector(random_state=0, **TINY)
    det.fit(X)
    c = clone(det)
    assert c.get_params() == det.get_params() and not hasattr(c, "decision_scores_")
    assert c.set_params(latent_dim=1) is c and c.latent_dim == 1 and det.latent_dim == 2

    pipe = make_pipeline(StandardScaler(), AnomalyDetector(random_state=0, **TINY)).fit(X)
    assert np.array_equal(pipe.predict(X), pipe[-1].labels_)
    assert pipe.decision_function(X).shape == (len(X),)

    # Unsupervised fit (y ignored), models compared by AUROC of decision_function on held-out folds.
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    gs = GridSearchCV(AnomalyDetector(random_state=0, **TINY), {"latent_dim": [1, 2]}, scoring="roc_auc", cv=cv)
    gs.fit(X, y)
    assert gs.best_params_["latent_dim"] in (1, 2) and gs.best_estimator_.latent_dim == gs.best_params_["latent_dim"]
    # 0.82-0.87 at 2 epochs; below 0.5 would mean the sign is wrong (higher must be more anomalous)
    assert np.all(gs.cv_results_["mean_test_score"] > 0.7)


# ------------------------------------------------------------------------------------ PyOD's conventions
def test_threshold_labels_and_predict_as_pyod(fitted):
    d, X = fitted
    s = d.decision_scores_
    assert s.shape == (len(X),) and s.dtype == np.float64
    assert d.threshold_ == np.percentile(s, 100 * (1 - 0.1))  # PyOD's _process_decision_scores
    assert np.array_equal(d.labels_, (s > d.threshold_).astype(int))
    assert abs(d.labels_.mean() - 0.1) <= 1 / len(X)
    assert np.array_equal(d.predict(X), d.labels_) and set(np.unique(d.labels_)) == {0, 1}
    assert np.allclose(d.decision_function(X), s, rtol=0, atol=1e-12)
    assert np.array_equal(clone(d).fit_predict(X), d.labels_)  # deterministic given random_state


def test_predict_proba_and_confidence_as_pyod(fitted):
    d, X = fitted
    Xn, _ = table(seed=1)
    s, train = d.decision_function(Xn), d.decision_scores_
    p = d.predict_proba(Xn)
    assert p.shape == (len(Xn), 2) and np.allclose(p.sum(1), 1)
    assert np.allclose(p[:, 1], np.clip((s - train.min()) / (train.max() - train.min()), 0, 1))
    u = d.predict_proba(Xn, method="unify")
    assert np.allclose(u[:, 1], np.clip(erf((s - train.mean()) / (train.std() * np.sqrt(2))), 0, 1))
    with pytest.raises(ValueError, match="method must be 'linear' or 'unify'"):
        d.predict_proba(Xn, method="softmax")
    # predict_confidence, written here as PyOD writes it (one sample at a time)
    n = len(train)
    post = np.array([(1 + np.count_nonzero(train <= v)) / (2 + n) for v in s])
    conf = 1 - binom.cdf(n - int(n * 0.1), n, post)
    conf = np.where(s > d.threshold_, conf, 1 - conf)
    assert np.allclose(d.predict_confidence(Xn), conf)
    labels, c = d.predict(Xn, return_confidence=True)
    assert np.array_equal(labels, d.predict(Xn)) and np.allclose(c, conf)
    assert np.allclose(d.predict_proba(Xn, return_confidence=True)[1], conf)


# ------------------------------------------------------------------------------------ tables (N, F)
def test_table_ranks_outliers_and_ignores_feature_scale():
    X, _ = table()
    Xt, yt = table(seed=1)
    d = AnomalyDetector(hidden=8, latent_dim=2, epochs=30, device="cpu", random_state=0).fit(X)
    assert roc_auc_score(yt, d.decision_function(Xt)) > 0.85  # 0.93-0.95 over seeds 0-2
    assert np.allclose(d.mean_, X.mean(0)) and np.allclose(d.scale_, X.std(0)) and d.n_features_in_ == 6
    # standardised in fit: features in any range (here up to 1e4, one of them ~0.01) give the same model
    scale, shift = np.array([1, 10, 100, 1000, 0.01, 1]), np.array([0, 5, -50, 1e4, 0, 3])
    d2 = clone(d).fit(X * scale + shift)
    assert np.allclose(d2.decision_function(Xt * scale + shift), d.decision_function(Xt), rtol=1e-6, atol=1e-9)
    # a constant feature keeps scale 1 instead of dividing by zero
    Xc = np.c_[X, np.full(len(X), 7.0)]
    assert clone(d).fit(Xc).scale_[-1] == 1.0


def test_table_input_errors(fitted):
    d, X = fitted
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 2] = bad
        with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
            clone(d).fit(Xb)
        with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
            d.decision_function(Xb)
    with pytest.raises(ValueError, match="X has 3 features, but AnomalyDetector is expecting 6"):
        d.predict(X[:, :3])
    with pytest.raises(ValueError, match="Found array with dim 3"):
        d.decision_function(X.reshape(len(X), 2, 3))
    with pytest.raises(ConfigError, match="score 'ssim' needs images in \\[0, 1\\]; for a table"):
        AnomalyDetector(anomaly_score="ssim", **TINY).fit(X)


def test_table_vae_elbo_and_determinism(capsys):
    X, _ = table()
    before = torch.get_rng_state()
    vae = AnomalyDetector(anomaly_score="elbo", overrides=("model.kind=vae",), random_state=1, verbose=True, **TINY)
    s = vae.fit(X).decision_scores_
    assert "density" in vae.run_.capabilities and np.isfinite(s).all()
    assert "epoch 2/2  train_loss" in capsys.readouterr().out
    assert torch.equal(before, torch.get_rng_state())  # training is seeded without touching the caller's RNG
    assert np.array_equal(clone(vae).fit(X).decision_scores_, s)
    assert not np.allclose(clone(vae).set_params(random_state=2).fit(X).decision_scores_, s)


def test_feature_names_from_a_dataframe():
    pd = pytest.importorskip("pandas")
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    X, _ = table()
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    d = AnomalyDetector(**TINY).fit(df)
    assert d.feature_names_in_.tolist() == list(df.columns)
    with pytest.raises(ValueError, match="feature names should match"):
        d.decision_function(df[df.columns[::-1]])
    check_dataframe_column_names_consistency("AnomalyDetector", AnomalyDetector(**TINY))


# ------------------------------------------------------------------------------------ images
def test_images_decision_function_ranks_anomalies_above_normals(shapes_arrays):
    x, _ = shapes_arrays
    from conftest import make_shapes

    held_out, _ = make_shapes(100, seed=7)
    rng = np.random.default_rng(1)
    corrupted = held_out.copy()
    hit = rng.random(corrupted.shape) < 0.1  # like a digit with 10% of its pixels scribbled on
    corrupted[hit] = rng.integers(128, 256, hit.sum())
    d = AnomalyDetector(preset="mlp-ae", hidden=32, latent_dim=4, epochs=20, batch_size=32, lr=0.005,
                        overrides=IMAGE_TINY, random_state=0).fit(x)
    s = d.decision_function(np.concatenate([held_out, corrupted]))
    assert roc_auc_score(np.r_[np.zeros(100), np.ones(100)], s) > 0.8
    assert d.input_shape_ == (1, 28, 28) and d.n_features_in_ == 784
    with pytest.raises(ValueError, match="Input contains NaN"):
        d.decision_function(np.full((2, 28, 28), np.nan, np.float32))
    with pytest.raises(DataError, match="the model takes images of shape"):
        d.decision_function(x.reshape(len(x), -1))  # a table given to an image detector


def test_fit_trains_even_when_run_dir_holds_a_run(shapes_arrays, tmp_path):
    x, y = shapes_arrays
    run_dir = tmp_path / "run"
    d = AnomalyDetector(preset="mlp-ae", hidden=16, latent_dim=2, epochs=2, overrides=IMAGE_TINY, run_dir=run_dir)
    d.fit(x[y == 0])
    before = load_file(run_dir / "model.safetensors")
    d.fit(x[y == 1])  # same parameters, other images: trained again, the run replaced
    after = load_file(run_dir / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(after[k], v.cpu()) for k, v in d.run_.model.state_dict().items())
    assert np.array_equal(np.load(run_dir / "train.npz")["x"][:, 0], x[y == 1])


def test_from_run_uses_a_table_run_without_training(tmp_path, monkeypatch):
    X, _ = table()
    run_dir = tmp_path / "table-run"
    d = AnomalyDetector(contamination=0.05, run_dir=run_dir, random_state=0, **TINY).fit(X)
    monkeypatch.setattr(AnomalyDetector, "_train_table", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr("vaelab.training.loop.fit", lambda *a, **k: pytest.fail("trained"))
    w = AnomalyDetector.from_run(run_dir, X, contamination=0.05, device="cpu")
    assert np.allclose(w.decision_scores_, d.decision_scores_, rtol=1e-12) and w.threshold_ == d.threshold_
    assert np.allclose(w.mean_, d.mean_) and np.allclose(w.scale_, d.scale_)
    Xt, _ = table(seed=1)
    assert np.array_equal(w.predict(Xt), d.predict(Xt))
    with pytest.raises(DataError, match="from_run needs the rows X"):
        AnomalyDetector.from_run(run_dir)
    with pytest.raises(ValueError, match="X has 4 features, but AnomalyDetector is expecting 6"):
        AnomalyDetector.from_run(run_dir, X[:, :4])
