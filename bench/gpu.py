"""GPU benchmark: vaelab's epochs on CUDA against plain PyTorch loops of the same layers.

    python bench/gpu.py                         # CUDA; about 3-5 minutes on one H100; bench/out/gpu.json
    python bench/gpu.py --celeba-dir DIR        # celeba-vae on an image folder (default: generated images)
    python bench/gpu.py --device cpu --quick    # the same code on tiny data on the CPU: checks the script

What it measures (each epoch figure is the second of two epochs, the first warming up):
  * mlp-vae: vaelab's epoch (history.csv ``seconds``) and the PyTorch examples VAE's layers
    and loss in a plain loop (data on the device, ``loss.item()`` per step as the tutorial does);
  * conv-vae: vaelab's epoch over train+test and bench/reference_conv_loop.py's model and
    loop (the Keras tutorial's layers, a plain PyTorch loop);
  * celeba-vae: vaelab's epoch on 64x64 RGB images (a folder, or generated images);
  * ``Run.evaluate(iw_samples=5000)``, what ``vaelab eval --iw-samples 5000`` runs, on the
    mlp-vae run over the test images;
  * host-device synchronisations inside a training step: a few steps of vaelab's loop under
    ``torch.cuda.set_sync_debug_mode("warn")``, counting the warnings raised from within a step
    (the loss check every CHECK_EVERY steps is outside the step, and allowed);
  * a 2-process DDP mlp-vae epoch when the machine has 2 or more GPUs (else "skipped").
Targets: no synchronisation inside a step; an mlp-vae epoch under 0.5 s (CUDA only).
MNIST comes from $VAELAB_DATA when it is there; otherwise generated 28x28 images of the same
shape and count stand in (the timings hold; the losses mean nothing), and the JSON says so.
Needs only torch (CUDA build) and vaelab's dependencies; vaelab is imported from src/ when it
is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
try:
    import vaelab  # noqa: F401
except ImportError:  # a bare machine with the repository copied over: use the source tree
    sys.path.insert(0, str(REPO / "src"))

import numpy as np
import torch
import torch.nn.functional as F
from common import OUT, loadavg1, machine_info, machine_line, write_json
from torch import nn

from vaelab.api import Run
from vaelab.configure import build_config
from vaelab.data import ImageSet, Splits, load_data
from vaelab.errors import VaelabError
from vaelab.training import loop, trainer

MLP_EPOCH_TARGET_S = 0.5
BATCH = 128


def quiet(_msg: str) -> None:
    pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- data
def synthetic(n: int, shape: tuple[int, int, int], seed: int, labels: bool = True) -> ImageSet:
    """uint8 images of ``shape``: smooth random blobs (not noise), binary for one channel."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    low = torch.rand(n, c, max(2, h // 7), max(2, w // 7), generator=g)
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = (x > 0.6).float() if c == 1 else x
    y = torch.randint(0, 10, (n,), generator=g) if labels else None
    return ImageSet(x=(x * 255).round().to(torch.uint8), y=y, name="synthetic")


def mnist(quick: bool) -> tuple[ImageSet, ImageSet, str | None]:
    """MNIST's train and test images, or generated ones of the same shape (with a note)."""
    n_train, n_test = (512, 128) if quick else (60_000, 10_000)
    try:
        cfg = build_config("mlp-vae", overrides=["data.download=false"]).data  # no network on a GPU box
        s = load_data(cfg)
        train, test = s.train, s.test
        if quick:
            train, test = train.subset(torch.arange(n_train)), test.subset(torch.arange(n_test))
        return train, test, None
    except VaelabError as e:
        note = (f"MNIST not found ({str(e)[:120]}); generated 28x28 images of the same shape stand in: "
                "timings hold, losses do not compare")
        return synthetic(n_train, (1, 28, 28), 0), synthetic(n_test, (1, 28, 28), 1), note


# ----------------------------------------------------------------------------- vaelab
def vaelab_epochs(preset: str, splits: Splits, device: torch.device, work: Path, epochs: int = 2,
                  overrides: tuple[str, ...] = ()) -> dict:
    cfg = build_config(preset, overrides=[f"train.device={device}", f"train.epochs={epochs}", "train.progress=false",
                                          *overrides])
    run_dir = work / preset
    res = loop.fit(cfg, run_dir, splits=splits, log=quiet)
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = [h["seconds"] for h in res.history]
    return {"epoch_s": seconds[-1], "epoch_seconds": seconds, "images": len(splits.train),
            "precision": summary["precision"], "val_loss": res.history[-1]["val_loss"],
            "train_loss": res.history[-1]["train_loss"], "_result": res}


