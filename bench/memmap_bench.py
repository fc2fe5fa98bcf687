"""Training from the memory-mapped folder cache: epoch time against the in-memory tensor,
and peak memory on a folder several times larger than the memory the process may use.

    python bench/memmap_bench.py            # as root, for the capped run; bench/out/memmap_bench.json
    python bench/memmap_bench.py --copies 10 --big-copies 40 --cap-mib 512

Both folders are **augmented copies** of the real emoji set (``bench/data_bench.py``'s
``augment``: a horizontal flip, a shift of up to 6 pixels and a hue rotation per copy,
alpha kept), made once under bench/out/ and prepared with ``vaelab data prepare``. They are
not new real images; they are there to have enough bytes.

1. Epoch time: one epoch of an MLP autoencoder (12288-256-32, MSE, batch 64, one thread)
   on the ``--copies`` folder with ``data.in_memory=true`` and ``false``, alternating,
   ``--repeat`` times each; the epoch's seconds from history.csv, the whole process's
   wall time and its peak resident memory (``wait4``'s ru_maxrss).
2. Peak memory under a cap: the same training on the ``--big-copies`` folder inside a
   memory control group limited to ``--cap-mib`` (cgroup v2 or v1; needs root, else the
   step is skipped with a message). ``data.in_memory=auto`` sees the cap
   (vaelab.data.memory reads the group's limit) and reads batches from the memory map.
   Reported: the group's peak charge (page cache included), the process's peak resident
   memory, the epoch time, and what ``data.in_memory=true`` says under the same cap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, REPO, machine_info, machine_line, write_json
from data_bench import augment

MODEL = ["--kind", "ae", "--latent-dim", "32", "--set", "model.arch=mlp", "--set", "model.hidden=[256]",
         "--set", "model.output_activation=sigmoid", "--loss", "mse", "--set", "train.batch_size=64",
         "--set", "train.threads=1", "--set", "train.progress=false"]


def run(cmd: list[str], env: dict, cgroup: Path | None = None) -> dict:
    """Run ``cmd``; wall seconds, exit code, peak RSS (MiB) and output tail."""
    if cgroup is not None:  # the shell joins the control group, then becomes the command (same pid)
        cmd = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(time.perf_counter() - t0, 2), "rc": proc.returncode,
            "max_rss_mib": round(usage.ru_maxrss / 1024, 1), "tail": out.strip().splitlines()[-3:]}


def train(folder: Path, out: Path, in_memory: str, env: dict, cgroup: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "vaelab", "train", "--data", "folder", "--data-path", str(folder), "--image-size",
           "64", "--val", "none", "--epochs", "1", "--no-eval", *MODEL, "--set", f"data.in_memory={in_memory}",
           "--out", str(out), "--overwrite"]
    r = run(cmd, env, cgroup)
    if r["rc"] == 0:
        summary = json.loads((out / "summary.json").read_text())
        r["epoch_s"] = summary["train_seconds"]
        r["memory_mapped"] = summary["data_memory_mapped"]
    return r


def make_cgroup(cap: int, name: str) -> tuple[Path, str] | None:
    """A fresh memory control group limited to ``cap`` bytes: (its folder, 'v2' or 'v1'), or None."""
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").is_file() and "memory" in (v2 / "cgroup.controllers").read_text():
        g = v2 / f"vaelab-bench-{name}"
        limit, version = "memory.max", "v2"
    else:
        g = Path(f"/sys/fs/cgroup/memory/vaelab-bench-{name}")
        limit, version = "memory.limit_in_bytes", "v1"
    try:
        if g.is_dir():
            g.rmdir()
        g.mkdir()
        (g / limit).write_text(str(cap))
        if version == "v2":
            (g / "memory.swap.max").write_text("0")
    except OSError as e:
        print(f"memmap_bench: no memory control group ({e}); skipping the capped run (it needs root)")
        return None
    return g, version


def drop_page_cache() -> bool:
    """Write back and drop the kernel's clean page cache (root only); whether it was dropped."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def peak(g: Path, version: str) -> int:
    return int((g / ("memory.peak" if version == "v2" else "memory.max_usage_in_bytes")).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10, help="augmented copies for the epoch-time folder")
    ap.add_argument("--big-copies", type=int, default=60, help="augmented copies for the capped folder")
    ap.add_argument("--cap-mib", type=int, default=512, help="the capped process's memory limit, MiB")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", choices=["epoch", "capped"], help="measure one part (the other kept from the last run)")
    args = ap.parse_args()
    root = Path(os.environ.get("VAELAB_DATA") or REPO.parent / "shared" / "data") / "emoji-google-64"
    if not (root / "smileys-emotion").is_dir():
        sys.exit(f"memmap_bench: {root} not found; set VAELAB_DATA to the folder holding emoji-google-64/")
    env = dict(os.environ, VAELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    last = OUT / "memmap_bench.json"
    kept = json.loads(last.read_text()) if args.only and last.is_file() else {}
    result: dict = {**kept, "machine": machine_info(), "command": " ".join(["python"] + sys.argv),
                    "note": "augmented copies (flips, shifts, hue rotations) of the real emoji set; "
                            "shared 2-core machine, indicative numbers"}
    folders = {}
    for key, copies in (("epoch", args.copies), ("capped", args.big_copies)):
        folder = OUT / f"emoji-aug{copies}"
        t0 = time.perf_counter()
        n = augment(root, folder, copies)
        prep = run([sys.executable, "-m", "vaelab", "data", "prepare", str(folder), "--image-size", "64"], env)
        if prep["rc"] != 0:
            sys.exit(f"memmap_bench: data prepare {folder} failed: {prep['tail']}")
        size = sum(f.stat().st_size for f in (folder / ".vaelab-cache").glob("*/*.npy"))
        folders[key] = folder
        result[f"{key}_folder"] = {"path": str(folder), "images": n, "cache_mib": round(size / 2**20, 1),
                                   "made_and_prepared_s": round(time.perf_counter() - t0, 1)}
        print(f"{folder}: {n:,} images, cache {size / 2**20:.0f} MiB", flush=True)

    runs: dict[str, list] = {"in_memory": [], "memory_mapped": []}
    for _ in range(args.repeat if args.only != "capped" else 0):
        for name, flag in (("in_memory", "true"), ("memory_mapped", "false")):
            r = train(folders["epoch"], OUT / "memmap_bench" / name, flag, env)
            if r["rc"] != 0:
                sys.exit(f"memmap_bench: training ({name}) failed: {r['tail']}")
            runs[name].append(r)
            print(f"  {name:<14} epoch {r['epoch_s']:7.1f} s  process {r['wall_s']:7.1f} s  "
                  f"peak RSS {r['max_rss_mib']:7.0f} MiB", flush=True)
    if args.only != "capped":
        result["epoch_time"] = runs

    cap = args.cap_mib * 2**20
    capped: dict = {"cap_mib": args.cap_mib}
    for name, flag in (("in_memory_true", "true"), ("auto", "auto")) if args.only != "epoch" else ():
        # The cache was just written (or read) by processes outside the group, so its pages sit in
        # the page cache charged to them, not to the capped run; drop them (root only) so the capped
        # run reads its data from disk into memory it is charged for.
        capped["page_cache_dropped"] = drop_page_cache()
        made = make_cgroup(cap, name)  # one group per run: its peak is that run's alone
        if made is None:
            break
        g, version = made
        try:
            r = train(folders["capped"], OUT / "memmap_bench" / f"capped-{flag}", flag, env, g)
            r["cgroup_peak_mib"] = round(peak(g, version) / 2**20, 1)
        finally:
            try:
                g.rmdir()
            except OSError:
                pass
        capped.update({"cgroup": version, name: r})
        print(f"capped at {args.cap_mib} MiB ({version}), data.in_memory={flag}: exit {r['rc']}, "
              f"memory-mapped {r.get('memory_mapped')}, epoch {r.get('epoch_s')} s, peak RSS {r['max_rss_mib']} MiB, "
              f"group peak {r['cgroup_peak_mib']} MiB; {r['tail'][-1]}", flush=True)
    if args.only != "epoch":
        result["capped"] = capped
    shutil.rmtree(OUT / "memmap_bench", ignore_errors=True)
    write_json(OUT / "memmap_bench.json", result)
    print(machine_line(result["machine"]))
    print(f"written {OUT / 'memmap_bench.json'}")


if __name__ == "__main__":
    main()
