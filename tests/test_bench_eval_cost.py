"""bench/eval_cost.py: a whole `vaelab train` process split into parts that add up to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_eval_cost_quick_breakdown_adds_up_to_the_process(tmp_path):
    out = tmp_path / "eval_cost.json"
    env = dict(os.environ, VAELAB_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, "bench/eval_cost.py", "--quick", "--only", "mlp", "--work",
                           str(tmp_path / "work"), "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["quick"] is True and set(res["runs"]) == {"mlp"}
    run = res["runs"]["mlp"]
    assert run["verdict"] == "quick run: not a measurement"  # never a target verdict from a quick run
    history = (tmp_path / "work" / "mlp-vae" / "history.csv").read_text().splitlines()
    seconds = float(history[1].split(",")[history[0].split(",").index("seconds")])
    assert run["epochs"] == 1 and run["epochs_s"] == pytest.approx(seconds, abs=1e-3)
    parts = run["parts"]
    assert set(parts) >= {"startup_s", "data_s", "setup_s", "epochs_s", "val_s", "checkpoint_s", "eval_s",
                          "figures_s", "exit_s"}
    assert all(v >= 0 for k, v in parts.items() if k != "fit_other_s"), parts
    assert parts["startup_s"] > 0 and parts["eval_s"] > 0 and parts["figures_s"] > 0
    # the recorded parts and the wall time measured outside the process agree within a few per cent
    assert abs(sum(parts.values()) - run["wall_s"]) <= 0.05 * run["wall_s"], (parts, run["wall_s"])
    assert run["outside_epochs_s"] == pytest.approx(run["wall_s"] - run["epochs_s"], abs=2e-3)
    assert res["machine"]["vector_extensions"] is not None and "machine: " in proc.stdout
    assert "load average (1 min)" in proc.stdout


def test_eval_cost_passes_set_to_every_run(tmp_path):
    """--set KEY=VALUE reaches each `vaelab train` (the fp32 measurement of issue 21)."""
    out = tmp_path / "eval_cost.json"
    env = dict(os.environ, VAELAB_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, "bench/eval_cost.py", "--quick", "--only", "mlp", "--work",
                           str(tmp_path / "work"), "--out", str(out), "--set", "train.precision=fp32"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["sets"] == ["train.precision=fp32"] and res["runs"]["mlp"]["precision"] == "fp32"
    assert "train.precision=fp32" in res["runs"]["mlp"]["command"]
    assert json.loads((tmp_path / "work" / "mlp-vae" / "config.json").read_text())["train"]["precision"] == "fp32"
