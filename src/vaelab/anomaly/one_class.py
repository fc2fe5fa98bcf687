"""The one-class anomaly benchmark behind ``vaelab anomaly-bench``.

For each normal class c: train on images of class c only, score a test set holding normal
images and every other class (the anomalies) with a ``vaelab.anomaly`` score, and compute the
AUROC. Two protocols, chosen by the data:

- a labelled test split (MNIST, Fashion-MNIST, a folder with train/ and test/): the Deep SVDD /
  GEOM protocol; train on class c of the training split, score the whole test split;
- one labelled set (an image folder with one sub-folder per class, a labelled .npz): a seeded
  ``holdout`` fraction of class c is kept out of training; the test set is those held-out
  normal images and every image of the other classes.

Classes are label numbers or, for folders, class names (``normal=["smileys-emotion"]``).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.anomaly.scores import (
    DEFAULT_EPOCHS,
    DEFAULT_OVERRIDES,
    DEFAULT_PRESET,
    DEFAULT_SCORE,
    SCORES,
    check_score,
    score_images,
)
from vaelab.errors import DataError, VaelabError
from vaelab.evaluation import metrics

CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
}


@dataclass(frozen=True)
class Recipe:
    """A default model for the benchmark: preset, extra overrides, training epochs, score."""

    preset: str
    score: str
    epochs: int | None  # None: the preset's own
    overrides: tuple[str, ...] = ()


GREY_RECIPE = Recipe(DEFAULT_PRESET, DEFAULT_SCORE, DEFAULT_EPOCHS, DEFAULT_OVERRIDES)
# Registry: data source -> its default recipe (GREY_RECIPE for the others). Image folders, colour
# images as they come: chosen by the emoji table in bench/README.md (faces normal, every other
# category anomalous): the dense fc-ae-rgb64 for 100 epochs scored by 1 - SSIM, AUROC 0.904 +-
# 0.019 over six held-out splits (1 - MS-SSIM 0.899 +- 0.037; the conv AE, celeba-vae and its
# MS-SSIM-trained twin 0.73-0.87 with their best scores; the mse score 0.07-0.09 lower).
DEFAULT_RECIPES: dict[str, Recipe] = {
    "folder": Recipe("fc-ae-rgb64", "ssim", 100),
}


def default_recipe(data: str) -> Recipe:
    return DEFAULT_RECIPES.get(data, GREY_RECIPE)


def one_class_split(images, c: int, holdout: float, seed: int, test=None):
    """(training images of class c, test images, anomalous (N_test,) 0/1) for normal class ``c``.

    With a labelled ``test`` set: all of class c of ``images``, and the whole of ``test``.
    Without: a ``holdout`` fraction of class c (at least one image, a permutation seeded by
    ``seed``) goes to the test set with every image of the other classes, in their order."""
    y = images.y
    normal = (y == c).nonzero().flatten()
    if test is not None:
        return images.subset(normal), test, (test.y != c).numpy().astype(np.int64)
    perm = normal[torch.randperm(len(normal), generator=torch.Generator().manual_seed(seed))]
    n_out = max(1, round(holdout * len(normal)))
    if n_out >= len(normal):
        raise DataError(f"class {c} has {len(normal)} images: too few to hold {holdout:g} of them out and "
                        "train on the rest")
    keep = torch.zeros(len(y), dtype=torch.bool)
    keep[perm[:n_out]] = True
    keep |= y != c
    test_index = keep.nonzero().flatten()
    return (images.subset(perm[n_out:].sort().values), images.subset(test_index),
            (y[test_index] != c).numpy().astype(np.int64))


def _resolve(normal: list, names: list[str] | None, labels: list[int], where: str) -> list[int]:
    """Normal classes given as class names (folders) or label numbers -> labels."""
    out = []
    for c in normal:
        text = str(c)
        if names is not None and text in names:
            out.append(names.index(text))
        elif text.lstrip("-").isdigit():
            out.append(int(text))
        else:
            raise VaelabError(f"unknown normal class {text!r}; {where} has: {', '.join(names or map(str, labels))}")
    return out


HOLDOUT = 0.2  # without a test split: the fraction of the normal class held out and scored
SAMPLES = 10  # posterior draws K of the elbo and iwnll scores


def one_class_benchmark(data: str = "mnist", normal: list[int | str] | None = None, out: str | Path | None = None,
                        preset: str | None = None, epochs: int | None = None, score: str | None = None,
                        overrides: list[str] | tuple[str, ...] = (), data_dir: str | None = None,
                        data_path: str | None = None, limit: int | None = None, test_limit: int | None = None,
                        samples: int | None = None, seed: int = 1, keep_runs: bool = False,
                        holdout: float | None = None,
                        log: Callable[[str], None] = print, verbose: bool = False) -> dict:
    """The one-class protocol (see the module docstring) for each ``normal`` class (all by
    default). Without ``preset`` the data source's default recipe (``default_recipe``) is used.
    Writes results.csv, results.md, results.json and roc.png to ``out`` when given.
    ``limit``/``test_limit`` keep a random ``limit`` of the training images per class and
    ``test_limit`` of the test images, seeded by ``seed`` (quick checks only)."""
    from sklearn.metrics import roc_curve

    from vaelab import plots
    from vaelab.configure import build_config
    from vaelab.data import Splits, load_data
    from vaelab.rundir import RunDir
    from vaelab.training.loop import fit

    recipe = default_recipe(data)
    score = score or recipe.score
    check_score(score)
    if holdout is not None and not 0 < holdout < 1:
        raise VaelabError(f"the held-out fraction of the normal class must be in (0, 1), got {holdout}")
    if samples is not None and SCORES[score].needs is None:
        raise VaelabError(f"samples (--samples) are posterior draws of the elbo and iwnll scores; score {score} "
                          "draws none: leave it out")
    base = [f"data.name={data}", "data.train_split=train", "data.val=none", "data.classes=null", f"train.seed={seed}"]
    base += [f"data.data_dir={data_dir}"] if data_dir else []
    base += [f"data.path={data_path}"] if data_path else []
    if epochs is not None or (preset is None and recipe.epochs is not None):  # a named preset keeps its epochs
        base.append(f"train.epochs={epochs if epochs is not None else recipe.epochs}")
    extra = list(recipe.overrides) if preset is None else []
    config = build_config(preset or recipe.preset, overrides=base + extra + list(overrides))
    splits = load_data(config.data, seed=config.train.seed)
    images, test = splits.train, splits.test
    if images.y is None or (test is not None and test.y is None):
        raise DataError(f"the one-class benchmark needs labelled images, and {data_path or data} has none "
                        "(give an image folder with one sub-folder per class, or labels y in the .npz)")
    check_score(score, shape=images.shape)
    labels = sorted(set(images.y.tolist()))
    names = CLASS_NAMES.get(data) or splits.classes or [str(c) for c in range(max(labels) + 1)]
    wanted = labels if normal is None else _resolve(normal, splits.classes, labels, data_path or data)
    wanted = list(dict.fromkeys(wanted))  # a class named twice (1,1 or 1,digit-one) is run and averaged once
    bad = [c for c in wanted if c not in labels]
    if bad:
        raise VaelabError(f"normal class(es) {bad} not in the training labels {labels}")
    if test is not None and holdout is not None:
        raise VaelabError(f"holdout (--holdout) applies to data without a test split, and {data_path or data} has "
                          "one (the whole test split is scored): leave it out")
    holdout = HOLDOUT if holdout is None else holdout
    samples = SAMPLES if samples is None else samples
    if test is not None and test_limit is not None:
        test = test.subset(_random_rows(len(test), test_limit, seed))
    protocol = ("trained on one class of the training split, scored on the whole test split" if test is not None
                else f"trained on {1 - holdout:.0%} of one class, scored on the other {holdout:.0%} of it "
                     f"(held out, seed {seed}) and every image of the other classes")
    rows, curves = [], {}
    quiet = log if verbose else (lambda s: None)
    for c in wanted:
        train, test_c, anomalous = one_class_split(images, c, holdout, seed, test)
        if test is None and test_limit is not None:
            keep = _random_rows(len(test_c), test_limit, seed)
            test_c, anomalous = test_c.subset(keep), anomalous[keep.numpy()]
        if limit is not None:
            train = train.subset(_random_rows(len(train), limit, seed))
        config_c = build_config(preset or recipe.preset, overrides=base + [f"data.classes=[{c}]"] + extra
                                + list(overrides))
        run_dir = Path(out) / "runs" / f"class-{c}" if keep_runs and out else None
        if run_dir is not None:  # a re-run's kept run replaces the last one's, as its results do
            RunDir(run_dir).prepare_fresh(overwrite=True)
        t0 = time.perf_counter()
        model = fit(config_c, run_dir, splits=Splits(train, None, None, classes=splits.classes), log=quiet).model
        t1 = time.perf_counter()
        check_score(score, model)
        s = score_images(model, test_c.float(), score, samples, seed=0)
        auc = metrics.auroc(s, anomalous)
        fpr, tpr, _ = roc_curve(anomalous, s)
        name = names[c] if c < len(names) else str(c)
        curves[f"{c} {name}" if name != str(c) else str(c)] = (fpr, tpr, auc)
        rows.append({"class": c, "name": name, "auroc": round(auc, 4), "n_train": len(train),
                     "n_test": len(anomalous), "n_test_normal": int((anomalous == 0).sum()),
                     "train_seconds": round(t1 - t0, 1), "score_seconds": round(time.perf_counter() - t1, 1)})
        log(f"normal class {c} ({name}): AUROC {auc:.4f}  ({len(train)} training images, "
            f"{rows[-1]['n_test_normal']} normal and {len(anomalous) - rows[-1]['n_test_normal']} anomalous test "
            f"images, {t1 - t0:.0f}s training)")
    mean = float(np.mean([r["auroc"] for r in rows]))
    result = {"data": data_path or data, "score": score, "preset": preset or recipe.preset,
              "overrides": extra + list(overrides), "epochs": config_c.train.epochs, "seed": seed,
              "protocol": protocol, "holdout": None if test is not None else holdout, "limit": limit,
              "test_limit": test_limit, "mean_auroc": round(mean, 4), "per_class": rows,
              "seconds": round(sum(r["train_seconds"] + r["score_seconds"] for r in rows), 1)}
    result = {k: v for k, v in result.items() if v is not None}  # a setting that does not apply is left out
    if out is not None:
        _write_benchmark(Path(out), result, curves, plots)
    return result


def _random_rows(n: int, limit: int, seed: int) -> torch.Tensor:
    """A seeded random ``limit`` of ``n`` rows, in order (all when ``limit`` >= n): a test
    split or a folder sorted by class would otherwise give its first classes only, as data.limit."""
    if limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def _write_benchmark(out: Path, result: dict, curves: dict, plots) -> None:
    from vaelab.io import write_json, write_text

    keys = ["class", "name", "auroc", "n_train", "n_test", "n_test_normal", "train_seconds", "score_seconds"]
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
             f"{result['protocol'][0].upper() + result['protocol'][1:]}; AUROC with the other classes as anomalies.", "",
             "| normal class | AUROC | training images | test images (normal) | seconds |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['class']}{' ' + r['name'] if r['name'] != str(r['class']) else ''} | {r['auroc']:.4f} | "
              f"{r['n_train']} | {r['n_test']} ({r['n_test_normal']}) | {r['train_seconds'] + r['score_seconds']:.0f} |"
              for r in result["per_class"]]
    lines += [f"| **mean** | **{result['mean_auroc']:.4f}** | | | {result['seconds']:.0f} |", ""]
    write_text(out / "results.md", "\n".join(lines))
    write_json(out / "results.json", result)
    plots.plot_roc_curves(curves, out / "roc.png",
                          title=f"{Path(str(result['data'])).name}: one-class ROC, mean AUROC {result['mean_auroc']:.3f}")


__all__ = ["DEFAULT_RECIPES", "GREY_RECIPE", "Recipe", "default_recipe", "one_class_benchmark", "one_class_split"]
