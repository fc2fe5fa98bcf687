"""Faces against everything else on the emoji set: AUROC of each model and score.

The normal class is `smileys-emotion` (169 faces) of emoji-google-64 (1,911 RGBA emoji,
composited on white, 64x64); every other category is anomalous. For each split seed, a
seeded 20% of the faces is held out (`vaelab.anomaly.one_class.one_class_split`, the split
`vaelab anomaly-bench --data folder` makes); each model trains on the other 80% only and
scores the held-out faces and all 1,742 other images with every score it supports. The same
trained model gives every score of its row. Trainings run one after another on one thread;
finished (model, seed) results are kept in bench/out/emoji-anomaly/ and reused.

    python bench/emoji_anomaly.py                  # 3 split seeds, 100 epochs each
    python bench/emoji_anomaly.py --quick          # 1 seed, 2 epochs: checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, REPO, emoji_dir, machine_info, machine_line, write_json  # noqa: E402

NORMAL = "smileys-emotion"
HOLDOUT = 0.2
# name -> (preset, overrides). celeba-vae + msssim is PyTorch-VAE's MSSIMVAE: the same network
# trained on 1 - MS-SSIM + kld_weight * KL; MS-SSIM is measured on [0, 1] images here as there,
# so their kld_weight 0.00025 is the beta (no factor 4: see presets/celeba-vae.yaml).
MODELS = {
    "fc-ae-rgb64": ("fc-ae-rgb64", []),
    "conv-ae-rgb64": ("conv-ae-rgb64", []),
    "celeba-vae": ("celeba-vae", []),
    "celeba-vae, msssim loss": ("celeba-vae", ["model.loss=msssim", "model.beta=0.00025"]),
    # The dense body as a VAE (KL weighted as in celeba-vae), and the dense AE at its preset's 20 epochs.
    "fc-ae-rgb64 as a VAE, beta 0.001": ("fc-ae-rgb64", ["model.kind=vae", "model.beta=0.001"]),
    "fc-ae-rgb64, 20 epochs": ("fc-ae-rgb64", ["train.epochs=20"]),
}
SCORES = ("mse", "ssim", "msssim", "elbo")


def run_one(name: str, seed: int, images, classes: list[str], epochs: int, root: Path) -> dict:
    """Train model ``name`` on the faces of split ``seed``; AUROC of every score it supports."""
    from vaelab.anomaly.one_class import one_class_split
    from vaelab.anomaly.scores import SCORES as REGISTRY
    from vaelab.anomaly.scores import score_images
    from vaelab.configure import build_config
    from vaelab.data import Splits
    from vaelab.evaluation import metrics
    from vaelab.training.loop import fit

    c = classes.index(NORMAL)
    train, test, anomalous = one_class_split(images, c, HOLDOUT, seed)
    preset, overrides = MODELS[name]
    config = build_config(preset, overrides=[f"data.path={root}", "data.val=none", f"data.classes=[{NORMAL}]",
                                             f"train.epochs={epochs}", f"train.seed={seed}", "train.threads=1",
                                             "train.progress=false"] + overrides)
    t0 = time.perf_counter()
    fitted = fit(config, None, splits=Splits(train, None, None, classes=classes), log=lambda s: None)
    train_s = time.perf_counter() - t0
    model, xt = fitted.model, test.float()
    row = {"model": name, "seed": seed, "preset": preset, "overrides": overrides, "epochs": fitted.config.train.epochs,
           "n_train": len(train), "n_test_normal": int((anomalous == 0).sum()), "n_test": len(anomalous),
           "train_seconds": round(train_s, 1), "final_train_loss": fitted.history[-1]["train_loss"],
           "auroc": {}, "auroc_by_class": {}}
    y = test.y.numpy()
    for score in SCORES:
        needs = REGISTRY[score].needs
        if needs is not None and needs not in model.capabilities:
            continue
        t1 = time.perf_counter()
        s = score_images(model, xt, score, samples=10, seed=0)
        row["auroc"][score] = round(metrics.auroc(s, anomalous), 4)
        row[f"score_seconds_{score}"] = round(time.perf_counter() - t1, 1)
        # Held-out faces against one other category at a time: which categories are hard.
        row["auroc_by_class"][score] = {
            classes[k]: round(metrics.auroc(s[(y == c) | (y == k)], anomalous[(y == c) | (y == k)]), 4)
            for k in sorted(set(y.tolist()) - {c})}
    row["seconds"] = round(time.perf_counter() - t0, 1)  # training and every score
    return row


def table(rows: list[dict], seeds: list[int]) -> str:
    import numpy as np

    lines = ["| model | " + " | ".join(f"AUROC {s}" for s in SCORES) + " | training s (per seed) |",
             "|---|" + "---:|" * (len(SCORES) + 1)]
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            continue
        cells = []
        for score in SCORES:
            vals = [r["auroc"][score] for r in mine if score in r["auroc"]]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean([r['train_seconds'] for r in mine]):.0f} |")
    return "\n".join(lines) + f"\n\nMean ± standard deviation over split seeds {', '.join(map(str, seeds))}.\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2,3", help="split (and training) seeds")
    p.add_argument("--epochs", type=int, default=100, help="training epochs of every model (celeba-vae's own)")
    p.add_argument("--only", help="comma-separated model names (default: all)")
    p.add_argument("--quick", action="store_true", help="seed 1, 2 epochs, into emoji-anomaly-quick/")
    args = p.parse_args(argv)
    os.environ.setdefault("VAELAB_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(1)
    from vaelab.config import DataConfig
    from vaelab.data import load_data

    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    epochs = 2 if args.quick else args.epochs
    names = list(MODELS) if not args.only else [n.strip() for n in args.only.split(",")]
    out = OUT / ("emoji-anomaly-quick" if args.quick else "emoji-anomaly")
    root = emoji_dir("emoji_anomaly", NORMAL)
    splits = load_data(DataConfig(name="folder", path=str(root), image_size=64, channels=3, val="none"))
    images, classes = splits.train, splits.classes
    report = {"machine": machine_info(), "data": str(root), "normal": NORMAL, "holdout": HOLDOUT, "epochs": epochs,
              "seeds": seeds, "image_size": 64, "background": "white", "rows": []}
    t_all = time.perf_counter()
    for seed in seeds:
        for name in names:
            path = out / "rows" / f"{name.replace(' ', '').replace(',', '-')}-seed{seed}-e{epochs}.json"
            if path.is_file():
                row = json.loads(path.read_text())
                print(f"{name}, seed {seed}: kept from {path.relative_to(REPO)}", flush=True)
            else:
                row = run_one(name, seed, images, classes, epochs, root)
                write_json(path, row)
            report["rows"].append(row)
            print(f"{name}, seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["auroc"].items())
                  + f"  ({row['train_seconds']:.0f}s training)", flush=True)
    report["wall_seconds_this_invocation"] = round(time.perf_counter() - t_all, 1)
    md = table(report["rows"], seeds)
    # One pair of files per (models, seeds) asked for: emoji_anomaly_seeds1-2-3.md for the full table.
    stem = "emoji_anomaly" + ("_" + "+".join(n.replace(" ", "").replace(",", "-") for n in names) if args.only else "")
    stem += "_seeds" + "-".join(map(str, seeds))
    write_json(out / f"{stem}.json", report)
    (out / f"{stem}.md").write_text(md)
    print(machine_line(report["machine"]))
    print(md + f"\nwrote {out / stem}.json and .md ({report['wall_seconds_this_invocation']:.0f}s this run)")


if __name__ == "__main__":  # the folder cache decodes in worker processes (spawn): guard the entry point
    main()
