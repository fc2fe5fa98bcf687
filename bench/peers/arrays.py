"""What the peer scripts share, in either venv (it needs only torch, NumPy and scikit-learn): the
uint8 image arrays they write for the judge, and vaelab's mixture recipe for drawing codes.

The recipe is vaelab's ``GMMSampler`` (src/vaelab/latent/sampling.py) restated for models vaelab
cannot load (Pythae's, a plain loop's): a full-covariance Gaussian mixture fit on the posterior
means with ``reg_covar`` 1e-5 and ``random_state`` = seed, then sampled with a NumPy generator of
that seed."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] as uint8 (N, 1, 28, 28): ``round(255 * clamp(x, 0, 1))``."""
    x = x.detach().reshape(-1, 1, 28, 28).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).cpu().numpy()


def mixture_codes(mu: np.ndarray, n: int, seed: int, components: int = 10) -> tuple[torch.Tensor, GaussianMixture]:
    """``n`` codes (float32) drawn from the mixture fit on the means ``mu`` (N, D), and the fit."""
    gm = GaussianMixture(components, covariance_type="full", random_state=seed, reg_covar=1e-5).fit(mu)
    rng = np.random.default_rng(seed)
    comp = rng.choice(components, size=n, p=gm.weights_)
    eps = rng.standard_normal((n, mu.shape[1]))
    z = gm.means_[comp] + np.einsum("nij,nj->ni", np.linalg.cholesky(gm.covariances_)[comp], eps)
    return torch.from_numpy(z).float(), gm
