"""Every model family on one budget, in one table (issue 12's zoo).

Each family trains on the training digits with the PyTorch tutorial VAE's body where it
applies (784-400-16, ReLU, sigmoid output; latent 16), the same epochs, batch 128, Adam
1e-3 and seed, the test set evaluated each epoch; VQ-VAE uses a small conv body (a 7x7
grid of 16-d codes, 64 codes) and a gated PixelCNN prior fit afterwards. The settings
match the Pythae side of the comparison (bench/peers/pythae_zoo.py, bench/peers/PYTHAE.md):
beta-VAE beta 4, beta-TCVAE beta 6, FactorVAE gamma 35 (its discriminator 6 layers of
1000 units, with Adam 1e-4, betas 0.5/0.9), IWAE k 10, WAE and InfoVAE lambda 10 (IMQ,
seven scales), VampPrior 50 pseudo-inputs, squared-error reconstruction for WAE and VQ-VAE;
MIWAE and PIWAE M 5, K 10 and CIWAE K 10, beta 0.5 (Pythae's config defaults; Pythae's
MIWAE(5, 10) is 10 groups of 5 draws: bench/peers/PYTHAE.md);
VAE-GAN trains with Adam 3e-4, beta1 0.5 on both sides (Pythae: its own VAEGAN as it is);
the normalizing-flow posteriors (vae-planar, vae-radial, vae-iaf) at vaelab's defaults, Pythae's
VAE_LinNF with as many (shared, not amortised) steps and its VAE_IAF at its defaults; the
Hamiltonian VAE with 3 leapfrog steps, eps from 0.01 and beta_0 from 0.3, both learned, on both sides;
the Riemannian Hamiltonian VAE at Pythae's RHVAE defaults (beta_0 0.3, Pythae's beta_zero its root).
RAE-L2 and RAE-GP at Pythae's MNIST configs (code weight 1e-2, lambda 1e-4: for RAE-L2 the
decoder's weight decay there, 5e-5 on ||theta||^2 here), squared-error reconstruction.
The hyperspherical VAE (svae) at vaelab's defaults, Pythae's SVAE beside it (its gradient without
the paper's g_cor term). The Poincaré VAE (pvae) at vaelab's defaults, Pythae's PoincareVAE beside it
(wrapped normal posterior and prior, c = 1, the same head and decoder).

Reported per family: test loss (the family's own objective), NLL (k importance samples,
where a density exists), MSE and SSIM of reconstructions, FCD of 10,000 samples from the
prior (or the PixelCNN) and from a 10-component Gaussian mixture fit on the training codes
(the judge's features against the test set; for the conditional VAE a mixture per class,
each code decoded under its class), class accuracy for the conditional VAE,
active units or codebook perplexity, parameters and training seconds. Plus a figure with
samples of every family.

    python bench/zoo.py --data mnist --epochs 10            # bench/out/zoo-mnist/
    python bench/zoo.py --data fashion-mnist --epochs 10
    python bench/zoo.py --epochs 1 --limit 5000 --n-samples 1000 --out bench/out/zoo-quick   # a quick look
    python bench/zoo.py --families beta-vae,wae --set train.precision=fp32 --out bench/out/zoo-fp32   # one setting changed

Resumable: a finished family is not trained or scored again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, REPO, child_env, data_root, pick, run_vaelab

MLP = ["model.arch=mlp", "model.hidden=[400]", "model.latent_dim=16", "model.activation=relu",
       "model.output_activation=sigmoid"]
CONV_VQ = ["model.arch=conv", "model.channels=[32,64,16]", "model.kernel_size=[4,4,1]", "model.strides=[2,2,1]",
           "model.latent=conv", "model.codebook_size=64", "model.output_activation=sigmoid"]

# family -> overrides (on top of the mlp-vae preset: its data split, batch, optimiser, epochs)
FAMILIES: dict[str, list[str]] = {
    "ae": [*MLP, "model.kind=ae", "model.loss=bce"],
    "dae": [*MLP, "model.kind=ae", "model.loss=bce", "model.corrupt=mask", "model.corrupt_level=0.25"],
    "sparse-ae": [*MLP, "model.kind=ae", "model.loss=bce", "model.latent_activation=sigmoid",
                  "model.sparsity=kl", "model.sparsity_weight=1.0", "model.sparsity_target=0.1"],
    "vae": [*MLP, "model.kind=vae"],
    "beta-vae": [*MLP, "model.kind=vae", "model.beta=4"],
    "cvae": [*MLP, "model.kind=cvae"],
    "iwae": [*MLP, "model.kind=iwae", "model.k=10"],
    # Rainforth et al. (2018) at Pythae's config defaults (M 5, K 10; CIWAE K 10, beta 0.5)
    "miwae": [*MLP, "model.kind=miwae", "model.miwae.m=5", "model.miwae.k=10"],
    "piwae": [*MLP, "model.kind=piwae", "model.piwae.m=5", "model.piwae.k=10"],
    "ciwae": [*MLP, "model.kind=ciwae", "model.ciwae.k=10", "model.ciwae.beta=0.5"],
    "beta-tcvae": [*MLP, "model.kind=beta-tcvae", "model.beta=6"],
    "wae": [*MLP, "model.kind=wae", "model.loss=euclidean", "model.mmd_weight=10"],
    "aae": [*MLP, "model.kind=aae", "model.loss=bce"],
    "infovae": [*MLP, "model.kind=infovae", "model.mmd_weight=10"],
    "vamp": [*MLP, "model.kind=vamp", "model.vamp_components=50"],
    "hvae": ["model.arch=mlp", "model.hidden=[400]", "model.kind=hvae", "model.latent_dims=[16,8]",
             "model.hidden2=[100]", "model.activation=relu", "model.output_activation=sigmoid"],
    "vq-vae": [*CONV_VQ, "model.kind=vq-vae", "model.loss=euclidean"],
    "factor-vae": [*MLP, "model.kind=factor-vae", "model.factorvae.gamma=35"],
    # The paper's weights (KL 1, gamma 1) with a conv discriminator (4x4 stride-2 convs of 32, 64, 128
    # channels, as the paper's is convolutional), the feature loss on its 2nd layer (64 x 7 x 7), the
    # non-saturating generator loss and a GAN's Adam (lr 3e-4, the paper's rate; beta1 0.5). With the
    # 784-512-256 MLP discriminator the encoder coded ~1 nat at KL weight 1, and prior FCD stayed above the
    # VAE's at any KL weight tried (bench/README.md, issue 19).
    "vae-gan": [*MLP, "model.kind=vae-gan", "model.vaegan.arch=conv", "model.vaegan.layer=2",
                "model.vaegan.generator=non-saturating", "train.lr=3e-4", "train.adam_beta1=0.5"],
    # Normalizing-flow posteriors at their defaults (vaelab.models.flows): 10 amortised planar or
    # radial steps; 2 IAF steps of 3 x 128 MADEs with a 128-unit context (Pythae: VAE_LinNF with 10
    # shared steps, VAE_IAF 2 x 3 x 128 without a context)
    "vae-planar": [*MLP, "model.kind=vae", "model.posterior=planar"],
    "vae-radial": [*MLP, "model.kind=vae", "model.posterior=radial"],
    "vae-iaf": [*MLP, "model.kind=vae", "model.posterior=iaf"],
    # Ghosh et al. 2020 at Pythae's MNIST configs (the families' defaults), Pythae's squared error;
    # no prior: scored by the GMM on their codes only (the paper's ex-post density)
    "rae-l2": [*MLP, "model.kind=rae-l2", "model.loss=euclidean"],
    "rae-gp": [*MLP, "model.kind=rae-gp", "model.loss=euclidean"],
    # The Hamiltonian VAE (vaelab.models.hamiltonian): 3 leapfrog steps (Pythae's n_lf), the step
    # size from 0.01 and beta_0 from 0.3 both learned (the paper's learned eps and tempering; Pythae's
    # HVAE with the same n_lf, eps_lf, beta_zero, learn_eps_lf and learn_beta_zero)
    "hamiltonian-vae": [*MLP, "model.kind=hamiltonian-vae", "model.hamiltonian.n_lf=3", "model.hamiltonian.eps_lf=0.01",
                        "model.hamiltonian.beta_zero=0.3", "model.hamiltonian.learn_eps=true",
                        "model.hamiltonian.learn_beta_zero=true"],
    # The Riemannian Hamiltonian VAE (vaelab.models.rhvae) at Pythae's RHVAE defaults: 3 generalised leapfrog
    # steps of 1e-3, beta_0 0.3 (fixed), temperature 1.5, regularisation 0.01, the metric from the last 100
    # batches' codes (12,800 at batch 128)
    "rhvae": [*MLP, "model.kind=rhvae", "model.rhvae.n_lf=3", "model.rhvae.eps_lf=0.001", "model.rhvae.beta_zero=0.3",
              "model.rhvae.centroids=12800"],
    # The hyperspherical VAE (vaelab.models.svae): codes on S^15, a vMF posterior, the uniform prior
    "svae": [*MLP, "model.kind=svae"],
    # The Poincaré VAE (vaelab.models.poincare): codes in the 16-d ball of curvature -1 (the authors' --c
    # default), wrapped normal posterior and prior (sigma 1), the decoder reading the ball's coordinates; Pythae's
    # PoincareVAE (wrapped_normal prior and posterior, curvature 1) beside it (bench/peers/PYTHAE.md)
    "pvae": [*MLP, "model.kind=pvae"],
}
DATA = {"mnist": [], "fashion-mnist": ["data.name=fashion-mnist"]}


def samplers_of(cfg: dict) -> list[str]:
    """The samplers a family is scored with: its learned prior (the PixelCNN of a VQ-VAE,
    else p(z) where it has one) and a 10-component Gaussian mixture fit on the training codes,
    per class for a conditional model (whose codes are decoded under their own class)."""
    if cfg["posterior"] == "vq":
        return ["pixelcnn"]
    fitted = "class-gmm" if cfg.get("condition", "none") != "none" else "gmm"
    return (["prior"] if cfg["prior"] != "none" else []) + [fitted]


def has_density(run: Path) -> bool:
    """Whether the trained model in ``run`` has a density (an nll_iw to estimate)."""
    code = ("import sys\nfrom vaelab.api import Run\n"
            "print('density' in Run.load(sys.argv[1], device='cpu').capabilities)\n")
    out = subprocess.run([sys.executable, "-c", code, str(run)], cwd=REPO, env=child_env(data_root("zoo.py")),
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] == "True"


def family(name: str, args, env: dict, out: Path) -> dict:
    """Train, evaluate and score one family; each step is skipped when its output is there,
    so a killed benchmark resumes and a changed scoring re-runs only what changed."""
    run = out / name
    log = out / f"{name}.log"
    row_file = run / "zoo_row.json"
    old = json.loads(row_file.read_text()) if row_file.is_file() else {}
    cfg = json.loads((run / "config.json").read_text())["model"] if (run / "config.json").is_file() else None
    if old and old.get("samplers") == (cfg and samplers_of(cfg)):
        return old
    summary_file = run / "summary.json"
    if summary_file.is_file() and json.loads(summary_file.read_text())["epochs"] == args.epochs:
        wall = old.get("train_process_seconds")  # trained before: keep its measured wall time
    else:
        sets = [*FAMILIES[name], *DATA[args.data], f"train.epochs={args.epochs}", f"train.seed={args.seed}",
                "train.progress=false"] + ([f"data.limit={args.limit}"] if args.limit else []) + args.sets
        wall = round(run_vaelab(["train", "--preset", "mlp-vae", "--out", str(run), "--overwrite", "--no-eval",
                                 *[a for s in sets for a in ("--set", s)]], env, log), 1)
        (run / "eval.json").unlink(missing_ok=True)
    ev_file = run / "eval.json"
    if not ev_file.is_file() or json.loads(ev_file.read_text()).get("iw_samples") not in (args.iw_samples, None):
        # --iw-samples only where there is a density to estimate (vaelab refuses it elsewhere)
        iw = ["--iw-samples", str(args.iw_samples)] if has_density(run) else []
        run_vaelab(["eval", str(run), *iw, "--seed", "0"], env, log)
    ev = json.loads(ev_file.read_text())
    summary = json.loads(summary_file.read_text())
    cfg = json.loads((run / "config.json").read_text())["model"]
    samplers = samplers_of(cfg)
    if "pixelcnn" in samplers and not (run / "priors" / "pixelcnn.safetensors").is_file():
        run_vaelab(["fit-prior", str(run), "--epochs", str(args.prior_epochs)], env, log)
    judge = ["--judge", str(args.judge)] if args.judge else []
    scored = {}
    for s in samplers:
        folder = run / f"samples-{s}"
        done = folder / "samples_eval.json"
        if not done.is_file() or json.loads(done.read_text())["n"] != args.n_samples:
            extra = ["--components", "10"] if s.endswith("gmm") else []
            run_vaelab(["eval-samples", str(run), "--sampler", s, "--n", str(args.n_samples), *extra, *judge,
                        "--out", str(folder)], env, log)
        scored[s] = json.loads(done.read_text())
    prior = scored.get("prior") or scored.get("pixelcnn") or {}
    fitted = scored.get("gmm") or scored.get("class-gmm") or {}
    row = {"family": name, "loss": ev["loss"], "nll": ev.get("nll_iw"), "mse": ev["mse"], "ssim": ev.get("ssim"),
           "fcd_prior": prior.get("fcd"), "fcd_gmm": fitted.get("fcd"), "samplers": samplers,
           "fcd_floor": next(iter(scored.values()))["fcd_floor"],
           "class_accuracy": prior.get("class_accuracy"), "class_accuracy_gmm": fitted.get("class_accuracy"),
           "active_units": ev.get("active_units"), "perplexity": ev.get("perplexity"),
           "params": summary["params"], "train_seconds": summary["train_seconds"], "train_process_seconds": wall,
           "epochs": summary["epochs"], "iw_samples": ev.get("iw_samples")}
    row_file.write_text(json.dumps(row, indent=2) + "\n")
    return row


def fmt(v, digits=2) -> str:
    if v is None:
        return ""
    return f"{v:,}" if isinstance(v, int) else f"{v:.{digits}f}"


def table(rows: list[dict], args) -> str:
    head = ("| family | test loss | NLL | MSE | SSIM | FCD prior | FCD GMM | class acc. (prior / GMM) | active units / "
            "perplexity | params | train s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        au = fmt(r["active_units"]) if r["active_units"] is not None else f"{fmt(r['perplexity'], 1)} (perplexity)"
        acc = " / ".join(fmt(r.get(k), 3) for k in ("class_accuracy", "class_accuracy_gmm") if r.get(k))
        lines.append(f"| {r['family']} | {fmt(r['loss'])} | {fmt(r['nll'])} | {fmt(r['mse'], 4)} | "
                     f"{fmt(r['ssim'], 3)} | {fmt(r['fcd_prior'], 1)} | {fmt(r['fcd_gmm'], 1)} | {acc} | {au} | "
                     f"{fmt(r['params'])} | {fmt(r['train_seconds'], 0)} |")
    floor = rows[0]["fcd_floor"] if rows else None
    return "\n".join(lines) + (f"\n\nFCD floor (training vs test images): {floor:.1f}" if floor else "")


def figure(rows: list[dict], out: Path, args) -> Path:
    """One row of samples per family (the PixelCNN for VQ-VAE, else the prior, else the GMM)."""
    import numpy as np

    # Drawn again here from each run: ten samples per family, one seed, one picture.
    code = ("import sys, json, numpy as np, torch\n"
            "from vaelab.api import Run\n"
            "from vaelab.latent.sampling import fitted_sampler, sample_images\n"
            "run = Run.load(sys.argv[1], device='cpu'); name = sys.argv[2]\n"
            "extra = {'components': 10} if name == 'gmm' else {}\n"
            "s = fitted_sampler(run, name, seed=0, **extra)\n"
            "x, _, _ = sample_images(run, s, 10, seed=0)\n"
            "np.save(sys.argv[3], (x.numpy() * 255).round().astype(np.uint8))\n")
    tiles = []
    for r in rows:
        run = out / r["family"]
        sampler = "pixelcnn" if r["perplexity"] is not None else ("prior" if r["fcd_prior"] is not None else "gmm")
        path = out / f"{r['family']}-fig.npy"
        newest = max((f.stat().st_mtime for f in run.rglob("*") if f.is_file()), default=float("inf"))
        if not (path.is_file() and path.stat().st_mtime > newest):  # drawn again unless newer than the whole
            # run (its weights, fitted samplers and priors), as the drawing's seed is fixed
            subprocess.run([sys.executable, "-c", code, str(run), sampler, str(path)], cwd=REPO, check=True,
                           env=child_env(data_root("zoo.py")))
        tiles.append((r["family"], sampler, np.load(path)[:, 0]))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 0.95 * len(tiles) + 0.5
    fig, axes = plt.subplots(len(tiles), 1, figsize=(9, height), dpi=110, squeeze=False)
    for ax, (name, sampler, imgs) in zip(axes[:, 0], tiles):  # one family: still a column of axes
        ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{name}\n({sampler})", rotation=0, ha="right", va="center", fontsize=8)
    which = "every family" if len(rows) == len(FAMILIES) else f"the {len(rows)} of {len(FAMILIES)} families finished"
    fig.suptitle(f"samples of {which} ({args.data}, {args.epochs} epochs, seed {args.seed})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # the top 0.4 inch for the title, above the first row
    png = out / "zoo_samples.png"
    fig.savefig(png, bbox_inches="tight")  # long family names (hamiltonian-vae) stay inside
    plt.close(fig)
    return png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=sorted(DATA), default="mnist")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N training images only")
    ap.add_argument("--iw-samples", type=int, default=100, help="importance samples for the test NLL")
    ap.add_argument("--n-samples", type=int, default=10000, help="samples scored by the judge")
    ap.add_argument("--prior-epochs", type=int, default=10, help="PixelCNN epochs (VQ-VAE)")
    ap.add_argument("--judge", type=Path, help="judge folder (default: the user cache, trained on first use)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a vaelab override for every family, after the family's own (repeatable), e.g. "
                         "train.precision=fp32; give it its own --out (a finished family is not retrained)")
    args = ap.parse_args()
    names = pick(args.families, FAMILIES, "families")
    out = args.out or OUT / f"zoo-{args.data}"
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(data_root("zoo.py"))
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), VAELAB_NO_PROGRESS="1")
    for name in names:
        t0 = time.perf_counter()
        family(name, args, env, out)
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    # The table holds every family finished in this folder, not just this call's (a later call
    # with --families adds rows instead of replacing the table).
    rows = [json.loads((out / f / "zoo_row.json").read_text()) for f in FAMILIES if (out / f / "zoo_row.json").is_file()]
    text = table(rows, args)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"data": args.data, "epochs": args.epochs, "seed": args.seed,
                                                  "limit": args.limit, "iw_samples": args.iw_samples,
                                                  "n_samples": args.n_samples, "sets": args.sets,
                                                  "loadavg": os.getloadavg(),
                                                  "rows": rows}, indent=2) + "\n")
    print(text)
    print(f"wrote {out / 'results.md'} and {figure(rows, out, args)}")


if __name__ == "__main__":
    main()
