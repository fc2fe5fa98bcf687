"""How close the subset estimate of nll_iw is to the whole split's (issue 21).

    python bench/iw_subset.py RUN                       # K = 10; 500, 1,000 and 2,000 images; seeds 0-2
    python bench/iw_subset.py RUN --k 10 --images 1000 --seeds 5

Evaluates RUN's test split once over every image (its nll_iw, seed 0), then with the
importance samples decoded for only N images (``--iw-images N``), for each seed: the
estimate and its stated standard error, beside the full number. Not a timing: it may run
under load. Output: the table, and bench/out/iw_subset.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import OUT, data_root, write_json


def main() -> None:
    p = argparse.ArgumentParser(description="The subset estimate of nll_iw against the whole split's.")
    p.add_argument("run", help="a trained run with a density")
    p.add_argument("--k", type=int, default=10, help="importance samples per image")
    p.add_argument("--images", default="500,1000,2000", help="comma-separated subset sizes")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT / "iw_subset.json"))
    args = p.parse_args()
    data_root("iw_subset.py")
    import torch

    from vaelab.api import Run

    torch.set_num_threads(args.threads)
    run = Run.load(args.run, device="cpu")
    full = run.evaluate(split="test", iw_samples=args.k, seed=0)
    print(f"{args.run}: test nll_iw over all {full['n']:,} images (K = {args.k}, seed 0): {full['nll_iw']:.3f}")
    rows = []
    for m in [int(v) for v in args.images.split(",")]:
        for seed in range(args.seeds):
            r = run.evaluate(split="test", iw_samples=args.k, seed=seed, iw_images=m)
            rows.append({"images": m, "seed": seed, "nll_iw": r["nll_iw"], "stderr": r["nll_iw_stderr"]})
            print(f"  {m:>6,} images, seed {seed}: {r['nll_iw']:.3f} +- {r['nll_iw_stderr']:.3f} "
                  f"(full - estimate: {full['nll_iw'] - r['nll_iw']:+.3f})")
    write_json(Path(args.out), {"run": args.run, "k": args.k, "full": full["nll_iw"], "n": full["n"], "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
