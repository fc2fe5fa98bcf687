"""Inpainting: fill hidden pixels of images with a trained autoencoder or VAE.

Masks are bool tensors (N, 1, H, W), True = hidden, built from a short text spec by
``parse_mask`` (``center:10``, ``random:8``, ``top``, ``file:mask.png``, ...). Methods
live in the ``METHODS`` registry; each takes the model, images (B, C, H, W) in [0, 1]
and a mask, and returns the filled images, with every known pixel kept exactly::

    from vaelab.latent.inpaint import inpaint, parse_mask
    mask = parse_mask("center:10", x.shape[1:])(len(x), seed=0)   # (N, 1, H, W) bool
    filled = inpaint(run, x, mask, method="latent-opt")
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.errors import DataError, VaelabError
from vaelab.evaluation import metrics
from vaelab.models import frozen, require

MASK_HELP = "center:K, center:HxW, random:K, top, bottom, left, right or file:PATH.png"


# ------------------------------------------------------------------------------------ masks
@dataclass
class MaskBuilder:
    """Builds masks for a batch: ``builder(n, seed)`` -> bool (n, 1, H, W), True = hidden."""

    spec: str
    size: tuple[int, int]  # (H, W)
    fn: Callable[[int, torch.Generator], torch.Tensor]

    def __call__(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.fn(n, torch.Generator().manual_seed(seed))


def _patch_size(arg: str | None, spec: str, size: tuple[int, int]) -> tuple[int, int]:
    try:
        parts = [int(v) for v in (arg or "").lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise VaelabError(f"mask {spec!r}: the patch size must be a positive integer K or HxW, e.g. center:10")
    ph, pw = parts if len(parts) == 2 else parts * 2
    if ph > size[0] or pw > size[1]:
        raise VaelabError(f"mask {spec!r} ({ph}x{pw}) is larger than the {size[0]}x{size[1]} images")
    return ph, pw


def _boxes(top: torch.Tensor, left: torch.Tensor, ph: int, pw: int, size: tuple[int, int]) -> torch.Tensor:
    """One rectangle per image from corners top, left (n,) -> (n, 1, H, W) bool, no Python loop."""
    rows, cols = torch.arange(size[0]), torch.arange(size[1])
    r = (rows >= top[:, None]) & (rows < top[:, None] + ph)  # (n, H)
    c = (cols >= left[:, None]) & (cols < left[:, None] + pw)  # (n, W)
    return (r[:, :, None] & c[:, None, :])[:, None]


def _center(arg, spec, size) -> Callable:
    ph, pw = _patch_size(arg, spec, size)
    # Centred with the corner at margin // 2 + 1 (never past the edge), where margin = size
    # - patch: with an odd margin that is the centre rounded down/right; with an even one
    # it is one pixel down/right of exact centring, the classic MNIST convention:
    # center:10 on 28x28 covers rows and columns 10..19.
    top, left = min((size[0] - ph) // 2 + 1, size[0] - ph), min((size[1] - pw) // 2 + 1, size[1] - pw)
    return lambda n, gen: _boxes(torch.full((n,), top), torch.full((n,), left), ph, pw, size)


def _random(arg, spec, size) -> Callable:
    ph, pw = _patch_size(arg, spec, size)

    def build(n: int, gen: torch.Generator) -> torch.Tensor:
        top = torch.randint(0, size[0] - ph + 1, (n,), generator=gen)
        left = torch.randint(0, size[1] - pw + 1, (n,), generator=gen)
        return _boxes(top, left, ph, pw, size)
    return build


def _half(side: str) -> Callable:
    def make(arg, spec, size) -> Callable:
        if arg:
            raise VaelabError(f"mask {spec!r}: '{side}' takes no size; use {MASK_HELP}")
        h, w = size
        m = torch.zeros(1, 1, h, w, dtype=torch.bool)
        {"top": m[..., : h // 2, :], "bottom": m[..., h - h // 2:, :],
         "left": m[..., :, : w // 2], "right": m[..., :, w - w // 2:]}[side].fill_(True)
        return lambda n, gen: m.expand(n, -1, -1, -1).clone()
    return make


def _file(arg, spec, size) -> Callable:
    from PIL import Image, UnidentifiedImageError

    if not arg:
        raise VaelabError(f"mask {spec!r}: give the mask image, e.g. file:mask.png (white = hidden)")
    try:
        with Image.open(arg) as im:
            a = np.asarray(im.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"mask image {arg} does not exist") from None
    except UnidentifiedImageError:
        raise DataError(f"mask image {arg} is not an image Pillow can read (PNG, JPEG, BMP, ...)") from None
    except (OSError, ValueError) as e:  # truncated, a folder, ...: the reason in its own words
        raise DataError(f"cannot read mask image {arg}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if a.shape != tuple(size):
        raise DataError(f"mask image {arg} is {a.shape[1]}x{a.shape[0]} but the images are {size[1]}x{size[0]}")
    m = torch.from_numpy(a > 127)[None, None]  # (1, 1, H, W); white (> 50% grey) = hidden
    return lambda n, gen: m.expand(n, -1, -1, -1).clone()


# Registry: a mask kind is one function (argument, spec, (H, W)) -> fn(n, generator).
MASKS: dict[str, Callable] = {"center": _center, "random": _random, "top": _half("top"),
                              "bottom": _half("bottom"), "left": _half("left"), "right": _half("right"),
                              "file": _file}


def parse_mask(spec: str, shape) -> MaskBuilder:
    """A mask builder for images of ``shape`` ((C, H, W) or (H, W)) from a spec such as ``center:10``."""
    size = (int(shape[-2]), int(shape[-1]))
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower().replace("centre", "center")
    if kind not in MASKS:
        raise VaelabError(f"unknown mask {spec!r}; use {MASK_HELP}")
    builder = MaskBuilder(spec, size, MASKS[kind](arg or None, spec, size))
    if not builder(1).any():  # nothing to fill: every inpainting number would be a mean over no pixel
        if kind == "file":
            raise DataError(f"mask image {arg} hides no pixel (white, > 50% grey, = hidden; it is all dark): "
                            "paint the region to fill white")
        raise VaelabError(f"mask {spec!r} hides no pixel of the {size[0]}x{size[1]} images; use another mask "
                          f"({MASK_HELP})")
    return builder


# ------------------------------------------------------------------------------------ methods
def _model(run_or_model) -> torch.nn.Module:
    return getattr(run_or_model, "model", run_or_model)


def _fill(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Known pixels from ``x``, hidden ones from ``values``; mask (B, 1, H, W) broadcasts over C."""
    return torch.where(mask, values, x)


