"""Inpainting benchmark: judge accuracy on inpainted MNIST test digits, per method.

Trains (or reuses) a VAE, hides a 10x10 centre patch of the first N test digits, fills it
with each method, and reports the judge's accuracy on the inpainted digits against the
true labels, beside the masked inputs (the baseline) and the originals, plus the MSE on
the hidden pixels and SSIM. Target (from the issue): iterative / latent-opt >= 90%, above
both the masked inputs and the `single` method.

    python bench/inpaint_bench.py                     # mlp-vae (latent 20), 20 epochs, n=1000
    python bench/inpaint_bench.py --quick             # tiny run: checks the script, judges nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, data_root, machine_info, machine_line, write_json  # noqa: E402

METHODS = ("single", "iterative", "latent-opt")
TARGET = 0.90


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mlp-vae")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--limit", type=int, help="training images (quick checks)")
    p.add_argument("--run", help="reuse this trained run directory instead of training")
    p.add_argument("--n", type=int, default=1000, help="test images to inpaint")
    p.add_argument("--mask", default="center:10")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--iterations", type=int, default=50, help="iterative: passes")
    p.add_argument("--steps", type=int, default=300, help="latent-opt: Adam steps")
    p.add_argument("--judge", help="judge folder (default: vaelab's cache; trained on first use, ~3 min)")
    p.add_argument("--judge-epochs", type=int, default=6, help="epochs if the judge must be trained")
    p.add_argument("--out", default=str(OUT / "inpaint"))
    p.add_argument("--quick", action="store_true",
                   help="tiny run to check the script works: 2 epochs on 3000 images, n=200, a 1-epoch judge")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.limit, args.n, args.steps, args.judge_epochs = 2, args.limit or 3000, 200, 100, 1
        args.out = str(OUT / "inpaint-quick")
        args.judge = args.judge or str(Path(args.out) / "judge")
    root = data_root("inpaint_bench")

    import vaelab
    from vaelab.latent.inpaint import evaluate_inpainting
    from vaelab.evaluation.judge import get_judge

    out = Path(args.out)
    info = machine_info()
    t0 = time.perf_counter()
    if args.run:
        run = vaelab.Run.load(args.run, data_dir=str(root))
        run_dir = Path(args.run)
    else:
        run_dir = out / f"run-{args.preset}"
        overrides = [f"data.data_dir={root}", f"train.epochs={args.epochs}", f"model.latent_dim={args.latent_dim}",
                     "data.train_split=train", "data.val=test"]
        overrides += [f"data.limit={args.limit}"] if args.limit else []
        run = vaelab.train(args.preset, run_dir, overrides=overrides + args.overrides, evaluate_after=False)
    train_s = time.perf_counter() - t0
    judge = get_judge(run.config.data, folder=args.judge, epochs=args.judge_epochs)
    options = {"iterative": {"iterations": args.iterations}, "latent-opt": {"steps": args.steps}}
    results = {}
    for method in args.methods.split(","):
        r = evaluate_inpainting(run, mask=args.mask, n=args.n, method=method, split="test", judge=judge,
                                out=out / method, **options.get(method, {}))
        results[method] = r
        print(f"{method:<11} judge acc {r['judge_accuracy']:.4f} (masked {r['judge_accuracy_masked']:.4f}, "
              f"original {r['judge_accuracy_original']:.4f})  masked_mse {r['masked_mse']:.4f}  "
              f"ssim {r['ssim']:.4f}  {r['seconds']:.1f}s", flush=True)

    masked = next(iter(results.values()))["judge_accuracy_masked"]
    single = results.get("single", {}).get("judge_accuracy")
    targets = {m: {"accuracy": r["judge_accuracy"], ">= 0.90": r["judge_accuracy"] >= TARGET,
                   "> masked": r["judge_accuracy"] > masked,
                   "> single": None if single is None else r["judge_accuracy"] > single}
               for m, r in results.items() if m != "single"}
    lines = ["| method | judge accuracy | masked_mse | SSIM | seconds |", "|---|---:|---:|---:|---:|",
             f"| masked input (baseline) | {masked:.4f} | {next(iter(results.values()))['masked_mse_input']:.4f} | "
             f"{next(iter(results.values()))['ssim_input']:.4f} | |"]
    lines += [f"| {m} | {r['judge_accuracy']:.4f} | {r['masked_mse']:.4f} | {r['ssim']:.4f} | {r['seconds']:.1f} |"
              for m, r in results.items()]
    lines.append(f"| original | {next(iter(results.values()))['judge_accuracy_original']:.4f} | | | |")
    table = "\n".join(lines)
    report = {"machine": info, "quick": args.quick, "run_dir": str(run_dir), "preset": args.preset,
              "config": run.config.to_dict(), "train_seconds": round(train_s, 1), "judge": judge.meta,
              "mask": args.mask, "n": args.n, "results": results,
              "targets": None if args.quick else targets, "table_markdown": table}
    write_json(out / "inpaint_bench.json", report)
    print()
    print(table)
    if args.quick:
        print("\n(quick run: checks that the script works; the targets are not judged)")
    else:
        print("\n" + json.dumps(targets, indent=1))
    print(machine_line(info))
    print(f"wrote {out / 'inpaint_bench.json'}")


if __name__ == "__main__":
    main()
