"""vaelab.report: the self-contained report.html of a run or a sweep, checked in headless Chromium."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cli_error, run_main
from vaelab.report import write_report

IMG = re.compile(r'<img src="([^"]*)"')
RESULT_COLS = ["trial", "model.latent_dim", "status", "loss", "mse", "ssim", "psnr", "active_units", "params",
               "train_seconds", "error"]


def _quiet(*_):
    pass


def _train(tiny_config, run_dir: Path, *overrides: str, evaluate: bool = True) -> Path:
    from vaelab.api import train

    train(tiny_config("train.epochs=1", *overrides), run_dir, evaluate_after=evaluate, log=_quiet)
    return run_dir


@pytest.fixture
def run_dir(tmp_path, tiny_config) -> Path:
    """A tiny trained VAE (latent 2) with eval.json and the standard figures."""
    return _train(tiny_config, tmp_path / "run")


def make_sweep(root: Path, tiny_config, name: str = "latent") -> Path:
    """A sweep directory built by hand after the sweep.json / results.csv contract:
    two trained trials (latent 2 and 3) and a failed one (latent 0)."""
    sweep = root / "sweep"
    trials, rows = [], []
    for d in (2, 3, 0):
        tid = f"latent_dim={d}"
        trials.append({"id": tid, "params": {"model.latent_dim": d}, "dir": f"trials/{tid}"})
        if d == 0:
            rows.append({"trial": tid, "model.latent_dim": d, "status": "failed",
                         "error": "model.latent_dim must be at least 1, got 0"})
            continue
        run = _train(tiny_config, sweep / "trials" / tid, f"model.latent_dim={d}")
        ev, summary = json.loads((run / "eval.json").read_text()), json.loads((run / "summary.json").read_text())
        metrics = {k: ev[k] for k in RESULT_COLS if k in ev}
        rows.append({"trial": tid, "model.latent_dim": d, "status": "done", **metrics,
                     "params": summary["params"], "train_seconds": summary["train_seconds"], "error": ""})
    (sweep / "sweep.json").write_text(json.dumps({
        "name": name, "preset": None, "params": ["model.latent_dim"], "base": {"train": {"epochs": 1}},
        "epochs": 1, "trials": trials}))
    with open(sweep / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, RESULT_COLS, restval="")
        w.writeheader()
        w.writerows(rows)
    _comparison_figure(sweep / "figures" / "ssim_vs_latent_dim.png", [2, 3], [r["ssim"] for r in rows[:2]])
    shutil.copy(sweep / "trials" / "latent_dim=2" / "figures" / "reconstructions.png",
                sweep / "figures" / "reconstructions.png")
    return sweep


def _comparison_figure(path: Path, xs, ys) -> None:
    from vaelab import plots

    fig, ax = plots._plt().subplots(figsize=(4, 3), dpi=80)
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("model.latent_dim")
    ax.set_ylabel("ssim")
    plots.save_figure(fig, path)


def _images(page: str) -> list[str]:
    return IMG.findall(page)


# ----------------------------------------------------------------------------- run reports
def test_run_report_has_config_metrics_and_every_figure(run_dir):
    notes: list[str] = []
    path = write_report(run_dir, log=notes.append)
    assert path == run_dir / "report.html"
    page = path.read_text()
    # A latent picture is drawn when the run has none (latent 2: a scatter).
    assert (run_dir / "figures" / "scatter.png").is_file()
    assert any("scatter.png" in n for n in notes)
    for text in ("Configuration", "full config.json", "model.latent_dim", "Training summary", "Evaluation",
                 "ssim", "active_units", "KL per latent dimension", "history.csv (1 epochs)"):
        assert text in page, text
    pngs = sorted((run_dir / "figures").glob("*.png"))
    assert {p.stem for p in pngs} >= {"loss", "reconstructions", "samples_prior", "scatter"}
    srcs = _images(page)
    assert len(srcs) == len(pngs)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:|file:|/)', page), "the report must not point outside itself"
    for p in pngs:
        assert f'alt="figures/{p.name}"' in page
    loss = (run_dir / "figures" / "loss.png").read_bytes()
    assert "data:image/png;base64," + base64.b64encode(loss).decode() in srcs


def test_run_report_draws_missing_figures_unless_told_not_to(tmp_path, tiny_config):
    run = _train(tiny_config, tmp_path / "run", "model.latent_dim=3", evaluate=False)
    write_report(run, generate=False, log=_quiet)
    assert not list((run / "figures").glob("*.png"))
    assert "No figures in figures/." in (run / "report.html").read_text()
    write_report(run, log=_quiet)
    assert {p.stem for p in (run / "figures").glob("*.png")} == {"loss", "reconstructions", "samples_prior", "pca"}
    assert len(_images((run / "report.html").read_text())) == 4


def test_run_report_without_data_notes_it_and_still_writes(tmp_path, tiny_config, shapes_npz):
    data = tmp_path / "shapes.npz"
    shutil.copy(shapes_npz, data)
    run = _train(tiny_config, tmp_path / "run", f"data.path={data}", evaluate=False)
    data.unlink()
    notes: list[str] = []
    path = write_report(run, log=notes.append)
    assert any(n.startswith("note: ") and "does not exist" in n for n in notes), notes
    assert [p.name for p in (run / "figures").glob("*.png")] == ["loss.png"]  # needs neither model nor data
    assert len(_images(path.read_text())) == 1


# ----------------------------------------------------------------------------- sweep reports
def test_sweep_report_shows_settings_results_figures_and_trials(tmp_path, tiny_config):
    sweep = make_sweep(tmp_path, tiny_config, name="latent <dims> & more")
    write_report(sweep / "trials" / "latent_dim=2", generate=False, log=_quiet)
    out = tmp_path / "elsewhere" / "sweep.html"
    assert write_report(sweep, out=out, log=_quiet) == out
    page = out.read_text()
    assert "latent &lt;dims&gt; &amp; more" in page and "<dims>" not in page
    for text in ("Settings", "Base settings", "Results", "Comparison figures", "Trials", "model.latent_dim"):
        assert text in page, text
    failed = re.search(r'<tr class="failed">(.*?)</tr>', page).group(1)
    assert "latent_dim=0" in failed and "must be at least 1, got 0" in failed
    assert page.count('<tr class="failed">') == 1
    for tid in ("latent_dim=2", "latent_dim=3", "latent_dim=0"):
        assert f'id="trial-{tid.replace("=", "-")}"' in page
    # Comparison figures, then loss and reconstructions of each finished trial.
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', page)
    assert alts == ["figures/reconstructions.png", "figures/ssim_vs_latent_dim.png",
                    "trials/latent_dim=2/figures/loss.png", "trials/latent_dim=2/figures/reconstructions.png",
                    "trials/latent_dim=3/figures/loss.png", "trials/latent_dim=3/figures/reconstructions.png"]
    links = re.findall(r'<a href="([^"#][^"]*)">report of this trial</a>', page)
    assert len(links) == 1
    assert (out.parent / links[0]).resolve() == (sweep / "trials" / "latent_dim=2" / "report.html").resolve()


# ----------------------------------------------------------------------------- CLI
def test_report_command_writes_and_prints_the_path(capsys, run_dir, tmp_path):
    rc, out, err = run_main(capsys, "report", run_dir)
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == f"wrote {run_dir / 'report.html'}"
    rc, out, err = run_main(capsys, "report", run_dir, "--out", tmp_path / "r.html", "--no-generate")
    assert rc == 0, err
    assert out.strip() == f"wrote {tmp_path / 'r.html'}" and (tmp_path / "r.html").is_file()


def test_report_of_a_folder_that_is_neither_run_nor_sweep_is_one_line_error(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = cli_error(capsys, "report", empty)
    assert "config.json" in line and "sweep.json" in line
    assert "does not exist" in cli_error(capsys, "report", tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    assert "not a directory" in cli_error(capsys, "report", tmp_path / "file.txt")
    (empty / "sweep.json").write_text("{not json")
    assert "sweep.json" in cli_error(capsys, "report", empty)
    assert not (empty / "report.html").exists()


# ----------------------------------------------------------------------------- in a browser
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is not on PATH: install Debian's `chromium` package to open reports in a headless browser")


def open_in_chromium(page: Path, profile: Path) -> tuple[dict[str, str], list[str]]:
    """Load ``page`` in headless Chromium: (attributes of #report-check after load, console lines)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
           "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<div id="report-check"([^>]*)>', proc.stdout)
    assert m, f"no #report-check in the page Chromium dumped (exit {proc.returncode}): {proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1))), console


def _assert_page_whole(page: Path, profile: Path) -> None:
    check, console = open_in_chromium(page, profile)
    n = len(_images(page.read_text()))
    assert n > 0
    assert check.get("data-status") == "done", check
    assert (check["data-images-ok"], check["data-images-bad"], check["data-errors"]) == (str(n), "0", "0"), check
    assert console == []


def test_reports_open_in_chromium_with_every_image_and_no_errors(tmp_path, tiny_config):
    _chromium()
    sweep = make_sweep(tmp_path, tiny_config)
    trial = write_report(sweep / "trials" / "latent_dim=3", log=_quiet)  # draws a PCA picture too
    _assert_page_whole(trial, tmp_path / "profile")
    _assert_page_whole(write_report(sweep, log=_quiet), tmp_path / "profile")


@pytest.mark.parametrize("breakage, bad, errors", [
    ('<img src="data:image/png;base64,iVBORw0KGgoAAAA" alt="truncated png">', 1, 1),
    ('<img src="figures/missing.png" alt="missing file">', 1, 1),
    ("<script>no_such_function()</script>", 0, 1),
])
def test_browser_check_catches_broken_images_and_script_errors(tmp_path, run_dir, breakage, bad, errors):
    _chromium()
    good = write_report(run_dir, generate=False, log=_quiet)
    broken = tmp_path / "broken.html"
    broken.write_text(good.read_text().replace("</body>", breakage + "</body>"))
    check, console = open_in_chromium(broken, tmp_path / "profile")
    n_good = len(_images(good.read_text()))
    assert check["data-status"] == "done"
    assert (check["data-images-ok"], check["data-images-bad"], check["data-errors"]) == (
        str(n_good), str(bad), str(errors)), check
    if breakage.startswith("<script>"):
        assert any("no_such_function" in line for line in console), console


WIDTH_SCRIPT = """<div id="width-check"></div><script>
window.addEventListener("load", function () {
  var d = document.getElementById("width-check"), wrap = document.querySelector(".table-wrap"),
      table = wrap && wrap.querySelector("table"), body = document.body.getBoundingClientRect();
  d.setAttribute("data-page-scroll", document.documentElement.scrollWidth);
  d.setAttribute("data-page-client", document.documentElement.clientWidth);
  d.setAttribute("data-wrapped", wrap ? 1 : 0);
  if (wrap) {
    d.setAttribute("data-wrap-right", Math.ceil(wrap.getBoundingClientRect().right));
    d.setAttribute("data-body-right", Math.ceil(body.right));
    d.setAttribute("data-wrap-client", wrap.clientWidth);
    d.setAttribute("data-table-scroll", table.scrollWidth);
  }
});
</script></body>"""


def _widths(page: Path, profile: Path, width: int) -> dict[str, int]:
    """Load ``page`` in headless Chromium ``width`` pixels wide: the page's and the results table's widths."""
    probe = page.with_name(f"probe-{width}.html")
    probe.write_text(page.read_text().replace("</body>", WIDTH_SCRIPT))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", f"--window-size={width},900", "--hide-scrollbars",
           "--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    m = re.search(r'<div id="width-check"([^>]*)>', proc.stdout)
    assert m, f"no #width-check in the page Chromium dumped (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return {k: int(v) for k, v in re.findall(r'data-([\w-]+)="(\d+)"', m.group(1))}


def test_sweep_results_table_fits_the_page_in_chromium(tmp_path):
    """The README's 6-trial sweep (two swept fields, every metric column) and a failed trial
    with a long error: the table fits a 1280-pixel window without scrolling; in a 700-pixel
    one it scrolls inside its own box and the page itself never runs wider than the window."""
    _chromium()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    cols = ["trial", "model.latent_dim", "model.loss", "status", "loss", "mse", "ssim", "psnr", "active_units",
            "params", "train_seconds", "error"]
    trials, rows = [], []
    for d in (2, 8, 20):
        for loss in ("bce", "euclidean"):
            tid = f"latent_dim={d},loss={loss}"
            trials.append({"id": tid, "params": {"model.latent_dim": d, "model.loss": loss}, "dir": f"trials/{tid}"})
            rows.append({"trial": tid, "model.latent_dim": d, "model.loss": loss, "status": "done", "loss": 111.5512,
                         "mse": 0.012391, "ssim": 0.834211, "psnr": 19.771, "active_units": d, "params": 652824,
                         "train_seconds": 18.6931, "error": ""})
    rows[-1].update(status="failed", error="training stopped: the loss became NaN at epoch 3 step 217 (lr 0.001); "
                    "the last good checkpoint is trials/latent_dim=20,loss=euclidean/checkpoint.safetensors")
    (sweep / "sweep.json").write_text(json.dumps({"name": "latent", "preset": "mlp-vae",
                                                  "params": ["model.latent_dim", "model.loss"], "base": [],
                                                  "epochs": 3, "trials": trials}))
    with open(sweep / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    page = write_report(sweep, log=_quiet)
    assert '<div class=table-wrap><table><tr><th>trial</th><th>model.<wbr>latent_<wbr>dim</th>' in page.read_text()

    wide = _widths(page, tmp_path / "profile", 1280)
    assert wide["wrapped"] == 1
    assert wide["page-scroll"] <= wide["page-client"], wide
    assert wide["table-scroll"] <= wide["wrap-client"], wide  # no scrolling needed at 1280 pixels
    narrow = _widths(page, tmp_path / "profile", 700)
    assert narrow["page-scroll"] <= narrow["page-client"], narrow  # the page never scrolls sideways
    assert narrow["wrap-right"] <= narrow["body-right"], narrow
    assert narrow["table-scroll"] > narrow["wrap-client"], narrow  # the table scrolls in its box instead
