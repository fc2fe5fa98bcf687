"""HTML reports: ``write_report(DIR)`` writes one self-contained ``report.html``.

DIR is a run (it holds ``config.json``) or a sweep (it holds ``sweep.json``). Every
image is embedded as a base64 ``data:`` URI, so the file alone opens offline. The
page carries a small inline script that, on load, counts the images that decoded
and the errors seen, and writes the counts into ``<div id="report-check">``: a
headless browser can then tell whether the page is whole (the tests do).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from vaelab.errors import VaelabError
from vaelab.io import write_text
from vaelab.rundir import ID_TEXT, RunDir, refuse_run_file

REPORT = "report.html"
# Figures in this order first, then any other PNG by name.
FIGURE_CAPTIONS = {
    "loss": "loss per image, per epoch (train and validation)",
    "reconstructions": "originals (top) and their reconstructions (bottom)",
    "samples_prior": "images decoded from codes drawn from the model's prior (its title names the prior)",
    "scatter": "the images' codes (the title says which), two dimensions at a time, coloured by class",
    "tsne": "t-SNE of the images' codes, coloured by class",
    "pca": "spectrum of the latent covariance and PCA projections of class pairs",
    "traverse": "decoded images along each latent dimension",
    "interpolate": "decoded interpolation between two codes",
    "basis": "decoded origin and standard basis vectors",
}
SWEEP_CAPTIONS = {
    "reconstructions": "the same test images (first block) reconstructed by every trial",
    "metrics_by_trial": "test metrics of every trial",
}
LATENT_FIGURES = ("scatter", "tsne", "pca", "traverse", "interpolate", "basis")
LATENT_FIGURE_N = 1000  # images encoded for a generated latent picture: fast, still readable

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
.sub, .note { color: #666; } .note { font-style: italic; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fdecea; } tr.pending td { color: #888; }
.table-wrap { max-width: 100%; overflow-x: auto; } .table-wrap table { margin: 0; }
td.long { min-width: 12em; max-width: 32em; overflow-wrap: anywhere; }
pre { background: #f7f7f7; padding: 0.7em; overflow-x: auto; font-size: 13px; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.row { display: flex; flex-wrap: wrap; gap: 1em; } .row figure { flex: 1 1 400px; } .row img { max-height: 320px; }
.bar { display: inline-block; height: 0.8em; background: #4a7ab5; }
#report-check { display: none; } #report-check.bad { display: block; color: #b00; font-weight: bold; }
"""

# Registered before any <img> is parsed: a capturing listener on window also sees image load errors.
CHECK_SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(e.message || ("could not load " + ((e.target && e.target.alt) || "an element")));
  }, true);
  window.addEventListener("load", function () {
    var ok = 0, bad = [];
    for (var i = 0; i < document.images.length; i++) {
      var img = document.images[i];
      if (img.complete && img.naturalWidth > 0) { ok++; } else { bad.push(img.alt || ("image " + i)); }
    }
    var d = document.getElementById("report-check");
    d.setAttribute("data-images-ok", ok);
    d.setAttribute("data-images-bad", bad.length);
    d.setAttribute("data-errors", errors.length);
    d.setAttribute("data-status", "done");
    if (bad.length || errors.length) {
      d.className = "bad";
      d.textContent = bad.length + " image(s) failed to load (" + bad.join(", ") + "); "
        + errors.length + " error(s): " + errors.join(" | ");
    }
  });
})();
"""


def write_report(path: str | Path, out: str | Path | None = None, generate: bool = True,
                 data_dir: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Write the report of a run or sweep directory; returns the HTML path (default DIR/report.html).
    For a run, missing standard figures are drawn first unless ``generate`` is False."""
    folder = Path(path)
    kind = report_kind(folder)
    target = Path(out) if out else folder / REPORT
    if target.is_dir():
        target = target / REPORT
    refuse_run_file(target, "--out")
    if kind == "run":
        if generate:
            generate_figures(folder, data_dir=data_dir, log=log)
        page = run_report_html(folder, target.parent, log=log)
    else:
        page = sweep_report_html(folder, target.parent)
    write_text(target, page)
    return target


