"""Pythae's HVAE with one of its differences from the paper removed: which one makes its prior
samples closer than vaelab's Hamiltonian VAE (FCD 221.6 against 265.8, bench/README.md)?

Pythae's ``HVAE`` (pythae 0.1.2, models/hvae/hvae_model.py) draws z0 = mu + softplus(a) eps from
its encoder's second head a (``log_covariance``), so q0's standard deviation is softplus(a); but
its loss reads a as a log-variance: its log q0 term is -1/2 sum a. The entropy of the q0 it draws
from is sum log softplus(a) (+ a constant): for large a, the loss rewards a standard deviation s
by about s / 2 where the ELBO rewards it by log s. ``--variant entropy`` trains the same model
with that one term made the entropy of its own q0, -sum log softplus(a); everything else as
Pythae has it (no tempering, no beta_0 terms, the leapfrog as written).

Run in Pythae's venv (bench/peers/README.md); it trains through pythae_zoo.py (same settings as
the side-by-side table: bench/pythae_compare.py) into --out, then score its arrays in vaelab's:

    /work/peers/pythae-venv/bin/python bench/peers/hvae_variant.py --variant entropy --out bench/out/hvae_variant/entropy
    python bench/peers/score_npz.py bench/out/hvae_variant/entropy/hamiltonian-vae/samples_*.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--variant", choices=["entropy"], required=True, help="the one term changed (see above)")
ap.add_argument("--out", required=True, help="pythae_zoo.py's output folder for this run")
ap.add_argument("--data-dir", default="/work/shared/data")
ap.add_argument("--seed", type=int, default=1)
ours = ap.parse_args()

# imported after our arguments are read: pythae_zoo parses its own defaults on import
import pythae_zoo
import torch
import torch.nn.functional as F
from pythae.models import HVAE


def loss_with_entropy(self, x, zK, rhoK, z0, mu, log_var):
    """Pythae's HVAE.loss_function, its log q0 term the entropy of the q0 it draws from."""
    recon_x = self.decoder(zK)["reconstruction"]
    logp = (self._log_p_x_given_z(recon_x, x) - 0.5 * torch.pow(zK, 2).sum(dim=-1)
            - 0.5 * torch.pow(rhoK, 2).sum(dim=-1))
    logq = -torch.log(F.softplus(log_var)).sum(dim=-1)  # Pythae: -0.5 * log_var.sum(dim=-1)
    return -(logp - logq).mean(dim=0)


HVAE.loss_function = loss_with_entropy
pythae_zoo.ARGS = pythae_zoo.parse_args(["--families", "hamiltonian-vae", "--out", ours.out,
                                         "--data-dir", ours.data_dir, "--seed", str(ours.seed)])
sys.exit(pythae_zoo.main())
