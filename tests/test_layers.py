"""The package's layers (pyproject.toml, [tool.importlinter]): a lower layer never imports a
higher one, nor a sampler or the S-VAE's parts the registry that lists them, checked by
import-linter over the real import graph; `import vaelab` is light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_layers_contract_is_kept():
    from importlinter import api  # noqa: F401  (the test extra installs import-linter)

    proc = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in proc.stdout  # the layers; the deprecated anomaly.detector; the
    # samplers; the S-VAE's parts; the distributions package's modules


def test_import_vaelab_loads_no_feature_module():
    code = ("import sys, vaelab; mods = sorted(m for m in sys.modules if m.startswith('vaelab')); "
            "print(mods, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['vaelab'] False"
