"""Reference: the Keras tutorial conv VAE (keras.io/examples/generative/vae) as a plain PyTorch loop.

What a competent PyTorch user writes when porting the Keras example, without speed
tricks:

* the model from plain ``nn.Sequential`` layers, the same layers (and the same
  134,165 parameters) as vaelab's ``conv-vae`` preset: Conv 32 and 64 (kernel 3,
  stride 2, TensorFlow's "same" padding: zero-pad one pixel right and bottom, then a
  padding-0 conv; ReLU), Flatten, Linear 3136-16 ReLU, two Linear 16-2 heads
  (z_mean, z_log_var); decoder Linear 2-3136 ReLU, Unflatten (64, 7, 7),
  ConvTranspose 64 and 32 (kernel 3, stride 2, padding 0, the last row and column
  cropped as TensorFlow's "same" does; ReLU), ConvTranspose 1 (kernel 3, padding 1) and a
  Sigmoid, as the Keras decoder ends in ``activation="sigmoid"``. PyTorch's default
  initialisation (Keras uses Glorot-uniform). ``tests/test_bench_reference.py`` checks
  that these layers compute what vaelab's preset computes for the same weights.
* data: all 70,000 digits (train + test, as the tutorial's ``mnist_digits``) in memory
  as one float32 tensor (N, 1, 28, 28) in [0, 1]; each epoch a fresh
  ``torch.randperm`` and batches of 128 taken by indexing (Keras ``fit`` shuffles each
  epoch too).
* loss as the Keras tutorial computes it: binary cross-entropy on the sigmoid outputs
  summed over the pixels of each image, plus KL(q(z|x) || N(0, I)) summed over the
  latent dimensions, averaged over the batch.
* ``torch.optim.Adam(lr=1e-3)`` with its default (for-each, not fused) implementation,
  standard NCHW (contiguous) memory format, default torch threads, float32.

Options: --padding same|symmetric (default same, the preset's function; symmetric is
PyTorch's padding=1, the preset's layers before 2026-11-22), --epochs N (default 1),
--steps N (stop after N optimiser steps and project the seconds per epoch from the time
per step; for quick checks), --json PATH (append one JSON line with the timings). The data root is $VAELAB_DATA (default
../shared/data from the repository root) and must hold mnist/*-ubyte.gz.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

_T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from vaelab.data.idx import read_idx_pair  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_digits() -> torch.Tensor:
    root = Path(os.environ.get("VAELAB_DATA") or REPO.parent / "shared" / "data") / "mnist"
    missing = [f"{s}.gz" for s in STEMS if not (root / f"{s}.gz").is_file()]
    if missing:
        sys.exit(f"reference_conv_loop.py: MNIST not found: {root} lacks {', '.join(missing)}; "
                 "set VAELAB_DATA to the folder that holds mnist/")
    f = {s: root / f"{s}.gz" for s in STEMS}
    x_train, _ = read_idx_pair(f[STEMS[0]], f[STEMS[1]])
    x_test, _ = read_idx_pair(f[STEMS[2]], f[STEMS[3]])
    # as the tutorial: np.concatenate, expand_dims, astype("float32") / 255
    digits = np.concatenate([x_train, x_test], axis=0)
    digits = np.expand_dims(digits, 1).astype("float32") / 255
    return torch.from_numpy(digits)


class CropLast(nn.Module):
    """Drop the last row and column: TensorFlow's 'same' crop of a stride-2 transposed conv."""

    def forward(self, x):
        return x[:, :, :-1, :-1]


def down(cin: int, cout: int, padding: str) -> list[nn.Module]:
    if padding == "symmetric":
        return [nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1)]
    return [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cin, cout, kernel_size=3, stride=2)]


