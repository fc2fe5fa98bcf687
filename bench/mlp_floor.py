"""Floor: how fast can a whole mlp-vae run (10 epochs, test pass each epoch) be on this machine?

The issue asks vaelab's whole process to be at least 5x faster than the PyTorch tutorial
(bench/reference_pytorch_vae.py) and says 8x is "near what the matrix multiplications of
this model allow on two cores". This script measures that allowance instead of guessing
it. It times, in one process, the parts every eager-PyTorch implementation must pay:

* ``gemm``: the eleven matrix products of each training step (fc1, the two 20-unit heads
  stacked as one 40-unit product, fc3 and fc4 forward; each weight gradient; the input
  gradients of fc4, fc3 and the heads) at the real shapes in bf16, the fastest dtype this
  CPU has, for the 4,690 steps of 10 epochs (468 batches of 128 and one of 96 per
  epoch), plus the forward products of ten passes over the 10,000 test images;
* ``adam``: ``torch.optim.Adam(fused=True).step()`` on the 652,824 parameters, 4,690 times;
* ``casts``: copying the fp32 weights into bf16 once per step, as any mixed-precision
  step must;
* ``import``: a fresh interpreter running ``import torch`` (and, separately, ``import
  torch, torch._dynamo``: the first ``torch.optim`` call imports dynamo), median of 3.

Their sum is a floor, not a prediction: it leaves out the data, the activations, the loss
and its gradient, autograd and the evaluation metrics. ``--reference-seconds S`` (the
reference's whole-process time measured by bench/speed.py) turns it into the largest
speed-up any implementation could show.

Two real training loops run beside it over the same batches, so the floor can be read
against them:

* ``hand``: the fastest eager step written here. No autograd, no modules: the forward
  pass, a closed-form backward (``hand_step``; tests/test_bench_reference.py checks its
  gradients against autograd) and the fused Adam, with bf16 products as under autocast.
* ``vaelab``: vaelab's own step (the mlp-vae preset model under ``train.precision=mixed``,
  autocast forward, autograd backward, fused Adam), as in ``vaelab.training.fit``.
* ``compiled`` (with ``--compile``): vaelab's step with the forward pass (model and loss,
  under autocast) wrapped in ``torch.compile``, compiled from cold (inductor's caches
  off); reported as the first step (the compilation) and the rest.

    python bench/mlp_floor.py --reference-seconds 96.1 --out bench/out/mlp-floor.json
    python bench/mlp_floor.py --quick            # 1 epoch, script check only
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import OUT, data_root, machine_info, machine_line, write_json

TRAIN, TEST, BATCH, EVAL_BATCH = 60_000, 10_000, 128, 1000
D, H, Z = 784, 400, 20
# Parameter shapes of the tutorial model, with fc21 and fc22 stacked into one (2Z, H) head.
SHAPES = [(H, D), (H,), (2 * Z, H), (2 * Z,), (H, Z), (H,), (D, H), (D,)]


def init_params(seed: int = 1) -> list[torch.Tensor]:
    """fp32 master parameters in nn.Linear's default initialisation."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for weight, bias in zip(SHAPES[::2], SHAPES[1::2]):
        bound = 1 / math.sqrt(weight[1])  # 1/sqrt(fan_in), for the weight and its bias
        out += [(torch.rand(shape, generator=gen) * 2 - 1) * bound for shape in (weight, bias)]
    return out


