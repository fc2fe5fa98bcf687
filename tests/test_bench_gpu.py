"""bench/gpu.py runs on the CPU (--device cpu --quick) and writes the JSON the GPU run will."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_bench_quick_on_cpu_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, VAELAB_NO_PROGRESS="1", VAELAB_DATA=str(tmp_path / "no-data"))  # MNIST absent
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["quick"] is True and res["torch"] and "cuda" in res
    assert res["device_name"] == res["machine"]["cpu_model"]
    assert any("generated 28x28" in n for n in res["notes"])  # the synthetic stand-in is said
    f = res["figures"]
    for name in ("mlp_vae_vaelab", "mlp_vae_plain_pytorch", "conv_vae_vaelab", "conv_vae_plain_pytorch",
                 "celeba_vae_vaelab"):
        assert f[name]["epoch_s"] > 0 and len(f[name]["epoch_seconds"]) == 2, name
    assert f["mlp_vae_vaelab"]["images"] == 512 and f["conv_vae_vaelab"]["images"] == 640
    assert f["celeba_vae_vaelab"]["images"] == 256
    assert f["eval_iw"]["iw_samples"] == 50 and f["eval_iw"]["images"] == 64 and f["eval_iw"]["seconds"] > 0
    assert f["eval_iw"]["nll_iw"] > 0
    assert "skipped" in f["sync_in_step"] and "skipped" in f["ddp_2_processes"]
    assert res["targets"] == {"no_sync_in_step": None, "mlp_epoch_lt_0.5s": None}  # no verdicts off CUDA
    assert "machine: " in res["machine_line"]


def test_gpu_bench_finds_the_training_step_in_the_loop():
    """The sync check counts syncs raised from trainer.py's step lines: they must still frame a step."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "bench"))
    start, end = mod.step_lines()
    body = Path(mod.trainer.__file__).read_text().splitlines()[start - 1:end - 1]
    text = "\n".join(body)
    assert start < end and "self._descend(" in text and "CHECK_EVERY" not in text
    import inspect

    descend = inspect.getsource(mod.trainer.Trainer._descend)
    assert "loss.backward()" in descend and "opt.step()" in descend
