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


def _fake_run(tmp_path, weights: bytes) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "model.safetensors").write_bytes(weights)
    return run


def test_an_evaluation_cache_is_used_only_for_the_weights_it_was_made_from(tmp_path, monkeypatch):
    """bench's evaluate_test: a cached score counts while the run holds the same weights; after the
    run is trained again (other weights) it is evaluated again, not read from the stale cache."""
    import json
    import os
    import subprocess
    from types import SimpleNamespace

    import common

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(returncode=0, stdout=json.dumps({"nll_iw": 90.0 + len(calls)}) + "\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    run = _fake_run(tmp_path, b"weights one")
    cache = run / "score.json"
    first = common.evaluate_test(run, cache, 10, 0, 1, {})
    assert first["nll_iw"] == 91.0 and len(calls) == 1
    assert common.evaluate_test(run, cache, 10, 0, 1, {})["nll_iw"] == 91.0 and len(calls) == 1  # cached
    _fake_run(tmp_path, b"weights two")  # trained again
    assert common.evaluate_test(run, cache, 10, 0, 1, {})["nll_iw"] == 92.0 and len(calls) == 2

    # a cache from before ids were recorded: kept when newer than the weights, redone when older
    cache.write_text(json.dumps({"nll_iw": 80.0}))
    assert common.evaluate_test(run, cache, 10, 0, 1, {})["nll_iw"] == 80.0 and len(calls) == 2
    cache.write_text(json.dumps({"nll_iw": 80.0}))
    old = (run / "model.safetensors").stat().st_mtime - 100
    os.utime(cache, (old, old))
    assert common.evaluate_test(run, cache, 10, 0, 1, {})["nll_iw"] == 93.0 and len(calls) == 3
