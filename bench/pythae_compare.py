"""vaelab beside Pythae, family by family, on one architecture and budget (issue 12).

For every family both have (VAE, beta-VAE, beta-TCVAE, IWAE, MIWAE, PIWAE, CIWAE, WAE,
InfoVAE, VampPrior, VQ-VAE, FactorVAE, VAE-GAN, adversarial AE, RAE-L2, RAE-GP, the
normalizing-flow posteriors, the Hamiltonian VAE and its Riemannian version, the hyperspherical VAE, the Poincaré VAE):
Pythae trains with bench/peers/pythae_zoo.py in its own virtual environment
(bench/peers/README.md), vaelab with bench/zoo.py, the same layers (the PyTorch tutorial
body 784-400-16, a small conv body for VQ-VAE), data, epochs, batch, optimiser and settings
(PYTHAE.md lists them), one thread each, one after the other. Both sides' samples and test
reconstructions are then scored by the same code here, with vaelab's judge: FCD of prior
samples and of 10-component Gaussian-mixture samples against the test set, class entropy of
prior samples, MSE and SSIM of the reconstructions of the 10,000 test digits. Time: Pythae's
trainer (``trainer.train()``: the epochs, each with its test-set pass) beside vaelab's whole
``vaelab train`` process (start-up, data, the epochs, each with its test-set pass,
checkpoints): vaelab's number includes more.

    python bench/pythae_compare.py --pythae-python /work/peers/pythae-venv/bin/python
    python bench/pythae_compare.py --pythae-python ... --families vae,wae --epochs 1 --limit 2000 --n-samples 500 \\
        --out bench/out/cmp-quick --vaelab-out bench/out/cmp-quick/vaelab      # a quick check, not a measurement

Resumable: each side's finished families are reused (bench/out/pythae_compare/pythae/, and
vaelab's from bench/zoo.py's own folder, bench/out/zoo-mnist/: run the zoo with
``--threads 1`` and the same ``--epochs`` / ``--prior-epochs`` for a like-for-like time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import (
    BENCH,
    OUT,
    REPO,
    cached_json,
    child_env,
    data_root,
    merged_rows,
    pick,
    write_json,
)

# Pythae's family name -> vaelab's (bench/zoo.py)
SHARED = {"vae": "vae", "beta-vae": "beta-vae", "beta-tcvae": "beta-tcvae", "iwae": "iwae", "wae": "wae",
          "infovae": "infovae", "vamp": "vamp", "vqvae": "vq-vae", "factor-vae": "factor-vae",
          "vaegan": "vae-gan", "aae": "aae", "rae-l2": "rae-l2", "rae-gp": "rae-gp",
          "hamiltonian-vae": "hamiltonian-vae", "rhvae": "rhvae", "svae": "svae",
          "vae-planar": "vae-planar", "vae-radial": "vae-radial", "vae-iaf": "vae-iaf",
          "miwae": "miwae", "piwae": "piwae", "ciwae": "ciwae", "pvae": "pvae"}
NO_PRIOR = ("rae-l2", "rae-gp")  # vaelab's have no prior: scored by the GMM (Pythae's NormalSampler draws N(0, I))


def run_pythae(args, families: list[str]) -> None:
    todo = [f for f in families if not (args.pythae_out / f / "result.json").is_file()]
    for fam in todo:  # one process per family: its wall time is the whole process
        t0 = time.perf_counter()
        cmd = [args.pythae_python, str(BENCH / "peers" / "pythae_zoo.py"), "--families", fam, "--epochs",
               str(args.epochs), "--threads", str(args.threads), "--out", str(args.pythae_out), "--data-dir",
               str(data_root("pythae_compare.py")), "--pixelcnn-epochs", str(args.prior_epochs),
               "--n-samples", str(args.n_samples), "--seed", str(args.seed)] + (["--limit", str(args.limit)] if args.limit else [])
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            sys.exit(f"pythae {fam} failed")
        (args.pythae_out / fam / "process_seconds.json").write_text(
            json.dumps({"seconds": round(time.perf_counter() - t0, 1)}) + "\n")


def run_vaelab(args, families: list[str]) -> None:
    if all((args.vaelab_out / SHARED[f] / "zoo_row.json").is_file() for f in families):
        return  # the zoo has them all
    cmd = [sys.executable, str(BENCH / "zoo.py"), "--families", ",".join(SHARED[f] for f in families), "--epochs",
           str(args.epochs), "--threads", str(args.threads), "--out", str(args.vaelab_out), "--n-samples",
           str(args.n_samples), "--prior-epochs", str(args.prior_epochs), "--seed", str(args.seed)]
    cmd += ["--limit", str(args.limit)] if args.limit else []
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        sys.exit("vaelab's zoo failed")


SCORE = r"""
import json, sys, numpy as np, torch
from vaelab.config import DataConfig
from vaelab.data import load_data
from vaelab.evaluation import metrics
from vaelab.evaluation.judge import get_judge
torch.set_num_threads(int(sys.argv[3]))
judge = get_judge(DataConfig(name="mnist"))
test = load_data(DataConfig(name="mnist")).test
x = test.float()
out = {}
for key, path in json.loads(sys.argv[1]).items():
    if path is None or not __import__("os").path.isfile(path):
        out[key] = None
        continue
    with np.load(path) as f:
        imgs = torch.from_numpy(f["images"]).float() / 255
    if key.endswith("recon"):  # p_recon, v_recon: reconstructions of the first test images
        n = len(imgs)
        out[key] = {"mse": float(metrics.mse(imgs, x[:n]).mean()), "ssim": float(metrics.ssim(imgs, x[:n]).mean()),
                    "fcd": judge.fcd(imgs, x)}
    else:
        pred = judge.predict(imgs)
        p = torch.bincount(pred, minlength=10).double() / len(pred)
        out[key] = {"fcd": judge.fcd(imgs, x), "class_entropy": float(-(p[p > 0] * p[p > 0].log2()).sum()),
                    "n": len(imgs)}