def report_kind(folder: Path) -> str:
    if not folder.exists():
        raise VaelabError(f"{folder} does not exist; pass a run directory (with config.json) "
                          "or a sweep directory (with sweep.json)")
    if not folder.is_dir():
        raise VaelabError(f"{folder} is not a directory; pass a run directory (with config.json) "
                          "or a sweep directory (with sweep.json)")
    if (folder / "sweep.json").is_file():
        return "sweep"
    if RunDir(folder).is_run():
        return "run"
    raise VaelabError(f"{folder} has neither config.json nor sweep.json; pass a run directory "
                      "(from `vaelab train`) or a sweep directory")


# ------------------------------------------------------------------------------ figures of a run
def generate_figures(run_dir: Path, data_dir: str | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Draw what a report needs and ``RUN/figures`` lacks: the standard figures (Run.figures)
    and one latent picture (scatter for a latent of 1-2 dims, PCA otherwise). Without the
    model or the data this says so and draws only the loss curve, which needs neither."""
    from vaelab.training import checkpoint

    rd = RunDir(run_dir)
    have = {p.stem for p in rd.figures.glob("*.png") if rd.stale(p) is None}  # a stale figure is drawn again
    config = checkpoint.load_config(run_dir)
    # A model with a prior also gets prior samples (Run.figures draws them).
    needs_std = "reconstructions" not in have or (config.model.prior != "none" and "samples_prior" not in have)
    needs_latent = not have & set(LATENT_FIGURES)
    written: list[Path] = []
    if needs_std or needs_latent:
        try:
            written += _draw_with_model(run_dir, needs_std, needs_latent, data_dir)
        except VaelabError as e:
            log(f"note: not drawing figures that need the model and data ({e}); "
                "the report shows the figures already there")
    if (not rd.figure("loss").exists() or rd.stale(rd.figure("loss"))) and rd.history.is_file():
        written.append(_draw_loss(run_dir, config.preset))
    for p in written:
        log(f"drew {p}")
    return written


def _draw_with_model(run_dir: Path, needs_std: bool, needs_latent: bool, data_dir: str | None) -> list[Path]:
    from vaelab.api import Run
    from vaelab.latent.pictures import PLOTS

    run = Run.load(run_dir, device="cpu", data_dir=data_dir)
    run.config.data.download = False  # a report never downloads a data set
    run.splits()  # fail here, before drawing anything, when the data is missing
    written = run.figures(seed=run.config.train.seed) if needs_std else []
    if needs_latent:
        kind = "scatter" if run.config.model.latent_dim <= 2 else "pca"
        written.append(PLOTS[kind](run, run.dir.figure(kind), n=LATENT_FIGURE_N))
    return written


def _draw_loss(run_dir: Path, preset: str | None) -> Path:
    from vaelab import plots

    rd = RunDir(run_dir)
    return plots.plot_history(_read_csv(rd.history), rd.figure("loss"),
                              title=f"{preset or 'run'}: loss per epoch")


def figure_paths(folder: Path) -> list[Path]:
    """The PNGs in ``folder``: the known figures in their usual order, then the rest by name."""
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    order = {stem: i for i, stem in enumerate(FIGURE_CAPTIONS)}
    return sorted(pngs, key=lambda p: (order.get(p.stem, len(order)), p.name))


# ------------------------------------------------------------------------------ run report
def _stale_files(rd: RunDir) -> dict[Path, str]:
    """The derived files a run report would show that do not belong to the current weights, and why."""
    paths = [rd.eval, *rd.figures.glob("*.png"), *rd.path.glob("*.json"), *rd.path.glob("*.png")]
    out = {}
    for p in paths:
        if p.is_file() and p.name not in (*RunDir.PRIMARY, *RunDir.LOGS, "trial.json", "features.json"):
            why = rd.stale(p)
            if why is not None:
                out[p] = why
    return out


def run_report_html(run_dir: Path, out_dir: Path, log: Callable[[str], None] = lambda s: None) -> str:
    """The report of a run. Derived files made from other weights than RUN/model.safetensors
    holds now (or recording none) are left out, and the page and ``log`` say which."""
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    config = _read_json(rd.config)
    stale = _stale_files(rd)
    old_summary = rd.summary_stale()
    summary = _read_json(rd.summary) if rd.summary.is_file() and not old_summary else None
    result = _read_json(rd.eval) if rd.eval.is_file() and rd.eval not in stale else None
    model, data = config.get("model", {}), config.get("data", {})
    sub = (f"{model.get('kind', '?')} / {model.get('arch', '?')}, latent {model.get('latent_dim', '?')}, "
           f"data {data.get('name', '?')}" + (f", preset {config['preset']}" if config.get("preset") else ""))
    parts = [f"<h1>Run {_e(run_dir.resolve().name)}</h1>",
             f"<p class=sub>{_e(sub)} &middot; {_e(run_dir.resolve())}</p>"]
    if stale:
        names = ", ".join(p.relative_to(run_dir).as_posix() for p in stale)
        log(f"note: left out of the report, made from other weights than {rd.weights} now holds "
            f"(or by an older vaelab): {names}")
        parts.append(f"<p class=note>Left out, made from other weights than {_e(RunDir.WEIGHTS)} now holds "
                     f"(or recording none): " + "; ".join(f"{_e(p.relative_to(run_dir).as_posix())} ({_e(why)})"
                                                          for p, why in stale.items()) + "</p>")
    parts += ["<h2>Configuration</h2>", _config_table(config),
              _details("full config.json", _pre(json.dumps(config, indent=2)))]
    parts.append("<h2>Metrics</h2>")
    if old_summary:
        log(f"note: {RunDir.SUMMARY} left out of the report: {old_summary}")
        parts.append(f"<p class=note>{_e(RunDir.SUMMARY)} left out: {_e(old_summary)}</p>")
    if summary is not None:
        parts += ["<h3>Training summary <small>(summary.json)</small></h3>", _kv_table(summary)]
    if result is not None:
        parts += [f"<h3>Evaluation <small>(eval.json, split {_e(result.get('split', '?'))})</small></h3>",
                  _kv_table({k: v for k, v in result.items() if k != "kl_per_dim"})]
        if result.get("seen_in_training"):
            parts.append("<p class=note>These images were part of the training data: not held-out numbers.</p>")
        if result.get("kl_per_dim"):
            parts += ["<h3>KL per latent dimension</h3>", _kl_bars(result["kl_per_dim"])]
    if summary is None and result is None and not old_summary:
        parts.append("<p class=note>No summary.json or eval.json yet (train, then `vaelab eval RUN`).</p>")
    parts += _history_section(run_dir, stale)
    figs = [p for p in figure_paths(rd.figures) if p.stem != "loss" and p not in stale]
    parts.append("<h2>Figures</h2>")
    parts += [_figure(p, run_dir) for p in figs] or ["<p class=note>No figures in figures/.</p>"]
    parts += _other_results(run_dir, stale)
    return _page(f"vaelab run {run_dir.resolve().name}", parts, checkpoint_id=rd.checkpoint_id())


def _config_table(config: dict) -> str:
    keys = (("data", "name"), ("data", "classes"), ("model", "kind"), ("model", "arch"), ("model", "latent_dim"),
            ("model", "loss"), ("model", "beta"), ("train", "epochs"), ("train", "batch_size"), ("train", "lr"),
            ("train", "seed"))
    rows = {f"{s}.{f}": config[s][f] for s, f in keys if isinstance(config.get(s), dict) and f in config[s]}
    return _kv_table({"preset": config.get("preset"), **rows})


def _history_section(run_dir: Path, stale: dict = {}) -> list[str]:  # noqa: B006 (read only)
    parts = ["<h2>Training</h2>"]
    loss = RunDir(run_dir).figure("loss")
    if loss.is_file() and loss not in stale:
        parts.append(_figure(loss, run_dir))
    history = _read_csv(RunDir(run_dir).history) if RunDir(run_dir).history.is_file() else []
    if history:
        cols = list(history[0])
        parts.append(_details(f"history.csv ({len(history)} epochs)",
                              _table(cols, [[r.get(c, "") for c in cols] for r in history])))
    if len(parts) == 1:
        parts.append("<p class=note>No history.csv or loss.png.</p>")
    return parts


def _kl_bars(kl: list) -> str:
    top = max(max(kl), 1e-12)
    rows = [[str(i), _fmt(v), f'<span class=bar style="width:{200 * max(v, 0) / top:.0f}px"></span>']
            for i, v in enumerate(kl)]
    return _table(["dim", "KL (nats)", ""], rows, raw_cols={2})


def _other_results(run_dir: Path, stale: dict = {}) -> list[str]:  # noqa: B006 (read only)
    """Other JSON results (samples_eval.json, inpaint_eval.json, ...) and top-level PNGs."""
    known = {RunDir.CONFIG, RunDir.SUMMARY, RunDir.EVAL, RunDir.MLFLOW}  # mlflow.json: a log's address, no result
    extra = [p for p in sorted(run_dir.glob("*.json"))  # not the records beside a CSV (latents.csv.json)
             if p.name not in known and p not in stale and not Path(p.stem).suffix]
    pngs = [p for p in figure_paths(run_dir) if p not in stale]
    if not extra and not pngs:
        return []
    parts = ["<h2>Other results</h2>"]
    for p in extra:
        try:
            parts.append(_details(p.name, _pre(json.dumps(json.loads(p.read_text()), indent=2))))
        except (OSError, ValueError):
            parts.append(f"<p class=note>{_e(p.name)} is not valid JSON; skipped.</p>")
    return parts + [_figure(p, run_dir) for p in pngs]


# ------------------------------------------------------------------------------ sweep report
def sweep_report_html(sweep_dir: Path, out_dir: Path) -> str:
    sweep_dir = Path(sweep_dir)
    spec = _read_json(sweep_dir / "sweep.json")
    if not isinstance(spec, dict):
        raise VaelabError(f"{sweep_dir / 'sweep.json'} is not a sweep description (expected a JSON object)")
    trials = [t for t in spec.get("trials") or [] if isinstance(t, dict)]
    name = str(spec.get("name") or sweep_dir.resolve().name)
    parts = [f"<h1>Sweep {_e(name)}</h1>", f"<p class=sub>{len(trials)} trials &middot; {_e(sweep_dir.resolve())}</p>",
             "<h2>Settings</h2>",
             _kv_table({"name": name, "preset": spec.get("preset"),
                        "swept": ", ".join(map(str, spec.get("params") or [])),
                        "epochs": spec.get("epochs"), "trials": len(trials)}),
             "<h3>Base settings</h3>", _pre(json.dumps(spec.get("base"), indent=2))]
    results = _read_csv(sweep_dir / "results.csv") if (sweep_dir / "results.csv").is_file() else None
    parts.append("<h2>Results</h2>")
    parts.append(_results_table(results) if results else "<p class=note>No results.csv yet.</p>")
    parts.append("<h2>Comparison figures</h2>")
    parts += [_figure(p, sweep_dir, SWEEP_CAPTIONS) for p in figure_paths(RunDir(sweep_dir).figures)] or [
        "<p class=note>No figures in figures/.</p>"]
    by_id = {r.get("trial"): r for r in results or []}
    parts.append("<h2>Trials</h2>")
    parts += [_trial_section(sweep_dir, t, by_id.get(t.get("id")), out_dir) for t in trials]
    return _page(f"vaelab sweep {name}", parts)


def _results_table(rows: list[dict]) -> str:
    """The results table, narrow enough for the page: headers and trial names may break after
    '.' and '_' (headers) or ',' (trials), error messages wrap, and what is still too wide
    scrolls in its box."""
    cols = list(rows[0])
    body = []
    for r in rows:
        status = r.get("status", "")
        cls = status if status in ("failed", "pending") else ""
        cells = "".join(_td(r.get(c, ""), c == "trial", c == "error") for c in cols)
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    head = "".join(f"<th>{_breakable(c, '._')}</th>" for c in cols)
    return f"<div class=table-wrap><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _td(value, is_trial: bool = False, is_long: bool = False) -> str:
    if is_trial and value:
        return f'<td><a href="#trial-{_e(_slug(value))}">{_breakable(value)}</a></td>'
    if is_long and value:
        return f"<td class=long>{_e(value)}</td>"
    cls = " class=num" if _is_number(value) else ""
    return f"<td{cls}>{_e(_fmt(value))}</td>"


def _breakable(v, after: str = ",") -> str:
    """Escaped text that a browser may break after any of the characters ``after``."""
    return re.sub(f"([{re.escape(after)}])(?=.)", r"\1<wbr>", _e(v))


def _trial_section(sweep_dir: Path, trial: dict, row: dict | None, out_dir: Path) -> str:
    tid = str(trial.get("id", "?"))
    status = (row or {}).get("status") or "pending"
    parts = [f'<h3 id="trial-{_e(_slug(tid))}">{_e(tid)} <small>({_e(status)})</small></h3>']
    params = trial.get("params") or {}
    if params:
        parts.append("<p>" + ", ".join(f"{_e(k)} = {_e(_fmt(v))}" for k, v in params.items()) + "</p>")
    if row and row.get("error"):
        parts.append(f"<p class=note>error: {_e(row['error'])}</p>")
    folder = sweep_dir / str(trial.get("dir") or f"trials/{tid}")
    report = folder / REPORT
    if report.is_file():
        href = Path(os.path.relpath(report.resolve(), Path(out_dir).resolve())).as_posix()
        parts.append(f'<p><a href="{_e(href)}">report of this trial</a></p>')
    figs = [RunDir(folder).figure(f) for f in ("loss", "reconstructions") if RunDir(folder).figure(f).is_file()]
    if figs:
        parts.append('<div class=row>' + "".join(_figure(p, sweep_dir) for p in figs) + "</div>")
    elif status == "done":
        parts.append(f"<p class=note>No loss.png or reconstructions.png in {_e(RunDir(folder).figures)}.</p>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------ HTML pieces
def _page(title: str, parts: list[str], checkpoint_id: str | None = None) -> str:
    """The page; a run's report records the id of the weights it shows (vaelab.rundir.ID_TEXT)."""
    body = "\n".join(parts)
    stamp = f'<meta name="{ID_TEXT}" content="{checkpoint_id}">\n' if checkpoint_id else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n{stamp}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n<script>{CHECK_SCRIPT}</script>\n</head><body>\n"
            f'<div id="report-check" data-status="pending"></div>\n{body}\n'
            f"<p class=sub>written by vaelab report</p>\n</body></html>\n")


