"""evaluate(): the numbers a run is judged by, written to ``eval.json``.

It reports every part the model's objective returns, the reconstruction metrics, and
what the model's capabilities allow: the importance-weighted NLL needs a density, the
KL per dimension a closed-form KL to the prior, the predictor's numbers a predictor.
"""

from __future__ import annotations

import math

import torch

from vaelab.distributions import kl_per_dim
from vaelab.errors import ConfigError
from vaelab.evaluation import metrics
from vaelab.models.likelihoods import classification
from vaelab.progress import each

# Decoder rows (samples x images) per pass of the importance-weighted estimate: memory stays
# bounded for --iw-samples 5000 (a conv decoder's 28x28x32 maps at 2,048 rows are 200 MB), and
# rows beyond a few thousand only cost page faults (conv-vae, k = 10 over 1,000 images, one
# thread: 5.7 s in chunks of 1,000 rows, 6.5 s as one pass of 10,000).
IW_ROWS = 2048
# On the CPU each chunk's draws then go through the decoder in pieces of DECODE_ROWS rows (the
# same draws, the same numbers): the conv-vae decoder's maps of 512 rows stay in cache, and a
# chunk of 2,000 rows took 1.5x as long at one thread (in-process, min of 4). On CUDA one pass.
DECODE_ROWS = 512


def iw_log_likelihood(model, x: torch.Tensor, y: torch.Tensor | None, k: int, generator: torch.Generator | None,
                      rows: int = IW_ROWS, q=None) -> torch.Tensor:
    """The k-sample importance-weighted estimate of log p(x | y) per image (B,), float64,
    in the likelihood's loss convention (subtract ``model.nll_offset()`` for nats).

    The k draws go through the decoder in chunks of about ``rows`` decoder rows (samples x
    images), batched (no Python loop over samples within a chunk), combined with a running
    log-sum-exp.
    A conditional model without labels gives log p(x) = log sum_y p(y) p(x | y).
    ``q``: the posterior q(z | x, y) when the caller has it already (one encoder pass fewer).
    """
    if model.conditional and y is None:
        per_class = [model.class_log_prior[c].double() + iw_log_likelihood(
            model, x, torch.full((len(x),), c, dtype=torch.long, device=x.device), k, generator, rows)
            for c in range(model.cfg.num_classes)]
        return torch.logsumexp(torch.stack(per_class), 0)
    q = model.posterior(x, y) if q is None else q
    chunk = max(1, rows // max(1, len(x)))
    total = None
    done = 0
    while done < k:
        kc = min(chunk, k - done)
        pieces = DECODE_ROWS if x.device.type == "cpu" else None
        log_w = model.log_weights(x, y, kc, generator=generator, q=q, rows=pieces)
        lse = torch.logsumexp(log_w.double(), 0)  # (B,)
        total = lse if total is None else torch.logaddexp(total, lse)
        done += kc
    return total - math.log(k)


def iw_subset(n: int, iw_images: int | None, seed: int) -> torch.Tensor | None:
    """Which of ``n`` images the importance-weighted pass decodes: None for all of them (no
    ``iw_images``, or as many as there are), else a seeded random choice of ``iw_images``
    (a bool mask, the same for the same seed and n)."""
    if iw_images is None or iw_images >= n:
        return None
    if iw_images < 2:
        raise ConfigError(f"iw_images={iw_images}: the subset estimate of nll_iw needs 2 or more images "
                          "(its standard error is a sample deviation)")
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:iw_images]] = True
    return chosen