def up(cin: int, cout: int, padding: str) -> list[nn.Module]:
    if padding == "symmetric":
        return [nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)]
    return [nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2), CropLast()]


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 2, padding: str = "same"):
        super().__init__()
        self.encoder = nn.Sequential(
            *down(1, 32, padding),
            nn.ReLU(),
            *down(32, 64, padding),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(7 * 7 * 64, 16),
            nn.ReLU(),
        )
        self.z_mean = nn.Linear(16, latent_dim)
        self.z_log_var = nn.Linear(16, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 7 * 7 * 64),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            *up(64, 64, padding),
            nn.ReLU(),
            *up(64, 32, padding),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, kernel_size=3, stride=1, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        h = self.encoder(x)
        z_mean, z_log_var = self.z_mean(h), self.z_log_var(h)
        z = z_mean + torch.exp(0.5 * z_log_var) * torch.randn_like(z_mean)
        return self.decoder(z), z_mean, z_log_var


def vae_loss(reconstruction, data, z_mean, z_log_var):
    # Keras: mean over the batch of (BCE summed over the image) + mean of (KL summed over z)
    recon = F.binary_cross_entropy(reconstruction, data, reduction="none").sum(dim=(1, 2, 3))
    kl = -0.5 * (1 + z_log_var - z_mean.square() - z_log_var.exp()).sum(dim=1)
    return (recon + kl).mean(), recon.mean(), kl.mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None,
                   help="stop after N optimiser steps and project seconds per epoch (quick checks)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--padding", choices=["same", "symmetric"], default="same",
                   help="same: TensorFlow's, as the preset (default); symmetric: PyTorch's padding=1, the "
                        "preset's layers before 2026-11-22 (same shapes and work, windows one pixel apart)")
    p.add_argument("--json", default=None, metavar="PATH", help="append one JSON line with the timings")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    digits = load_digits()
    model = ConvVAE(padding=args.padding)
    params = sum(q.numel() for q in model.parameters())
    assert params == 134_165, params
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n, bs = len(digits), args.batch_size
    steps_per_epoch = math.ceil(n / bs)
    print(f"conv VAE: {params:,} parameters; {n:,} images; {steps_per_epoch} steps per epoch; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    model.train()
    epoch_seconds, epoch_losses, done = [], [], 0
    projected = None
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        total, seen, steps_this_epoch = 0.0, 0, 0
        for i in range(steps_per_epoch):
            x = digits[perm[i * bs:(i + 1) * bs]]
            reconstruction, z_mean, z_log_var = model(x)
            loss, recon, kl = vae_loss(reconstruction, x, z_mean, z_log_var)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
            seen += len(x)
            steps_this_epoch += 1
            done += 1
            if args.steps is not None and done >= args.steps:
                break
        seconds = time.perf_counter() - t0
        epoch_seconds.append(seconds)
        epoch_losses.append(total / seen)
        if steps_this_epoch < steps_per_epoch:
            projected = seconds / steps_this_epoch * steps_per_epoch
            print(f"epoch {epoch}: loss {total / seen:.4f} after {steps_this_epoch} of {steps_per_epoch} steps "
                  f"({seconds:.1f}s; projected {projected:.1f}s per epoch)")
            break
        print(f"epoch {epoch}/{args.epochs}: loss {total / seen:.4f}  ({seconds:.1f}s)")
    wall = time.perf_counter() - _T_START
    full = [s for s in epoch_seconds[:len(epoch_seconds) - (projected is not None)]]
    sec_per_epoch = projected if projected is not None else (sum(full) / len(full) if full else None)
    print(f"seconds per epoch: {sec_per_epoch:.2f}{' (projected from a partial epoch)' if projected else ''}; "
          f"final train loss {epoch_losses[-1]:.4f}; {wall:.1f}s since start")
    if args.json:
        record = {
            "script": "reference_conv_loop.py", "epochs": args.epochs, "steps": args.steps,
            "images": n, "steps_per_epoch": steps_per_epoch, "steps_done": done,
            "epoch_seconds": [round(s, 3) for s in epoch_seconds],
            "seconds_per_epoch": round(sec_per_epoch, 3), "projected": projected is not None,
            "train_loss": epoch_losses, "wall_seconds_in_process": round(wall, 3),
            "params": params, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "padding": args.padding,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
