"""Anomaly detection: scores (``scores``), the scikit-learn / PyOD detector (``estimator``),
and the one-class benchmark protocol (``one_class``)."""
