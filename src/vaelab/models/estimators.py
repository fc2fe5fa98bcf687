"""Sample estimators for the MMD (WAE, InfoVAE) and total-correlation (beta-TCVAE) objectives.

Pure torch functions of batches, built on ``vaelab.distributions`` (log-densities come
from there; nothing is re-derived here); no model code.

- ``mmd``: the unbiased estimate of MMD^2 between two samples (Gretton et al. 2012,
  Lemma 6) with the inverse multiquadratic kernel of the WAE (Tolstikhin et al. 2018,
  Algorithm 2, WAE-MMD, and its experiments) or a Gaussian (RBF) kernel as in MMD-VAE / InfoVAE (Zhao et al. 2019).
- ``tc_decomposition``: per-sample estimates of log q(z), sum_j log q(z_j), log q(z|x)
  and log p(z) from one minibatch, and from them the index-code mutual information,
  total correlation and dimension-wise KL of Chen et al. 2018 (their decomposition of
  the ELBO's KL term), with their minibatch weighted (MWS) or stratified (MSS)
  sampling (the latter in their appendix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vaelab.distributions import log_normal
from vaelab.errors import ConfigError

# The WAE's kernel scales: their MMD sums the IMQ kernel over C = s * 2 D sigma^2 for these s.
WAE_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _kernel_sum(d2: torch.Tensor, kernel: str, cs: torch.Tensor) -> torch.Tensor:
    """Kernel values summed over the constants ``cs`` (S,), for squared distances d2 (..., n, m)."""
    c = cs.view(-1, *([1] * d2.dim()))  # (S, 1, ..., 1)
    k = c / (c + d2) if kernel == "imq" else torch.exp(-d2 / c)  # (S, ..., n, m)
    return k.sum(0)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # (n, D), (m, D) -> (n, m). By differences, not the |a|^2 + |b|^2 - 2ab expansion,
    # which loses precision for nearby points and can go negative.
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "imq", scale: float | Sequence[float] = 1.0,
        sigma: float = 1.0) -> torch.Tensor:
    """Unbiased MMD^2 between samples ``x`` (n, D) and ``y`` (m, D): a scalar tensor.

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m)                    (Gretton et al. 2012, Eq. 3)
    It can be slightly negative when the samples come from one distribution.

    Kernels, with C = 2 D sigma^2 * s for each s in ``scale`` (a number or a list, the
    kernels summed over the list):

    - ``imq``: k = C / (C + |x - y|^2), the WAE's choice with sigma^2 the variance of a
      Gaussian prior; their experiments sum over ``scale=WAE_SCALES``.
    - ``rbf``: k = exp(-|x - y|^2 / C). 2 D sigma^2 is the WAE's convention (and
      pythae's). MMD-VAE / InfoVAE's released code uses exp(-|x - y|^2 / D^2), i.e.
      ``scale = D / 2`` with sigma 1 (and a biased estimate: diagonals included).
    """
    if kernel not in ("imq", "rbf"):
        raise ConfigError(f"mmd kernel must be 'imq' or 'rbf', got {kernel!r}")
    scales = [float(scale)] if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if not scales or min(scales) <= 0:
        raise ConfigError(f"mmd kernel scale must be positive, got {scale!r}")
    if not sigma > 0:
        raise ConfigError(f"mmd sigma must be positive, got {sigma!r}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ConfigError(f"mmd needs samples (n, D) and (m, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m, dim = x.shape[0], y.shape[0], x.shape[1]
    if n < 2 or m < 2:
        raise ConfigError(f"mmd needs at least 2 samples on each side, got {n} and {m}")
    cs = torch.tensor(scales, dtype=x.dtype, device=x.device) * (2.0 * dim * sigma**2)  # (S,)
    kxx = _kernel_sum(_sq_dist(x, x), kernel, cs)  # (n, n)
    kyy = _kernel_sum(_sq_dist(y, y), kernel, cs)  # (m, m)
    kxy = _kernel_sum(_sq_dist(x, y), kernel, cs)  # (n, m)
    # U-statistics within each sample: drop the diagonal k(x_i, x_i).
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * kxy.mean()


def _log_mss_weights(batch: int, dataset_size: int, like: torch.Tensor) -> torch.Tensor:
    """log w[i, j] of minibatch stratified sampling (Chen et al. 2018, appendix): (B, B).

    Row i estimates q(z_i) = sum_j w[i, j] q(z_i | x_j): weight 1/N on its own x_i,
    (N - M) / (N M) on one other element (here the next one, cyclically), 1/M on the
    remaining M - 1, with M = B - 1. Each row sums to 1. (The reference code puts the
    last row's special weight in row M - 1 instead; the paper's derivation has one per row.)
    """
    n, m = float(dataset_size), float(batch - 1)
    w = torch.full((batch, batch), 1.0 / m, dtype=like.dtype, device=like.device)
    idx = torch.arange(batch, device=like.device)
    w[idx, (idx + 1) % batch] = (n - m) / (n * m)
    w[idx, idx] = 1.0 / n
    return w.log()


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int | None,
                     prior: str | torch.Tensor = "normal", estimator: str = "mws") -> dict[str, torch.Tensor]:
    """beta-TCVAE's decomposition of the KL term, estimated on one minibatch.

    ``z`` (B, D) is a sample of the Gaussian posterior q(z|x) with ``mu`` and ``logvar``
    (B, D) of the same B images, drawn from a data set of ``dataset_size`` = N images.
    q(z) = (1/N) sum_n q(z|x_n) is estimated from the batch's posteriors (Chen et al.
    2018, minibatch weighted / stratified sampling):

    - ``mws`` (the default, as in the authors' code): log q(z_i) ~ log sum_j q(z_i|x_j)
      - log(N B), each marginal likewise. Biased: low by between log B (posteriors that do
      not overlap) and log N (identical ones); when the batch is the whole data set (B =
      N) it is exactly the true value minus log N, so MI reads log N too high, TC (D-1)
      log N too high and the dimension-wise KL D log N too low. The biases are constants
      for fixed N and B, so the gradients of training are unaffected.
    - ``mss``: stratified weights (``_log_mss_weights``), an unbiased estimate of q(z)
      (not of its log); use it to read the values, e.g. TC ~ 0 for a factorised q(z).

    ``prior`` is "normal" (standard normal p(z)) or a tensor (B,) of log p(z_i).

    Returns (B,) tensors, per sample: ``log_qz``, ``log_prod_qzj`` (sum_j log q(z_j)),
    ``log_qz_x``, ``log_pz``, and the terms ``mi`` = log q(z|x) - log q(z), ``tc`` =
    log q(z) - sum_j log q(z_j), ``dwkl`` = sum_j log q(z_j) - log p(z). Their batch means
    estimate the three expectations of the decomposition; mi + tc + dwkl = log q(z|x) - log p(z)
    exactly, whose expectation is KL(q(z|x) || p(z)).
    """
    if estimator not in ("mws", "mss"):
        raise ConfigError(f"tc_decomposition estimator must be 'mws' or 'mss', got {estimator!r}")
    if z.dim() != 2 or mu.shape != z.shape or logvar.shape != z.shape:
        raise ConfigError(f"tc_decomposition needs z, mu, logvar of one shape (B, D), got "
                          f"{tuple(z.shape)}, {tuple(mu.shape)}, {tuple(logvar.shape)}")
    batch = z.shape[0]
    if dataset_size is None or int(dataset_size) < batch:
        raise ConfigError(f"tc_decomposition needs the data set size N >= the batch size {batch}, got {dataset_size}")
    if batch < 2:
        raise ConfigError("tc_decomposition needs a batch of at least 2 samples")
    n = int(dataset_size)
    # log q(z_i[d] | x_j) for every pair: (B_i, B_j, D).
    pair = log_normal(z[:, None, :], mu[None, :, :], logvar[None, :, :])
    log_qz_x = pair.diagonal(dim1=0, dim2=1).sum(0)  # (B,): the i == j terms, summed over d
    if estimator == "mws":
        log_norm = math.log(n * batch)
        log_qz = torch.logsumexp(pair.sum(2), dim=1) - log_norm  # (B,)
        log_prod_qzj = (torch.logsumexp(pair, dim=1) - log_norm).sum(1)  # (B,)
    else:
        log_w = _log_mss_weights(batch, n, z)  # (B, B)
        log_qz = torch.logsumexp(log_w + pair.sum(2), dim=1)
        log_prod_qzj = torch.logsumexp(log_w[:, :, None] + pair, dim=1).sum(1)
    if isinstance(prior, torch.Tensor):
        if prior.shape != (batch,):
            raise ConfigError(f"tc_decomposition prior log-densities must have shape ({batch},), "
                              f"got {tuple(prior.shape)}")
        log_pz = prior
    elif prior == "normal":
        log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    else:
        raise ConfigError(f"tc_decomposition prior must be 'normal' or a tensor of log p(z), got {prior!r}")
    return {"log_qz": log_qz, "log_prod_qzj": log_prod_qzj, "log_qz_x": log_qz_x, "log_pz": log_pz,
            "mi": log_qz_x - log_qz, "tc": log_qz - log_prod_qzj, "dwkl": log_prod_qzj - log_pz}


__all__ = ["WAE_SCALES", "mmd", "tc_decomposition"]