def _figure(path: Path, base: Path, captions: dict = FIGURE_CAPTIONS) -> str:
    rel = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<p class=note>{_e(rel)} could not be read ({_e(e.strerror or e)}); skipped.</p>"
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return f"<p class=note>{_e(rel)} is not a PNG image; skipped.</p>"
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption = captions.get(path.stem, "")
    if path.stem.startswith("metrics_vs_"):
        caption = f"test metrics against {path.stem[len('metrics_vs_'):]}"
    cap = f"<b>{_e(rel)}</b>" + (f": {_e(caption)}" if caption else "")
    return f'<figure><img src="{uri}" alt="{_e(rel)}"><figcaption>{cap}</figcaption></figure>'


def _kv_table(d: dict) -> str:
    return _table(["", ""], [[k, v] for k, v in d.items()], header=False)


def _table(cols: list[str], rows: list[list], header: bool = True, raw_cols: set[int] = frozenset()) -> str:
    head = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(
        f"<td>{v}</td>" if i in raw_cols else _td(v) if i or header else f"<th>{_e(v)}</th>"
        for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def _details(summary: str, content: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{content}</details>"


def _pre(text: str) -> str:
    return f"<pre>{_e(text)}</pre>"


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _slug(v) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(v))


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _fmt(v) -> str:
    """Numbers to 6 significant digits; lists and dicts as compact JSON; None as a dash."""
    if v is None or v == "":
        return "" if v == "" else "-"
    if isinstance(v, (bool, list, dict)):
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str) and _is_number(v) and not v.lstrip("-").isdigit():
        return f"{float(v):.6g}"
    return str(v)


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VaelabError(f"cannot read {path} as JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise VaelabError(f"{path} holds a JSON {type(d).__name__}, not the mapping vaelab writes; it is damaged")
    return d


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise VaelabError(f"cannot read {path} as CSV: {e}") from None


__all__ = ["figure_paths", "generate_figures", "report_kind", "write_report"]