# ----------------------------------------------------------------------------- plain PyTorch
class TutorialVAE(nn.Module):
    """The PyTorch examples VAE's layers (bench/reference_pytorch_vae.py: 784-400-20, ReLU, sigmoid)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def tutorial_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def plain_epochs(kind: str, images: torch.Tensor, device: torch.device, epochs: int = 2) -> dict:
    """A plain loop: uint8 images on the device, a shuffled slice per step, ``loss.item()`` per step."""
    torch.manual_seed(1)
    if kind == "mlp":
        model, loss_fn = TutorialVAE().to(device), lambda out, x: tutorial_loss(*out[:1], x, *out[1:])
    else:
        from reference_conv_loop import ConvVAE, vae_loss

        model = ConvVAE().to(device)
        loss_fn = lambda out, x: vae_loss(out[0], x, out[1], out[2])[0]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = images.to(device)
    n = len(x_all)
    seconds, last = [], float("nan")
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device)
        total = 0.0
        for i in range(0, n, BATCH):
            x = x_all[perm[i:i + BATCH]].float() / 255
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            total += loss.item() * (len(x) if kind == "conv" else 1)
            opt.step()
        sync(device)
        seconds.append(time.perf_counter() - t0)
        last = total / n
    return {"epoch_s": round(seconds[-1], 4), "epoch_seconds": [round(s, 4) for s in seconds], "train_loss": last,
            "precision": "fp32 (PyTorch defaults)"}


# ----------------------------------------------------------------------------- sync check
def step_lines() -> tuple[int, int]:
    """The lines of one training step in training/trainer.py: from ``for step in range(steps)`` to
    the interval check (``if (step + 1) % CHECK_EVERY``), which syncs on purpose. (The backward
    and optimizer steps run in ``Trainer._descend``, called from these lines: its frames count.)"""
    lines = Path(trainer.__file__).read_text().splitlines()
    start = next(i for i, ln in enumerate(lines, 1) if ln.strip().startswith("for step in range(steps)"))
    end = next(i for i, ln in enumerate(lines, 1) if i > start and "% CHECK_EVERY" in ln)
    return start, end


def step_syncs(splits: Splits, device: torch.device, work: Path, steps: int = 20) -> dict:
    """Synchronisations raised from inside vaelab's training step, over ``steps`` steps."""
    if device.type != "cuda":
        return {"skipped": "needs CUDA (torch.cuda.set_sync_debug_mode)"}
    n = min(len(splits.train), steps * BATCH)
    small = Splits(train=splits.train.subset(torch.arange(n)), val=None, test=None)
    overrides = [f"train.device={device}", "train.epochs=1", "train.progress=false", "data.val=none"]
    loop.fit(build_config("mlp-vae", overrides=overrides), work / "sync-warm", splits=small, log=quiet)
    start, end = step_lines()
    file = str(Path(trainer.__file__).resolve())
    seen = {"in_step": 0, "elsewhere": 0, "where": []}

    def hook(message, category, filename, lineno, file_=None, line=None):
        stack = traceback.extract_stack()
        inside = any(str(Path(f.filename).resolve()) == file and start <= f.lineno < end for f in stack)
        seen["in_step" if inside else "elsewhere"] += 1
        if inside and len(seen["where"]) < 5:
            seen["where"].append(f"{filename}:{lineno}: {str(message)[:120]}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loop.fit(build_config("mlp-vae", overrides=overrides), work / "sync", splits=small, log=quiet)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {"steps": -(-n // BATCH), "syncs_in_step": seen["in_step"], "syncs_outside_steps": seen["elsewhere"],
            "first_in_step": seen["where"], "step_lines": f"training/trainer.py:{start}-{end - 1}"}


