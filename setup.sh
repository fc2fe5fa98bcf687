#!/usr/bin/env bash
# Create .venv and install vaelab into it, CPU PyTorch first.
# Usage: bash setup.sh [EXTRAS]   e.g. bash setup.sh test
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned: a bare "torch" requirement would pull the multi-GB CUDA build.
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
if [ -n "$extras" ]; then
  python -m pip install -q --disable-pip-version-check -e ".[$extras]"
else
  python -m pip install -q --disable-pip-version-check -e .
fi
