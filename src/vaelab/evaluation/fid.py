"""FID, KID and precision/recall of generated images on Inception or judge features.

The numbers papers print (FID on Inception-v3 pool features, KID) come from a maintained
library, not from code written here:

- **torchmetrics** (``vaelab[fid]``) computes FID and KID. It was chosen over
  torch-fidelity as the metric library because its ``FrechetInceptionDistance`` and
  ``KernelInceptionDistance`` take any ``nn.Module`` as ``feature=`` (so the judge plugs
  in too) and it installs with nothing but pure-Python packages beside a CPU torch, while
  torch-fidelity requires torchvision and cannot even be imported without it (its package
  ``__init__`` imports its CLIP, VGG and DINOv2 extractors). Features are computed once per
  image set and handed to both metrics through a pass-through module.
- **torch-fidelity**'s ``FeatureExtractorInceptionV3`` is the Inception network (the
  TensorFlow FID graph ported to PyTorch, the one torchmetrics itself uses for
  ``feature=2048``). It is needed only for ``features="inception"`` and needs a torchvision
  matching the installed torch.
- Precision and recall (Kynkaenniemi et al. 2019, k = 3 neighbours, torch-fidelity's
  default) are written here: torchmetrics has none, and torch-fidelity's needs torchvision.
  They are a few lines of chunked distance computations.

Inception weights: torch-fidelity's file, fetched on first use by ``torch.hub`` (the
mechanism torch-fidelity uses) into torch.hub's cache, its SHA-256 checked; a local copy can
be given instead. A checked file is loaded with torch's weights-only loader (it is a
PyTorch ``.pth`` file; nothing else is unpickled).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vaelab.errors import CheckpointError, VaelabError
from vaelab.io import file_sha256

FEATURES = ("inception", "judge")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_DIM = 2048
PR_NEIGHBOURS = 3
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def min_samples(dim: int) -> int:
    """Fewest images per set for FID on ``dim``-dimensional features: the sample covariance
    has full rank only from dim + 1 images; below that FID is ill-posed (any two small sets
    look alike along the missing directions) rather than just noisy."""
    return dim + 1


def check_sizes(dim: int, n_samples: int, n_reference: int | None = None) -> None:
    """Refuse sets too small for FID on ``dim`` features (``n_reference`` None: not known yet)."""
    need = min_samples(dim)
    if n_samples < need or (n_reference is not None and n_reference < need):
        got = f"{n_samples} samples" + ("" if n_reference is None else f" and {n_reference} reference images")
        raise VaelabError(f"FID on {dim}-dimensional features needs at least {need} samples and {need} reference "
                          f"images (a full-rank covariance); got {got} (raise --n, or use a larger --reference "
                          f"split)")


# ----------------------------------------------------------------------------- weights
def inception_cache() -> Path:
    """Where torch.hub keeps downloaded weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _check(path: Path) -> Path:
    got = file_sha256(path)
    if got != INCEPTION_SHA256:
        raise CheckpointError(f"{path} is not the Inception weights file {INCEPTION_FILE}: its sha256 is {got}, "
                              f"expected {INCEPTION_SHA256}; download it again from {INCEPTION_URL}")
    return path


def inception_weights(path: str | Path | None = None, progress: bool = False) -> Path:
    """A checked local copy of the Inception weights: ``path`` if given, else the one in
    torch.hub's cache, downloaded there first if missing (``torch.hub.download_url_to_file``,
    which refuses a download whose sha256 differs)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise CheckpointError(f"--inception-weights {p}: no such file; it should be {INCEPTION_FILE} "
                                  f"(sha256 {INCEPTION_SHA256}) from {INCEPTION_URL}")
        return _check(p)
    target = inception_cache() / INCEPTION_FILE
    if target.is_file():
        return _check(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(target), hash_prefix=INCEPTION_SHA256, progress=progress)
    except RuntimeError as e:  # torch.hub's own hash check
        raise CheckpointError(f"the download of {INCEPTION_FILE} was refused: {e}; download it from "
                              f"{INCEPTION_URL} into {target.parent}") from None
    except OSError as e:  # no network (URLError is an OSError), or the cache is not writable
        reason = getattr(e, "reason", None) or e.strerror or e
        raise VaelabError(f"the Inception weights could not be downloaded ({reason}): put {INCEPTION_FILE} "
                          f"(sha256 {INCEPTION_SHA256}, from {INCEPTION_URL}) in {target.parent}, "
                          f"or pass --inception-weights PATH") from None
    return target


# ----------------------------------------------------------------------------- feature extractors
class InceptionFeatures(nn.Module):
    """Images in [0, 1] (N, C, H, W) -> Inception-v3 pool features (N, 2048).

    Grey images are repeated to three channels and quantised to uint8, the input the
    extractor takes; it resizes to 299x299 itself (torch-fidelity's TensorFlow-compatible
    bilinear resize, as in the original FID code)."""

    dim = INCEPTION_DIM

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise VaelabError(f"Inception features need grey or RGB images, and these have {x.shape[1]} channels; "
                              f"use --features judge")
        out = self.extractor((x * 255).round().clamp(0, 255).to(torch.uint8))
        return out[0] if isinstance(out, (tuple, list)) else out


@contextlib.contextmanager
def _weights_only_load():
    """torch-fidelity reads a local weights file with ``torch.load(weights_only=False)``;
    this makes torch use its restricted weights-only unpickler all the same."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def inception_extractor(weights: str | Path | None = None, progress: bool = False) -> InceptionFeatures:
    """torch-fidelity's Inception-v3 on checked weights (see ``inception_weights``)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import (
            FeatureExtractorInceptionV3,
        )
    except ImportError as e:
        raise VaelabError(f"--features inception needs torch-fidelity and a torchvision built for this torch "
                          f"({e}): pip install torch-fidelity torchvision, or use --features judge") from None
    path = inception_weights(weights, progress=progress)
    with _weights_only_load():
        net = FeatureExtractorInceptionV3("inception-v3-compat", [str(INCEPTION_DIM)],
                                          feature_extractor_weights_path=str(path))
    return InceptionFeatures(net.eval())


class JudgeFeatures(nn.Module):
    """The judge's penultimate-layer features (the ones FCD uses)."""

    def __init__(self, judge):
        super().__init__()
        self.net = judge.net
        self.dim = judge.net.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


