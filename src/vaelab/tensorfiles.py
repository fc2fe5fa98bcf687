"""Tensor files that are safe to load from strangers: safetensors only, written atomically.

``save_tensors`` writes weights (and string metadata) through ``vaelab.io.atomic_path``;
``load_tensors`` refuses anything that is not a safetensors file (a pickle, a torch.save
zip) before any library parses it, so loading never runs code. Checkpoints, the judge and
learned priors all store their weights through these two functions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vaelab.errors import CheckpointError
from vaelab.io import atomic_path


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.chmod(0o644)  # safetensors writes a private file; weights are meant to be shared


def check_safetensors(path: str | Path) -> None:
    """Refuse anything that is not a safetensors file before any library parses it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    with open(path, "rb") as f:
        head = f.read(16)
    # safetensors: an 8-byte little-endian header length, then a JSON header. Test that
    # first: the length's low byte may be 0x80, the first byte of a pickle.
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return
    if (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[:2] == b"PK":
        raise CheckpointError(f"{path} is a pickle / torch.save file, which could run code; "
                              "vaelab only loads safetensors weights")
    raise CheckpointError(f"{path} is not a safetensors file")


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a checked safetensors file; a one-line CheckpointError otherwise."""
    metadata = read_metadata(path)
    try:
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e})") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a checked safetensors file, without reading its tensors."""
    path = Path(path)
    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e})") from None


__all__ = ["check_safetensors", "load_tensors", "read_metadata", "save_tensors"]
