"""``AnomalyDetector``: a scikit-learn estimator with PyOD's conventions, backed by a vaelab
autoencoder or VAE, for images and for flat tables of features.

PyOD's conventions (``pyod.models.base.BaseDetector``), kept exactly:
``decision_function(X)`` is the raw outlier score, **higher = more anomalous**; after ``fit``,
``decision_scores_`` are the scores of the training data, ``threshold_`` is their
``100 * (1 - contamination)`` percentile and ``labels_`` is 1 above it, else 0; ``predict``
gives 0 (inlier) / 1 (outlier), ``predict_proba`` two columns [inlier, outlier].
scikit-learn's machinery (``get_params``, ``clone``, ``Pipeline``, ``GridSearchCV``) works, and
``check_estimator`` passes except the outlier checks that demand -1/+1 labels (tests say which)::

    det = AnomalyDetector(contamination=0.05).fit(x_normal)      # images (N, H, W) uint8, or (N, F)
    det.decision_function(x)          # higher = more anomalous
    det.predict(x)                    # 1 = anomaly, 0 = normal
    det = AnomalyDetector.from_run("runs/vae", x_normal)   # wrap a trained run: nothing trained
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6 (pyproject allows >= 1.3): the method it replaced
    def validate_data(estimator, X, **kw):
        return estimator._validate_data(X, **kw)

from vaelab.anomaly import scores as d
from vaelab.errors import ConfigError, DataError

# The standardisation of a table model, saved beside its weights so from_run can reuse it.
FEATURES = "features.json"
# Defaults for tables (N, F) when no preset is given: a small MLP autoencoder on the
# standardised features. A starting point, not tuned; pass hidden/latent_dim/epochs.
TABLE_DEFAULTS = {"model": {"kind": "ae", "hidden": [64]}, "train": {"epochs": 50, "batch_size": 32}}
TABLE_SCORES = ("mse", "elbo", "iwnll")  # bce and ssim only mean something for images in [0, 1]


def _ndim(X) -> int:
    # Not np.ndim: array-likes may refuse numpy's function dispatch (scikit-learn tests that).
    return X.ndim if hasattr(X, "ndim") else np.asarray(X).ndim


class AnomalyDetector(OutlierMixin, BaseEstimator):
    """Outlier detector: an autoencoder or VAE trained on X (normal data) by ``fit``.

    X is either images, (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 0..255 or floats in
    [0, 1] (as ``vaelab train`` sees them: trained with vaelab's training loop), or a flat
    table (N, F) of floats in any range: the features are standardised with ``mean_`` and
    ``scale_`` learned in ``fit``, and an MLP autoencoder (``model.arch=mlp``, input shape
    (1, 1, F), ``mse`` loss, no output activation) is trained on the rows.

    Parameters (stored as given; checked in ``fit``):
        preset: vaelab preset; None = the anomaly defaults (images: mlp-vae for 30 epochs;
            tables: ``TABLE_DEFAULTS``).
        anomaly_score: mse | bce | ssim | elbo | iwnll (``vaelab.anomaly.scores.SCORES``);
            tables: mse (squared error per standardised feature, averaged), elbo, iwnll (VAEs).
            Not called ``score``: scikit-learn reserves that name for the method score(X, y).
        contamination: fraction of the training data above ``threshold_``, in (0, 0.5].
        epochs, hidden, latent_dim, batch_size, lr: None keeps the preset's (or default) value.
        overrides: more ``section.field=value`` config settings; applied after the above.
        run_dir: where ``fit`` saves the trained run (replacing one an earlier fit left there, with
            what was derived from it; a folder holding files vaelab did not write is refused; images also
            as ``train.npz``, so ``vaelab detect RUN`` can recompute the threshold). It is
            never read: ``from_run`` uses a trained run without training.
        samples: posterior draws for elbo / iwnll.
        random_state: int seeds the training (``train.seed``) and the elbo / iwnll draws;
            None keeps the config's seed (runs are reproducible by default).
        device: auto | cpu | cuda[:N]. verbose: print training progress.

    ``score_samples`` is not provided: PyOD has none, and scikit-learn's (higher = more
    normal) would invert the meaning this class's ``score_samples`` used to have. Use
    ``decision_function``. A ``clone`` of a ``from_run`` detector is unfitted and trains anew.
    """

    def __init__(self, preset=None, anomaly_score="mse", contamination=0.1, epochs=None, hidden=None, latent_dim=None,
                 batch_size=None, lr=None, overrides=(), run_dir=None, samples=10, random_state=None,
                 device="auto", verbose=False):
        self.preset = preset
        self.anomaly_score = anomaly_score
        self.contamination = contamination
        self.epochs = epochs
        self.hidden = hidden
        self.latent_dim = latent_dim
        self.batch_size = batch_size
        self.lr = lr
        self.overrides = overrides
        self.run_dir = run_dir
        self.samples = samples
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images (N, H, W); (N, C, H, W) too
        return tags

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Train a new model on X (always; see ``from_run`` to reuse one), then set
        ``decision_scores_``, ``threshold_`` and ``labels_``. ``y`` is ignored."""
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)  # a refit starts unfitted: no attribute of an earlier fit survives
        images = _ndim(X) >= 3
        self._check_params(images)
        self._prepare_run_dir()
        x = self._input(X, fitting=True, images=images)
        config = self._config(list(x.shape[1:]), table=not images)
        model, config = (self._train_images if images else self._train_table)(config, x)
        from vaelab.api import Run

        self.run_ = Run(config=config, model=model, run_dir=None if self.run_dir is None else Path(self.run_dir),
                        device=next(model.parameters()).device)
        return self._set_scores(self._scores(x))

    def fit_predict(self, X, y=None):
        """``fit(X).labels_`` (PyOD): 0 inlier, 1 outlier, for the training data."""
        return self.fit(X, y).labels_

    def training_config(self, X):
        """The vaelab ``RunConfig`` that ``fit(X)`` would train with; trains nothing."""
        images = _ndim(X) >= 3
        return self._config(list(self._input(X, fitting=None, images=images).shape[1:]), table=not images)

    def _config(self, shape: list[int], table: bool):
        from vaelab.config import apply_overrides, load_preset, merge
        from vaelab.configure import config_from_layers

        preset = self.preset or (None if table else d.DEFAULT_PRESET)
        extra = {"model": {}, "train": {"device": self.device, "progress": bool(self.verbose)}}
        if table:
            if self.preset is None:
                extra = merge(TABLE_DEFAULTS, extra)
                extra["model"]["latent_dim"] = max(1, min(16, shape[2] // 2))
            extra["model"].update(loss="mse", output_activation="none")  # standardised rows are not in [0, 1]
        elif self.preset is None:
            extra["train"]["epochs"] = d.DEFAULT_EPOCHS
        for section, name, value in [("train", "epochs", self.epochs), ("model", "latent_dim", self.latent_dim),
                                     ("train", "batch_size", self.batch_size), ("train", "lr", self.lr),
                                     ("train", "seed", self._seed())]:
            if value is not None:
                extra[section][name] = value
        if self.hidden is not None:
            extra["model"]["hidden"] = [self.hidden] if isinstance(self.hidden, numbers.Integral) else list(self.hidden)
        overrides = (list(d.DEFAULT_OVERRIDES) if self.preset is None and not table else []) + list(self.overrides)
        # The preset, then these values, then the overrides: each its own layer, in either spelling.
        layers = [load_preset(preset) if preset else {}, apply_overrides({}, extra), apply_overrides({}, None, overrides)]
        # What the data decide comes last: the model's input and where the training data live.
        forced = {"data": {"name": "npz", "val": "none", "train_split": "train", "path": None}}
        if table:
            forced["model"] = {"arch": "mlp", "input_shape": shape}
        elif self.run_dir is not None:
            forced["data"]["path"] = str((Path(self.run_dir) / "train.npz").resolve())
        return config_from_layers([*layers, forced])

    # ------------------------------------------------------------------ wrap a trained run
    @classmethod
    def from_run(cls, run_dir, X=None, *, anomaly_score="mse", contamination=0.1, samples=10, random_state=None,
                 device="auto"):
        """A fitted detector around the trained run in ``run_dir``; nothing is trained.

        X: the normal data that sets ``decision_scores_`` / ``threshold_``; None for an image
        run means the run's own training split (as ``vaelab detect``). A table run (one that
        ``fit`` saved from (N, F) data) needs X with the same features."""
        from vaelab.api import Run

        det = cls(anomaly_score=anomaly_score, contamination=contamination, samples=samples, random_state=random_state,
                  device=device)
        stats_path = Path(run_dir) / FEATURES
        det._check_params(images=not stats_path.is_file())
        run = Run.load(run_dir, device=device)
        if stats_path.is_file():
            if X is None:
                raise DataError(f"{run_dir} holds a model of table rows; from_run needs the rows X for the threshold")
            stats = json.loads(stats_path.read_text())
            det.mean_, det.scale_ = np.asarray(stats["mean"]), np.asarray(stats["scale"])
            det.input_shape_, det.n_features_in_ = (len(det.mean_),), len(det.mean_)
            if stats.get("feature_names") is not None:
                det.feature_names_in_ = np.asarray(stats["feature_names"], dtype=object)
        else:
            det.input_shape_ = tuple(run.config.model.input_shape)
            det.n_features_in_ = math.prod(det.input_shape_)
        det.run_ = run
        x = run.split("train").float() if X is None and len(det.input_shape_) == 3 else \
            det._input(X, fitting=False, images=len(det.input_shape_) == 3)
        return det._set_scores(det._scores(x))

    # ------------------------------------------------------------------ PyOD's outputs
    def decision_function(self, X):
        """Outlier score per sample (N,) float64; higher = more anomalous (PyOD)."""
        check_is_fitted(self, ["decision_scores_", "threshold_", "labels_"])
        return self._scores(self._input(X, fitting=False, images=len(self.input_shape_) == 3))

    def predict(self, X, return_confidence=False):
        """0 for inliers, 1 for outliers (score above ``threshold_``), as PyOD; with
        ``return_confidence`` also ``predict_confidence``'s values."""
        scores = self.decision_function(X)
        labels = (scores > self.threshold_).astype(int)
        return (labels, self._confidence(scores)) if return_confidence else labels

    def predict_proba(self, X, method="linear", return_confidence=False):
        """(N, 2): [P(inlier), P(outlier)] as PyOD. ``linear``: the score min-max scaled against
        ``decision_scores_``, clipped to [0, 1]; ``unify``: erf of the score standardised by the
        training scores' mean and standard deviation, clipped to [0, 1]."""
        from scipy.special import erf
        from sklearn.preprocessing import MinMaxScaler

        if method not in ("linear", "unify"):
            raise ConfigError(f"predict_proba method must be 'linear' or 'unify', got {method!r}")
        scores = self.decision_function(X)
        train = self.decision_scores_
        if method == "linear":
            p = MinMaxScaler().fit(train.reshape(-1, 1)).transform(scores.reshape(-1, 1)).ravel().clip(0, 1)
        else:
            p = erf((scores - train.mean()) / (train.std() * np.sqrt(2))).clip(0, 1)
        probs = np.column_stack([1 - p, p])
        return (probs, self._confidence(scores)) if return_confidence else probs

    def predict_confidence(self, X):
        """How consistently (in [0, 1]) the label would stay the same under slightly different
        training sets (Perini et al. 2020), as PyOD's ``predict_confidence``."""
        return self._confidence(self.decision_function(X))

    # ------------------------------------------------------------------ internals
    def _check_params(self, images: bool) -> None:
        c = self.contamination
        if not (isinstance(c, numbers.Real) and not isinstance(c, bool) and 0 < c <= 0.5):
            raise ConfigError(f"contamination must be in (0, 0.5], got {c!r}")
        if self.anomaly_score not in d.SCORES:
            raise ConfigError(f"unknown anomaly score {self.anomaly_score!r}; known: {', '.join(d.SCORES)}")
        if not (isinstance(self.samples, numbers.Integral) and self.samples >= 1):
            raise ConfigError(f"samples must be a positive number of posterior draws, got {self.samples!r}")
        if not images and self.anomaly_score not in TABLE_SCORES:
            raise ConfigError(f"score {self.anomaly_score!r} needs images in [0, 1]; for a table (N, F) use "
                              f"{', '.join(TABLE_SCORES)}")
        if isinstance(self.overrides, str):
            raise ConfigError(f"overrides must be a list of section.field=value texts, got the text {self.overrides!r}")

    def _seed(self):
        rs = self.random_state
        if rs is None or isinstance(rs, numbers.Integral):
            return None if rs is None else int(rs)
        return int(check_random_state(rs).randint(2**31 - 1))  # a RandomState: draw the seed from it

    def _input(self, X, fitting, images: bool) -> torch.Tensor:
        """X as the model sees it: images (N, C, H, W) float in [0, 1], or standardised rows
        (N, 1, 1, F) float64. ``fitting``: True sets the input attributes, False checks X
        against them, None (training_config) does neither."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        if images:
            # NaN / inf / sparse / complex raise scikit-learn's ValueError; layout and range vaelab's DataError.
            x = d.as_images(check_array(X, allow_nd=True, ensure_min_samples=0), "X",
                            self.input_shape_ if fitting is False else None)
            if fitting:
                self.input_shape_, self.n_features_in_ = tuple(x.shape[1:]), math.prod(x.shape[1:])
            elif fitting is False:
                d.check_shape(x, self.input_shape_, "X")
            return x
        if fitting is None:  # only the shape is wanted
            return torch.zeros((0, 1, 1, check_array(X, dtype=[np.float64, np.float32]).shape[1]))
        a = validate_data(self, X, reset=fitting, dtype=[np.float64, np.float32]).astype(np.float64)
        if fitting:
            self.input_shape_ = (a.shape[1],)
            self.mean_ = a.mean(0)
            std = a.std(0)
            # Constant features keep scale 1 (as StandardScaler): dividing by ~0 would blow them up.
            self.scale_ = np.where(std > 10 * np.finfo(np.float64).eps * np.maximum(1, abs(self.mean_)), std, 1.0)
        return torch.from_numpy(((a - self.mean_) / self.scale_).reshape(len(a), 1, 1, -1))

    def _scores(self, x: torch.Tensor) -> np.ndarray:
        model, seed = self.run_.model, self._seed() or 0
        if len(self.input_shape_) == 3:
            return d.score_images(model, x, self.anomaly_score, self.samples, seed)
        if self.anomaly_score != "mse":
            return d.score_images(model, x.float(), self.anomaly_score, self.samples, seed)
        # mse through the posterior mean, in float64 on a copy of the model: in float32 a row's
        # score changed with the batch around it (matrix kernels differ by batch size), and
        # model.decode clamps to the image range [0, 1], which standardised features are not.
        m = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            xd = x.to(next(m.parameters()).device)
            r = m.likelihood.mean(m.decode_logits(m.encode(xd).double()))
            return (r - xd).square().flatten(1).mean(1).cpu().numpy()

    def _set_scores(self, scores: np.ndarray):
        # PyOD's _process_decision_scores, exactly: numpy's percentile of 100 * (1 - contamination).
        self.decision_scores_ = scores
        self.threshold_ = float(np.percentile(scores, 100 * (1 - self.contamination)))
        self.labels_ = (scores > self.threshold_).astype(int)
        return self

    def _prepare_run_dir(self) -> None:
        """``run_dir`` emptied of an earlier fit's run (its derived files too, and the detector's own
        train.npz and features.json), as ``vaelab.train(..., overwrite=True)`` does; a folder that
        holds files vaelab did not write is refused in one line and left whole."""
        if self.run_dir is None:
            return
        from vaelab.rundir import RunDir

        rd = RunDir(self.run_dir)
        own = ("train.npz", FEATURES)
        rd.prepare_fresh(overwrite=True, keep=own)
        for name in own:
            (rd.path / name).unlink(missing_ok=True)

    def _confidence(self, scores: np.ndarray) -> np.ndarray:
        from scipy.stats import binom

        n = len(self.decision_scores_)
        below = np.searchsorted(np.sort(self.decision_scores_), scores, side="right")  # training scores <= s
        conf = 1 - binom.cdf(n - int(n * self.contamination), n, (1 + below) / (2 + n))
        return np.where(scores > self.threshold_, conf, 1 - conf)

    def _train_images(self, config, x: torch.Tensor):
        from vaelab.data import ImageSet, Splits
        from vaelab.io import atomic_path
        from vaelab.training.loop import fit

        x8 = torch.round(x * 255).to(torch.uint8)  # (N, C, H, W): vaelab's training data live as uint8
        if self.run_dir is not None:
            with atomic_path(Path(self.run_dir) / "train.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, x=x8.numpy())
        splits = Splits(train=ImageSet(x8, None, "train"), val=None, test=None)
        # With a run_dir, config.data reads the train.npz just written: the run can reload its images.
        result = fit(config, self.run_dir, splits=splits, log=print if self.verbose else (lambda s: None),
                     splits_from_config=self.run_dir is not None)
        return result.model, result.config

    def _train_table(self, config, x: torch.Tensor):
        """vaelab's training loop on the standardised rows (N, 1, 1, F), kept as floats; the
        standardisation is saved beside the run (``features.json``) for ``from_run``."""
        from vaelab.data import ImageSet, Splits
        from vaelab.io import write_json
        from vaelab.training.loop import fit

        splits = Splits(train=ImageSet(x.float(), None, "train"), val=None, test=None)
        result = fit(config, self.run_dir, splits=splits, log=print if self.verbose else (lambda s: None))
        if self.run_dir is not None:
            names = getattr(self, "feature_names_in_", None)
            write_json(Path(self.run_dir) / FEATURES, {"mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                                                       "feature_names": None if names is None else names.tolist()})
        return result.model, result.config


__all__ = ["FEATURES", "TABLE_DEFAULTS", "AnomalyDetector"]
