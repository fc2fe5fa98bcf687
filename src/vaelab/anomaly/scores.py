"""Anomaly scores, input handling and the scoring of user files (``vaelab detect``).

Every score is per image and **higher means more anomalous** (``SCORES`` registry):
``mse`` and ``bce`` compare an image with its reconstruction, ``ssim`` and ``msssim`` are
1 - SSIM and 1 - MS-SSIM between them (MS-SSIM: images of 48x48 and larger); ``elbo`` (the negative ELBO) and ``iwnll`` (the importance-weighted
negative log-likelihood, nats) need a model with a density. The scikit-learn / PyOD
detector is ``vaelab.anomaly.estimator.AnomalyDetector``; the one-class benchmark
protocol is ``vaelab.anomaly.one_class``::

    from vaelab.anomaly.scores import score_images
    s = score_images(run.model, x, "mse")   # x (N, C, H, W) in [0, 1] -> (N,) float64
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vaelab.data.images import as_float_images
from vaelab.distributions import kl_per_dim
from vaelab.errors import DataError, VaelabError
from vaelab.evaluation import metrics
from vaelab.evaluation.evaluate import iw_log_likelihood
from vaelab.models import require
from vaelab.rundir import ID_FIELD, RunDir, refuse_run_file, sidecar

# The default model of the detector and of `vaelab anomaly-bench`: the mlp-vae preset
# (784-400-20, BCE + KL) for 30 epochs, scored by the MSE of its reconstruction through the
# posterior mean. On the hardest one-class MNIST / Fashion-MNIST classes it beat deep-ae,
# mlp-ae, conv AEs/VAEs (which reconstruct the anomalies too well), other latent sizes,
# widths, betas and Gaussian likelihoods, and the elbo / bce scores (which reward images
# with little ink); bench/README.md has the numbers. Small enough for ~10 s per class.
DEFAULT_PRESET = "mlp-vae"
DEFAULT_OVERRIDES: tuple[str, ...] = ()
DEFAULT_SCORE = "mse"
DEFAULT_EPOCHS = 30
VALUES_PER_PASS = 10 * 1000 * 28 * 28  # decoder output values per pass of score_images (memory bound)


# ------------------------------------------------------------------------------------ scores
def _mse(model, x, y, samples, gen):
    return metrics.mse(model.reconstruct(x, y), x)


def _bce(model, x, y, samples, gen):
    # In image space, so it means the same for sigmoid and tanh models; summed over pixels.
    r = model.reconstruct(x, y).float()
    return F.binary_cross_entropy(r, x, reduction="none").flatten(1).sum(1)


def _ssim(model, x, y, samples, gen):
    # 1 - SSIM: structure rather than ink; often better than mse on MNIST digits.
    return 1 - metrics.ssim(model.reconstruct(x, y), x)


def _msssim(model, x, y, samples, gen):
    # 1 - MS-SSIM: SSIM's contrast and structure at five scales, from 11-pixel windows up to the whole image.
    return 1 - metrics.ms_ssim(model.reconstruct(x, y), x)


def _neg_elbo(model, x, y, samples, gen):
    """-ELBO with beta = 1 (whatever the model was trained with), the reconstruction term
    averaged over ``samples`` draws, the KL in closed form where there is one."""
    q = model.posterior(x, y)
    z = q.rsample((samples,), generator=gen)  # (S, B, D)
    recon = model.recon_loss(model.decode_logits(z, y), x).mean(0)
    p = model.prior(y, len(x))
    per_dim = kl_per_dim(q, p)
    kl = per_dim.sum(-1) if per_dim is not None else (q.log_prob(z) - p.log_prob(z)).mean(0)
    return recon + kl


def _elbo(model, x, y, samples, gen):
    if model.conditional and y is None:
        # -log sum_y p(y) exp(ELBO(x, y)): a bound on -log p(x) for unlabelled images
        per_class = [model.class_log_prior[c] - _neg_elbo(model, x, torch.full((len(x),), c, device=x.device),
                                                           samples, gen) for c in range(model.cfg.num_classes)]
        return -torch.logsumexp(torch.stack(per_class), 0)
    return _neg_elbo(model, x, y, samples, gen)


def _iwnll(model, x, y, samples, gen):
    return model.nll_offset() - iw_log_likelihood(model, x, y, samples, gen)


@dataclass(frozen=True)
class Score:
    fn: Callable  # (model, x (B, C, H, W), y (B,) or None, samples, generator) -> (B,)
    needs: str | None  # model capability, vaelab.models.CAPABILITIES
    description: str
    min_side: int = 1  # the smallest image side (pixels) the score is defined for


# Registry: name -> Score. Higher = more anomalous.
SCORES: dict[str, Score] = {
    "mse": Score(_mse, None, "mean squared error of the reconstruction"),
    "bce": Score(_bce, None, "binary cross-entropy of the reconstruction, summed over pixels"),
    "ssim": Score(_ssim, None, "1 - SSIM of the reconstruction", min_side=11),
    "elbo": Score(_elbo, "density", "negative ELBO (beta 1)"),
    "iwnll": Score(_iwnll, "density", "importance-weighted negative log-likelihood, nats"),
    "msssim": Score(_msssim, None, "1 - MS-SSIM of the reconstruction", min_side=metrics.ms_ssim_min_size()),
}


def check_score(score: str, model=None, shape=None) -> None:
    """One line when ``score`` is unknown, needs what ``model`` lacks, or cannot measure
    images of ``shape`` (..., H, W)."""
    if score not in SCORES:
        raise VaelabError(f"unknown anomaly score {score!r}; known: {', '.join(SCORES)}")
    if model is not None and SCORES[score].needs is not None:
        require(model, SCORES[score].needs, f"anomaly score {score!r}")
    least = SCORES[score].min_side
    if shape is not None and min(shape[-2:]) < least:
        raise VaelabError(f"anomaly score {score!r} needs images of at least {least}x{least}, "
                          f"got {shape[-2]}x{shape[-1]}")


@torch.no_grad()
def score_images(model, x: torch.Tensor, score: str = DEFAULT_SCORE, samples: int = 10, seed: int = 0,
                 batch_size: int = 1000, y: torch.Tensor | None = None) -> np.ndarray:
    """Anomaly score per image (N,) float64 for images (N, C, H, W) in [0, 1]; higher = more anomalous.
    ``samples``: posterior draws for ``elbo`` and ``iwnll`` (K), seeded by ``seed``. ``y``: labels a
    conditional model reads; without them it marginalises over classes (elbo, iwnll) or uses the
    most probable class (reconstruction scores)."""
    check_score(score, model, x.shape)
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    fn = SCORES[score].fn
    density = SCORES[score].needs == "density"
    # Images per pass: at most VALUES_PER_PASS image values through the decoder (``samples`` draws
    # each for the density scores): 1,000 MNIST digits with 10 draws, as before; 63 64x64 colour
    # images with 10 draws (whose 64x64x32 decoder maps would be 5 GB for 1,000).
    batch_size = max(1, min(batch_size, VALUES_PER_PASS // ((samples if density else 1) * x[0].numel())))
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].float().to(device)
        yb = None if y is None or not model.conditional else y[i:i + batch_size].to(device)
        if model.conditional and yb is None and not density:
            yb = model.infer_labels(xb)
        out.append(fn(model, xb, yb, samples, gen).double().cpu())
    return torch.cat(out).numpy()


def threshold_at(scores: np.ndarray, contamination: float) -> float:
    """The (1 - contamination) quantile of ``scores`` (linear interpolation, as PyOD)."""
    check_contamination(contamination)
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - contamination))


def check_contamination(c: float) -> None:
    if not (isinstance(c, (int, float)) and 0 < c <= 0.5):
        raise VaelabError(f"contamination must be in (0, 0.5], got {c!r}")


# ------------------------------------------------------------------------------------ inputs
def as_images(X, where: str = "X", expected: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Images as float (N, C, H, W) in [0, 1] from an array or tensor of shape (N, H, W),
    (N, H, W, C) or (N, C, H, W): uint8 / integers 0..255, bool, or floats in [0, 1]
    (``vaelab.data.images.as_float_images``; ``expected``, the model's (C, H, W), settles the layout)."""
    return as_float_images(X, where, expected)


