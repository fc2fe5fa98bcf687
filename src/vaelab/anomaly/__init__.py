"""Anomaly detection: scores (``scores``), the scikit-learn / PyOD detector (``estimator``),
per-pixel maps (``maps``) and the one-class benchmark protocol (``one_class``)."""

from vaelab._deprecated import moved_name

__all__ = ["estimator", "maps", "one_class", "scores"]

# Names this package held before it was split into modules (deprecated, gone in 0.3).
_MOVED = {"AnomalyDetector": "vaelab.anomaly.estimator", "one_class_benchmark": "vaelab.anomaly.one_class",
          **dict.fromkeys(["SCORES", "as_images", "detect", "load_input", "score_images", "threshold_at"],
                          "vaelab.anomaly.scores")}


def __getattr__(name: str):
    return moved_name(__name__, name, _MOVED)
