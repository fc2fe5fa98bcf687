"""Several processes on one CPU node: `vaelab train --nproc N` against one process.

Trains the `mlp-vae` preset for ``--epochs`` epochs with ``--nproc 1`` and with ``--nproc 2``
(DistributedDataParallel over gloo; each process gets cores / N torch threads, as `--nproc`
gives them), alternately, ``--repeat`` times each, and prints every epoch's seconds (from
history.csv) and the final training loss of each, beside the CPU's vector extensions, the
precision and the load average. The README's "Train on several processes" quotes it. The
seconds are a timing only when the load average at start was under 0.3; the output says so.

    python bench/ddp_cpu.py                         # 2 epochs, 2 repeats: about 2 minutes on 2 cores
    python bench/ddp_cpu.py --epochs 1 --limit 2000 --repeat 1 --out /tmp/ddp-quick   # checks the script works
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    OUT,
    child_env,
    data_root,
    load_note,
    loadavg1,
    machine_info,
    machine_line,
    read_history,
    run_vaelab,
    write_json,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mlp-vae")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--nproc", default="1,2", help="comma-separated numbers of processes")
    ap.add_argument("--limit", type=int, default=0, help="train on a seeded random N training images (0: all)")
    ap.add_argument("--out", type=Path, default=OUT / "ddp-cpu")
    args = ap.parse_args()
    nprocs = [int(n) for n in args.nproc.split(",")]
    env = child_env(data_root("ddp_cpu.py"))
    env["VAELAB_NO_PROGRESS"] = "1"
    env.pop("OMP_NUM_THREADS", None)  # --nproc sets each process's threads
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    load_start = loadavg1()
    rows = []
    for rep in range(args.repeat):
        for n in nprocs:
            rd = args.out / f"nproc{n}-rep{rep}"
            extra = ["--set", f"data.limit={args.limit}"] if args.limit else []
            run_vaelab(["train", "--preset", args.preset, "--epochs", str(args.epochs), "--nproc", str(n),
                        "--out", str(rd), "--overwrite", "--no-eval", *extra], env, args.out / "commands.log")
            summary = json.loads((rd / "summary.json").read_text())
            rows.append({"nproc": n, "repeat": rep, "threads_per_process": summary.get("threads"),
                         "precision": summary.get("precision"),
                         "epoch_s": [round(float(r["seconds"]), 2) for r in read_history(rd)],
                         "final_train_loss": summary["final_train_loss"]})
    result = {"machine": info, "preset": args.preset, "epochs": args.epochs, "limit": args.limit,
              "loadavg_1min_start": load_start, "loadavg_1min_end": loadavg1(), "rows": rows}
    write_json(args.out / "ddp_cpu.json", result)
    print(f"\n{machine_line(info, rows[0]['precision'], 'cores / processes', (load_start, loadavg1()))}"
          + load_note(load_start) + "\n")
    print("| processes | threads each | repeat | epoch seconds | final train loss |")
    print("|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['nproc']} | {r['threads_per_process']} | {r['repeat']} | "
              f"{', '.join(f'{s:.2f}' for s in r['epoch_s'])} | {r['final_train_loss']:.2f} |")


if __name__ == "__main__":
    main()
