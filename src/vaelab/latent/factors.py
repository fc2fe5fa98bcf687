"""Disentanglement of a trained run's codes against its data's ground-truth factors.

``score_disentanglement(run)`` encodes N images (posterior means), reads their factor
labels (``ImageSet.factors``, e.g. dSprites' shape, scale, orientation, position) and
reports MIG, DCI and the FactorVAE score (``vaelab.evaluation.disentanglement``), as
``vaelab disentanglement RUN`` writes them to ``RUN/disentanglement.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vaelab.errors import DataError, VaelabError
from vaelab.evaluation import disentanglement as scores
from vaelab.evaluation.metrics import active_units as metrics_active_units
from vaelab.io import write_json
from vaelab.models import require
from vaelab.rundir import ID_FIELD

METRICS = ("mig", "dci", "factorvae")
FILE = "disentanglement.json"


def score_disentanglement(run, n: int = 10_000, metrics: tuple[str, ...] = ("mig", "factorvae"), seed: int = 0,
                          split: str = "train", out: str | Path | None = None,
                          log: Callable[[str], None] = print) -> dict:
    """Scores of n random images of ``split`` (the literature scores dSprites' training
    images: it has no other). DCI fits gradient boosted trees: minutes on dSprites."""
    require(run.model, "continuous", "a disentanglement score")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise VaelabError(f"unknown disentanglement score(s) {unknown}; known: {', '.join(METRICS)}")
    data = run.split(split)
    if data.factors is None:
        raise DataError(f"disentanglement scores need ground-truth factors, and this run's data "
                        f"({run.config.data.name}) has none; use data with factor labels (--data dsprites)")
    if n < 2:
        raise VaelabError(f"the scores need at least 2 images, got n={n}")
    if n > len(data):
        log(f"note: the {split} split holds {len(data):,} images; scoring all of them, not {n:,}")
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x = data.batch(rows)
    codes = run.encode(x, None if data.y is None else data.y[rows]).double().numpy()
    factors = data.factors[rows].cpu().numpy()
    # How many values each factor has in the data: a factor the scored rows hold at one value
    # is refused, not left out. The source's own sizes where it states them (dSprites), so a
    # split cut down to some values of a factor is caught too (dSprites' color has one value by
    # design and is left out, as in the literature); else the values the split holds.
    names = list(data.factor_names) if data.factor_names else [str(k) for k in range(data.factors.shape[1])]
    sizes = list(data.factor_sizes) if data.factor_sizes is not None else [len(torch.unique(c)) for c in data.factors.T]
    known = {"n_values": sizes, "names": names}
    result: dict = {"n": len(rows), "split": split, "seed": seed,
                    "active_units": metrics_active_units(torch.from_numpy(codes))}  # of the scored codes
    t0 = time.perf_counter()
    if "mig" in metrics:
        m = scores.mig(codes, factors, **known)
        result["mig"] = m["mig"]
        # By factor name; a factor that never varies in the scored images has no gap (left out, said why).
        result["mig_per_factor"] = {k: float(g) for k, g in zip(names, m["gaps"]) if not np.isnan(g)}
        constant = [k for k, g in zip(names, m["gaps"]) if np.isnan(g)]
        if constant:
            result["not_applicable"] = {f"mig_per_factor.{k}": "the factor never varies in the scored images"
                                        for k in constant}
    if "dci" in metrics:
        d = scores.dci(codes, factors, seed=seed, **known)
        result.update({f"dci_{k}": float(v) for k, v in d.items() if np.ndim(v) == 0})
    if "factorvae" in metrics:
        f = scores.factor_vae_score(codes, factors, seed=seed, **known)
        result["factorvae"] = float(f["score"])
        result["factorvae_active_dims"] = int(f["num_active_dims"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"disentanglement of {len(rows):,} {split} images: " + ", ".join(
        f"{k} {v:.4f}" for k, v in result.items() if k in ("mig", "factorvae") or k.startswith("dci_")))
    if out is not None:
        write_json(Path(out) / FILE, {**result, ID_FIELD: run.checkpoint_id})
    return result


__all__ = ["FILE", "METRICS", "score_disentanglement"]
