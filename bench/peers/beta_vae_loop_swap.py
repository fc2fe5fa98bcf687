"""Pythae's BetaVAE trained by a plain PyTorch loop instead of Pythae's trainer: is the beta-VAE
mixture gap (bench/README.md) in Pythae's model code or in its training pipeline?

Three ways to train one beta-VAE (784-400-16, beta 4, Bernoulli, Adam 1e-3, batch 128, 10 epochs):

- Pythae's model in Pythae's trainer: bench/pythae_compare.py's Pythae side;
- a plain model in a plain loop: bench/peers/plain_beta_vae.py (vaelab's venv);
- **Pythae's model in a plain loop: this script.** The model is built exactly as
  pythae_zoo.py builds it (Pythae's ``BetaVAE`` with the script's MLP encoder and decoder: its
  forward, its sampling, its loss); the loop is plain_beta_vae.py's (a new ``torch.randperm``
  order each epoch, ``model(batch).loss``, backward, Adam step), with no evaluation pass.

For each seed it draws 10,000 samples from the prior and from a 10-component mixture fit on the
training set's posterior means (vaelab's recipe, as gmm_cross.py), and reconstructs the 10,000
test digits through the posterior mean; all as uint8 ``.npz`` for the judge. Run in Pythae's venv
(bench/peers/README.md), then score in vaelab's:

    /work/peers/pythae-venv/bin/python bench/peers/beta_vae_loop_swap.py --seeds 1,2,3 --out bench/out/beta_vae_loop_swap
    python bench/peers/score_npz.py bench/out/beta_vae_loop_swap/s*/*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--seeds", default="1,2,3")
ap.add_argument("--out", type=Path, required=True)
ap.add_argument("--data-dir", default="/work/shared/data")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--n", type=int, default=10000, help="samples per sampler, and test images reconstructed")
ours = ap.parse_args()

# imported after our arguments are read: pythae_zoo parses its own defaults on import
import numpy as np
import pythae_zoo
import torch
from arrays import mixture_codes
from gmm_cross import codes, decode
from pythae.data.datasets import DatasetOutput


def main() -> None:
    torch.set_num_threads(1)
    try:
        seeds = [int(s) for s in ours.seeds.split(",")]
    except ValueError:
        sys.exit(f"beta_vae_loop_swap.py: --seeds takes comma-separated integers, got {ours.seeds!r}")
    train_x, test_x, _ = pythae_zoo.load_mnist(ours.data_dir)
    train = torch.from_numpy(train_x)
    for seed in seeds:
        folder = ours.out / f"s{seed}"
        if (folder / "result.json").is_file():
            print(f"seed {seed}: done in {folder}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        pythae_zoo.seed_all(seed)
        model, _, _ = pythae_zoo.build_model("beta-vae", pythae_zoo.ARGS)  # beta 4, bce, latent 16
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        t0, losses = time.perf_counter(), []
        for _ in range(ours.epochs):
            order, total = torch.randperm(len(train)), 0.0
            for i in range(0, len(train), 128):
                loss = model(DatasetOutput(data=train[order[i:i + 128]])).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(order[i:i + 128])
            losses.append(total / len(train))
        seconds = time.perf_counter() - t0
        model.eval()
        g = torch.Generator().manual_seed(seed)
        np.savez_compressed(folder / "prior.npz", images=decode(model, torch.randn(ours.n, 16, generator=g)))
        mu = codes(model, train_x).double().numpy()
        np.savez_compressed(folder / "gmm.npz", images=decode(model, mixture_codes(mu, ours.n, seed)[0]))
        np.savez_compressed(folder / "recon.npz", images=decode(model, codes(model, test_x[:ours.n])))
        (folder / "result.json").write_text(json.dumps({"seed": seed, "train_losses": losses,
                                                         "train_seconds": round(seconds, 1)}, indent=1))
        print(f"seed {seed}: trained in {seconds:.0f} s, last epoch's train loss {losses[-1]:.2f}", flush=True)


if __name__ == "__main__":
    main()
