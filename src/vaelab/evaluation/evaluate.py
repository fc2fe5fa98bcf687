"""evaluate(): the numbers a run is judged by, written to ``eval.json``."""

from __future__ import annotations

import torch

from vaelab.evaluation import metrics
from vaelab.data import ImageSet
from vaelab.models.losses import classification


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ImageSet, iw_samples: int = 0, seed: int = 0,
             batch_size: int = 1000, device: torch.device | str = "cpu", split: str = "test") -> dict:
    """Per-image averages over ``data``.

    ``loss``/``recon``/``kl`` use one posterior sample per image (a seeded generator),
    so ``loss`` is the usual single-sample negative ELBO for VAEs. ``mse``, ``ssim`` and
    ``psnr`` compare images with their deterministic reconstruction through the
    posterior mean. ``nll_iw`` is the importance-weighted bound with ``iw_samples``
    samples (VAEs, when iw_samples > 0).

    With a label predictor and labelled ``data``: ``predictor`` (its cross-entropy on the
    posterior mean, nats per image) and ``predictor_accuracy``. ``loss`` stays the model's
    own loss (recon + beta * kl), without the weighted predictor term, so it compares
    directly with runs trained without a predictor.
    """
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = data.y if getattr(model, "has_predictor", False) and data.y is not None else None
    sums: dict[str, float] = {}
    mus, logvars = [], []
    for i in range(0, len(data), batch_size):
        x = data.batch(slice(i, i + batch_size), device)
        out = model(x, generator=gen) if model.is_vae else model(x)
        mu, logvar = model.posterior(x)
        x_hat = model.decode(mu)
        parts = {k: v for k, v in out.items()}
        parts["mse"] = metrics.mse(x_hat, x)
        parts["psnr"] = metrics.psnr(x_hat, x)
        parts["ssim"] = metrics.ssim(x_hat, x)
        if model.is_vae and iw_samples > 0:
            parts["nll_iw"] = metrics.iw_nll(model.log_weights(x, iw_samples, generator=gen))
        if labels is not None:
            y = labels[i:i + batch_size].to(mu.device)
            logits = model.predict_logits(mu)
            parts["predictor"] = classification(logits, y)
            parts["predictor_accuracy"] = (logits.argmax(1) == y).double()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
        mus.append(mu.float().cpu())
        if logvar is not None:
            logvars.append(logvar.float().cpu())
    n = len(data)
    result: dict = {k: v / n for k, v in sums.items()}
    mu_all = torch.cat(mus)
    result["active_units"] = metrics.active_units(mu_all) if len(mu_all) > 1 else None
    if logvars:
        result["kl_per_dim"] = metrics.kl_per_dim(mu_all, torch.cat(logvars)).tolist()
    result["iw_samples"] = iw_samples if model.is_vae and iw_samples > 0 else None
    result.update({"n": n, "split": split, "seed": seed})
    order = ["loss", "recon", "kl", "predictor", "predictor_accuracy", "mse", "ssim", "psnr", "nll_iw",
             "active_units", "kl_per_dim", "iw_samples", "n", "split", "seed"]
    return {k: result[k] for k in order if k in result}
