"""Long steps say what they do and how far they have come: the training loop's line per epoch
(with the time left) and its one bar for the whole run, and the judge's announcement."""

from __future__ import annotations

import csv
import io
import math
import re
import shutil

from conftest import run_main

from vaelab import progress

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  train_loss (\S+)  \((\d+\.\d)s, eta (\d+s|\d+m\d\ds|\d+h\d\dm)\)$")
TINY = ["--data", "npz", "--val", "none", "--set", "model.arch=mlp", "--set", "model.hidden=32", "--latent-dim", "2",
        "--batch-size", "64", "--device", "cpu", "--set", "train.precision=fp32", "--no-eval"]


def test_durations_read_like_a_clock():
    assert [progress.duration(s) for s in (0, 44.6, 84, 3599, 7500)] == ["0s", "45s", "1m24s", "59m59s", "2h05m"]


def test_without_a_terminal_each_epoch_is_one_line_with_its_loss_and_the_time_left(capsys, shapes_npz, tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_main(capsys, "train", *TINY, "--data-path", shapes_npz, "--epochs", 2, "--out", run)
    assert rc == 0, err
    lines = [m for m in map(EPOCH_LINE.match, out.splitlines()) if m]
    assert [(int(m[1]), int(m[2])) for m in lines] == [(1, 2), (2, 2)]
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    for m, row in zip(lines, history):
        assert math.isfinite(float(m[3])) and float(m[3]) == round(float(row["train_loss"]), 4)
    assert lines[-1][5] == "0s"  # nothing left after the last epoch
    assert "\r" not in err and "it/s" not in err  # no bar when stderr is not a terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_bar_runs_through_every_epoch(monkeypatch, tiny_config):
    from vaelab.training import callbacks, loop

    monkeypatch.delenv("VAELAB_NO_PROGRESS", raising=False)
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    bars = []
    monkeypatch.setattr(callbacks, "progress_bar", lambda *a, **k: bars.append(progress.bar(*a, **k)) or bars[-1])
    lines: list[str] = []
    result = loop.fit(tiny_config("train.epochs=3", "train.progress=true"), None, log=lines.append)
    # 256 images in batches of 64: 4 steps an epoch, 12 in all, on one bar.
    (bar,) = bars
    assert (bar.total, bar.n, bar.desc) == (12, 12, "epoch 3/3: ")
    shown = str(bar)
    assert re.search(r"loss=\d+\.\d\d", shown) and re.search(r"12/12 \[\d\d:\d\d<\d\d:\d\d", shown), shown
    assert "epoch 1/3" in term.getvalue()  # drawn on the "terminal"
    assert [ln.split("  ")[0] for ln in lines if ln.startswith("epoch ")] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert len(result.history) == 3

    # Off by the setting or by VAELAB_NO_PROGRESS: no bar, the lines stay.
    for off, env in (("train.progress=false", None), ("train.progress=true", "1")):
        if env:
            monkeypatch.setenv("VAELAB_NO_PROGRESS", env)
        term.seek(0), term.truncate()
        lines.clear()
        loop.fit(tiny_config("train.epochs=1", off), None, log=lines.append)
        assert term.getvalue() == "" and [ln for ln in lines if ln.startswith("epoch 1/1")]


def test_the_judge_says_what_it_trains_before_it_starts(tmp_path, shapes_npz):
    from vaelab.config import DataConfig
    from vaelab.evaluation.judge import get_judge

    lines: list[str] = []
    folder = tmp_path / "judge"
    judge = get_judge(DataConfig(name="npz", path=str(shapes_npz)), folder=folder, epochs=1, log=lines.append)
    assert lines[0].startswith("training the judge for npz-") and "1 epochs" in lines[0]
    assert lines[0].endswith(f"cached in {folder} for every later use")
    assert lines[1].startswith("judge epoch 1/1")
    assert (folder / "judge.safetensors").is_file() and 0 <= judge.accuracy <= 1
    lines.clear()
    get_judge(DataConfig(name="npz", path=str(shapes_npz)), folder=folder, log=lines.append)
    assert lines == []  # cached: nothing to announce


def test_eval_with_importance_samples_says_what_it_costs(capsys, trained_run, tmp_path):
    run = tmp_path / "run"  # a copy: eval writes eval.json, and the shared run stays as it was
    shutil.copytree(trained_run.run_dir, run)
    rc, out, err = run_main(capsys, "eval", run, "--iw-samples", 3, "--device", "cpu")
    assert rc == 0, err
    name = trained_run.default_split()
    n = len(trained_run.split(name))
    assert out.splitlines()[0] == (f"evaluating {run} on its {n:,} {name} images (nll_iw decodes 3 "
                                   f"posterior samples for each of {n:,} images): about 4 times the work of one "
                                   "pass (a smaller --iw-samples or --iw-images is quicker)")  # 1 + 3
    rc, out, err = run_main(capsys, "eval", run, "--iw-samples", 0, "--device", "cpu")
    assert rc == 0 and not out.startswith("evaluating")  # quick: nothing to announce


def test_dsprites_says_it_draws_the_images_once(tmp_path):
    from vaelab.data import dsprites

    lines: list[str] = []
    images = dsprites.load_dsprites(tmp_path, limit=64, log=lines.append)[0]
    assert lines == [("drawing 64 dSprites images (256.0 KiB) (the first use here; nothing is downloaded): once, "
                      f"seconds to minutes; cached in {tmp_path} for every later use")]
    assert images.shape == (64, 1, 64, 64)
    dsprites.load_dsprites(tmp_path, limit=64, log=lines.append)
    assert len(lines) == 1  # cached: said nothing


def test_a_tsne_plot_says_it_may_take_a_while(capsys, trained_run, tmp_path):
    rc, out, err = run_main(capsys, "plot", trained_run.run_dir, "--kind", "tsne", "--n", 40, "--device", "cpu",
                            "--out", tmp_path / "tsne.png")
    assert rc == 0, err
    assert out.splitlines()[0] == ("t-SNE of 40 codes onto a plane: this can take minutes on a CPU "
                                   "(a smaller --n is quicker)")
    assert (tmp_path / "tsne.png").is_file()


def test_a_tsne_plot_announces_the_codes_it_has_not_2000(capsys, trained_run, tmp_path):
    from vaelab.api import Run

    held = len(Run.load(trained_run.run_dir, device="cpu").split(None))
    assert held < 2000
    rc, out, err = run_main(capsys, "plot", trained_run.run_dir, "--kind", "tsne", "--device", "cpu",
                            "--out", tmp_path / "tsne.png")
    assert rc == 0, err
    assert out.splitlines()[0].startswith(f"t-SNE of {held:,} codes onto a plane")


def test_a_bar_goes_through_each_item_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("VAELAB_NO_PROGRESS", raising=False)
    items = range(0, 10, 3)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: the items themselves
    assert progress.each(items, "x") is items
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    wrapped = progress.each(items, "batches", unit="batch")
    assert list(wrapped) == [0, 3, 6, 9] and wrapped.n == 4 and "0/4" in term.getvalue()
    assert progress.each(items, "x", on=False) is items
    monkeypatch.setenv("VAELAB_NO_PROGRESS", "1")
    assert progress.each(items, "x") is items