@torch.no_grad()
def single(model, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """One pass: hidden pixels set to 0, reconstructed, pasted into the hidden region."""
    return _fill(x, mask, model.reconstruct(x.masked_fill(mask, 0.0), y))


@torch.no_grad()
def iterative(model, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor | None = None,
              iterations: int = 50) -> torch.Tensor:
    """Start from the zero-filled image; each pass replaces the hidden pixels by the
    reconstruction and keeps the known ones, so the code drifts towards an image whose
    known part agrees with ``x`` (a fixed-point iteration of the autoencoder)."""
    if iterations < 0:
        raise VaelabError(f"iterations must be >= 0, got {iterations}")
    cur = x.masked_fill(mask, 0.0)
    for _ in range(iterations):
        cur = _fill(x, mask, model.reconstruct(cur, y))
    return cur


def optimise_codes(model, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor | None = None, steps: int = 300,
                   lr: float = 0.05, init_iterations: int = 0) -> torch.Tensor:
    """Codes z (B, D) fitted with Adam so that the decoded images match the known pixels.

    Objective per image: the model's own reconstruction loss on the known pixels, plus
    -log p(z) for models with a prior: a MAP estimate of z (for the N(0, I) prior that is
    0.5 |z|^2 up to a constant). The gradient of the loss restricted to known pixels
    equals the gradient of the full loss with the hidden outputs detached, so the model's
    ``recon_loss`` (any likelihood, any output activation) is used unchanged. z starts at
    the encoder's mean for the zero-filled image (after ``init_iterations`` iterative
    passes, if asked). The loss is summed over images and Adam is element-wise, so each
    image's code is optimised independently even though the whole batch is one tensor.
    """
    require(model, "continuous", "latent-opt inpainting")
    if steps < 0:
        raise VaelabError(f"steps must be >= 0, got {steps}")
    if not (math.isfinite(lr) and lr > 0):  # ``lr <= 0`` is False for NaN, which Adam would meet
        raise VaelabError(f"the step size (lr) must be positive and finite, got {lr}")
    if init_iterations < 0:
        raise VaelabError(f"init_iterations must be >= 0, got {init_iterations}")
    start = iterative(model, x, mask, y, init_iterations) if init_iterations else x.masked_fill(mask, 0.0)
    with torch.no_grad():
        z = model.encode(start, y).float().clone()
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    prior = model.prior(y, len(x)) if "prior" in model.capabilities else None
    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            logits = model.decode_logits(z, y)  # (B, C, H, W)
            logits = torch.where(mask, logits.detach(), logits)
            loss = model.recon_loss(logits, x)  # (B,)
            if prior is not None:
                loss = loss - prior.log_prob(z)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
    return z.detach()


@torch.no_grad()
def latent_opt(model, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor | None = None, steps: int = 300,
               lr: float = 0.05, init_iterations: int = 0) -> torch.Tensor:
    """Decode codes fitted to the known pixels (``optimise_codes``) into the hidden ones."""
    return _fill(x, mask, model.decode(optimise_codes(model, x, mask, y, steps, lr, init_iterations), y))


# Registry: name -> fn(model, x (B, C, H, W), mask (B, 1, H, W), y, **options) -> (B, C, H, W).
METHODS: dict[str, Callable] = {"single": single, "iterative": iterative, "latent-opt": latent_opt}


def inpaint(run_or_model, x: torch.Tensor, mask, method: str = "latent-opt", batch_size: int = 2000,
            seed: int = 0, y: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """Inpaint ``x`` (N, C, H, W) in [0, 1] where ``mask`` is True; returns (N, C, H, W) on the CPU.

    ``run_or_model``: a ``vaelab.Run`` or a model; ``mask``: bool (N or 1, 1, H, W), or a
    spec string for ``parse_mask`` (seeded by ``seed``). Images are processed in chunks of
    ``batch_size`` to bound memory; every method treats images independently, so the
    chunk size does not change the result. ``kw`` goes to the method (``iterations`` for
    iterative; ``steps``, ``lr``, ``init_iterations`` for latent-opt). ``y``: the images'
    labels, which a conditional model reads; without them it uses the most probable class
    of each masked image.
    """
    if method not in METHODS:
        raise VaelabError(f"unknown inpainting method {method!r}; known: {', '.join(METHODS)}")
    model = _model(run_or_model)
    model.eval()
    if x.dim() != 4:
        raise DataError(f"inpaint needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(mask, str):
        mask = parse_mask(mask, x.shape[1:])(len(x), seed)
    mask = mask.bool()
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != x.shape[2:] or mask.shape[0] not in (1, len(x)):
        raise DataError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(x.shape)}; "
                        "expected (N, 1, H, W) or (1, 1, H, W)")
    mask = mask.expand(len(x), -1, -1, -1)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb, mb = x[i:i + batch_size].float().to(device), mask[i:i + batch_size].to(device)
        yb = None
        if model.conditional:
            with torch.no_grad():
                yb = y[i:i + batch_size].to(device) if y is not None else model.infer_labels(xb.masked_fill(mb, 0.0))
        out.append(METHODS[method](model, xb, mb, yb, **kw).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------ evaluation
def masked_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared error over the hidden pixels only (all channels, all images); a mask that
    hides no pixel has no such mean, and is refused."""
    m = mask.expand_as(x)
    if not m.any():
        raise DataError("masked_mse: the mask hides no pixel, so there is no hidden pixel to average over")
    return float((x - y)[m].double().square().mean())


def evaluate_inpainting(run, mask: str = "center:10", n: int = 1000, method: str = "latent-opt",
                        split: str | None = None, judge=None, use_judge: bool = True, seed: int = 0,
                        out: str | Path | None = None, log: Callable[[str], None] = print, **kw) -> dict:
    """Inpaint the first ``n`` images of a split and measure the result.

    Returns (and, with ``out``, writes ``out/inpaint_eval.json`` and ``out/inpaint.png``):
    ``masked_mse`` (hidden pixels only) and ``ssim`` (whole image) of the inpainted images,
    the same two for the zero-filled masked input (``*_input``: the baseline), and judge
    accuracies against the true labels on the inpainted, masked and original images.
    ``judge`` is a ``vaelab.judge.Judge`` or a folder for ``get_judge`` (None: the cached
    judge for the run's data set, trained on first use); skipped without labels or when
    ``use_judge`` is False.
    """
    if n < 1:
        raise VaelabError("n must be at least 1")
    if method not in METHODS:
        raise VaelabError(f"unknown inpainting method {method!r}; known: {', '.join(METHODS)}")
    data = run.split(split)
    split = split or run.default_split()
    builder = parse_mask(mask, data.shape)
    if n > len(data):
        log(f"note: the {split} split holds {len(data)} images; inpainting all {len(data)}, not {n}")
    n = min(n, len(data))
    x = data.batch(slice(0, n))  # (n, C, H, W) in [0, 1]
    m = builder(n, seed)  # (n, 1, H, W), True = hidden
    if bool(m.all()):
        log(f"note: mask {mask} hides every pixel: nothing of the images is known, so the inpainted images are the "
            "model's guess from nothing" + (" but their labels" if _model(run).conditional and data.y is not None else "")
            + ", and the numbers measure that guess")
    masked = x.masked_fill(m, 0.0)
    t0 = time.perf_counter()
    filled = inpaint(run, x, m, method=method, y=None if data.y is None else data.y[:n], **kw)
    seconds = time.perf_counter() - t0
    result = {"method": method, "mask": mask, "n": n, "split": split, "seed": seed, "options": kw,
              "hidden_fraction": float(m.float().mean()),
              "masked_mse": masked_mse(filled, x, m), "masked_mse_input": masked_mse(masked, x, m),
              "ssim": float(metrics.ssim(filled, x).mean()), "ssim_input": float(metrics.ssim(masked, x).mean()),
              "seconds": round(seconds, 3)}
    if not use_judge or data.y is None:  # no judge accuracies: left out, and why
        result["not_applicable"] = {"judge_accuracy": "the judge was turned off (--no-judge)" if not use_judge
                                    else f"the {split} split has no labels to judge against"}
    if use_judge and data.y is not None:
        from vaelab.evaluation.judge import resolve_judge

        j = resolve_judge(run.config.data, judge, log)
        y = data.y[:n]
        for key, imgs in (("judge_accuracy", filled), ("judge_accuracy_masked", masked),
                          ("judge_accuracy_original", x)):
            result[key] = float((j.predict(imgs) == y).float().mean())
        result["judge"] = j.meta.get("dataset")
    if out is not None:
        from vaelab import plots
        from vaelab.io import write_json
        from vaelab.rundir import ID_FIELD

        out = Path(out)
        write_json(out / "inpaint_eval.json", {**result, ID_FIELD: run.checkpoint_id})
        k = min(16, n)
        shown = x[:k].masked_fill(m[:k], 0.5)  # hidden pixels drawn mid-grey, distinct from black ink
        plots.plot_image_rows([("original", x[:k]), ("masked", shown), ("inpainted", filled[:k])],
                              out / "inpaint.png", title=f"inpainting: {method}, mask {mask}")
    return result


__all__ = ["MASKS", "METHODS", "MaskBuilder", "evaluate_inpainting", "inpaint", "masked_mse", "optimise_codes",
           "parse_mask"]
