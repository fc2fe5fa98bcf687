"""train.precision=auto: bf16 only where the CPU computes it in hardware.

On an AVX2 CPU oneDNN emulates bf16 and autocast is about 10x slower than fp32, so there
"auto" must give fp32; with AVX512-BF16 or AMX it gives "mixed". The flag reader and
oneDNN's answer are replaced, so the test does not depend on the machine it runs on.
"""

from __future__ import annotations

import pytest
import torch

from vaelab.training import precision

CPU = torch.device("cpu")
AVX2 = {"sse4_2", "avx", "avx2", "fma", "f16c"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}  # Skylake/Cascade Lake
SAPPHIRE_RAPIDS = AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(("flags", "onednn", "expected"), [
    (AVX2, False, "fp32"),
    (AVX2, True, "fp32"),  # oneDNN's emulated bf16 does not count
    (AVX512, True, "fp32"),  # nor on AVX512 without the bf16 instructions
    (AVX512 | {"avx512_bf16"}, True, "mixed"),  # Cooper Lake, Zen 4
    (SAPPHIRE_RAPIDS, True, "mixed"),
    (SAPPHIRE_RAPIDS, False, "fp32"),  # a torch built without oneDNN
    (None, True, "mixed"),  # no x86 flags line (e.g. ARM): oneDNN's answer
    (None, False, "fp32"),
])
def test_auto_precision_on_cpu_follows_the_cpu_flags(monkeypatch, flags, onednn, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    monkeypatch.setattr(precision, "_mkldnn_bf16", lambda: onednn)
    assert precision.resolve_precision("auto", CPU) == expected
    assert precision.resolve_precision("fp32", CPU) == "fp32"  # an explicit choice is kept
    assert precision.resolve_precision("mixed", CPU) == "mixed"


def test_cpu_flags_reader_reads_this_machine():
    flags = precision.cpu_flags()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    if line is None:
        assert flags is None
    else:
        assert flags == frozenset(line.split(":", 1)[1].split()) and len(flags) > 0
