"""MIG on dSprites for VAE, beta-VAE and beta-TCVAE at one budget (issue 12's target).

The three models share everything but the objective: an MLP body 4096-256-256-10
(ReLU, Bernoulli likelihood, latent 10, the size of Chen et al.'s but with 256 hidden
units instead of their 1,200 so it fits this machine), Adam 1e-3, batch 256, the same
seed and the same number of passes over all 737,280 dSprites images (``--epochs``).
beta-VAE weighs the KL by 4 (Higgins et al.), beta-TCVAE the total correlation by 6
(Chen et al.; minibatch-weighted sampling with the data set's size), FactorVAE the
discriminator's TC estimate by gamma 35 (Pythae's reproduction config for Kim & Mnih's
dSprites runs; its discriminator 6 layers, 1000 units wide, with its own Adam, lr 1e-4, betas
0.5/0.9, the paper's; the VAE's own Adam stays at this budget's 1e-3). Each run is then
scored by ``vaelab disentanglement`` on 10,000 random training images (dSprites has
no other split): MIG (disentanglement_lib's 20-bin estimator), the FactorVAE score, and the
active units of the scored codes (Burda et al.'s count: how many dimensions are in use).

    python bench/disentangle.py                          # bench/out/disentangle/
    python bench/disentangle.py --seeds 1,2,3            # three seeds each
    python bench/disentangle.py --limit 20000 --epochs 1 --out bench/out/ds-quick   # a quick look
    python bench/disentangle.py --models beta-vae,factor-vae   # FactorVAE beside beta-VAE (issue 19)

Target: MIG ordered beta-TCVAE > beta-VAE > VAE, as the papers report; FactorVAE's score
and MIG above beta-VAE's (Kim & Mnih 2018, Chen et al. 2018). Resumable: a
finished run is neither trained nor scored again.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import OUT, REPO, child_env, pick, run_vaelab

BODY = ["--data", "dsprites", "--val", "none", "--kind", "vae", "--latent-dim", "10",
        "--set", "model.arch=mlp", "--set", "model.hidden=[256,256]", "--set", "model.activation=relu",
        "--set", "model.loss=bce", "--set", "train.batch_size=256", "--set", "train.lr=0.001"]
MODELS = {
    "vae": [],
    "beta-vae": ["--beta", "4"],
    "beta-tcvae": ["--kind", "beta-tcvae", "--beta", "6"],
    "factor-vae": ["--kind", "factor-vae", "--set", "model.factorvae.gamma=35"],
}


def one(name: str, seed: int, args, env: dict) -> dict:
    run = args.out / f"{name}-s{seed}"
    row_file = run / "disentangle_row.json"
    if row_file.is_file():
        return json.loads(row_file.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{name}-s{seed}.log"
    extra = ["--set", f"data.limit={args.limit}"] if args.limit else []
    train_s = None
    if not (run / "summary.json").is_file():
        if (run / "checkpoint.safetensors").is_file():  # killed mid-run: continue from its last checkpoint
            cmd = ["train", "--resume", str(run), "--epochs", str(args.epochs), "--no-eval"]
        else:
            cmd = ["train", *BODY, *MODELS[name], *extra, "--epochs", str(args.epochs), "--seed", str(seed),
                   "--set", f"train.threads={args.threads}", "--no-eval", "--out", str(run), "--overwrite"]
        train_s = run_vaelab(cmd, env, log)
    run_vaelab(["disentanglement", str(run), "--n", str(args.n), "--metrics", "mig,factorvae"], env, log)
    scores = json.loads((run / "disentanglement.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    row = {"model": name, "seed": seed, "epochs": args.epochs, "mig": scores["mig"],
           "mig_per_factor": scores["mig_per_factor"], "factorvae": scores["factorvae"],
           "active_units": scores["active_units"], "final_train_loss": summary["final_train_loss"],
           "train_seconds": summary["train_seconds"], "process_seconds": None if train_s is None else round(train_s, 1)}
    row_file.write_text(json.dumps(row, indent=1) + "\n")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seeds", default="1", help="comma-separated")
    ap.add_argument("--n", type=int, default=10000, help="images scored")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images only (a quick look)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT / "disentangle")
    args = ap.parse_args()
    env = child_env(Path(REPO))  # dSprites is drawn here; no data folder needed
    env["VAELAB_NO_PROGRESS"] = "1"
    models = pick(args.models, MODELS, "model(s)")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [one(m, s, args, env) for m in models for s in seeds]
    lines = ["| model | seeds | MIG | FactorVAE score | active units | final train loss | train s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        rs = [r for r in rows if r["model"] == m]
        mig = [r["mig"] for r in rs]
        spread = f" ± {statistics.stdev(mig):.3f}" if len(mig) > 1 else ""
        lines.append(f"| {m} | {len(rs)} | {statistics.mean(mig):.3f}{spread} | "
                     f"{statistics.mean(r['factorvae'] for r in rs):.3f} | "
                     f"{statistics.mean(r['active_units'] for r in rs):.1f} | "
                     f"{statistics.mean(r['final_train_loss'] for r in rs):.2f} | "
                     f"{statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table)
    mean = {m: statistics.mean(r["mig"] for r in rows if r["model"] == m) for m in models}
    if {"vae", "beta-vae", "beta-tcvae"} <= set(mean):
        ok = mean["beta-tcvae"] > mean["beta-vae"] > mean["vae"]
        print(f"target MIG beta-tcvae > beta-vae > vae: {'met' if ok else 'missed'} "
              f"({mean['beta-tcvae']:.3f}, {mean['beta-vae']:.3f}, {mean['vae']:.3f})")
    if {"beta-vae", "factor-vae"} <= set(mean):
        score = {m: statistics.mean(r["factorvae"] for r in rows if r["model"] == m) for m in ("beta-vae", "factor-vae")}
        ok = mean["factor-vae"] > mean["beta-vae"] and score["factor-vae"] > score["beta-vae"]
        print(f"target factor-vae above beta-vae on MIG and FactorVAE score: {'met' if ok else 'missed'} "
              f"(MIG {mean['factor-vae']:.3f} vs {mean['beta-vae']:.3f}, score {score['factor-vae']:.3f} vs "
              f"{score['beta-vae']:.3f})")


if __name__ == "__main__":
    main()
