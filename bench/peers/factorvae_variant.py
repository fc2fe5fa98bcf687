"""Pythae's FactorVAE with its differences from the paper removed one at a time: which one makes
its samples closer than vaelab's (prior FCD 265.4 against 347.1, bench/README.md)?

Pythae's ``FactorVAE`` (pythae 0.1.2, models/factor_vae/factor_vae_model.py, trained by its
``AdversarialTrainer``) differs from the paper, and from vaelab's factor-vae, in two ways:

- **the discriminator's loss reaches the encoder.** Its class-0 term is ``CE(D(z), 0)`` on the
  undetached code, and the trainer calls ``autoencoder_loss.backward()``, then
  ``discriminator_loss.backward()``, then steps both optimisers: the encoder is also pushed to
  make z look joint to D, against the TC penalty. ``--variant detach`` computes that term on
  ``z.detach()`` (the paper's Algorithm 2; vaelab's);
- **the VAE sees half a batch.** Each batch is split in two halves: the first for the VAE's terms
  (and the discriminator's class 0), the second only to be permuted for class 1. ``--variant
  fullbatch`` puts every image in the VAE's terms and permutes that batch's own codes (detached),
  as vaelab does.

``--variant both`` makes both changes: Pythae's model trained as vaelab trains it. Everything else
as the side-by-side table has it (gamma 35, the default discriminator, lr 1e-3 for the VAE, the
discriminator's Adam at 1e-4 with betas (0.5, 0.9), 10 epochs, batch 128, seed 1).

Run in Pythae's venv (bench/peers/README.md); it trains through pythae_zoo.py into --out, then
score its arrays in vaelab's:

    /work/peers/pythae-venv/bin/python bench/peers/factorvae_variant.py --variant detach --out bench/out/factorvae_variant/detach
    python bench/peers/score_npz.py bench/out/factorvae_variant/detach/factor-vae/*.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--variant", choices=["detach", "fullbatch", "both"], required=True, help="what is changed (see above)")
ap.add_argument("--out", required=True, help="pythae_zoo.py's output folder for this run")
ap.add_argument("--data-dir", default="/work/shared/data")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--quick", action="store_true", help="a smoke test: 1 epoch on 1,000 images, 500 samples")
ours = ap.parse_args()

# imported after our arguments are read: pythae_zoo parses its own defaults on import
import pythae_zoo
import torch
import torch.nn.functional as F
from pythae.models import FactorVAE
from pythae.models.base.base_utils import ModelOutput

DETACH = ours.variant in ("detach", "both")
pythae_loss = FactorVAE.loss_function


def loss_function(self, recon_x, x, mu, log_var, z, z_bis_permuted):
    """Pythae's FactorVAE.loss_function; with DETACH, its discriminator's class-0 term on z.detach()."""
    recon, autoencoder_loss, discriminator_loss = pythae_loss(self, recon_x, x, mu, log_var, z, z_bis_permuted)
    if DETACH:  # the same cross-entropies as Pythae's, the code detached in the class-0 one
        scores = self.discriminator(z.detach())
        fake = torch.zeros(len(z), dtype=torch.long, device=z.device)
        true = torch.ones(len(z_bis_permuted), dtype=torch.long, device=z.device)
        discriminator_loss = 0.5 * (F.cross_entropy(scores, fake)
                                    + F.cross_entropy(self.discriminator(z_bis_permuted), true))
    return recon, autoencoder_loss, discriminator_loss


def forward_full_batch(self, inputs, **kwargs):
    """Pythae's FactorVAE.forward with every image in the VAE's terms, and class 1 the permuted
    (detached) codes of the same batch."""
    x = inputs["data"]
    if x.shape[0] <= 1:
        raise ArithmeticError("At least 2 samples in a batch are required for the `FactorVAE` model")
    out = self.encoder(x)
    mu, log_var = out.embedding, out.log_covariance
    z, _ = self._sample_gauss(mu, torch.exp(0.5 * log_var))
    recon_x = self.decoder(z)["reconstruction"]
    z_permuted = self._permute_dims(z).detach()
    recon_loss, autoencoder_loss, discriminator_loss = self.loss_function(recon_x, x, mu, log_var, z, z_permuted)
    return ModelOutput(loss=autoencoder_loss + discriminator_loss, recon_loss=recon_loss,
                       autoencoder_loss=autoencoder_loss, discriminator_loss=discriminator_loss, recon_x=recon_x,
                       recon_x_indices=torch.arange(len(x)), z=z, z_bis_permuted=z_permuted)


FactorVAE.loss_function = loss_function
if ours.variant in ("fullbatch", "both"):
    FactorVAE.forward = forward_full_batch
pythae_zoo.ARGS = pythae_zoo.parse_args(["--families", "factor-vae", "--out", ours.out,
                                         "--data-dir", ours.data_dir, "--seed", str(ours.seed)]
                                        + (["--epochs", "1", "--limit", "1000", "--n-samples", "500", "--n-recon", "500"]
                                           if ours.quick else []))
sys.exit(pythae_zoo.main())
