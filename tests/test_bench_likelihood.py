"""bench/likelihood.py's table: a call that scores some models keeps the others' rows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import likelihood


def _table(rows, **settings):
    return {"stages": 6, "beta1": 0.9, "seed": 1, "eval_k": 5000, **settings,
            "rows": [{"model": m, "nll": v} for m, v in rows]}


def test_a_later_call_adds_its_rows_and_replaces_only_its_own_models():
    old = _table([("vae", 88.57), ("iwae5", 87.43), ("vae-2l", 99.0)])
    new = _table([("vae-2l", 87.1), ("iwae5-2l", 86.0)])
    assert [(r["model"], r["nll"]) for r in likelihood.merged_rows(old, new)] == [
        ("vae", 88.57), ("iwae5", 87.43), ("vae-2l", 87.1), ("iwae5-2l", 86.0)]


def test_rows_scored_with_other_settings_are_not_mixed_in():
    old = _table([("vae", 92.4)], eval_k=1000)
    new = _table([("iwae5", 87.43)])
    assert [r["model"] for r in likelihood.merged_rows(old, new)] == ["iwae5"]
    assert [r["model"] for r in likelihood.merged_rows({}, new)] == ["iwae5"]