# ----------------------------------------------------------------------------- DDP
def ddp(device: torch.device, train: ImageSet, work: Path) -> dict:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        return {"skipped": f"{gpus} GPU(s); a 2-process DDP run needs 2"}
    data = work / "ddp.npz"
    np.savez(data, x=train.x.cpu().numpy(), y=train.y.cpu().numpy())
    run = work / "ddp"
    cmd = [sys.executable, "-m", "vaelab", "train", "--preset", "mlp-vae", "--nproc", "2", "--device", "cuda",
           "--epochs", "2", "--data", "npz", "--data-path", str(data), "--set", "data.val=none", "--no-eval",
           "--out", str(run), "--overwrite", "--set", "train.progress=false"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"failed": (proc.stdout + proc.stderr)[-600:], "command": cmd[1:]}
    rows = (run / "history.csv").read_text().splitlines()
    col = rows[0].split(",").index("seconds")
    return {"processes": 2, "epoch_s": float(rows[-1].split(",")[col]), "process_wall_s": round(wall, 2),
            "command": cmd[1:]}


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description="vaelab on CUDA against plain PyTorch loops.")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="tiny data, few samples: checks the script (not a measurement)")
    p.add_argument("--celeba-dir", help="a folder of face images for celeba-vae (default: generated 64x64 images)")
    p.add_argument("--out", default=str(OUT / "gpu.json"), help="results JSON (default bench/out/gpu.json)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu.py: CUDA is not available here (torch " + torch.__version__ + "); use --device cpu --quick "
                 "to check the script")
    q = args.quick
    t_start = time.perf_counter()
    info = machine_info()
    load_start = loadavg1()
    res: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu_model"],
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "quick": q, "machine": info, "notes": [], "figures": {},
    }
    figures = res["figures"]

    def show(name: str, fig: dict, what: str) -> None:
        figures[name] = {k: v for k, v in fig.items() if not k.startswith("_")}
        prec = fig.get("precision", "")
        print(f"{name:22s} {what}  [{res['device_name']}, torch {res['torch']}, CUDA {res['cuda']}, {prec}]",
              flush=True)

    train, test, note = mnist(q)
    if note:
        res["notes"].append(note)
        print("note: " + note, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mlp = vaelab_epochs("mlp-vae", Splits(train=train, val=test, test=test), device, work)
        show("mlp_vae_vaelab", mlp, f"epoch {mlp['epoch_s']:.3f}s over {mlp['images']:,} images")
        ref = plain_epochs("mlp", train.x, device)
        show("mlp_vae_plain_pytorch", ref, f"epoch {ref['epoch_s']:.3f}s (tutorial layers, plain loop)")

        both = ImageSet(x=torch.cat([train.x, test.x]), y=torch.cat([train.y, test.y]), name="train+test")
        conv = vaelab_epochs("conv-vae", Splits(train=both, val=None, test=test), device, work)
        show("conv_vae_vaelab", conv, f"epoch {conv['epoch_s']:.3f}s over {conv['images']:,} images")
        cref = plain_epochs("conv", both.x, device)
        show("conv_vae_plain_pytorch", cref, f"epoch {cref['epoch_s']:.3f}s (reference_conv_loop.py's model)")

        if args.celeba_dir:
            cfg = build_config("celeba-vae", overrides=[f"data.path={args.celeba_dir}"]).data
            faces = load_data(cfg)
            if q:
                faces = Splits(train=faces.train.subset(torch.arange(min(256, len(faces.train)))), val=None, test=None)
            res["celeba_data"] = f"folder {args.celeba_dir}"
        else:
            n = 256 if q else 20_000
            faces = Splits(train=synthetic(n, (3, 64, 64), 2, labels=False), val=None, test=None)
            res["celeba_data"] = f"{n:,} generated 64x64 RGB images"
        celeba = vaelab_epochs("celeba-vae", faces, device, work, overrides=("data.val=none",))
        show("celeba_vae_vaelab", celeba, f"epoch {celeba['epoch_s']:.3f}s over {celeba['images']:,} images "
                                          f"64x64 ({res['celeba_data']})")

        k, n_eval = (50, 64) if q else (5000, len(test))
        run = Run(config=mlp["_result"].config, model=mlp["_result"].model, device=device,
                  _splits=Splits(train=train, val=None, test=test.subset(torch.arange(n_eval))))
        sync(device)
        t0 = time.perf_counter()
        ev = run.evaluate(split="test", iw_samples=k)
        sync(device)
        iw = {"seconds": round(time.perf_counter() - t0, 3), "iw_samples": k, "images": n_eval,
              "nll_iw": ev["nll_iw"], "precision": "fp32 (evaluation)"}
        show("eval_iw", iw, f"{iw['seconds']:.2f}s for --iw-samples {k} over {n_eval:,} images (mlp-vae)")

        figures["sync_in_step"] = step_syncs(Splits(train=train, val=None, test=None), device, work)
        print(f"{'sync_in_step':22s} {figures['sync_in_step']}", flush=True)
        figures["ddp_2_processes"] = ddp(device, train, work)
        print(f"{'ddp_2_processes':22s} {figures['ddp_2_processes']}", flush=True)

    cuda = device.type == "cuda" and not q
    s = figures["sync_in_step"]
    res["targets"] = {
        "no_sync_in_step": None if "skipped" in s else s["syncs_in_step"] == 0,
        "mlp_epoch_lt_0.5s": mlp["epoch_s"] < MLP_EPOCH_TARGET_S if cuda else None,
    }
    res["mlp_speedup_vs_plain"] = round(ref["epoch_s"] / mlp["epoch_s"], 2) if mlp["epoch_s"] else None
    res["conv_speedup_vs_plain"] = round(cref["epoch_s"] / conv["epoch_s"], 2) if conv["epoch_s"] else None
    res["loadavg_1min"] = [round(load_start, 2), round(loadavg1(), 2)]
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["machine_line"] = machine_line(info, f"vaelab {mlp['precision']}", None, tuple(res["loadavg_1min"]))
    write_json(Path(args.out), res)
    verdict = {k: ("n/a" if v is None else "met" if v else "NOT met") for k, v in res["targets"].items()}
    print(f"\ntargets: {verdict}" + ("  (quick run: not a measurement)" if q else ""))
    print(f"speed-up over plain PyTorch: mlp {res['mlp_speedup_vs_plain']}x, conv {res['conv_speedup_vs_plain']}x")
    print(f"{res['device_name']}; {res['machine_line']}")
    print(f"wrote {args.out} ({res['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
