"""bench/paired_seeds.py pairs two arms of zoo runs seed by seed: each seed's row comes from the
first folder whose run was trained with that seed, and the paired statistics match a direct
computation of the t statistic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import paired_seeds

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _zoo_run(folder: Path, seed: int, fcd: float) -> None:
    run = folder / "fam"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"seed": seed}}))
    (run / "zoo_row.json").write_text(json.dumps({"fcd_prior": fcd, "mse": 0.01 * seed}))


def test_seeds_are_paired_by_the_seed_each_run_was_trained_with(tmp_path):
    assert paired_seeds.seeds_of("1-3,7") == [1, 2, 3, 7]
    a = {1: 300.0, 2: 320.0, 3: 310.0}
    b = {1: 290.0, 2: 318.0, 3: 311.0}
    for s in (2, 3):
        _zoo_run(tmp_path / f"a-s{s}", s, a[s])
    _zoo_run(tmp_path / "a-main", 1, a[1])  # seed 1 of arm A lives elsewhere
    _zoo_run(tmp_path / "a-wrong-s1", 5, 999.0)  # named for seed 1, trained with seed 5: never seed 1's row
    for s in (1, 2, 3):
        _zoo_run(tmp_path / f"b-s{s}", s, b[s])
    arm_a = [str(tmp_path / "a-wrong-s{seed}"), str(tmp_path / "a-s{seed}"), str(tmp_path / "a-main")]
    assert paired_seeds.row(arm_a, "fam", 1)["fcd_prior"] == 300.0
    assert paired_seeds.row(arm_a, "fam", 4) is None
    out = tmp_path / "t.json"
    subprocess.run([sys.executable, str(BENCH / "paired_seeds.py"), "--family", "fam", "--seeds", "1-4",
                    "--arm", "A=" + ",".join(arm_a), "--arm", f"B={tmp_path / 'b-s{seed}'}",
                    "--metrics", "fcd_prior,mse", "--json", str(out)], check=True, capture_output=True)
    res = json.loads(out.read_text())
    assert res["seeds_paired"] == [1, 2, 3]
    d = [b[s] - a[s] for s in (1, 2, 3)]  # -10, -2, +1
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    m = res["metrics"]["fcd_prior"]
    assert math.isclose(m["mean_diff"], mean) and math.isclose(m["sd_diff"], sd)
    assert math.isclose(m["t"], mean / (sd / math.sqrt(3)))
    assert m["b_lower"] == 2 and m["n"] == 3
    assert res["rows"]["A"]["4"] is None and res["rows"]["B"]["2"]["mse"] == 0.02