def hand_step(p: list[torch.Tensor], x: torch.Tensor, eps: torch.Tensor,
              dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One mlp-vae step with a closed-form backward: (per-image loss (B,), fp32 gradients).

    ``p`` are the parameters in ``dtype`` (the products run in it, as under autocast);
    ``x`` (B, 784) fp32 in [0, 1]; ``eps`` (B, 20) the reparameterisation noise. The loss
    is the tutorial's BCE summed over pixels plus KL, and the gradients are those of its
    mean over the batch.
    """
    w1, b1, w2, b2, w3, b3, w4, b4 = p
    inv_b = 1.0 / x.shape[0]
    xc = x.to(dtype)
    h1 = torch.addmm(b1, xc, w1.t()).relu_()
    heads = torch.addmm(b2, h1, w2.t()).float()
    mu, logvar = heads[:, :Z], heads[:, Z:]
    std = torch.exp(0.5 * logvar)
    z = torch.addcmul(mu, eps, std)
    zc = z.to(dtype)
    h3 = torch.addmm(b3, zc, w3.t()).relu_()
    logits = torch.addmm(b4, h3, w4.t()).float()
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    var = std.square()
    kl = -0.5 * (1 + logvar - mu.square() - var).sum(1)

    g4 = (torch.sigmoid(logits) - x).mul_(inv_b)            # d loss / d logits
    g4c = g4.to(dtype)
    dh3 = torch.mm(g4c, w4).mul_(h3 > 0)                     # through fc4 and the ReLU
    dz = torch.mm(dh3, w3).float()
    dmu = dz + mu * inv_b                                    # reparameterisation + KL terms
    dlogvar = dz * eps * std * 0.5 + (var - 1) * (0.5 * inv_b)
    dheads = torch.cat([dmu, dlogvar], 1)
    dheads_c = dheads.to(dtype)
    dh1 = torch.mm(dheads_c, w2).mul_(h1 > 0)
    grads = [torch.mm(dh1.t(), xc), dh1.float().sum(0), torch.mm(dheads_c.t(), h1), dheads.sum(0),
             torch.mm(dh3.t(), zc), dh3.float().sum(0), torch.mm(g4c.t(), h3), g4.sum(0)]
    return recon + kl, [g.float() for g in grads]


def gemm_step(p: list[torch.Tensor], xc: torch.Tensor, acts: dict[str, torch.Tensor]) -> None:
    """Only the eleven matrix products of a training step (values do not matter, shapes do)."""
    w1, _, w2, _, w3, _, w4, _ = p
    h1, heads, zc, h3, g4, dh3, dheads, dh1 = (acts[k] for k in ("h1", "heads", "z", "h3", "g4", "dh3",
                                                                  "dheads", "dh1"))
    torch.mm(xc, w1.t()), torch.mm(h1, w2.t()), torch.mm(zc, w3.t()), torch.mm(h3, w4.t())
    torch.mm(g4.t(), h3), torch.mm(g4, w4), torch.mm(dh3.t(), zc), torch.mm(dh3, w3)
    torch.mm(dheads.t(), h1), torch.mm(dheads, w2), torch.mm(dh1.t(), xc)


def batches(n: int):
    """(start, stop) of each step of one epoch: the tutorial's 469 batches."""
    for i in range(0, n, BATCH):
        yield i, min(i + BATCH, n)


def train_loop(train: torch.Tensor, epochs: int, step) -> tuple[float, float, float]:
    """Shuffle each epoch and batch as the tutorial does; ``step(x)`` trains on one batch
    (B, 784) in [0, 1] and returns its summed loss. (seconds of the first step, seconds in
    all, last epoch's mean loss)."""
    torch.manual_seed(1)
    first, last = None, math.nan
    t0 = time.perf_counter()
    for _ in range(epochs):
        shuffled = train[torch.randperm(len(train))]
        total = 0.0
        for lo, hi in batches(len(train)):
            total += step(shuffled[lo:hi].float().div_(255))
            if first is None:
                first = time.perf_counter() - t0
        last = total / len(train)
    return first, time.perf_counter() - t0, last


def load_mnist(root: Path, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from vaelab.data.idx import read_idx

    def read(stem: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(root / "mnist" / f"{stem}.gz")).reshape(-1, D)

    x = read("train-images-idx3-ubyte")
    return (x if limit is None else x[:limit]), read("t10k-images-idx3-ubyte")


def time_gemm(train: torch.Tensor, test: torch.Tensor, epochs: int) -> float:
    p = [t.bfloat16() for t in init_params()]
    xb = train.bfloat16()
    acts_full = {k: torch.randn(BATCH, w).bfloat16() for k, w in
                 (("h1", H), ("heads", 2 * Z), ("z", Z), ("h3", H), ("g4", D), ("dh3", H), ("dheads", 2 * Z),
                  ("dh1", H))}
    test_b = test.bfloat16()
    z_test = torch.randn(EVAL_BATCH, Z).bfloat16()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for lo, hi in batches(len(train)):
            acts = acts_full if hi - lo == BATCH else {k: v[:hi - lo] for k, v in acts_full.items()}
            gemm_step(p, xb[lo:hi], acts)
    for _ in range(epochs):  # the test pass: forward products only
        for i in range(0, len(test), EVAL_BATCH):
            x = test_b[i:i + EVAL_BATCH]
            h1 = torch.mm(x, p[0].t())
            torch.mm(h1, p[2].t())
            torch.mm(torch.mm(z_test[:len(x)], p[4].t()), p[6].t())
    return time.perf_counter() - t0


def time_adam(steps: int) -> float:
    params = [torch.nn.Parameter(t) for t in init_params()]
    for q in params:
        q.grad = torch.randn_like(q) * 1e-3
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    opt.step()  # the first call imports torch._dynamo: counted in "import", not here
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return time.perf_counter() - t0


def time_casts(steps: int) -> float:
    master = init_params()
    low = [t.bfloat16() for t in master]
    t0 = time.perf_counter()
    for _ in range(steps):
        for lo, hi in zip(low, master):
            lo.copy_(hi)
    return time.perf_counter() - t0


def time_import(code: str, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_hand(train: torch.Tensor, epochs: int) -> tuple[float, float]:
    """Train with hand_step; (seconds, last epoch's mean training loss)."""
    params = [torch.nn.Parameter(t) for t in init_params()]
    low = [t.detach().bfloat16() for t in params]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def step(x: torch.Tensor) -> float:
        loss, grads = hand_step(low, x, torch.randn(len(x), Z))
        for q, g in zip(params, grads):
            q.grad = g
        opt.step()
        with torch.no_grad():
            for q_low, q in zip(low, params):
                q_low.copy_(q)
        return float(loss.sum())

    _, seconds, last = train_loop(train, epochs, step)
    return seconds, last


def run_vaelab(train: torch.Tensor, epochs: int) -> tuple[float, float]:
    """vaelab's own loop (``vaelab.training.fit``) on the mlp-vae preset, precision mixed, no test pass."""
    from vaelab.configure import build_config
    from vaelab.data import ImageSet, Splits
    from vaelab.training.loop import fit

    cfg = build_config("mlp-vae", extra={"train": {"precision": "mixed", "epochs": epochs, "progress": False},
                                         "data": {"val": "none"}})
    splits = Splits(train=ImageSet(train.view(-1, 1, 28, 28), None), val=None, test=None)
    t0 = time.perf_counter()
    result = fit(cfg, splits=splits, log=lambda msg: None)
    return time.perf_counter() - t0, result.history[-1]["train_loss"]


def run_compiled(train: torch.Tensor, epochs: int) -> tuple[float, float, float]:
    """vaelab's step with a torch.compile'd forward: (compile seconds, seconds of the other steps, loss)."""
    import os

    os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"  # time a cold compile, not a cache hit
    from vaelab.configure import build_config
    from vaelab.models import build_model
    from vaelab.training.loop import forward_context, make_optimizer

    cfg = build_config("mlp-vae", extra={"train": {"precision": "mixed"}})
    cfg.model.input_shape = [1, 28, 28]
    torch.manual_seed(1)
    model = build_model(cfg.model).train()
    device = torch.device("cpu")
    opt = make_optimizer(model, cfg, device)

    def forward(x):
        with forward_context("mixed", device):
            return model(x.view(-1, 1, 28, 28))["loss"].mean()

    compiled = torch.compile(forward, dynamic=False)

    def step(x: torch.Tensor) -> float:
        loss = compiled(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item() * len(x)

    first, seconds, last = train_loop(train, epochs, step)
    return first, seconds - first, last


def main() -> None:
    p = argparse.ArgumentParser(description="The least time an eager-PyTorch mlp-vae run can take here.")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument("--reference-seconds", type=float, default=None,
                   help="the reference's whole-process time from bench/speed.py, for the largest possible speed-up")
    p.add_argument("--skip-loops", action="store_true", help="floor parts only, not the hand / vaelab loops")
    p.add_argument("--compile", action="store_true", help="also time vaelab's step with a torch.compile'd forward")
    p.add_argument("--quick", action="store_true", help="1 epoch on 6,400 images: checks the script, measures nothing")
    p.add_argument("--out", default=str(OUT / "mlp-floor.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_root("mlp_floor.py")
    epochs = 1 if args.quick else args.epochs
    train, test = load_mnist(root, 6400 if args.quick else None)
    if args.quick:
        test = test[:1000]
    steps = epochs * math.ceil(len(train) / BATCH)
    info = machine_info()

    res: dict = {"epochs": epochs, "steps": steps, "quick": args.quick}
    res["import_torch_s"] = time_import("import torch")
    res["import_torch_dynamo_s"] = time_import("import torch, torch._dynamo")
    res["gemm_s"] = time_gemm(train, test, epochs)
    res["adam_s"] = time_adam(steps)
    res["casts_s"] = time_casts(steps)
    res["floor_s"] = res["import_torch_s"] + res["gemm_s"] + res["adam_s"] + res["casts_s"]
    for k in ("gemm", "adam", "casts"):
        res[f"{k}_ms_per_step"] = 1000 * res[f"{k}_s"] / steps
    if not args.skip_loops:
        # Alternating would not help here: each loop is one long run; both see the same machine.
        res["hand_s"], res["hand_last_epoch_loss"] = run_hand(train, epochs)
        res["vaelab_s"], res["vaelab_last_epoch_loss"] = run_vaelab(train, epochs)
        res["hand_ms_per_step"] = 1000 * res["hand_s"] / steps
        res["vaelab_ms_per_step"] = 1000 * res["vaelab_s"] / steps
    if args.compile:
        first, rest, loss = run_compiled(train, epochs)
        res["compile_first_step_s"], res["compiled_rest_s"], res["compiled_last_epoch_loss"] = first, rest, loss
        res["compiled_ms_per_step"] = 1000 * res["compiled_rest_s"] / (steps - 1)
    if args.reference_seconds:
        res["reference_s"] = args.reference_seconds
        res["max_speedup"] = args.reference_seconds / res["floor_s"]
    res = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
    write_json(Path(args.out), {"machine": info, "results": res})

    print(f"\nmlp-vae floor, {epochs} epochs = {steps} steps, {torch.get_num_threads()} threads"
          f"{'  (QUICK: not a measurement)' if args.quick else ''}")
    print(f"  import torch             {res['import_torch_s']:7.2f} s   "
          f"(+torch._dynamo: {res['import_torch_dynamo_s']:.2f} s)")
    for k in ("gemm", "adam", "casts"):
        print(f"  {k:24s} {res[f'{k}_s']:7.2f} s   ({res[f'{k}_ms_per_step']:.3f} ms/step)")
    print(f"  floor (sum)              {res['floor_s']:7.2f} s")
    if "max_speedup" in res:
        print(f"  reference {res['reference_s']:.1f} s -> largest possible speed-up {res['max_speedup']:.2f}x")
    if "hand_s" in res:
        print(f"  hand-written step loop   {res['hand_s']:7.2f} s   ({res['hand_ms_per_step']:.3f} ms/step, "
              f"last epoch loss {res['hand_last_epoch_loss']:.2f})")
        print(f"  vaelab step loop         {res['vaelab_s']:7.2f} s   ({res['vaelab_ms_per_step']:.3f} ms/step, "
              f"last epoch loss {res['vaelab_last_epoch_loss']:.2f})")
    if "compiled_rest_s" in res:
        print(f"  torch.compile'd forward  {res['compile_first_step_s']:7.2f} s first step (compiling), then "
              f"{res['compiled_ms_per_step']:.3f} ms/step (last epoch loss {res['compiled_last_epoch_loss']:.2f})")
    print(machine_line(info))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
