"""Does the model contract slow the presets? Old and new vaelab side by side (issue 11).

Runs the same commands from two checkouts, alternating old and new, each as a whole
process with the other checkout's code on PYTHONPATH (one virtual environment):

* ``mlp-vae``, 10 epochs with the test set each epoch, its evaluation and figures: the
  whole process's wall time;
* ``conv-vae``, one epoch over all 70,000 digits (``--train-split train+test --no-eval``):
  the epoch's ``seconds`` in history.csv;
* with the new checkout only, the same conv-vae epoch *with* its final evaluation
  (10 importance samples over the 10,000 test digits, figures): the whole process
  against its epoch time (the issue's target: under 1.5x).

    git worktree add --detach ../wt-precontract 1880d92      # the last commit before the contract
    python bench/before_after.py --old ../wt-precontract --repeat 2

Reported: every run, medians, and new / old ratios (the target: within 5%).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, REPO, child_env, data_root, machine_info, machine_line


def timed(tree: Path, args: list[str], env: dict, log: Path) -> float:
    env = dict(env, PYTHONPATH=str(tree / "src"))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "vaelab", *args], cwd=tree, env=env, stdout=f,
                              stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"vaelab {' '.join(args)} in {tree} failed (exit {proc.returncode}); see {log}")
    return wall


def epoch_seconds(run: Path) -> float:
    with open(run / "history.csv") as f:
        return float(list(csv.DictReader(f))[-1]["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="checkout of the commit before the change")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT / "before_after")
    args = ap.parse_args()
    if not (args.old / "src" / "vaelab").is_dir():
        sys.exit(f"--old {args.old}: no src/vaelab there; make it with git worktree add (see --help)")
    env = child_env(data_root("before_after.py"))
    env.update(OMP_NUM_THREADS=str(args.threads), VAELAB_NO_PROGRESS="1")
    args.out.mkdir(parents=True, exist_ok=True)
    trees = {"old": args.old.resolve(), "new": REPO}
    runs: list[dict] = []
    for r in range(args.repeat):
        for side, tree in trees.items():
            run = args.out / f"{side}-mlp"
            wall = timed(tree, ["train", "--preset", "mlp-vae", "--out", str(run), "--overwrite"], env,
                         args.out / f"{side}-mlp-{r}.log")
            runs.append({"side": side, "job": "mlp-vae whole process s", "value": round(wall, 2), "repeat": r})
            run = args.out / f"{side}-conv"
            timed(tree, ["train", "--preset", "conv-vae", "--train-split", "train+test", "--epochs", "1", "--no-eval",
                         "--out", str(run), "--overwrite"], env, args.out / f"{side}-conv-{r}.log")
            runs.append({"side": side, "job": "conv-vae epoch s", "value": epoch_seconds(run), "repeat": r})
            print(runs[-2], runs[-1], flush=True)
        run = args.out / "new-conv-eval"
        wall = timed(REPO, ["train", "--preset", "conv-vae", "--train-split", "train+test", "--epochs", "1",
                            "--out", str(run), "--overwrite"], env, args.out / f"new-conv-eval-{r}.log")
        runs.append({"side": "new", "job": "conv-vae 1 epoch + eval, whole process s", "value": round(wall, 2),
                     "repeat": r})
        runs.append({"side": "new", "job": "conv-vae 1 epoch + eval, its epoch s", "value": epoch_seconds(run),
                     "repeat": r})
        print(runs[-2], runs[-1], flush=True)
    med = {}
    for row in runs:
        med.setdefault((row["job"], row["side"]), []).append(row["value"])
    med = {k: statistics.median(v) for k, v in med.items()}
    summary = {"machine": machine_info(), "threads": args.threads, "old": str(args.old), "runs": runs,
               "medians": {f"{j} [{s}]": v for (j, s), v in med.items()}, "loadavg_end": os.getloadavg()}
    print(machine_line(summary["machine"], threads=args.threads))
    print("| measure | old | new | new / old |\n|---|---:|---:|---:|")
    for job in ("mlp-vae whole process s", "conv-vae epoch s"):
        o, n = med[(job, "old")], med[(job, "new")]
        summary[f"ratio {job}"] = round(n / o, 3)
        print(f"| {job} | {o:.1f} | {n:.1f} | {n / o:.3f} |")
    whole = med[("conv-vae 1 epoch + eval, whole process s", "new")]
    ep = med[("conv-vae 1 epoch + eval, its epoch s", "new")]
    summary["conv-vae whole process / epoch"] = round(whole / ep, 3)
    print(f"\nconv-vae --train-split train+test --epochs 1 with its evaluation: whole process {whole:.1f} s, "
          f"epoch {ep:.1f} s, ratio {whole / ep:.2f} (target < 1.5)")
    (args.out / "before_after.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
