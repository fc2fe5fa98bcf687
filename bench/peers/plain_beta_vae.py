"""A third party for the beta-VAE gap: the same beta-VAE as both sides of bench/pythae_compare.py,
trained by a plain PyTorch loop that belongs to neither library, and scored by the same judge.

Pythae's beta-VAE mixture samples were closer than vaelab's on three seeds of three
(bench/README.md, "Three seeds") with the same objective, body, defaults and test loss. A loop
written from the papers' equations alone tells which side is the unusual one. The model is
Linear(784, 400) - ReLU - (Linear(400, 16) mean, Linear(400, 16) log-variance), the decoder
Linear(16, 400) - ReLU - Linear(400, 784), PyTorch's default initialisation; the loss per image is
the Bernoulli cross-entropy summed over pixels plus beta (4) times the closed-form KL, averaged over
the batch; Adam 1e-3, batch 128, a new random order each epoch, 10 epochs, fp32, one thread.

``--bce`` picks how the cross-entropy is computed, the one place the two libraries' code differs:
``sigmoid`` is Pythae's (``F.binary_cross_entropy`` on the sigmoid output, whose log is clamped at
-100), ``logits`` is vaelab's (``F.binary_cross_entropy_with_logits``).

For each seed it writes, like both sides: 10,000 prior samples, 10,000 samples from a 10-component
full-covariance mixture fit on the training set's posterior means (vaelab's recipe:
``reg_covar`` 1e-5, seeded), and reconstructions of the 10,000 test digits, as uint8 ``.npz``;
then scores them with the MNIST judge (FCD against the test digits; MSE and SSIM):

    python bench/peers/plain_beta_vae.py --seeds 1,2,3 --bce sigmoid --out bench/out/plain_beta_vae
    python bench/peers/plain_beta_vae.py --seeds 1,2,3 --bce logits --out bench/out/plain_beta_vae

A seed already scored in ``--out`` is read back, not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import DataConfig
from vaelab.data import load_data
from vaelab.evaluation import metrics
from vaelab.evaluation.judge import get_judge
from vaelab.io import write_json
from vaelab.training.trainer import epoch_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arrays import mixture_codes, to_uint8

LATENT = 16


class BetaVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc_mu, self.fc_logvar = nn.Linear(784, 400), nn.Linear(400, LATENT), nn.Linear(400, LATENT)
        self.fc3, self.fc4 = nn.Linear(LATENT, 400), nn.Linear(400, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x.reshape(len(x), -1)))
        return self.fc_mu(h), self.fc_logvar(h)

    def logits(self, z):
        return self.fc4(F.relu(self.fc3(z)))


def loss_per_image(model: BetaVAE, x: torch.Tensor, beta: float, bce: str) -> torch.Tensor:
    mu, logvar = model.encode(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    logits, target = model.logits(z), x.reshape(len(x), -1)
    if bce == "sigmoid":
        r = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none").sum(-1)
    else:
        r = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)
    return r + beta * kl


def one_seed(seed: int, train: torch.Tensor, test: torch.Tensor, args, folder: Path) -> dict:
    torch.manual_seed(seed)
    model = BetaVAE()  # the same layers in the same order as vaelab's and Pythae's: the same initial weights
    vaelab_stream = args.stream == "vaelab"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=vaelab_stream or None)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        if vaelab_stream:  # vaelab's trainer reseeds each epoch
            torch.manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(train))
        for i in range(0, len(train), 128):
            loss = loss_per_image(model, train[order[i:i + 128]], args.beta, args.bce).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        test_loss = float(torch.cat([loss_per_image(model, test[i:i + 1000], args.beta, args.bce)
                                     for i in range(0, len(test), 1000)]).mean())
        decode = lambda z: torch.cat([torch.sigmoid(model.logits(z[i:i + 1000])) for i in range(0, len(z), 1000)])
        mu = torch.cat([model.encode(train[i:i + 1000])[0] for i in range(0, len(train), 1000)])
        test_mu, test_logvar = (torch.cat(t) for t in zip(*[model.encode(test[i:i + 1000])
                                                              for i in range(0, len(test), 1000)]))
        g = torch.Generator().manual_seed(seed)
        arrays = {"prior": to_uint8(decode(torch.randn(args.n, LATENT, generator=g)))}
        z, gm = mixture_codes(mu.double().numpy(), args.n, seed)
        arrays["gmm"] = to_uint8(decode(z))
        arrays["recon"] = to_uint8(decode(test_mu))
    for name, a in arrays.items():
        np.savez_compressed(folder / f"{name}.npz", images=a)
    kl_dim = (-0.5 * (1 + test_logvar - test_mu.square() - test_logvar.exp())).mean(0)
    return {"seed": seed, "bce": args.bce, "stream": args.stream, "beta": args.beta, "epochs": args.epochs, "train_seconds": round(seconds, 1),
            "test_loss": test_loss, "kl_per_dim": [round(float(v), 4) for v in kl_dim],
            "active_units": int((test_mu.var(0) > 0.01).sum()), "gmm_em_iterations": int(gm.n_iter_)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--bce", choices=["sigmoid", "logits"], default="sigmoid")
    ap.add_argument("--stream", choices=["plain", "vaelab"], default="plain",
                    help="vaelab: reseed each epoch as vaelab's trainer does, and its fused Adam (a check that "
                         "vaelab's loop is this one: with --bce logits it follows vaelab's fp32 run of the seed)")
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=10000, help="samples per sampler")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/out/plain_beta_vae"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"plain_beta_vae.py: --seeds takes comma-separated integers, got {args.seeds!r}")
    data = load_data(DataConfig(name="mnist"))
    train, test = data.train.float(), data.test.float()
    judge = get_judge(DataConfig(name="mnist"))
    rows = []
    for seed in seeds:
        stream = "" if args.stream == "plain" else f"-{args.stream}"
        folder = args.out / f"{args.bce}{stream}-beta{args.beta:g}-e{args.epochs}-s{seed}"
        done = folder / "scores.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        row = one_seed(seed, train, test, args, folder)
        for name in ("prior", "gmm", "recon"):
            with np.load(folder / f"{name}.npz") as f:
                imgs = torch.from_numpy(f["images"]).float() / 255
            row[f"fcd_{name}"] = judge.fcd(imgs, test)
            if name == "recon":
                row["mse"] = float(metrics.mse(imgs, test[:len(imgs)]).mean())
                row["ssim"] = float(metrics.ssim(imgs, test[:len(imgs)]).mean())
        row["loadavg"] = list(os.getloadavg())
        write_json(done, row)
        rows.append(row)
        print(f"seed {seed}: test loss {row['test_loss']:.2f}, FCD prior {row['fcd_prior']:.1f}, "
              f"GMM {row['fcd_gmm']:.1f}, recon {row['fcd_recon']:.1f}, MSE {row['mse']:.4f}", flush=True)
    print("\n| seed | bce | test loss | FCD prior | FCD GMM | FCD recon | MSE | SSIM | active units |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['bce']} | {r['test_loss']:.2f} | {r['fcd_prior']:.1f} | {r['fcd_gmm']:.1f} | "
              f"{r['fcd_recon']:.1f} | {r['mse']:.4f} | {r['ssim']:.3f} | {r['active_units']} |")
    if len(rows) > 1:
        for k in ("fcd_prior", "fcd_gmm", "fcd_recon"):
            v = np.array([r[k] for r in rows])
            print(f"{k}: mean {v.mean():.1f}, sd {v.std(ddof=1):.1f} over {len(v)} seeds")


if __name__ == "__main__":
    main()
