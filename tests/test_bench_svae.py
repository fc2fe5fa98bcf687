"""bench/svae.py builds the S-VAE paper's models: a d-dimensional latent is R^d for the N-VAE
and the sphere S^d (codes in R^(d+1)) for the S-VAE, as the authors' code and Figure 2 do; a
finished run of another code size is trained again, not reused."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import svae


def _latent(cmd: list[str]) -> int:
    return int(next(s for s in cmd if s.startswith("model.latent_dim=")).split("=")[1])


def _finished(rd: Path, latent_dim: int, epochs: int) -> None:
    rd.mkdir(parents=True)
    (rd / "summary.json").write_text(json.dumps({"epochs": epochs}))
    (rd / "config.json").write_text(json.dumps({"model": {"latent_dim": latent_dim}}))


def test_the_s_vae_of_dimension_d_lives_on_the_sphere_s_d(tmp_path):
    args = SimpleNamespace(epochs=3, seed=1, limit=0, set=None)
    for d in (2, 5, 10):
        assert _latent(svae.train_cmd("N-VAE", d, tmp_path / f"n{d}", args)) == d
        assert _latent(svae.train_cmd("S-VAE", d, tmp_path / f"s{d}", args)) == d + 1


def test_a_finished_run_is_reused_only_with_the_same_code_size_and_epochs(tmp_path):
    args = SimpleNamespace(epochs=3, seed=1, limit=0, set=None)
    _finished(tmp_path / "circle", latent_dim=2, epochs=3)  # an S-VAE "d = 2" on S^1, as trained before
    _finished(tmp_path / "sphere", latent_dim=3, epochs=3)
    _finished(tmp_path / "short", latent_dim=3, epochs=2)
    assert svae.train_cmd("S-VAE", 2, tmp_path / "circle", args) is not None
    assert svae.train_cmd("S-VAE", 2, tmp_path / "sphere", args) is None
    assert svae.train_cmd("S-VAE", 2, tmp_path / "short", args) is not None


def test_a_call_for_another_seed_adds_its_rows_to_the_table():
    old = {"epochs": 20, "limit": None, "eval_k": 500, "eval_n": 10000, "seed": 1,  # before rows had seeds
           "rows": [{"model": m, "d": d, "LL": -100.0} for d in (2, 10) for m in ("N-VAE", "S-VAE")]}
    new = {"epochs": 20, "limit": None, "eval_k": 500, "eval_n": 10000,
           "rows": [{"model": m, "d": 10, "seed": 2, "LL": -99.0} for m in ("N-VAE", "S-VAE")]}
    rows = svae.table_rows(old, new)
    assert [(r["model"], r["d"], r["seed"]) for r in rows] == [
        ("N-VAE", 2, 1), ("S-VAE", 2, 1), ("N-VAE", 10, 1), ("N-VAE", 10, 2), ("S-VAE", 10, 1), ("S-VAE", 10, 2)]
    # the same (model, d, seed) scored again replaces its row; other settings start a new table
    again = {**new, "rows": [{"model": "S-VAE", "d": 2, "seed": 1, "LL": -98.0}]}
    assert [r["LL"] for r in svae.table_rows({**old, "rows": rows}, again) if r["d"] == 2] == [-100.0, -98.0]
    assert svae.table_rows(old, {**new, "eval_k": 50}) == new["rows"]