@torch.no_grad()
def evaluate(model: torch.nn.Module, data, iw_samples: int = 0, seed: int = 0,
             batch_size: int = 1000, device: torch.device | str = "cpu", split: str = "test",
             iw_images: int | None = None) -> dict:
    """Per-image averages over ``data`` (an ``ImageSet``).

    ``loss`` and the objective's other parts use one posterior draw per image (a seeded
    generator), so for the elbo objective ``loss`` is the usual single-sample negative
    ELBO. ``mse``, ``ssim`` and ``psnr`` compare images with their reconstruction through
    the posterior mean. ``nll_iw`` is the importance-weighted NLL in nats with
    ``iw_samples`` samples (models with a density, when iw_samples > 0). ``active_units``
    for a continuous latent; ``perplexity`` and ``dead_codes`` for a codebook.

    ``iw_images``: decode the importance samples of only this many images (a seeded random
    choice, ``iw_subset``), for an evaluation that costs a fraction of the full one. ``nll_iw``
    is then the difference estimate of the whole split's mean: the mean single-sample ``loss``
    over every image, which the loss pass computes anyway, plus the subset's mean of
    (nll_iw_i - loss_i). It is unbiased for the full-split number, and since the gap between
    an image's bound and its importance-weighted NLL varies far less across images than the
    NLL itself (a few nats against tens), its standard error is about ten times smaller than
    the subset's plain mean would have: ``nll_iw_stderr`` (with the finite-population
    correction) and ``nll_iw_images`` say how it was estimated. Without them ``nll_iw`` is the
    exact mean over the split.

    A field that does not apply is left out, never written as None or NaN: ``iw_samples``
    appears with ``nll_iw``, and ``not_applicable`` ({field: reason}, only when not empty)
    says why a number one would expect is missing (nll_iw asked for on a model without a
    density, SSIM on images smaller than its window, active units of a single image).

    Labels: a conditional model reads the split's labels; without them it is evaluated
    with the most probable class (``labels_inferred``), and ``nll_iw`` marginalises over
    classes. With a label predictor and labels: ``predictor`` (its cross-entropy on the
    posterior mean, nats per image) and ``predictor_accuracy``; ``loss`` stays the model's
    own objective without the weighted predictor term, so it compares with runs trained
    without one.
    """
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    caps = model.capabilities
    labels = data.y
    iw = iw_samples if iw_samples > 0 and "density" in caps else 0
    chosen = iw_subset(len(data), iw_images, seed) if iw else None
    gaps: list[torch.Tensor] = []  # nll_iw_i - loss_i over the chosen images
    sums: dict[str, float] = {}
    kl_sum: torch.Tensor | None = None
    counts: torch.Tensor | None = None  # codebook usage (K,)
    means = []
    # A bar (on a terminal) when importance samples make it long: K decodes per image.
    for i in each(range(0, len(data), batch_size), f"{split} (nll_iw, K={iw})", on=iw > 1, unit="batch"):
        x = data.batch(slice(i, i + batch_size), device)
        y = None if labels is None else labels[i:i + batch_size].to(x.device)
        y_model = (y if y is not None else model.infer_labels(x)) if model.conditional else None
        q = model.posterior(x, y_model)  # once: the loss pass, the reconstructions and nll_iw share it
        parts = dict(model(x, y_model, generator=gen, dataset_size=len(data), q=q))
        x_hat = model.decode(q.mean, y_model)
        parts["mse"] = metrics.mse(x_hat, x)
        parts["psnr"] = metrics.psnr(x_hat, x)
        if min(x.shape[-2:]) >= metrics.SSIM_WINDOW:  # SSIM is not defined on smaller images
            parts["ssim"] = metrics.ssim(x_hat, x)
        if iw and chosen is None:  # q is the posterior the estimate needs, except for a conditional model without labels
            y_iw = y if model.conditional else None
            parts["nll_iw"] = model.nll_offset() - iw_log_likelihood(
                model, x, y_iw, iw, gen, q=q if y_iw is y_model else None)
        elif iw:
            pick = chosen[i:i + batch_size].to(x.device)
            if bool(pick.any()):
                y_iw = y[pick] if model.conditional and y is not None else None
                nll = model.nll_offset() - iw_log_likelihood(model, x[pick], y_iw, iw, gen)
                gaps.append((nll - parts["loss"][pick].double()).cpu())
        if y is not None and model.has_predictor:
            logits = model.predict_logits(q.mean)
            parts["predictor"] = classification(logits, y)
            parts["predictor_accuracy"] = (logits.argmax(1) == y).double()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
        if "prior" in caps:
            per_dim = kl_per_dim(q, model.prior(y_model, len(x)))
            if per_dim is not None:
                kl_sum = per_dim.double().sum(0) if kl_sum is None else kl_sum + per_dim.double().sum(0)
        means.append(q.mean.float().cpu())
        if "codebook" in caps:
            usage = torch.bincount(q.indices.flatten().cpu(), minlength=model.cfg.opts("vq").codebook_size)
            counts = usage if counts is None else counts + usage
    n = len(data)
    result: dict = {k: v / n for k, v in sums.items()}
    not_applicable: dict[str, str] = {}
    if iw_samples > 0 and not iw:
        not_applicable["nll_iw"] = f"{model.describe()} has no density"
    if "ssim" not in result:
        not_applicable["ssim"] = f"SSIM needs images of {metrics.SSIM_WINDOW}x{metrics.SSIM_WINDOW} or larger"
    mu_all = torch.cat(means)
    if "continuous" in caps:
        if len(mu_all) > 1:
            result["active_units"] = metrics.active_units(mu_all)
        else:
            not_applicable["active_units"] = "a variance across images needs 2 or more images"
    if counts is not None:  # how the codebook is used: exp(entropy) of the code frequencies, and unused codes
        result["perplexity"] = model.posterior_head.perplexity(counts)
        result["dead_codes"] = int((counts == 0).sum())
    if kl_sum is not None:
        result["kl_per_dim"] = (kl_sum / n).tolist()
    if gaps:  # the difference estimate of the whole split's mean nll_iw (see the docstring)
        gap = torch.cat(gaps)
        m = len(gap)
        result["nll_iw"] = result["loss"] + float(gap.mean())
        result["nll_iw_stderr"] = float(gap.std()) / math.sqrt(m) * math.sqrt(1 - m / n)
        result["nll_iw_images"] = m
    if iw:
        result["iw_samples"] = iw
    if model.conditional and labels is None:
        result["labels_inferred"] = True
    result.update({"n": n, "split": split, "seed": seed})
    if not_applicable:
        result["not_applicable"] = not_applicable
    first = ["loss", "recon", "kl", "predictor", "predictor_accuracy", "mse", "ssim", "psnr", "nll_iw", "nll_iw_stderr"]
    last = ["active_units", "perplexity", "dead_codes", "kl_per_dim", "iw_samples", "nll_iw_images", "labels_inferred", "n", "split",
            "seed", "not_applicable"]
    ordered = {k: result[k] for k in first if k in result}
    ordered.update({k: v for k, v in result.items() if k not in first and k not in last})  # other objective parts
    ordered.update({k: result[k] for k in last if k in result})
    return ordered
