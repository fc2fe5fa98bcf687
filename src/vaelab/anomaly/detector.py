"""Deprecated: ``vaelab.anomaly.detector`` is now ``vaelab.anomaly.scores``, and its
``AnomalyDetector`` is ``vaelab.anomaly.estimator.AnomalyDetector`` (the old path goes in 0.3)."""

from vaelab._deprecated import warn_moved
from vaelab.anomaly.estimator import AnomalyDetector
from vaelab.anomaly.scores import (
    SCORES,
    as_images,
    detect,
    load_input,
    score_images,
    threshold_at,
)

warn_moved(__name__, "vaelab.anomaly.scores", skip=1)

__all__ = ["SCORES", "AnomalyDetector", "as_images", "detect", "load_input", "score_images", "threshold_at"]