# ----------------------------------------------------------------------------- metrics
@torch.no_grad()
def features_of(extractor: nn.Module, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """Features (N, D) in float64 of images (N, C, H, W) in [0, 1] (uint8 images are scaled)."""
    extractor.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        out.append(extractor(x).flatten(1).double())
    return torch.cat(out)


class _Given(nn.Module):
    """Hands precomputed features to torchmetrics (its ``feature=`` module)."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


def _torchmetrics():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as e:
        raise VaelabError(f"FID and KID need torchmetrics ({e}): pip install 'vaelab[fid]'") from None
    return FrechetInceptionDistance, KernelInceptionDistance


def fid_kid(fake: torch.Tensor, real: torch.Tensor, subsets: int = KID_SUBSETS,
            subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> dict:
    """FID and KID (polynomial kernel (x.y / d + 1)^3, unbiased MMD^2 over random subsets)
    between two feature sets (N, D), by torchmetrics."""
    Fid, Kid = _torchmetrics()
    dim = fake.shape[1]
    size = min(subset_size, len(fake), len(real))
    fid = Fid(feature=_Given(dim))
    with warnings.catch_warnings():  # "will save all extracted features": they are in memory already
        warnings.filterwarnings("ignore", message=".*save all extracted features")
        kid = Kid(feature=_Given(dim), subsets=subsets, subset_size=size)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subsets": subsets, "kid_subset_size": size}


def _kth_distance(a: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``a`` to its k-th nearest other row."""
    out = []
    for i in range(0, len(a), chunk):
        d = torch.cdist(a[i:i + chunk], a)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the k+1-th smallest: the row itself is at 0
    return torch.cat(out)


def _covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Share of queries inside at least one ball (centre, radius)."""
    hits = []
    for i in range(0, len(queries), chunk):
        hits.append((torch.cdist(queries[i:i + chunk], centres) <= radii[None]).any(1))
    return torch.cat(hits).double().mean()


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = PR_NEIGHBOURS, chunk: int = 1000) -> dict:
    """Improved precision and recall (Kynkaenniemi et al. 2019): precision is the share of
    fake features inside the k-NN ball of some real feature, recall the share of real
    features inside the k-NN ball of some fake feature."""
    if min(len(fake), len(real)) <= k:
        raise VaelabError(f"precision and recall with k = {k} neighbours need more than {k} images per set")
    r_real, r_fake = _kth_distance(real, k, chunk), _kth_distance(fake, k, chunk)
    return {"precision": float(_covered(fake, real, r_real, chunk)),
            "recall": float(_covered(real, fake, r_fake, chunk)), "pr_neighbours": k}


def feature_scores(extractor: nn.Module, samples: torch.Tensor, reference: torch.Tensor, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> dict:
    """FID, KID and precision/recall of ``samples`` against ``reference`` on ``extractor``'s
    features (its ``dim``, when it has one, is checked against the set sizes before any work)."""
    if getattr(extractor, "dim", None):
        check_sizes(extractor.dim, len(samples), len(reference))
    if log:
        log(f"features of {len(samples):,} samples and {len(reference):,} reference images")
    fake, real = features_of(extractor, samples), features_of(extractor, reference)
    check_sizes(fake.shape[1], len(fake), len(real))
    return {"dim": fake.shape[1], **fid_kid(fake, real, seed=seed), **precision_recall(fake, real)}


__all__ = ["FEATURES", "INCEPTION_FILE", "INCEPTION_SHA256", "INCEPTION_URL", "InceptionFeatures", "JudgeFeatures",
           "check_sizes", "feature_scores", "fid_kid", "inception_extractor", "inception_weights", "min_samples",
           "precision_recall"]
