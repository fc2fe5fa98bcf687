"""Sweep results: results.csv and results.md (one row per trial) and the comparison figures."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaelab.errors import VaelabError
from vaelab.io import write_text
from vaelab.rundir import RunDir

if TYPE_CHECKING:
    from vaelab.sweep.runner import SweepSpec

METRICS = ("loss", "mse", "ssim", "psnr", "active_units")
COLUMNS_AFTER = ("status", *METRICS, "params", "train_seconds", "error")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v) or "[]"  # an empty list (no hidden layers) is a value
    return str(v)


def write_results(out: Path, spec: SweepSpec, rows: list[dict]) -> None:
    cols = ["trial", *spec.params, *COLUMNS_AFTER]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    write_text(out / "results.csv", buf.getvalue())

    md_cols = ["trial", *spec.params, "status", *METRICS, "params", "train_seconds"]
    lines = [f"# {spec.name}: {len(rows)} trials", "",
             "| " + " | ".join(_short(c) for c in md_cols) + " |",
             "|" + "|".join("---" if c in ("trial", "status") or c in spec.params else "---:" for c in md_cols) + "|"]
    for r in rows:
        cells = [_md_cell(r.get(c), c) for c in md_cols]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += ["", "Failed trials:", ""] + [f"- `{r['trial']}`: {r.get('error', '')}" for r in failed]
    write_text(out / "results.md", "\n".join(lines) + "\n")


def _short(col: str) -> str:
    """``model.latent_dim`` -> ``latent_dim``, unless that clashes with a column (``model.loss``)."""
    short = col.split(".", 1)[-1]
    return col if "." in col and short in ("trial", *COLUMNS_AFTER) else short


def _md_cell(v: Any, col: str) -> str:
    if v is None:
        return ""
    if col in ("loss", "psnr", "train_seconds") and isinstance(v, (int, float)):
        return f"{v:.2f}"
    if col in ("mse", "ssim") and isinstance(v, (int, float)):
        return f"{v:.4f}"
    if col == "params" and isinstance(v, int):
        return f"{v:,}"
    return _cell(v).replace("|", "/")


def read_results(out: str | Path) -> list[dict]:
    with open(Path(out) / "results.csv") as f:
        return list(csv.DictReader(f))


def write_figures(out: Path, spec: SweepSpec, rows: list[dict], log: Callable[[str], None] = print,
                  n_images: int = 100) -> list[Path]:
    """Metric figures and the side-by-side reconstructions of the same test images."""
    from vaelab import plots

    done = [r for r in rows if r.get("status") == "done"]
    paths: list[Path] = []
    if not done:
        return paths
    fig_dir = RunDir(out).figures
    if spec.grid:
        for key in spec.params:
            paths.append(plots.plot_metrics_vs(done, key, [k for k in spec.params if k != key], METRICS,
                                               fig_dir / f"metrics_vs_{key.split('.', 1)[1]}.png"))
    else:
        paths.append(plots.plot_metrics_by_trial(done, METRICS, fig_dir / "metrics_by_trial.png"))
    try:
        paths.append(_reconstruction_figure(out, spec, done, fig_dir / "reconstructions.png", n_images))
    except VaelabError as e:  # e.g. the data set moved since training: the table is still written
        log(f"note: no reconstruction figure: {e}")
    return paths


def _reconstruction_figure(out: Path, spec: SweepSpec, done: list[dict], path: Path, n: int) -> Path:
    from vaelab import plots
    from vaelab.api import Run

    blocks: list[tuple[str, Any]] = []
    originals = None
    by_id = {t.id: t for t in spec.trials}
    for r in done:
        run = Run.load(out / by_id[r["trial"]].dir, device="cpu")
        x = run.split().batch(slice(0, n))
        if originals is None:
            originals = x
            blocks.append(("original", x))
        elif x.shape != originals.shape or not bool((x == originals).all()):
            # Swept data settings (e.g. data.classes) give trials different test images.
            blocks.append((f"{r['trial']} (own test images)", run.reconstruct(x)))
            continue
        blocks.append((r["trial"], run.reconstruct(x)))
    return plots.plot_image_blocks(blocks, path, nrow=math.ceil(math.sqrt(len(originals))),
                                   title=f"the same {len(originals)} test images reconstructed by every trial")
