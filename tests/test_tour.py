"""README.md's tour as a new user runs it: the fenced blocks marked `<!-- tour -->`, in
order, each command as its own `vaelab` process in an empty folder, on the real MNIST.

Fast form (the default): `vaelab train` and `vaelab sweep` get `--epochs 1 --limit 512`;
everything else runs as written. `VAELAB_TOUR=full` runs every command as written (the
preset's 10 epochs on 60,000 digits, the 6-trial sweep at 3 epochs: many minutes).
Needs MNIST under $VAELAB_DATA (skipped otherwise)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image
from test_docs import README, code_blocks, commands, table_after, ticked

pytestmark = pytest.mark.tour

FULL = os.environ.get("VAELAB_TOUR") == "full"
FAST = ["--epochs", "1", "--limit", "512"]  # for train and sweep, unless FULL
# Tour commands this test does not run, and why (each is tested on small data elsewhere).
NOT_RUN = {
    ("vaelab", "judge"): "trains the judge CNN on 60,000 digits for minutes (tests/test_cli_generate.py)",
    ("vaelab", "eval-samples"): "needs that judge (tests/test_cli_generate.py)",
}


def tour_commands() -> list[list[str]]:
    blocks = [b for b in code_blocks(README.read_text()) if b.tour]
    return [shlex.split(c) for b in blocks for c in commands(b)]


def without_optional(words: list[str]) -> list[str]:
    """Drop the README's optional parts: `[--workers 2] [--executor ray [--ray-address ADDR]]`."""
    out, depth = [], 0
    for w in words:
        if depth == 0 and not w.startswith("["):
            out.append(w)
        depth += w.count("[") - w.count("]") if (depth or w.startswith("[")) else 0
    return out


def fast(words: list[str]) -> list[str]:
    """One epoch on 512 training images for `vaelab train` and `vaelab sweep`."""
    if FULL or words[1] not in ("train", "sweep"):
        return words
    if "--epochs" in words:
        i = words.index("--epochs")
        words = words[:i] + words[i + 2:]
    return words + FAST


def test_the_tour_is_marked_and_starts_with_training():
    cmds = tour_commands()
    assert len([b for b in code_blocks(README.read_text()) if b.tour]) >= 6
    assert cmds[0] == ["vaelab", "train", "--preset", "mlp-vae", "--out", "runs/mlp-vae"]
    assert all(c[0] == "vaelab" for c in cmds), [c for c in cmds if c[0] != "vaelab"]
    assert without_optional(["vaelab", "sweep", "--out", "x", "[--workers", "2]", "[--executor", "ray",
                             "[--ray-address", "ADDR]]", "--epochs", "3"]) == [
        "vaelab", "sweep", "--out", "x", "--epochs", "3"]
    assert fast(["vaelab", "train", "--epochs", "20", "--out", "r"]) == (
        ["vaelab", "train", "--epochs", "20", "--out", "r"] if FULL else ["vaelab", "train", "--out", "r", *FAST])


def run_dir_files() -> list[str]:
    """The files the README's run-directory table says `vaelab train` writes."""
    files = []
    for row in table_after(README.read_text(), "file"):
        names = ticked(row["file"])
        if names == ["figures/"]:
            files += [f"figures/{f}" for f in ticked(row["what"])]
        elif not any(n.endswith("/") for n in names):
            files += names
    return files


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def check_outputs(words: list[str], cwd: Path, stdout: str) -> None:
    """What each command says it writes is there, with the content it should have."""
    cmd, out = words[1], option(words, "--out")
    run = cwd / words[2] if len(words) > 2 and not words[2].startswith("-") else None
    epochs = int(option(words, "--epochs") or 10) if FULL else 1
    if cmd == "train":
        files = run_dir_files()
        assert {"config.json", "model.safetensors", "history.csv", "eval.json", "figures/loss.png"} <= set(files)
        missing = [f for f in files if not (cwd / out / f).is_file()]
        assert not missing, f"{out} lacks {missing}"
        table = {ticked(r["file"])[0]: ticked(r["what"]) for r in table_after(README.read_text(), "file")}
        with open(cwd / out / "history.csv") as f:
            history = list(csv.DictReader(f))
        assert list(history[0])[:5] == table["history.csv"][0].split(", ")  # epoch, train_loss, ...
        assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))
        summary = json.loads((cwd / out / "summary.json").read_text())
        # the row names summary.json's fields, then timing's parts
        fields = table["summary.json"]
        cut = fields.index("timing") + 1
        assert set(fields[:cut]) <= set(summary) and summary["epochs"] == epochs, summary
        assert set(fields[cut:]) <= set(summary["timing"]), summary["timing"]
        ev = json.loads((cwd / out / "eval.json").read_text())
        assert (ev["split"], ev["n"], ev["seen_in_training"]) == ("test", 10000, False)
    elif cmd == "eval":
        ev = json.loads((run / "eval.json").read_text())
        assert (ev["split"], ev["n"], ev["seed"]) == (option(words, "--split"), 10000, int(option(words, "--seed")))
        assert ev["iw_samples"] == int(option(words, "--iw-samples")) and np.isfinite(ev["nll_iw"])
    elif cmd == "info":
        assert stdout.startswith(f"run {words[2]}: vae/mlp"), stdout
    elif cmd == "sweep":
        with open(cwd / out / "results.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["status"] for r in rows] == ["done"] * 6, rows
        assert (cwd / out / "results.md").is_file()
    elif cmd == "export":
        with open(cwd / out) as f:
            rows = list(csv.reader(f))
        if option(words, "--what") == "reconstructions":
            assert rows[0][:3] == ["row_id", "orig_px0", "recon_px0"] and len(rows) == 1 + int(option(words, "--n"))
        else:
            assert rows[0][:3] == ["row_id", "label", "mu0"] and len(rows) == 1 + 10000
    elif cmd == "report":
        page = (cwd / out) if out else run / "report.html"
        assert page.read_text().startswith("<!doctype html>")
    if cmd in ("reconstruct", "plot", "sample"):
        assert Image.open(cwd / out).size[0] > 28, out
    if npz := option(words, "--npz"):
        with np.load(cwd / npz) as z:
            assert len(z["images"]) == int(option(words, "--n")), list(z)


def test_the_readme_tour_runs_in_order_in_an_empty_folder(tmp_path, mnist_dir):
    env = subprocess_env(VAELAB_DATA=str(mnist_dir), XDG_CACHE_HOME=str(tmp_path / "cache"))
    work = tmp_path / "tour"
    work.mkdir()
    ran = []
    for words in tour_commands():
        if tuple(words[:2]) in NOT_RUN:
            continue
        words = fast(without_optional(words))
        proc = subprocess.run([sys.executable, "-m", "vaelab", *words[1:]], check=False, cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"`{' '.join(words)}` exited {proc.returncode}: {proc.stderr[-2000:]}"
        check_outputs(words, work, proc.stdout)
        ran.append(words[1])
    assert {"train", "eval", "reconstruct", "info", "plot", "sample", "export", "sweep", "report"} <= set(ran)
    # The gmm sampler was fitted once and saved beside the run, never pickled.
    assert sorted(p.suffix for p in (work / "runs/mlp-vae/samplers").iterdir() if p.name.startswith("gmm")) == [
        ".json", ".npz"]
