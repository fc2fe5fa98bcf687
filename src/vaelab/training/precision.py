"""Devices and arithmetic: where a run computes and in which precision.

``train.precision``: "fp32"; "mixed" (fp32 weights, optimizer state and losses; the
forward pass under bf16 autocast on CPU, TF32 matrix products on CUDA); "auto" =
mixed where the hardware does it natively (AVX512-BF16/AMX CPUs, CUDA), else fp32.
Evaluation always runs in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from vaelab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" becomes "mixed" where the hardware computes bf16/TF32 natively, else "fp32"."""
    if precision != "auto":
        return precision
    native = torch.cuda.is_available() if device.type == "cuda" else _cpu_has_bf16()
    return "mixed" if native else "fp32"


@contextmanager
def compute_precision(precision: str, device: torch.device) -> Iterator[None]:
    """On CUDA under "mixed", let fp32 matmuls and convolutions use TF32 for the block.

    On CPU "mixed" is bf16 autocast around each forward pass (``forward_context``);
    parameters, optimizer state and losses stay fp32 either way. Autocast beat letting
    oneDNN compute fp32 products in bf16 (the previous CPU "mixed"): mlp-vae step at 2
    threads, medians of 5 alternating runs, 4.96 ms against 6.27 ms (fp32: 6.56 ms).
    """
    if precision != "mixed" or device.type != "cuda":
        yield
        return
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9's API
        flags = [(torch.backends.cuda.matmul, "fp32_precision", "tf32"), (torch.backends.cudnn.conv, "fp32_precision",
                                                                           "tf32")]
    else:  # the older flags, deprecated since
        flags = [(torch.backends.cuda.matmul, "allow_tf32", True), (torch.backends.cudnn, "allow_tf32", True)]
    saved = [getattr(obj, name) for obj, name, _ in flags]
    try:
        for obj, name, value in flags:
            setattr(obj, name, value)
        yield
    finally:
        for (obj, name, _), old in zip(flags, saved):
            setattr(obj, name, old)


def forward_context(precision: str, device: torch.device):
    """Context for one forward pass: bf16 autocast under "mixed" on CPU.

    It must be entered per step, never around a whole epoch: autocast caches the bf16
    copies of the weights until the outermost autocast region exits, so a long-lived
    region would keep using the weights of its first step while the optimizer moves on.
    """
    if device.type == "cpu" and precision == "mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


# x86 flags of bf16 arithmetic in hardware. oneDNN also "supports" bf16 on AVX512 and AVX2
# CPUs without them, by emulation: there bf16 autocast is about 10x slower than fp32 (conv-vae,
# 20,000 images on an AVX2 CPU: 113 s against 11.3 s), so "auto" must not pick it.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (the ``flags`` line of /proc/cpuinfo, x86 Linux); None elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_has_bf16() -> bool:
    """bf16 computed natively: oneDNN's bf16 and, where the CPU lists its flags, one of
    ``NATIVE_BF16_FLAGS`` (elsewhere, e.g. ARM, oneDNN's answer alone)."""
    flags = cpu_flags()
    return _mkldnn_bf16() and (flags is None or bool(flags & NATIVE_BF16_FLAGS))


__all__ = ["compute_precision", "cpu_flags", "forward_context", "resolve_device", "resolve_precision"]
