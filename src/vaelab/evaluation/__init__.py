"""Evaluation: metrics (pure functions), the evaluation of a run, the judge classifier."""