def check_shape(x: torch.Tensor, expected, where: str) -> None:
    if list(x.shape[1:]) != list(expected):
        raise DataError(f"{where}: the model expects images of shape (C, H, W) = {tuple(expected)}, "
                        f"found {tuple(x.shape[1:])}")


def load_input(path: str | Path, channels: int | None = None, folder_options: dict | None = None,
               skip_bad: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Images to score from an IDX images file (labels from the matching labels file if
    present), an image folder, or a .npz/.npy array. Returns {x uint8 (N, C, H, W),
    labels (N,) or None, paths or None}. A folder is decoded with ``folder_options``
    (image_size, crop, background: ``vaelab.data.cache.prepare_folder``'s), and ``skip_bad``
    leaves its unreadable files out (named through ``log``)."""
    from vaelab.data.cache import load_folder
    from vaelab.data.idx import read_idx
    from vaelab.data.images import read_array

    p = Path(path)
    if p.is_dir():
        x, y, classes, paths = load_folder(p, channels=channels, skip_bad=skip_bad, log=log, **(folder_options or {}))
        labels = [classes[i] for i in y] if y is not None else None
        return {"x": x, "labels": labels, "paths": paths}
    if not p.exists():
        raise DataError(f"input {p} does not exist")
    if p.suffix.lower() in (".npz", ".npy"):
        x, y, names = read_array(p)
        labels = None if y is None else [names[i] for i in y] if names else y.tolist()
        return {"x": x, "labels": labels, "paths": None}
    if p.suffix == ".gz" or "ubyte" in p.name or "idx" in p.name:
        x = read_idx(p)
        if x.ndim != 3:
            raise DataError(f"{p} should hold images (N, H, W) but has shape {x.shape}")
        labels = None
        lp = p.with_name(p.name.replace("images-idx3", "labels-idx1").replace("images", "labels"))
        if lp != p and lp.is_file():
            y = read_idx(lp)
            if y.shape != (len(x),):
                raise DataError(f"{lp} holds {y.shape} labels for the {len(x)} images in {p}")
            labels = y.astype(np.int64).tolist()
        return {"x": x[:, None], "labels": labels, "paths": None}
    raise DataError(f"cannot tell what --input {p} is: give an IDX images file (.gz or -ubyte), "
                    "an image folder, or a .npz/.npy array")


# ------------------------------------------------------------------------------------ detect (CLI)
def detect(run, input_path: str | Path, score: str = DEFAULT_SCORE, contamination: float = 0.05,
           out: str | Path = "scores.csv", samples: int = 10, seed: int = 0, top: int = 64, maps: bool = False,
           smooth: float | None = None, skip_bad: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Score the images in ``input_path`` with a trained run and write ``out`` (CSV: index or
    path, score, anomaly, label when known) with ``scores_hist.png`` and ``most_anomalous.png``
    beside it. The threshold is the (1 - contamination) quantile of the scores of the run's
    own training split, so ``contamination`` is the fraction of *training* images it flags.
    ``maps``: also ``anomaly_maps.npy`` and ``anomaly_maps.png`` (``vaelab.anomaly.maps``),
    smoothed by a Gaussian of ``smooth`` pixels if given. A folder's images are decoded as the
    run's training folder was (its crop and background), resized to the model's square input,
    so a score compares like with like; ``skip_bad`` leaves unreadable files out of the CSV,
    named through ``log``. Rewriting an earlier detect's ``out`` removes the files that detect
    wrote beside it and this one does not (its maps, without ``maps``), in one note through
    ``log`` (``earlier_companions``); an ``out`` whose files would replace a run's own training
    files (history.csv, summary.json, ...) is refused before any work."""
    from vaelab import plots
    from vaelab.io import write_text

    check_score(score, run.model)
    check_contamination(contamination)
    check_smoothing(maps, smooth)
    out = Path(out)
    # The figures (and maps) go beside ``out``: an ``out`` that is one of them would be replaced by it.
    beside = list(FIGURES) + (list(MAPS) if maps else [])
    clash = [name for name in beside if (out.parent / name).resolve() == out.resolve()]
    if clash:
        raise VaelabError(f"--out {out} is the {clash[0]} that detect writes beside the CSV, and the CSV would be "
                          f"replaced by it; give the CSV another name (e.g. {out.parent / 'scores.csv'})")
    _refuse_run_files(out, beside)  # never a run's own history.csv, summary.json, ... (before any work)
    leftovers = earlier_companions(out, maps)
    shape = run.config.model.input_shape
    d = run.config.data
    as_trained = {k: getattr(d, k) for k in ("crop", "background")} if d.name == "folder" else {}
    if shape[1] == shape[2]:  # a folder's images are resized to the model's (square) input
        as_trained["image_size"] = shape[1]
    data = load_input(input_path, channels=shape[0], folder_options=as_trained, skip_bad=skip_bad, log=log)
    x = as_images(data["x"], str(input_path))
    check_shape(x, shape, f"--input {input_path}")
    check_score(score, run.model, x.shape)
    y = _model_labels(run, data["labels"])
    scores = score_images(run.model, x, score, samples, seed, y=y)
    train = run.split("train")
    threshold = threshold_at(score_images(run.model, train.float(), score, samples, seed, y=train.y), contamination)
    flags = (scores > threshold).astype(np.int64)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    key = "path" if data["paths"] else "index"
    w.writerow([key, "score", "anomaly"] + (["label"] if data["labels"] is not None else []))
    for i in range(len(scores)):
        w.writerow([data["paths"][i] if data["paths"] else i, f"{scores[i]:.6g}", int(flags[i])]
                   + ([data["labels"][i]] if data["labels"] is not None else []))
    if leftovers:  # files of an earlier detect at ``out`` that this one does not write again
        for f in leftovers:
            f.unlink(missing_ok=True)
        no_maps = not maps and any(f.name in MAPS[:2] for f in leftovers)
        (log or print)(f"note: removed {', '.join(str(f) for f in leftovers)}, left beside {out} by the earlier detect "
                       f"that this one replaces{' (this one writes no maps; add --maps for new ones)' if no_maps else ''}")
    write_text(out, buf.getvalue())
    plots.plot_score_histogram(scores, threshold, out.parent / "scores_hist.png",
                               title=f"{score} scores of {len(scores)} images",
                               xlabel=f"{score} (higher = more anomalous)")
    order = np.argsort(-scores, kind="stable")[:top]
    plots.plot_grid(x[torch.from_numpy(order)], out.parent / "most_anomalous.png",
                    title=f"the {len(order)} most anomalous images ({score}), most anomalous first")
    result = {"n": len(scores), "threshold": threshold, "anomalies": int(flags.sum()), "score": score,
              "contamination": contamination, "out": str(out)}
    if maps:
        from vaelab.anomaly.maps import write_maps

        result["maps"] = write_maps(run.model, x, y, scores, out.parent, smooth, score=score)
    if RunDir.owning(out) is not None:  # files inside a run record its weights (vaelab.rundir)
        from vaelab.io import write_json

        for f in [out] + ([Path(result["maps"]["npy"])] if maps else []):
            write_json(sidecar(f), {"file": f.name, ID_FIELD: run.checkpoint_id})
    return result


FIGURES = ("scores_hist.png", "most_anomalous.png")  # detect's figures, beside its CSV
MAPS = ("anomaly_maps.npy", "anomaly_maps.png", "anomaly_maps.npy.json")  # detect --maps: the maps, figure, record


def _refuse_run_files(out: Path, beside: list[str]) -> None:
    """One line when a file detect would write is, or its record would be, a run's own training
    file (``refuse_run_file``): the CSV and the files beside it."""
    refuse_run_file(out, "--out")
    for name in beside:
        refuse_run_file(out.parent / name, "--out")


def _is_detect_csv(path: Path) -> bool:
    """Whether ``path`` holds a CSV that detect wrote (its header: index or path, score, anomaly)."""
    try:
        with open(path, newline="") as f:
            head = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return head.split(",")[1:3] == ["score", "anomaly"] and head.split(",")[0] in ("index", "path")


def _is_record_of(record: Path, out: Path) -> bool:
    """Whether ``record`` is the record detect wrote for the CSV ``out`` ({"file": its name, checkpoint id})."""
    try:
        d = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and set(d) == {"file", ID_FIELD} and d["file"] == out.name


def earlier_companions(out: str | Path, maps: bool) -> list[Path]:
    """The files an earlier detect wrote beside the CSV ``out`` that a detect with ``maps`` does not
    write again: its maps (anomaly_maps.npy, .png and the .npy's record) when ``maps`` is off, and
    the CSV's record (``sidecar``) when ``out`` no longer lies in a run. Only when ``out`` holds an
    earlier detect's CSV, and only files of the names detect gives them; never ``out`` itself."""
    out = Path(out)
    if not out.is_file() or not _is_detect_csv(out):
        return []
    found = [] if maps else [out.parent / n for n in MAPS]
    if RunDir.owning(out) is None:  # no records are written outside a run: an earlier one's would be stale
        for f in (out, out.parent / MAPS[0]) if maps else (out,):
            if _is_record_of(sidecar(f), f):
                found.append(sidecar(f))
    target = out.resolve()
    return [f for f in found if f.is_file() and not f.is_symlink() and f.resolve() != target]


def check_smoothing(maps: bool, smooth: float | None) -> None:
    if smooth is None:
        return
    if not maps:
        raise VaelabError("--smooth smooths the anomaly maps; add --maps")
    if not (isinstance(smooth, (int, float)) and np.isfinite(smooth) and smooth > 0):
        raise VaelabError(f"--smooth must be a positive number of pixels (the Gaussian's sigma), got {smooth!r}")


def _model_labels(run, labels) -> torch.Tensor | None:
    """The input's labels as the classes a conditional model reads: integer labels (IDX, .npz)
    as they are, folder class names by the run's class names; None when they cannot be read
    (the scores then marginalise over classes, or use the most probable one)."""
    if labels is None or not run.model.conditional:
        return None
    names = run.splits().classes or []
    try:
        idx = [names.index(v) if isinstance(v, str) and v in names else int(v) for v in labels]
    except (TypeError, ValueError):
        return None
    return torch.tensor(idx, dtype=torch.long)


__all__ = ["SCORES", "as_images", "detect", "load_input", "score_images", "threshold_at"]