json.dump(out, open(sys.argv[2], "w"), indent=1)
"""


def vaelab_arrays(run: Path, sampler: str, n: int, env: dict) -> Path:
    """vaelab's samples (and reconstructions of the first 10,000 test digits) as .npz, like Pythae's."""
    path = run / f"cmp_{sampler}.npz"
    if path.is_file():
        return path
    code = ("import sys, numpy as np, torch\n"
            "from vaelab.api import Run\n"
            "from vaelab.latent.sampling import fitted_sampler, sample_images\n"
            "run = Run.load(sys.argv[1], device='cpu'); name = sys.argv[2]; n = int(sys.argv[4])\n"
            "if name == 'recon':\n"
            "    x = run.split('test').float()[:10000]\n"
            "    imgs = run.reconstruct(x)\n"
            "else:\n"
            "    s = fitted_sampler(run, name, seed=0, **({'components': 10} if name == 'gmm' else {}))\n"
            "    imgs = sample_images(run, s, n, seed=0).images\n"
            "np.savez_compressed(sys.argv[3], images=(imgs.numpy() * 255).round().astype(np.uint8))\n")
    subprocess.run([sys.executable, "-c", code, str(run), sampler, str(path), str(n)], cwd=REPO, env=env, check=True)
    return path


def input_hashes(paths: dict) -> dict:
    """The SHA-256 of each array file a family's scores are computed from (None: absent)."""
    from vaelab.io import file_sha256

    return {k: file_sha256(v) if v and os.path.isfile(v) else None for k, v in paths.items()}


