"""bench/pythae_compare.py's caches: a family's scores are read back only while both sides'
arrays are the ones they were computed from; compare.json keeps the rows of families a call
did not score. (Pythae itself is not needed: these read files only.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pythae_compare
from common import merged_rows


def _arrays(folder: Path, value: int) -> dict:
    paths = {}
    for key in ("p_gmm", "v_gmm"):
        paths[key] = str(folder / f"{key}.npz")
        np.savez(paths[key], images=np.full((2, 1, 4, 4), value, np.uint8))
    paths["v_prior"] = None  # a family without a prior
    return paths


def test_scores_are_reused_only_for_the_arrays_they_were_computed_from(tmp_path):
    paths = _arrays(tmp_path, 1)
    scores = tmp_path / "fam_scores.json"
    assert pythae_compare.cached_scores(scores, paths) is None  # never scored
    scores.write_text(json.dumps({"p_gmm": {"fcd": 9.0}, "inputs": pythae_compare.input_hashes(paths)}))
    assert pythae_compare.cached_scores(scores, paths)["p_gmm"] == {"fcd": 9.0}
    _arrays(tmp_path, 2)  # a side drew its samples again
    assert pythae_compare.cached_scores(scores, paths) is None


def test_scores_written_before_inputs_were_recorded_count_only_when_newer(tmp_path):
    paths = _arrays(tmp_path, 1)
    scores = tmp_path / "fam_scores.json"
    scores.write_text(json.dumps({"p_gmm": {"fcd": 9.0}}))
    assert pythae_compare.cached_scores(scores, paths)["p_gmm"] == {"fcd": 9.0}
    assert "inputs" in json.loads(scores.read_text())  # recorded from now on
    scores.write_text(json.dumps({"p_gmm": {"fcd": 9.0}}))
    old = os.path.getmtime(paths["p_gmm"]) - 100
    os.utime(scores, (old, old))  # older than the arrays: they changed after it was scored
    assert pythae_compare.cached_scores(scores, paths) is None


def test_a_call_for_one_family_keeps_the_others_rows():
    old = {"epochs": 10, "rows": [{"family": "vae", "x": 1}, {"family": "pvae", "x": 2}]}
    new = {"epochs": 10, "rows": [{"family": "pvae", "x": 3}]}
    assert merged_rows(old, new, ("epochs",), key=lambda r: r["family"]) == [{"family": "vae", "x": 1},
                                                                               {"family": "pvae", "x": 3}]
