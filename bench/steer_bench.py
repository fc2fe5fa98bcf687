"""Steering benchmark: can the label predictor move MNIST test digits to another class?

Trains `mlp-vae` (latent 16, 20 epochs) twice on MNIST, with the label predictor
(`model.predictor_weight`, default 10) and without it (what the predictor costs in test
loss), then runs steer-bench on the predictor run: random (test digit, other class)
pairs, each code steered towards its target class, and the trained MNIST judge (not the
predictor) decides whether the final image shows the target. Target (from the issue):
success_rate >= 0.90. Ablations at temperature 1 (the predictor's plain log-probability)
and without the prior show what each part of the objective does.

    python bench/steer_bench.py                 # trains both runs (~7 min on 1 thread), 100 and 1000 pairs
    python bench/steer_bench.py --run R --baseline B   # reuse trained runs
    python bench/steer_bench.py --quick         # tiny run: checks the script, judges nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, data_root, machine_info, machine_line, write_json  # noqa: E402

TARGET = 0.90
JUDGE = OUT / "generation-full" / "judge-mnist"  # trained by generation_bench.py (test accuracy 0.9925)
EVAL_KEYS = ("loss", "recon", "kl", "nll_iw", "mse", "ssim", "predictor", "predictor_accuracy")


def train(preset: str, run_dir: Path, overrides: list[str]):
    import vaelab

    t0 = time.perf_counter()
    run = vaelab.train(preset, run_dir, overrides=overrides)
    return run, round(time.perf_counter() - t0, 1)


def main(argv: list[str] | None = None) -> None:
    from vaelab.latent.steer import DEFAULT_LR, DEFAULT_PRIOR_WEIGHT, DEFAULT_STEPS, DEFAULT_TEMPERATURE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mlp-vae")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override (both runs)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--predictor-weight", type=float, default=10.0)
    p.add_argument("--limit", type=int, help="training images (quick checks)")
    p.add_argument("--run", help="reuse this trained predictor run instead of training one")
    p.add_argument("--baseline", help="reuse this trained run without a predictor")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without a predictor")
    p.add_argument("--pairs", default="100,1000", help="comma-separated pair counts, one steer-bench each")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--prior-weight", type=float, default=DEFAULT_PRIOR_WEIGHT)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--no-ablations", action="store_true", help="skip the temperature-1 / no-prior rows")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the pairs")
    p.add_argument("--judge", default=str(JUDGE), help="trained judge folder (not retrained here)")
    p.add_argument("--out", default=str(OUT / "steer"))
    p.add_argument("--quick", action="store_true",
                   help="tiny run to check the script works: 2 epochs on 3000 images, 100 pairs, a 1-epoch judge")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.limit, args.pairs = 2, args.limit or 3000, "100"
        args.out = str(OUT / "steer-quick")
    root = data_root("steer_bench")

    import vaelab
    from vaelab.evaluation.judge import get_judge, load_judge
    from vaelab.latent.steer import steer_benchmark

    out = Path(args.out)
    info = machine_info()
    base = [f"data.data_dir={root}", f"train.epochs={args.epochs}", f"model.latent_dim={args.latent_dim}",
            "data.train_split=train", "data.val=test"] + ([f"data.limit={args.limit}"] if args.limit else [])
    timings = {}
    if args.run:
        run = vaelab.Run.load(args.run, data_dir=str(root))
        run_dir = Path(args.run)
    else:
        run_dir = out / "run-predictor"
        run, timings["train_predictor_s"] = train(
            args.preset, run_dir, base + [f"model.predictor_weight={args.predictor_weight}"] + args.overrides)
    baseline_dir = None if args.no_baseline else Path(args.baseline) if args.baseline else out / "run-baseline"
    if baseline_dir is not None and not args.baseline:
        _, timings["train_baseline_s"] = train(args.preset, baseline_dir, base + args.overrides)

    if args.quick:
        judge = get_judge(run.config.data, folder=out / "judge", epochs=1)
    elif not (Path(args.judge) / "judge.safetensors").is_file():
        sys.exit(f"steer_bench: no trained judge in {args.judge}; run bench/generation_bench.py first "
                 "(or pass --judge DIR)")
    else:
        judge = load_judge(args.judge)

    settings = {"steps": args.steps, "lr": args.lr, "prior_weight": args.prior_weight,
                "temperature": args.temperature}
    results = {}
    for n in (int(v) for v in args.pairs.split(",")):
        r = steer_benchmark(run, pairs=n, judge=judge, seed=args.seed, split="test", out=out / f"pairs-{n}",
                            **settings)
        results[f"pairs-{n}"] = {k: v for k, v in r.items() if k != "records"}
        print(f"{n:>5} pairs: judge success {r['success_rate']:.4f}  predictor success "
              f"{r['predictor_success_rate']:.4f}  (before steering: {r['success_rate_start']:.4f}; "
              f"p(target) {r['target_prob_start']:.3f} -> {r['target_prob_end']:.3f})  {r['seconds']:.1f}s",
              flush=True)
    ablations = {}
    if not args.no_ablations:
        n = max(int(v) for v in args.pairs.split(","))
        for name, change in (("temperature 1 (plain log-probability)", {"temperature": 1.0}),
                             ("temperature 1, no prior", {"temperature": 1.0, "prior_weight": 0.0}),
                             ("no prior", {"prior_weight": 0.0}),
                             ("prior weight 1", {"prior_weight": 1.0})):
            r = steer_benchmark(run, pairs=n, judge=judge, seed=args.seed, split="test", **{**settings, **change})
            ablations[name] = {k: r[k] for k in ("success_rate", "predictor_success_rate", "latent_norm_end",
                                                 "temperature", "prior_weight", "pairs")}
            print(f"  ablation {name:<40} judge success {r['success_rate']:.4f}  predictor "
                  f"{r['predictor_success_rate']:.4f}  |z| at the end {r['latent_norm_end']:.2f}", flush=True)

    def eval_of(d: Path | None) -> dict | None:
        if d is None or not (d / "eval.json").is_file():
            return None
        e = json.loads((d / "eval.json").read_text())
        return {k: e[k] for k in EVAL_KEYS if k in e}

    with_pred, without = eval_of(run_dir), eval_of(baseline_dir)
    lines = ["| pairs | judge success rate | predictor success rate | judge on unsteered reconstructions |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['pairs']} | **{r['success_rate']:.4f}** | {r['predictor_success_rate']:.4f} | "
              f"{r['success_rate_start']:.4f} |" for r in results.values()]
    if with_pred:
        lines += ["", "| run (test split) | loss | recon | kl | nll_iw (K=10) | predictor accuracy |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, e in (("with predictor", with_pred), ("without predictor", without)):
            if e:
                acc = f"{e['predictor_accuracy']:.4f}" if "predictor_accuracy" in e else ""
                lines.append(f"| {name} | {e['loss']:.2f} | {e['recon']:.2f} | {e['kl']:.2f} | "
                             f"{e.get('nll_iw', float('nan')):.2f} | {acc} |")
    table = "\n".join(lines)
    best = max(results.values(), key=lambda r: r["pairs"])
    report = {"machine": info, "quick": args.quick, "run_dir": str(run_dir),
              "baseline_dir": None if baseline_dir is None else str(baseline_dir), "preset": args.preset,
              "config": run.config.to_dict(), "timings": timings, "judge": judge.meta, "settings": settings,
              "results": results, "ablations": ablations, "eval_with_predictor": with_pred,
              "eval_without_predictor": without,
              "target": None if args.quick else {"success_rate": best["success_rate"], ">= 0.90":
                                                 best["success_rate"] >= TARGET},
              "table_markdown": table}
    write_json(out / "steer_bench.json", report)
    print()
    print(table)
    if args.quick:
        print("\n(quick run: checks that the script works; the target is not judged)")
    print(machine_line(info))
    print(f"wrote {out / 'steer_bench.json'}")


if __name__ == "__main__":
    main()
