"""The IWAE paper's likelihood table (Burda, Grosse & Salakhutdinov 2016, Table 1), here.

Trains the paper's models with the ``iwae-paper`` preset (784-200-200-50 tanh, Bernoulli,
dynamically binarised MNIST, batch 20, Adam, learning rate 1e-3 * 10^(-i/7) for stage i of
3^i epochs) for the first ``--stages`` stages, every model in its own process with one torch
thread, side by side; then scores each on the whole test set (binarised once, fixed seed)
with the k = 5000 importance-weighted bound, and prints the table beside the published one.

    python bench/likelihood.py --stages 6                      # 364 epochs: hours on 2 cores
    python bench/likelihood.py --stages 2 --eval-k 500 --eval-n 1000 --out bench/out/lik-quick
    python bench/likelihood.py --models vae,iwae5 --beta1 0.99 --stages 4 --tag b99
    python bench/likelihood.py --models vae-2l,iwae5-2l --stages 6   # two stochastic layers
    python bench/likelihood.py --models miwae,piwae,ciwae --stages 5  # Rainforth et al. 2018 (M = K = 8; K = 64)
    python bench/likelihood.py --stages 6 --eval-now                 # score unfinished runs where they are

Everything is resumable: a run killed mid-training continues from its last epoch, a
finished run is not trained again, and a finished evaluation is reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common
from common import OUT, REPO, child_env, data_root, evaluate_test, pick, write_json

# name -> (preset, overrides, paper NLL, independent re-implementation NLL or None); test NLL at k = 5000.
# One stochastic layer (Table 1, first block) and two (its second architecture, 100 and 50 units).
MODELS = {
    "vae": ("iwae-paper", ["model.objective=elbo"], 86.76, 86.35),
    "iwae5": ("iwae-paper", ["model.objective=iwae", "model.k=5"], 85.54, 85.18),
    "iwae50": ("iwae-paper", ["model.objective=iwae", "model.k=50"], 84.78, 84.59),
    "vae-2l": ("iwae-paper-2l", ["model.objective=elbo"], 85.33, None),
    "iwae5-2l": ("iwae-paper-2l", ["model.objective=iwae", "model.k=5"], 83.89, None),
    "iwae50-2l": ("iwae-paper-2l", ["model.objective=iwae", "model.k=50"], 82.90, None),
    # Rainforth et al. (2018), "Tighter Variational Bounds are Not Necessarily Better", on the same network and
    # schedule (dynamically binarised MNIST, 3,280 epochs): the paper's test NLL as Pythae's reproducibility README
    # quotes it, and Pythae's own reproduction (examples/scripts/reproducibility/{miwae,piwae,ciwae}.py).
    "miwae": ("iwae-paper", ["model.objective=miwae", "model.miwae.m=8", "model.miwae.k=8"], 84.97, 85.09),
    "piwae": ("iwae-paper", ["model.objective=piwae", "model.piwae.m=8", "model.piwae.k=8"], 84.46, 84.58),
    "ciwae": ("iwae-paper", ["model.objective=ciwae", "model.ciwae.beta=0.5", "model.ciwae.k=64"], 84.57, 84.74),
}


def stage_epochs(stages: int) -> int:
    return sum(3**i for i in range(stages))


def run_dir(out: Path, name: str, args) -> Path:
    return out / f"{name}-s{args.stages}{'-' + args.tag if args.tag else ''}"


def train_cmd(name: str, rd: Path, args) -> list[str] | None:
    """The vaelab command that (re)starts training, or None when the run is finished."""
    epochs = stage_epochs(args.stages)
    summary = rd / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("epochs") == epochs:
        return None
    preset, overrides = MODELS[name][0], MODELS[name][1]
    sets = [*overrides, f"train.adam_beta1={args.beta1}", f"train.seed={args.seed}", "train.progress=false"]
    sets += list(args.set or [])
    base = [sys.executable, "-m", "vaelab", "train"]
    if (rd / "checkpoint.safetensors").is_file():
        return base + ["--resume", str(rd), "--epochs", str(epochs), "--no-eval"]
    return base + ["--preset", preset, "--epochs", str(epochs), "--out", str(rd), "--no-eval", "--overwrite",
                   *[a for s in sets for a in ("--set", s)]]


def trained(rd: Path) -> tuple[int, float]:
    """(epochs trained, training hours) of a run directory, finished or not (history.csv)."""
    with open(rd / "history.csv") as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["epoch"]), sum(float(r["seconds"]) for r in rows) / 3600


def evaluate(rd: Path, args, env) -> dict:
    """nll_iw with k samples over the test split (or its first --eval-n images), cached
    per number of epochs trained (a resumed run is scored again)."""
    cache = rd / f"likelihood_k{args.eval_k}_n{args.eval_n or 'all'}_e{trained(rd)[0]}.json"
    return evaluate_test(rd, cache, args.eval_k, args.eval_n or 0, args.threads, env)


def merged_rows(old: dict, new: dict) -> list[dict]:
    """The table's rows: ``new``'s, after those of ``old`` (the file already there) for models
    ``new`` did not run, when both were scored with the same settings. `--models vae-2l,iwae5-2l`
    then adds to the one-layer rows instead of replacing them."""
    return common.merged_rows(old, new, ("stages", "beta1", "seed", "eval_k"), key=lambda r: r["model"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, default=6, help="schedule stages 0..N-1 (6: 364 epochs; 8: the paper's)")
    ap.add_argument("--models", default="vae,iwae5", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--beta1", type=float, default=0.9, help="Adam beta1 (paper 0.9; their code 0.99)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-k", type=int, default=5000, help="importance samples for the test NLL")
    ap.add_argument("--eval-n", type=int, default=0, help="score only the first N test images (0: all 10,000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--set", action="append", help="extra vaelab --set for every model")
    ap.add_argument("--tag", default="", help="suffix for the run folders (to keep variants apart)")
    ap.add_argument("--out", type=Path, default=OUT / "likelihood")
    ap.add_argument("--eval-now", action="store_true",
                    help="train nothing: score every run at its last checkpoint, finished or not")
    args = ap.parse_args()
    names = pick(args.models, MODELS, "model(s)")
    env = child_env(data_root("likelihood.py"))
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), VAELAB_NO_PROGRESS="1")
    args.out.mkdir(parents=True, exist_ok=True)

    # Train side by side: one process per model, each with its own thread(s).
    procs = {}
    for name in names:
        rd = run_dir(args.out, name, args)
        cmd = train_cmd(name, rd, args)
        if args.eval_now:
            if not (rd / "history.csv").is_file():
                sys.exit(f"{name}: nothing trained yet in {rd}")
            print(f"{name}: scored at epoch {trained(rd)[0]} of {stage_epochs(args.stages)} ({rd})")
            continue
        if cmd is None:
            print(f"{name}: trained ({rd})")
            continue
        rd.mkdir(parents=True, exist_ok=True)
        log = open(rd.parent / f"{rd.name}.train.log", "a")
        print(f"{name}: training {stage_epochs(args.stages)} epochs into {rd}")
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (p, log) in procs.items():
        if p.wait() != 0:
            sys.exit(f"{name}: training failed (exit {p.returncode}); see {log.name}")
        log.close()

    rows = []
    for name in names:
        rd = run_dir(args.out, name, args)
        epochs, hours = trained(rd)
        t0 = time.perf_counter()
        ev = evaluate(rd, args, env)
        rows.append({"model": name, "nll": ev["nll_iw"], "paper": MODELS[name][2], "reimpl": MODELS[name][3],
                     "active_units": ev["active_units"], "epochs": epochs,
                     "finished": epochs == stage_epochs(args.stages), "train_hours": round(hours, 2),
                     "eval_seconds": ev.get("eval_seconds", round(time.perf_counter() - t0, 1)),
                     "neg_elbo": ev.get("nelbo", ev["loss"]), "n": ev["n"]})
    result = {"stages": args.stages, "epochs": stage_epochs(args.stages), "beta1": args.beta1, "seed": args.seed,
              "eval_k": args.eval_k, "eval_n": rows[0]["n"] if rows else 0, "threads": args.threads,
              "loadavg": os.getloadavg(), "rows": rows}
    path = args.out / f"likelihood-s{args.stages}{'-' + args.tag if args.tag else ''}.json"
    rows = result["rows"] = merged_rows(json.loads(path.read_text()) if path.is_file() else {}, result)
    write_json(path, result)
    print(f"\nTest NLL (k = {args.eval_k}, {result['eval_n']:,} test images), stages 0..{args.stages - 1} "
          f"({result['epochs']} epochs), Adam beta1 {args.beta1}\n")
    print("| model | NLL here | NLL paper | NLL re-implementation | active units | epochs | train hours | eval s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        reimpl = "" if r["reimpl"] is None else f"{r['reimpl']:.2f}"
        print(f"| {r['model']} | {r['nll']:.2f} | {r['paper']:.2f} | {reimpl} | {r['active_units']} | "
              f"{r['epochs']}{'' if r['finished'] else ' (unfinished)'} | {r['train_hours']:.2f} | "
              f"{r['eval_seconds']:.0f} |")


if __name__ == "__main__":
    main()
