"""Generation benchmark: judge accuracy, then every sampler scored on a VAE and a plain AE.

    python bench/generation_bench.py                 # full: judge, VAE latent 16 x 20 epochs, deep-ae x 20
    python bench/generation_bench.py --quick         # tiny run to check the script

Writes bench/out/generation.json and prints a Markdown table. Targets (issue 3):
judge >= 0.990 on MNIST and >= 0.90 on Fashion-MNIST; class-gaussian and class-gmm
samples judged as the asked class >= 95%; gmm FCD below prior FCD for the same VAE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n", type=int, default=10000, help="samples per sampler")
    ap.add_argument("--skip-fashion", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("VAELAB_DATA", str(ROOT.parent / "shared" / "data"))
    os.environ["VAELAB_NO_PROGRESS"] = "1"
    if not (Path(os.environ["VAELAB_DATA"]) / "mnist").is_dir():
        print(f"MNIST not found under {os.environ['VAELAB_DATA']}; set VAELAB_DATA", file=sys.stderr)
        return 1
    from vaelab.api import Run, train
    from vaelab.config import DataConfig
    from vaelab.evaluation.judge import get_judge
    from vaelab.latent.sample_eval import evaluate_samples

    epochs, n = (1, 500) if args.quick else (args.epochs, args.n)
    tag = "quick" if args.quick else "full"
    out = OUT / f"generation-{tag}"
    results: dict = {"epochs": epochs, "n": n, "judge": {}, "models": {}}
    t0 = time.perf_counter()
    judges = {}
    for name in ["mnist"] + ([] if args.skip_fashion or args.quick else ["fashion-mnist"]):
        folder = out / f"judge-{name}"
        j = get_judge(DataConfig(name=name), folder, log=print, epochs=1 if args.quick else 6)
        judges[name] = j
        results["judge"][name] = {"accuracy": j.accuracy, "train_seconds": j.meta["train_seconds"]}
    models = {
        "vae16": ("mlp-vae", ["model.latent_dim=16", f"train.epochs={epochs}"]),
        "deep-ae": ("deep-ae", [f"train.epochs={epochs}"]),
    }
    samplers = {"vae16": ["prior", "gmm", "class-gaussian", "class-gmm"], "deep-ae": ["gmm", "class-gmm"]}
    for key, (preset, overrides) in models.items():
        run_dir = out / key
        if args.quick:
            overrides = overrides + ["data.limit=3000"]
        if (run_dir / "model.safetensors").is_file() and (run_dir / "summary.json").is_file():
            run = Run.load(run_dir, device="cpu")
        else:
            run = train(preset, run_dir, overrides=overrides, evaluate_after=False, log=print)
            run = Run.load(run_dir, device="cpu")
        rows = {}
        for s in samplers[key]:
            ts = time.perf_counter()
            r = evaluate_samples(run, s, judges["mnist"], n=n, seed=0, out_dir=run_dir)
            r["seconds"] = round(time.perf_counter() - ts, 1)
            rows[s] = r
            print(f"{key} {s}: fcd {r['fcd']:.3f} (floor {r['fcd_floor']:.3f}) "
                  + (f"class_accuracy {r['class_accuracy']:.4f}" if "class_accuracy" in r
                     else f"entropy {r['class_entropy']:.3f}"))
        results["models"][key] = rows
    results["seconds"] = round(time.perf_counter() - t0, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"generation-{tag}.json").write_text(json.dumps(results, indent=2))
    print("\n| model | sampler | FCD | FCD floor | class accuracy | class entropy (bits) | NN dist samples / test |")
    print("|---|---|---:|---:|---:|---:|---|")
    for key, rows in results["models"].items():
        for s, r in rows.items():
            nn = r["nn_distance"]
            print(f"| {key} | {s} | {r['fcd']:.3f} | {r['fcd_floor']:.3f} | "
                  f"{r.get('class_accuracy', float('nan')):.4f} | {r.get('class_entropy', float('nan')):.3f} | "
                  f"{nn['samples_to_train']:.3f} / {nn['test_to_train']:.3f} |")
    for name, j in results["judge"].items():
        print(f"judge {name}: test accuracy {j['accuracy']:.4f} ({j['train_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
