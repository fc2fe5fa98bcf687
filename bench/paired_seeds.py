"""One setting against another over seeds: bench/zoo.py rows of one family, paired seed by seed.

Each arm is a list of folders bench/zoo.py wrote (``{seed}`` in a folder stands for the seed);
for each seed the first folder whose FAMILY run was trained with that seed (its config.json)
gives the arm's row. The table lists every seed's row, each arm's mean and standard deviation,
and the paired differences (B - A) with their mean, standard deviation and paired t-test
(scipy.stats.ttest_rel) over the seeds both arms have.

    python bench/paired_seeds.py --family factor-vae --seeds 1-6 \\
        --arm "bf16=bench/out/zoo-fvprec/disc-fp32-false-s{seed},bench/out/zoo-mnist" \\
        --arm "disc fp32=bench/out/zoo-fvprec/disc-fp32-true-s{seed}"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy import stats

METRICS = {"fcd_prior": "FCD prior", "fcd_gmm": "FCD GMM", "mse": "MSE", "ssim": "SSIM", "nll": "NLL",
           "loss": "test loss"}


def seeds_of(text: str) -> list[int]:
    """"1-6" or "1,3,5" (or both: "1-3,7")."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def row(folders: list[str], family: str, seed: int) -> dict | None:
    """The zoo row of ``family`` trained with ``seed`` in the first of ``folders`` that has one."""
    for f in folders:
        run = Path(f.format(seed=seed)) / family
        cfg, zoo_row = run / "config.json", run / "zoo_row.json"
        if cfg.is_file() and zoo_row.is_file() and json.loads(cfg.read_text())["train"]["seed"] == seed:
            return json.loads(zoo_row.read_text())
    return None


def fmt(v: float | None, key: str) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if key == "mse" else f"{v:.3f}" if key == "ssim" else f"{v:.1f}" if "fcd" in key else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, help="the zoo family (a folder name inside each zoo output)")
    ap.add_argument("--seeds", default="1-3", help="e.g. 1-6 or 1,2,5")
    ap.add_argument("--arm", action="append", required=True, metavar="NAME=FOLDER[,FOLDER...]",
                    help="two arms: a name, then bench/zoo.py output folders ({seed} is replaced)")
    ap.add_argument("--metrics", default="fcd_prior,fcd_gmm,mse,ssim,nll,loss")
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args()
    if len(args.arm) != 2 or any("=" not in a for a in args.arm):
        sys.exit("give two arms, each as --arm NAME=FOLDER[,FOLDER...]")
    arms = [(a.split("=", 1)[0], a.split("=", 1)[1].split(",")) for a in args.arm]
    metrics = [m for m in args.metrics.split(",") if m]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        sys.exit(f"unknown metric {unknown[0]}; known: {', '.join(METRICS)}")
    seeds = seeds_of(args.seeds)
    rows = {name: {s: row(folders, args.family, s) for s in seeds} for name, folders in arms}
    (a_name, a), (b_name, b) = rows.items()
    print(f"{args.family}: {b_name} against {a_name}\n")
    print("| seed | arm | " + " | ".join(METRICS[m] for m in metrics) + " |")
    print("|---:|---|" + "---:|" * len(metrics))
    for s in seeds:
        for name, arm in rows.items():
            r = arm[s]
            cells = [fmt(r.get(m), m) for m in metrics] if r else ["(not run)"] + [""] * (len(metrics) - 1)
            print(f"| {s} | {name} | " + " | ".join(cells) + " |")
    paired = [s for s in seeds if a[s] and b[s]]
    summary: dict = {"family": args.family, "arms": [a_name, b_name], "seeds_paired": paired, "metrics": {}}
    lines = []
    for m in metrics:
        xa = [a[s][m] for s in paired if a[s].get(m) is not None and b[s].get(m) is not None]
        xb = [b[s][m] for s in paired if a[s].get(m) is not None and b[s].get(m) is not None]
        if len(xa) < 2:
            continue
        d = [y - x for x, y in zip(xa, xb)]
        t = stats.ttest_rel(xb, xa)
        entry = {"mean_a": statistics.mean(xa), "sd_a": statistics.stdev(xa), "mean_b": statistics.mean(xb),
                 "sd_b": statistics.stdev(xb), "mean_diff": statistics.mean(d), "sd_diff": statistics.stdev(d),
                 "t": float(t.statistic), "p": float(t.pvalue), "n": len(d), "b_lower": sum(x < 0 for x in d)}
        summary["metrics"][m] = entry
        lines.append(f"| {METRICS[m]} | {fmt(entry['mean_a'], m)} ({fmt(entry['sd_a'], m)}) | "
                     f"{fmt(entry['mean_b'], m)} ({fmt(entry['sd_b'], m)}) | {entry['mean_diff']:+.4g} "
                     f"({entry['sd_diff']:.3g}) | {entry['t']:.2f} | {entry['p']:.2f} | {entry['b_lower']} of {len(d)} |")
    print(f"\nPaired over seeds {', '.join(map(str, paired)) or 'none'} (B = {b_name}, A = {a_name}):\n")
    print("| metric | A mean (sd) | B mean (sd) | B - A, mean (sd) | t | p | B lower on |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({**summary, "rows": {n: {str(s): r for s, r in arm.items()}
                                                               for n, arm in rows.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
