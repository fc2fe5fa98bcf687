"""Speed: vaelab against plain-PyTorch reference implementations, whole processes side by side.

    python bench/speed.py                 # both comparisons, each side once
    python bench/speed.py --only mlp      # (a) mlp-vae vs the PyTorch examples VAE
    python bench/speed.py --only conv     # (b) conv-vae vs a plain loop of the Keras conv VAE
    python bench/speed.py --repeat 3      # three runs of each side (alternating); medians reported
    python bench/speed.py --quick         # tiny runs (well under a minute) to check the script works

(a) ``python bench/reference_pytorch_vae.py`` (10 epochs, test set every epoch) against
``python -m vaelab train --preset mlp-vae --out bench/out/mlp-vae --overwrite`` (10 epochs,
test set every epoch, then eval.json and figures). Both are timed as whole processes
(time.perf_counter around subprocess.run: interpreter start, imports, data loading,
training, evaluation, writing outputs). Final test losses: the reference's last
``====> Test set loss`` line, vaelab's last ``val_loss`` in history.csv.

(b) ``python bench/reference_conv_loop.py --epochs 1`` against ``python -m vaelab train
--preset conv-vae --epochs 1 --no-eval --out bench/out/conv-vae-1ep --overwrite``: seconds
for one epoch over all 70,000 digits (the reference's own epoch timer; vaelab's
history.csv ``seconds``), and the whole-process times.

Results go to bench/out/speed.json (and logs to bench/out/logs/); a Markdown table is printed.
In --quick mode the runs are cut short (--limit / --steps) and the numbers only show that
the script works: they are not measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from common import (
    OUT,
    REPO,
    child_env,
    data_root,
    loadavg1,
    machine_info,
    machine_line,
    read_history,
    run_timed,
    summarize,
    write_json,
)

PY = sys.executable
CONV_IMAGES = 70_000
BATCH = 128
TARGETS = {
    "mlp_speedup_min": 5.0, "mlp_test_loss_max": 105.6,
    "conv_speedup_min": 2.0, "conv_keras_tf_cpu_s_per_epoch": 43.0,
}


def _ref_json(path: Path) -> dict:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def _sets(vaelab_set: list[str]) -> list[str]:
    return [a for kv in vaelab_set for a in ("--set", kv)]


def bench_mlp(env: dict, repeat: int, quick: bool, vaelab_set: list[str]) -> dict:
    limit = ["--epochs", "1", "--limit", "2000"] if quick else []
    run_dir = Path("bench/out/quick-mlp-vae" if quick else "bench/out/mlp-vae")
    ref_json = OUT / "logs" / "ref-mlp.jsonl"
    ref_cmd = [PY, "bench/reference_pytorch_vae.py", *limit, "--json", str(ref_json.relative_to(REPO))]
    vl_cmd = [PY, "-m", "vaelab", "train", "--preset", "mlp-vae", "--out", str(run_dir), "--overwrite", *limit,
              *_sets(vaelab_set)]
    ref_runs, vl_runs = [], []
    for i in range(repeat):
        ref_json.unlink(missing_ok=True)
        print(f"[mlp {i + 1}/{repeat}] reference: {' '.join(ref_cmd[1:])}", flush=True)
        r = run_timed(ref_cmd, env, OUT / "logs" / f"ref-mlp-{i + 1}.log")
        losses = re.findall(r"====> Test set loss: ([0-9.eE+-]+|nan|inf)", r.pop("stdout"))
        if not losses:
            sys.exit("speed.py: no '====> Test set loss' line in the reference's output")
        rj = _ref_json(ref_json)
        r.update(final_test_loss=float(losses[-1]), epoch_seconds=rj["epoch_seconds"],
                 in_process_wall_s=rj["wall_seconds_in_process"], threads=rj["threads"])
        ref_runs.append(r)
        print(f"    {r['wall_s']:.1f}s, final test loss {r['final_test_loss']:.4f}{_load(r)}", flush=True)

        print(f"[mlp {i + 1}/{repeat}] vaelab:    {' '.join(vl_cmd[1:])}", flush=True)
        v = run_timed(vl_cmd, env, OUT / "logs" / f"vaelab-mlp-{i + 1}.log")
        v.pop("stdout")
        hist = read_history(REPO / run_dir)
        summary = json.loads((REPO / run_dir / "summary.json").read_text())
        v.update(final_test_loss=hist[-1]["val_loss"], epoch_train_seconds=[h["seconds"] for h in hist],
                 threads=summary.get("threads"), precision=summary.get("precision"))
        vl_runs.append(v)
        print(f"    {v['wall_s']:.1f}s, final test loss {v['final_test_loss']:.4f}{_load(v)}", flush=True)

    ref_wall = summarize([r["wall_s"] for r in ref_runs])
    vl_wall = summarize([r["wall_s"] for r in vl_runs])
    speedup = ref_wall["median"] / vl_wall["median"]
    vl_loss = vl_runs[-1]["final_test_loss"]
    return {
        "what": "whole-process wall time; reference = PyTorch examples VAE (DataLoader, per-item ToTensor), "
                "vaelab = train --preset mlp-vae incl. per-epoch test eval, eval.json and figures",
        "quick": quick,
        "note_epoch_seconds": "reference epoch_seconds include its test pass; vaelab epoch_train_seconds "
                              "(history.csv 'seconds') are training only",
        "reference": {"command": ref_cmd[1:], "runs": ref_runs, "wall_s": ref_wall},
        "vaelab": {"command": vl_cmd[1:], "runs": vl_runs, "wall_s": vl_wall},
        "speedup_wall_median": round(speedup, 2),
        "speedup_wall_min": round(ref_wall["min"] / vl_wall["min"], 2),
        "reference_final_test_loss": ref_runs[-1]["final_test_loss"],
        "vaelab_final_test_loss": vl_loss,
        "targets": None if quick else {
            "speedup_ge_5x": speedup >= TARGETS["mlp_speedup_min"],
            "vaelab_test_loss_le_105.6": vl_loss <= TARGETS["mlp_test_loss_max"],
        },
    }


def bench_conv(env: dict, repeat: int, quick: bool, vaelab_set: list[str], ref_padding: str = "same") -> dict:
    steps_per_epoch = math.ceil(CONV_IMAGES / BATCH)
    quick_steps = 50
    ref_extra = ["--steps", str(quick_steps)] if quick else []
    vl_extra = ["--limit", str(quick_steps * BATCH)] if quick else []
    run_dir = Path("bench/out/quick-conv-vae-1ep" if quick else "bench/out/conv-vae-1ep")
    ref_json = OUT / "logs" / "ref-conv.jsonl"
    ref_cmd = [PY, "bench/reference_conv_loop.py", "--epochs", "1", "--padding", ref_padding, *ref_extra,
               "--json", str(ref_json.relative_to(REPO))]
    vl_cmd = [PY, "-m", "vaelab", "train", "--preset", "conv-vae", "--epochs", "1", "--no-eval",
              "--out", str(run_dir), "--overwrite", *vl_extra, *_sets(vaelab_set)]
    ref_runs, vl_runs = [], []
    for i in range(repeat):
        ref_json.unlink(missing_ok=True)
        print(f"[conv {i + 1}/{repeat}] reference: {' '.join(ref_cmd[1:])}", flush=True)
        r = run_timed(ref_cmd, env, OUT / "logs" / f"ref-conv-{i + 1}.log")
        r.pop("stdout")
        rj = _ref_json(ref_json)
        r.update(seconds_per_epoch=rj["seconds_per_epoch"], projected=rj["projected"],
                 train_loss=rj["train_loss"][-1], threads=rj["threads"])
        ref_runs.append(r)
        print(f"    {r['wall_s']:.1f}s process, {r['seconds_per_epoch']:.2f}s per epoch"
              f"{' (projected)' if r['projected'] else ''}{_load(r)}", flush=True)

        print(f"[conv {i + 1}/{repeat}] vaelab:    {' '.join(vl_cmd[1:])}", flush=True)
        v = run_timed(vl_cmd, env, OUT / "logs" / f"vaelab-conv-{i + 1}.log")
        v.pop("stdout")
        hist = read_history(REPO / run_dir)
        summary = json.loads((REPO / run_dir / "summary.json").read_text())
        seconds = hist[-1]["seconds"]
        if quick:  # history 'seconds' covers limit/BATCH steps: project to a full epoch
            v.update(seconds_measured=seconds, projected=True,
                     seconds_per_epoch=round(seconds / quick_steps * steps_per_epoch, 3))
        else:
            v.update(seconds_per_epoch=seconds, projected=False)
        v.update(train_loss=hist[-1]["train_loss"], threads=summary.get("threads"),
                 precision=summary.get("precision"))
        vl_runs.append(v)
        print(f"    {v['wall_s']:.1f}s process, {v['seconds_per_epoch']:.2f}s per epoch"
              f"{' (projected)' if v['projected'] else ''}{_load(v)}", flush=True)

    ref_epoch = summarize([r["seconds_per_epoch"] for r in ref_runs])
    vl_epoch = summarize([r["seconds_per_epoch"] for r in vl_runs])
    ref_wall = summarize([r["wall_s"] for r in ref_runs])
    vl_wall = summarize([r["wall_s"] for r in vl_runs])
    speedup = ref_epoch["median"] / vl_epoch["median"]
    return {
        "what": "seconds per epoch over 70,000 digits (batch 128, 547 steps), and whole-process wall time "
                "for a 1-epoch run; reference = plain PyTorch loop of the Keras tutorial conv VAE",
        "quick": quick,
        "reference": {"command": ref_cmd[1:], "runs": ref_runs, "seconds_per_epoch": ref_epoch, "wall_s": ref_wall},
        "vaelab": {"command": vl_cmd[1:], "runs": vl_runs, "seconds_per_epoch": vl_epoch, "wall_s": vl_wall},
        "speedup_per_epoch_median": round(speedup, 2),
        "speedup_wall_median": round(ref_wall["median"] / vl_wall["median"], 2),
        "keras_tf_cpu_s_per_epoch_reported_not_measured": TARGETS["conv_keras_tf_cpu_s_per_epoch"],
        "targets": None if quick else {
            "speedup_ge_2x": speedup >= TARGETS["conv_speedup_min"],
            "faster_than_keras_tf_cpu_43s_reported": vl_epoch["median"] < TARGETS["conv_keras_tf_cpu_s_per_epoch"],
        },
    }


def _load(run: dict) -> str:
    return f" (load average {run['loadavg_1min_before']:.2f} -> {run['loadavg_1min_after']:.2f})"


def _yes(flag) -> str:
    return "n/a (quick)" if flag is None else ("yes" if flag else "**no**")


def markdown(results: dict) -> str:
    q = results["quick"]
    rows = ["| measurement | reference | vaelab | speed-up | target | met |",
            "|---|---:|---:|---:|---|---|"]
    if "mlp" in results:
        m = results["mlp"]
        t = m["targets"] or {}
        n = results["repeat"]
        label = "mlp-vae whole process" + (" (quick: 1 epoch, 2,000 images)" if q else ", 10 epochs") + \
            (f", median of {n}" if n > 1 else "") + ", s"
        rows.append(f"| {label} | {m['reference']['wall_s']['median']:.1f} | {m['vaelab']['wall_s']['median']:.1f} "
                    f"| {m['speedup_wall_median']:.2f}x | >= 5x | {_yes(t.get('speedup_ge_5x') if t else None)} |")
        rows.append(f"| mlp-vae final test loss | {m['reference_final_test_loss']:.2f} | {m['vaelab_final_test_loss']:.2f} "
                    f"| | vaelab <= 105.6 | {_yes(t.get('vaelab_test_loss_le_105.6') if t else None)} |")
    if "conv" in results:
        c = results["conv"]
        t = c["targets"] or {}
        label = "conv-vae s/epoch, 70,000 digits" + (" (quick: projected from 50 steps)" if q else "")
        rows.append(f"| {label} | {c['reference']['seconds_per_epoch']['median']:.2f} "
                    f"| {c['vaelab']['seconds_per_epoch']['median']:.2f} | {c['speedup_per_epoch_median']:.2f}x "
                    f"| >= 2x | {_yes(t.get('speedup_ge_2x') if t else None)} |")
        rows.append(f"| conv-vae s/epoch vs Keras on TensorFlow CPU (43 s reported, not measured here) | 43 "
                    f"| {c['vaelab']['seconds_per_epoch']['median']:.2f} "
                    f"| {43 / c['vaelab']['seconds_per_epoch']['median']:.2f}x | < 43 s "
                    f"| {_yes(t.get('faster_than_keras_tf_cpu_43s_reported') if t else None)} |")
        label = "conv-vae whole process" + (" (quick: 50 steps)" if q else ", 1 epoch") + ", s"
        rows.append(f"| {label} | {c['reference']['wall_s']['median']:.1f} | {c['vaelab']['wall_s']['median']:.1f} "
                    f"| {c['speedup_wall_median']:.2f}x | | |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description="vaelab vs plain-PyTorch references, whole processes side by side.")
    p.add_argument("--only", choices=["mlp", "conv"], help="run one comparison only")
    p.add_argument("--quick", action="store_true",
                   help="tiny runs (--limit/--steps) to check the script; the numbers are not measurements")
    p.add_argument("--repeat", type=int, default=1, help="runs of each side (alternating); medians reported")
    p.add_argument("--vaelab-set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra --set for the vaelab runs, e.g. train.precision=fp32 (repeatable)")
    p.add_argument("--conv-ref-padding", choices=["same", "symmetric"], default="same",
                   help="padding of the conv reference loop: same (TensorFlow's, the preset's function; default) "
                        "or symmetric (PyTorch's padding=1, a one-pixel-shifted variant without the pad/crop ops)")
    p.add_argument("--out", default=str(OUT / "speed.json"), help="results JSON (default bench/out/speed.json)")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    env = child_env(data_root("speed.py"))
    results: dict = {"machine": machine_info(), "quick": args.quick, "repeat": args.repeat,
                     "conv_ref_padding": args.conv_ref_padding,
                     "data_root": env["VAELAB_DATA"], "python": PY, "vaelab_set": args.vaelab_set}
    if args.only in (None, "mlp"):
        results["mlp"] = bench_mlp(env, args.repeat, args.quick, args.vaelab_set)
    if args.only in (None, "conv"):
        results["conv"] = bench_conv(env, args.repeat, args.quick, args.vaelab_set, args.conv_ref_padding)
    m = results["machine"]
    results["loadavg_1min_end"] = round(loadavg1(), 2)
    precisions = sorted({str(r.get("precision")) for k in ("mlp", "conv") if k in results
                         for r in results[k]["vaelab"]["runs"]})
    threads = sorted({r.get("threads") for k in ("mlp", "conv") if k in results
                      for side in ("vaelab", "reference") for r in results[k][side]["runs"]} - {None})
    line = machine_line(m, f"vaelab {', '.join(precisions)}, references fp32",
                        "/".join(map(str, threads)) or None, (m["loadavg_at_start"][0], results["loadavg_1min_end"]))
    results["machine_line"] = line
    table = markdown(results) + "\n\n" + line
    results["table_markdown"] = table
    out = Path(args.out)
    write_json(out, results)
    if args.quick:
        print("\nQUICK RUN: not a measurement")
    if args.vaelab_set:
        print(f"extra --set for vaelab: {' '.join(args.vaelab_set)}")
    print(table)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
