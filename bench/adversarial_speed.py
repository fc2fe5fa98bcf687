"""What an adversarial step costs: the epoch of each family with a second network against the VAE's (issue 19).

Each family trains one epoch of MNIST's 60,000 digits on the ``mlp-vae`` preset (784-400-20,
batch 128, Adam 1e-3), ``--kind`` the family with its defaults, no evaluation, as a whole
process; the epoch's seconds come from history.csv. The families run in turn, ``--repeat``
times, and the medians are compared with the VAE's. A family with a discriminator does one
more forward and backward per network per batch, so its epoch costs what those passes cost:
FactorVAE's discriminator (5 x 1000 hidden units) is several times the VAE's own
multiply-adds; the AAE's and the VAE-GAN's are smaller (their defaults).

    python bench/adversarial_speed.py                          # 2 threads, 2 repeats
    python bench/adversarial_speed.py --families vae,factor-vae --repeat 1 --threads 1
    python bench/adversarial_speed.py --families vae,factor-vae,factor-vae:model.factorvae.disc_fp32=false --repeat 3

A family may carry settings of its own after colons (``KIND:KEY=VALUE:KEY=VALUE``), to time
one option against its default; its run folder is named after the whole entry.

Measure alone: the load average is printed before every run and stored with the result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import OUT, child_env, data_root, loadavg1, machine_info, machine_line, read_history, run_timed

DEFAULT = "vae,factor-vae,aae,vae-gan"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=DEFAULT,
                    help=f"comma-separated --kind values, each optionally KIND:KEY=VALUE:... (default {DEFAULT})")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", help="train.precision (auto: bf16 where the CPU has it)")
    ap.add_argument("--limit", type=int, help="train on a seeded subset of N digits (a correctness check, not a timing)")
    ap.add_argument("--out", default=str(OUT / "adversarial_speed"))
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    if "vae" not in families:
        sys.exit("--families must include vae (the reference)")
    env = child_env(data_root("adversarial_speed.py"))
    env.update(OMP_NUM_THREADS=str(args.threads), VAELAB_NO_PROGRESS="1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = loadavg1()
    seconds: dict[str, list[float]] = {f: [] for f in families}
    runs = []
    for r in range(args.repeat):
        for fam in families:
            kind, *sets = fam.split(":")
            name = fam.replace(":", "__")  # a folder and log name without the colons
            run = out / name
            cmd = [sys.executable, "-m", "vaelab", "train", "--preset", "mlp-vae", "--kind", kind, "--epochs", "1",
                   "--no-eval", "--out", str(run), "--overwrite", "--set", f"train.threads={args.threads}",
                   "--set", f"train.precision={args.precision}", *[a for s in sets for a in ("--set", s)]
                   ] + (["--limit", str(args.limit)] if args.limit else [])
            res = run_timed(cmd, env, out / f"{name}-{r}.log")
            epoch = read_history(run)[-1]["seconds"]
            precision = json.loads((run / "summary.json").read_text()).get("precision")
            seconds[fam].append(epoch)
            runs.append({"family": fam, "repeat": r, "epoch_s": epoch, "wall_s": res["wall_s"],
                         "precision": precision, "load_before": res["loadavg_1min_before"]})
            print(f"{fam:12s} repeat {r}: epoch {epoch:.2f} s (process {res['wall_s']:.1f} s, precision {precision}, "
                  f"load before {res['loadavg_1min_before']:.2f})", flush=True)
    med = {f: statistics.median(v) for f, v in seconds.items()}
    info = machine_info()
    used = sorted({r["precision"] for r in runs})  # what the runs trained in (summary.json), not the machine's auto
    print(machine_line(info, precision=f"{'/'.join(used)} (--precision {args.precision})", threads=args.threads,
                       load=(load_start, loadavg1())))
    print("| family | epoch s (median) | x the VAE's |\n|---|---:|---:|")
    for f in families:
        print(f"| {f} | {med[f]:.2f} | {med[f] / med['vae']:.2f} |")
    (out / "adversarial_speed.json").write_text(json.dumps(
        {"machine": info, "threads": args.threads, "limit": args.limit, "runs": runs, "median_epoch_s": med,
         "ratio_to_vae": {f: round(med[f] / med["vae"], 3) for f in families}, "loadavg_start": load_start, "loadavg_end": loadavg1()},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
