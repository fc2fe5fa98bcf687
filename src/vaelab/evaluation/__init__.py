"""Evaluation: metrics (pure functions), the evaluation of a run, the judge classifier,
disentanglement scores."""

__all__ = ["disentanglement", "evaluate", "judge", "metrics"]
