"""Anomaly detection: scores, a PyOD-style detector, the one-class benchmark."""