def cached_scores(path: Path, paths: dict) -> dict | None:
    """The scores saved in ``path`` when they were computed from these very arrays (their
    SHA-256s as recorded), else None: a side trained again is scored again, not read stale."""
    return cached_json(path, "inputs", input_hashes(paths), [Path(v) for v in paths.values() if v])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pythae-python", required=True, help="the python of the Pythae venv (bench/peers/README.md)")
    ap.add_argument("--families", default=",".join(SHARED), help=f"comma-separated, of {', '.join(SHARED)}")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--prior-epochs", type=int, default=10, help="PixelCNN epochs for both VQ-VAEs (zoo.py's default)")
    ap.add_argument("--n-samples", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1,
                    help="both sides' training seed (Pythae's trainer and bench/zoo.py); another seed needs --out and "
                         "--vaelab-out folders of their own, as finished families are reused")
    ap.add_argument("--limit", type=int, default=0,
                    help="both sides train on the first N training images only (quick checks: give --out and "
                         "--vaelab-out folders of their own, as finished families are reused)")
    ap.add_argument("--out", type=Path, default=OUT / "pythae_compare")
    ap.add_argument("--vaelab-out", type=Path, default=OUT / "zoo-mnist", help="bench/zoo.py's folder (shared)")
    ap.add_argument("--pythae-only", action="store_true",
                    help="train the Pythae side and stop (while bench/zoo.py trains vaelab's side in parallel)")
    args = ap.parse_args()
    families = pick(args.families, SHARED, "families (of those both have)")
    args.out.mkdir(parents=True, exist_ok=True)
    args.pythae_out = args.out / "pythae"
    env = child_env(data_root("pythae_compare.py"))
    env.update(OMP_NUM_THREADS=str(args.threads), VAELAB_NO_PROGRESS="1")
    run_pythae(args, families)
    if args.pythae_only:
        print(f"Pythae's side is in {args.pythae_out}; run again without --pythae-only for the table")
        return
    run_vaelab(args, families)
    rows = []
    for fam in families:
        pdir, vdir = args.pythae_out / fam, args.vaelab_out / SHARED[fam]
        pres = json.loads((pdir / "result.json").read_text())
        vrow = json.loads((vdir / "zoo_row.json").read_text())
        prior = "pixelcnn" if fam == "vqvae" else None if fam in NO_PRIOR else "prior"
        paths = {"p_prior": str(pdir / "samples_prior.npz"), "p_gmm": str(pdir / "samples_gmm.npz"),
                 "p_recon": str(pdir / "recon_test.npz"),
                 "v_prior": prior and str(vaelab_arrays(vdir, prior, args.n_samples, env)),
                 "v_gmm": None if fam == "vqvae" else str(vaelab_arrays(vdir, "gmm", args.n_samples, env)),
                 "v_recon": str(vaelab_arrays(vdir, "recon", args.n_samples, env))}
        scored_path = args.out / f"{fam}_scores.json"
        s = cached_scores(scored_path, paths)
        if s is None:  # never scored, or either side's arrays changed since (a side trained again)
            subprocess.run([sys.executable, "-c", SCORE, json.dumps(paths), str(scored_path), str(args.threads)],
                           cwd=REPO, env=env, check=True)
            s = json.loads(scored_path.read_text())
            write_json(scored_path, {**s, "inputs": input_hashes(paths)})
        rows.append({"family": fam,
                     "pythae_seconds": json.loads((pdir / "process_seconds.json").read_text())["seconds"],
                     "vaelab_seconds": vrow["train_process_seconds"],
                     "pythae_train_seconds": pres["timings"]["train_seconds"], "vaelab_train_seconds": vrow["train_seconds"],
                     **{f"{side}_{k}": (s[f"{side[0]}_{k}"] or {}) for side in ("pythae", "vaelab")
                        for k in ("prior", "gmm", "recon")}})
    table = {"epochs": args.epochs, "threads": args.threads, "loadavg": os.getloadavg(), "rows": rows}
    path = args.out / "compare.json"  # a call for some families adds their rows to the others'
    table["rows"] = rows = merged_rows(json.loads(path.read_text()) if path.is_file() else {}, table, ("epochs",),
                                       key=lambda r: r["family"])
    write_json(path, table)
    g = lambda d, k, f="{:.1f}": "" if not d or d.get(k) is None else f.format(d[k])
    print("| family | training s (Pythae trainer / vaelab process) | FCD prior | FCD GMM | MSE | SSIM |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        # a vaelab run trained outside the zoo (then copied in) has no process time: its training steps' own
        vs = r["vaelab_seconds"] if r["vaelab_seconds"] is not None else r["vaelab_train_seconds"]
        print(f"| {r['family']} | {r['pythae_train_seconds']:.0f} / {vs:.0f} | "
              f"{g(r['pythae_prior'], 'fcd')} / {g(r['vaelab_prior'], 'fcd')} | "
              f"{g(r['pythae_gmm'], 'fcd')} / {g(r['vaelab_gmm'], 'fcd')} | "
              f"{g(r['pythae_recon'], 'mse', '{:.4f}')} / {g(r['vaelab_recon'], 'mse', '{:.4f}')} | "
              f"{g(r['pythae_recon'], 'ssim', '{:.3f}')} / {g(r['vaelab_recon'], 'ssim', '{:.3f}')} |")


if __name__ == "__main__":
    main()
