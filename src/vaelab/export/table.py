"""CSV export of reconstructions and latent codes, streamed to disk in chunks.

Layouts (the ones users already exchange):

- reconstructions: ``row_id, orig_px0, recon_px0, orig_px1, recon_px1, ...`` -- one row
  per image, pixel i in C-order over (C, H, W), values in [0, 1] with ``decimals`` digits;
- latents: ``row_id, label, mu0.., logvar0..`` -- the posterior's parameters per code:
  means, and log-variances for Gaussian posteriors; ``label`` is empty when the data
  has no labels.

``row_id`` is the image's index in the split. An image folder's rows also name their file
(``path``, after ``row_id``), and latents name their class (``class``, after ``label``) when the
classes have names other than their numbers (folders, .npz string labels). Rows are computed and written one chunk
at a time into a temporary file that is renamed over the target at the end, so memory
stays bounded by one chunk and a crash never leaves a half-written CSV.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vaelab.errors import VaelabError
from vaelab.io import atomic_path, write_json
from vaelab.rundir import ID_FIELD, RunDir, refuse_run_file, sidecar

DEFAULT_DECIMALS = 4  # 1/255 = 0.0039, so 4 decimals still tell all 256 grey levels apart
DEFAULT_CHUNK = 1000


def reconstruction_header(pixels: int) -> list[str]:
    return ["row_id"] + [f"{kind}_px{i}" for i in range(pixels) for kind in ("orig", "recon")]


def latent_header(latent_dim: int, params: list[str]) -> list[str]:
    """``row_id, label`` then each posterior parameter per dimension (mu0.., logvar0..)."""
    return ["row_id", "label"] + [f"{p}{i}" for p in params for i in range(latent_dim)]


def _quoted(text: str) -> str:
    """A CSV field as RFC 4180 writes it: quoted when it holds a comma, quote or line break."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\r\n') else text


def _leading(data, sl: slice, names: list[str] | None = None, labels: bool = False) -> tuple[list[str], list]:
    """The columns before the values: row_id, path (a folder's), then with ``labels`` label
    and class (the class names, when they are more than the numbers)."""
    head, cols = ["row_id"], [np.arange(sl.start, sl.stop)]
    if data.paths:
        head.append("path")
        cols.append([_quoted(p) for p in data.paths[sl]])
    if labels:
        head.append("label")
        cols.append(data.y[sl].numpy() if data.y is not None else [""] * (sl.stop - sl.start))
        if data.y is not None and names and names != [str(i) for i in range(len(names))]:
            head.append("class")
            cols.append([_quoted(names[i]) if 0 <= i < len(names) else "" for i in data.y[sl].tolist()])
    return head, cols


def _write_rows(f, first_cols: list, values: np.ndarray, decimals: int) -> None:
    """Write rows of integer/str leading columns then floats (B, K) with fixed decimals.

    One ``%`` format per row over a preformatted template: several times faster than the
    csv module for thousands of float columns. The layout is the same whatever the chunking; a value
    may differ in its last digit, as the CPU's matrix kernels round a batch of 7 and of 1000 differently.
    """
    lead = "".join("%s," for _ in first_cols)
    row_fmt = lead + ",".join([f"%.{decimals}f"] * values.shape[1]) + "\n"
    for i in range(values.shape[0]):
        f.write(row_fmt % (*(c[i] for c in first_cols), *values[i].tolist()))


def _chunks(n: int, chunk_size: int) -> Iterator[slice]:
    if chunk_size < 1:
        raise VaelabError("chunk size must be at least 1")
    for i in range(0, n, chunk_size):
        yield slice(i, min(i + chunk_size, n))


def export_reconstructions(run, out: str | Path, split: str | None = None, n: int | None = 100,
                           decimals: int = DEFAULT_DECIMALS, chunk_size: int = DEFAULT_CHUNK) -> dict:
    """Write originals and reconstructions of the first ``n`` images of a split (all when None)."""
    data = run.split(split)
    n = len(data) if n is None else min(_check_n(n), len(data))
    pixels = int(np.prod(data.shape))
    header = _leading(data, slice(0, 0))[0] + reconstruction_header(pixels)[1:]
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        f.write(",".join(header) + "\n")
        for sl in _chunks(n, chunk_size):
            x = data.batch(sl)  # (B, C, H, W) in [0, 1]
            r = run.reconstruct(x, None if data.y is None else data.y[sl])
            # (B, P, 2) -> (B, 2P): orig_px0, recon_px0, orig_px1, ... as the header says
            values = torch.stack([x.flatten(1), r.flatten(1)], dim=2).flatten(1).double().numpy()
            _write_rows(f, _leading(data, sl)[1], values, decimals)
    return {"what": "reconstructions", "rows": n, "columns": len(header), "out": str(out)}


def export_latents(run, out: str | Path, split: str | None = None, n: int | None = None,
                   chunk_size: int = DEFAULT_CHUNK, decimals: int = 6) -> dict:
    """Write the posterior parameters (means; log-variances for Gaussian posteriors) of a split's images."""
    data = run.split(split)
    n = len(data) if n is None else min(_check_n(n), len(data))
    names = run.class_names() if data.y is not None else None
    header = None
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        for sl in _chunks(n, chunk_size):
            params = run.posterior(data.batch(sl), None if data.y is None else data.y[sl]).params()  # name -> (B, D)
            head, lead = _leading(data, sl, names, labels=True)
            if header is None:  # each parameter's own width (a VQ-VAE's code grid is not latent_dim wide)
                header = head + [f"{p}{i}" for p, v in params.items() for i in range(v.shape[1])]
                f.write(",".join(header) + "\n")
            values = torch.cat(list(params.values()), 1)
            _write_rows(f, lead, values.double().numpy(), decimals)
    return {"what": "latents", "rows": n, "columns": len(header or []), "out": str(out)}


def _check_n(n: int) -> int:
    if n < 1:
        raise VaelabError(f"--n must be at least 1, got {n}")
    return n


# Registry: what -> exporter(run, out, split, n, chunk_size=...).
EXPORTS = {"reconstructions": export_reconstructions, "latents": export_latents}


def export(run, what: str, out: str | Path, split: str | None = None, n: int | None = None,
           chunk_size: int = DEFAULT_CHUNK, **kw) -> dict:
    """Dispatch on ``what``; ``n`` None means 100 reconstructions or every latent code."""
    if what not in EXPORTS:
        raise VaelabError(f"unknown export {what!r}; known: {', '.join(EXPORTS)}")
    refuse_run_file(out, "--out")
    if n is None and what == "reconstructions":
        n = 100
    result = EXPORTS[what](run, out, split=split, n=n, chunk_size=chunk_size, **kw)
    if RunDir.owning(out) is not None:  # a CSV inside a run: OUT.json records the weights (vaelab.rundir)
        write_json(sidecar(out), {"file": Path(out).name, "what": what, ID_FIELD: run.checkpoint_id})
    return result


__all__ = ["EXPORTS", "export", "export_latents", "export_reconstructions", "latent_header",
           "reconstruction_header"]
