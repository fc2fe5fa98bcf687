"""The one-class anomaly benchmark (Deep SVDD / GEOM protocol) behind ``vaelab anomaly-bench``.

For each normal class c: train on class c of the training split only, score the whole
test split with a ``vaelab.anomaly`` score, and compute the AUROC with every other class
as the anomalies.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vaelab.evaluation import metrics
from vaelab.anomaly.scores import DEFAULT_EPOCHS, DEFAULT_OVERRIDES, DEFAULT_PRESET, DEFAULT_SCORE, check_score, score_images
from vaelab.errors import DataError, VaelabError

CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
}


def one_class_benchmark(data: str = "mnist", normal: list[int] | None = None, out: str | Path | None = None,
                        preset: str | None = None, epochs: int | None = None, score: str = DEFAULT_SCORE,
                        overrides: list[str] | tuple[str, ...] = (), data_dir: str | None = None,
                        data_path: str | None = None, limit: int | None = None, test_limit: int | None = None,
                        samples: int = 10, seed: int = 1, keep_runs: bool = False,
                        log: Callable[[str], None] = print, verbose: bool = False) -> dict:
    """The standard one-class protocol: for each normal class c, train on class c of the
    training split only, score the whole test split, and compute AUROC with every other
    class as the anomalies. Writes results.csv, results.md, results.json and roc.png to
    ``out`` when given. ``limit``/``test_limit`` cut the training images per class and the
    test images (quick checks only)."""
    from sklearn.metrics import roc_curve

    from vaelab.viz import plots
    from vaelab.config import DataConfig, build_config
    from vaelab.data import Splits, load_data
    from vaelab.training.loop import fit

    check_score(score)
    splits = load_data(DataConfig(name=data, data_dir=data_dir, path=data_path, val="none"))
    test = splits.test
    if test is None or test.y is None or splits.train.y is None:
        raise DataError(f"the one-class benchmark needs labelled train and test splits, and {data} has "
                        "no labelled test split (use mnist, fashion-mnist, or a folder with train/ and test/)")
    classes = sorted(set(splits.train.y.tolist()))
    normal = classes if normal is None else list(normal)
    bad = [c for c in normal if c not in classes]
    if bad:
        raise VaelabError(f"normal class(es) {bad} not in the training labels {classes}")
    names = CLASS_NAMES.get(data) or splits.classes or [str(c) for c in range(max(classes) + 1)]
    if test_limit is not None:
        test = test.subset(torch.arange(min(test_limit, len(test))))
    xt, yt = test.float(), test.y.numpy()
    base = [f"data.name={data}", "data.train_split=train", "data.val=none", f"train.seed={seed}"]
    base += [f"data.data_dir={data_dir}"] if data_dir else []
    base += [f"data.path={data_path}"] if data_path else []
    if epochs is not None or preset is None:  # a named preset keeps its own epochs unless told
        base.append(f"train.epochs={epochs if epochs is not None else DEFAULT_EPOCHS}")
    extra = list(DEFAULT_OVERRIDES) if preset is None else []
    rows, curves = [], {}
    quiet = log if verbose else (lambda s: None)
    for c in normal:
        config = build_config(preset or DEFAULT_PRESET,
                              overrides=base + [f"data.classes=[{c}]"] + extra + list(overrides))
        train = splits.train.subset((splits.train.y == c).nonzero().flatten())
        if limit is not None:
            train = train.subset(torch.arange(min(limit, len(train))))
        run_dir = Path(out) / "runs" / f"class-{c}" if keep_runs and out else None
        t0 = time.perf_counter()
        model = fit(config, run_dir, splits=Splits(train, None, None), log=quiet).model
        t1 = time.perf_counter()
        check_score(score, model)
        s = score_images(model, xt, score, samples, seed=0)
        anomalous = (yt != c).astype(np.int64)
        auc = metrics.auroc(s, anomalous)
        fpr, tpr, _ = roc_curve(anomalous, s)
        name = names[c] if c < len(names) else str(c)
        curves[f"{c} {name}" if name != str(c) else str(c)] = (fpr, tpr, auc)
        rows.append({"class": c, "name": name, "auroc": round(auc, 4), "n_train": len(train),
                     "n_test": len(yt), "train_seconds": round(t1 - t0, 1),
                     "score_seconds": round(time.perf_counter() - t1, 1)})
        log(f"normal class {c} ({name}): AUROC {auc:.4f}  ({len(train)} training images, "
            f"{t1 - t0:.0f}s training)")
    mean = float(np.mean([r["auroc"] for r in rows]))
    result = {"data": data, "score": score, "preset": preset or DEFAULT_PRESET,
              "overrides": extra + list(overrides), "epochs": config.train.epochs, "seed": seed,
              "limit": limit, "test_limit": test_limit, "mean_auroc": round(mean, 4), "per_class": rows,
              "seconds": round(sum(r["train_seconds"] + r["score_seconds"] for r in rows), 1)}
    if out is not None:
        _write_benchmark(Path(out), result, curves, plots)
    return result


def _write_benchmark(out: Path, result: dict, curves: dict, plots) -> None:
    from vaelab.io import write_json, write_text

    keys = ["class", "name", "auroc", "n_train", "n_test", "train_seconds", "score_seconds"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(result["per_class"])
    w.writerow({"class": "mean", "name": "", "auroc": result["mean_auroc"]})
    write_text(out / "results.csv", buf.getvalue())
    lines = [f"# One-class anomaly detection: {result['data']}", "",
             f"Model: preset `{result['preset']}`" + (f" with `{' '.join(result['overrides'])}`"
                                                       if result["overrides"] else "")
             + f", {result['epochs']} epochs, score `{result['score']}`, seed {result['seed']}. "
             "Trained on one class of the training split, scored on the whole test split; "
             "AUROC with the other classes as anomalies.", "",
             "| normal class | AUROC | training images | seconds |", "|---|---:|---:|---:|"]
    lines += [f"| {r['class']}{' ' + r['name'] if r['name'] != str(r['class']) else ''} | {r['auroc']:.4f} | "
              f"{r['n_train']} | {r['train_seconds'] + r['score_seconds']:.0f} |" for r in result["per_class"]]
    lines += [f"| **mean** | **{result['mean_auroc']:.4f}** | | {result['seconds']:.0f} |", ""]
    write_text(out / "results.md", "\n".join(lines))
    write_json(out / "results.json", result)
    plots.plot_roc_curves(curves, out / "roc.png",
                          title=f"{result['data']}: one-class ROC, mean AUROC {result['mean_auroc']:.3f}")
