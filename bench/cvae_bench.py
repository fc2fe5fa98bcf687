"""The conditional VAE's class-conditional samples, scored by the judge (issue 11's target).

Trains the ``cvae`` preset (the mlp-vae body, 784-400-16, conditioned on one-hot labels)
with latent 16 for 20 epochs on the training digits, the budget of bench/README.md's
"vae16" rows; then draws 10,000 samples from the prior, 1,000 per digit, decodes each
under its class, and lets the judge say which digit it sees (class accuracy) and how far
the samples' features are from the test set's (FCD).

    python bench/cvae_bench.py                      # bench/out/cvae/
    python bench/cvae_bench.py --epochs 2 --n 1000  # a quick look

Target: class accuracy >= 0.98 with FCD <= 55.0, the best class-conditional row of a VAE
of the same size in bench/README.md (class-gmm, 10 components per class: FCD 55.0 at
accuracy 0.94). Resumable: a finished run is not trained again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import OUT, REPO, child_env, data_root


def vaelab(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vaelab", *args], cwd=REPO, env=env)
    if proc.returncode != 0:
        sys.exit(f"vaelab {' '.join(args)} failed (exit {proc.returncode})")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "cvae"))
    args = ap.parse_args()
    env = child_env(data_root("cvae_bench.py"))
    env["VAELAB_NO_PROGRESS"] = "1"
    run = f"{args.out}/cvae{args.latent_dim}-e{args.epochs}"
    done = False
    try:
        done = json.loads(open(f"{run}/summary.json").read())["epochs"] == args.epochs
    except (OSError, ValueError, KeyError):
        pass
    if not done:
        vaelab(["train", "--preset", "cvae", "--latent-dim", str(args.latent_dim), "--epochs", str(args.epochs),
                "--seed", str(args.seed), "--out", run, "--overwrite"], env)
    vaelab(["eval-samples", run, "--sampler", "prior", "--n", str(args.n), "--out", f"{run}/samples-prior"], env)
    r = json.loads(open(f"{run}/samples-prior/samples_eval.json").read())
    ev = json.loads(open(f"{run}/eval.json").read())
    result = {"epochs": args.epochs, "latent_dim": args.latent_dim, "n": r["n"], "class_accuracy": r["class_accuracy"],
              "fcd": r["fcd"], "fcd_floor": r["fcd_floor"], "judge_accuracy": r["judge_accuracy"],
              "test_loss": ev["loss"], "nll_iw": ev.get("nll_iw"), "per_class": r["class_accuracy_per_class"],
              "target_met": r["class_accuracy"] >= 0.98 and r["fcd"] <= 55.0}
    (OUT / "cvae_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"cvae latent {args.latent_dim}, {args.epochs} epochs: class accuracy {r['class_accuracy']:.4f}, "
          f"FCD {r['fcd']:.1f} (floor {r['fcd_floor']:.1f}); test loss {ev['loss']:.2f}; "
          f"target (>= 0.98, <= 55.0) {'met' if result['target_met'] else 'not met'}")


if __name__ == "__main__":
    main()
