"""The README's colour-image table: the 64x64 RGB presets trained on the emoji set, scored on
its validation images.

Trains `conv-ae-rgb64` and `fc-ae-rgb64` (their presets' 20 epochs) and `celeba-vae` (15 of its
100 epochs) on emoji-google-64 (1,911 emoji, composited on white; the presets' seeded 10%,
191 images, held out for validation), one after another, each with ``--threads`` torch
threads, then `vaelab eval RUN --split val` (no importance sampling: the table reports no
nll_iw). Prints the table with each model's parameters, its val mse, SSIM and PSNR, its KL and
active units where it has a posterior, its final training and validation losses (over-fitting
shows as the gap) and its training seconds (the epochs' own time from history.csv), beside the
CPU's vector extensions, the precision and the threads. The seconds are a timing only when the
load average at start was under 0.3, which the output says.

    python bench/colour_presets.py                                   # about 15 min alone on 2 cores
    python bench/colour_presets.py --epochs 1 --out /tmp/colour-quick   # checks the script works
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
    emoji_dir,
    load_note,
    loadavg1,
    machine_info,
    machine_line,
    pick,
    read_history,
    run_vaelab,
    write_json,
)

# name -> epochs (the README's table: the AE presets' own 20, and 15 of celeba-vae's 100)
MODELS = {"conv-ae-rgb64": 20, "fc-ae-rgb64": 20, "celeba-vae": 15}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--epochs", type=int, help="the same number of epochs for every model (default: the table's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", type=Path, default=OUT / "colour-presets")
    args = ap.parse_args()
    names = pick(args.models, MODELS, "model(s)")
    emoji = emoji_dir("colour_presets")
    env = child_env(emoji.parent)
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), VAELAB_NO_PROGRESS="1")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "commands.log"
    load_start = loadavg1()
    rows = []
    for name in names:
        epochs = args.epochs or MODELS[name]
        rd = args.out / name
        run_vaelab(["train", "--preset", name, "--data-path", str(emoji), "--epochs", str(epochs),
                    "--out", str(rd), "--overwrite", "--no-eval"], env, log)
        run_vaelab(["eval", str(rd), "--split", "val", "--iw-samples", "0"], env, log)
        ev = json.loads((rd / "eval.json").read_text())
        summary = json.loads((rd / "summary.json").read_text())
        hist = read_history(rd)
        rows.append({"model": name, "params": summary["params"], "epochs": epochs, "n_val": ev["n"],
                     "mse": ev["mse"], "ssim": ev.get("ssim"), "psnr": ev["psnr"], "kl": ev.get("kl"),
                     "active_units": ev.get("active_units"), "train_loss": summary["final_train_loss"],
                     "val_loss": summary.get("final_val_loss"),
                     "train_s": round(sum(float(r["seconds"]) for r in hist), 1), "precision": summary.get("precision")})
        print(f"{name}: done", flush=True)
    info = machine_info()
    result = {"machine": info, "threads": args.threads, "loadavg_1min_start": load_start,
              "loadavg_1min_end": loadavg1(), "rows": rows}
    write_json(args.out / "colour_presets.json", result)
    print(f"\n{machine_line(info, rows[0]['precision'] if rows else None, args.threads, (load_start, loadavg1()))}"
          + load_note(load_start) + "\n")
    print("| preset | parameters | epochs | val mse | val SSIM | val PSNR | KL | active units | train loss | "
          "val loss | training (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        def f(v, spec):
            return "" if v is None else format(v, spec)
        print(f"| `{r['model']}` | {f(r['params'], ',')} | {r['epochs']} | {r['mse']:.4f} | {f(r['ssim'], '.3f')} | "
              f"{r['psnr']:.2f} dB | {f(r['kl'], '.1f')} | {f(r['active_units'], 'd')} | {r['train_loss']:.4f} | "
              f"{f(r['val_loss'], '.4f')} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
