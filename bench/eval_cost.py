"""What an evaluation costs: a whole `vaelab train` process against the epochs inside it.

    python bench/eval_cost.py                # mlp-vae (10 epochs) and conv-vae (train+test, 1 epoch)
    python bench/eval_cost.py --only conv    # one preset
    python bench/eval_cost.py --quick        # tiny runs on generated images: checks the script, not a measurement
    python bench/eval_cost.py --set train.precision=fp32   # as `auto` runs on a CPU without native bf16

Each run is timed as a whole process (time.perf_counter around subprocess.run) and split
with what the run records: the epochs (history.csv ``seconds``, summed) and summary.json's
``timing``: start-up (interpreter, imports, config), data loading, setup (model, optimizer),
the per-epoch validation passes, checkpoints, the final evaluation (eval.json), the figures,
and ``exit_s`` (the wall time after the run's last timestamp: interpreter teardown).
``unaccounted_s`` is what no part covers; it should stay within a few per cent.

Targets (checked only when the 1-minute load average at start is below 0.3, else the
verdict is "under load: not comparable"): conv-vae's whole process under 1.3x its epoch;
mlp-vae's time outside its epochs at most 10% of its process.
Results go to bench/out/eval_cost.json (runs under bench/out/eval-cost/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import (
    OUT,
    QUIET_LOAD,
    REPO,
    child_env,
    data_root,
    loadavg1,
    machine_info,
    machine_line,
    read_history,
    run_timed,
    write_json,
)

PY = sys.executable
PRESETS = {
    "mlp": {"preset": "mlp-vae", "args": [], "target": "outside_fraction_le_0.10"},
    "conv": {"preset": "conv-vae", "args": ["--train-split", "train+test", "--epochs", "1"],
             "target": "process_over_epochs_lt_1.3"},
}
# --quick: one epoch over generated images (no MNIST needed), evaluated on a held-out quarter.
QUICK_ARGS = ["--epochs", "1", "--set", "data.train_split=train", "--set", "data.val=0.25"]
PARTS = ("startup_s", "data_s", "setup_s", "epochs_s", "val_s", "checkpoint_s", "eval_s", "figures_s", "exit_s")


def quick_data(path: Path, n: int = 800) -> Path:
    """Random binary 28x28 digits-shaped images with labels, as an .npz vaelab reads."""
    import numpy as np

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=(rng.random((n, 1, 28, 28)) < 0.2).astype(np.uint8) * 255, y=rng.integers(0, 10, n))
    return path


def breakdown(wall: float, run_dir: Path) -> dict:
    """The process's seconds by part, from history.csv and summary.json's timing."""
    hist = read_history(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    t = summary.get("timing") or {}
    missing = [k for k in ("startup_s", "process_s", "fit_s", "eval_s", "figures_s") if k not in t]
    if missing:
        sys.exit(f"eval_cost.py: {run_dir / 'summary.json'} has no timing {missing}: "
                 "this vaelab predates summary.json's timing, or /proc is absent")
    epochs = sum(h["seconds"] for h in hist)
    parts = {k: t.get(k, 0.0) for k in PARTS if k not in ("epochs_s", "exit_s")}
    parts["epochs_s"] = round(epochs, 3)
    parts["fit_other_s"] = round(t["fit_s"] - sum(t.get(k, 0.0) for k in
                                                  ("data_s", "setup_s", "epochs_s", "val_s", "checkpoint_s")), 3)
    parts["exit_s"] = round(wall - t["process_s"], 3)
    accounted = sum(parts.values())
    return {
        "wall_s": round(wall, 3), "epochs_s": round(epochs, 3), "epochs": len(hist),
        "outside_epochs_s": round(wall - epochs, 3),
        "process_over_epochs": round(wall / epochs, 3) if epochs else None,
        "outside_fraction": round((wall - epochs) / wall, 4),
        "parts": parts, "unaccounted_s": round(wall - accounted, 3),
        "precision": summary.get("precision"), "threads": summary.get("threads"),
    }


def verdict(key: str, b: dict, load_start: float, quick: bool) -> str:
    if quick:
        return "quick run: not a measurement"
    if load_start >= QUIET_LOAD:
        return "under load: not comparable"
    if key == "conv":
        ok = b["process_over_epochs"] is not None and b["process_over_epochs"] < 1.3
        return f"process/epoch {b['process_over_epochs']:.2f}x, target < 1.3x: {'met' if ok else 'NOT met'}"
    ok = b["outside_fraction"] <= 0.10
    return f"outside epochs {100 * b['outside_fraction']:.1f}% of the process, target <= 10%: " \
           f"{'met' if ok else 'NOT met'}"


def main() -> None:
    p = argparse.ArgumentParser(description="Whole `vaelab train` processes against their epochs.")
    p.add_argument("--only", choices=sorted(PRESETS), help="one preset only")
    p.add_argument("--quick", action="store_true", help="tiny runs on generated images (checks the script)")
    p.add_argument("--work", default=str(OUT / "eval-cost"), help="where the runs go (default bench/out/eval-cost)")
    p.add_argument("--out", default=str(OUT / "eval_cost.json"), help="results JSON (default bench/out/eval_cost.json)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable), e.g. train.precision=fp32")
    args = p.parse_args()
    work = Path(args.work).resolve()
    root = None if args.quick else data_root("eval_cost.py")
    env = child_env(root) if root else child_env(Path(work))
    data = quick_data(work / "quick.npz") if args.quick else None
    info = machine_info()
    load_start = loadavg1()
    results: dict = {"machine": info, "quick": args.quick, "sets": args.sets, "loadavg_1min_start": round(load_start, 2),
                     "runs": {}}
    for key in [args.only] if args.only else list(PRESETS):
        spec = PRESETS[key]
        run_dir = work / spec["preset"]
        extra = ["--data", "npz", "--data-path", str(data), *QUICK_ARGS] if args.quick else list(spec["args"])
        extra += [a for kv in args.sets for a in ("--set", kv)]
        cmd = [PY, "-m", "vaelab", "train", "--preset", spec["preset"], "--out", str(run_dir), "--overwrite", *extra]
        print(f"[{key}] {' '.join(cmd[1:])}", flush=True)
        r = run_timed(cmd, env, work / "logs" / f"{key}.log")
        r.pop("stdout")
        b = breakdown(r["wall_s"], run_dir)
        b.update(command=cmd[1:], loadavg_1min_before=r["loadavg_1min_before"],
                 loadavg_1min_after=r["loadavg_1min_after"])
        b["verdict"] = verdict(key, b, load_start, args.quick)
        results["runs"][key] = b
        parts = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in b["parts"].items())
        print(f"    process {b['wall_s']:.2f}s = epochs {b['epochs_s']:.2f}s ({b['epochs']}) + outside "
              f"{b['outside_epochs_s']:.2f}s [{parts}; unaccounted {b['unaccounted_s']:.2f}]", flush=True)
        print(f"    {b['verdict']}", flush=True)
        print("    " + machine_line(info, b["precision"], b["threads"],
                                    (b["loadavg_1min_before"], b["loadavg_1min_after"])), flush=True)
    results["loadavg_1min_end"] = round(loadavg1(), 2)
    write_json(Path(args.out), results)
    print(f"\nload average (1 min) {results['loadavg_1min_start']:.2f} at start, {results['loadavg_1min_end']:.2f} "
          f"at end{'  -- under load: not comparable' if load_start >= QUIET_LOAD else ''}")
    print(f"wrote {args.out} (runs in {work.relative_to(REPO) if work.is_relative_to(REPO) else work})")


if __name__ == "__main__":
    main()
