"""Download with SHA-256 verification and atomic writes.

Data sets are found in an explicit ``data_dir`` alone when one is given (read there or
downloaded there), else in ``$VAELAB_DATA``, then the user cache ``~/.cache/vaelab``
(``$XDG_CACHE_HOME/vaelab``). Each root holds one folder per data set with the standard
file names.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from vaelab.errors import DataError
from vaelab.io import atomic_path

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# SHA-256 of the *uncompressed* IDX files: the same whichever mirror (or re-gzipped
# copy) the .gz comes from.
SOURCES = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/"],
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    },
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaelab"


def data_roots(data_dir: str | None = None) -> list[Path]:
    """Candidate roots in search order. A ``data_dir`` given (--data-dir, data.data_dir) is the
    only one: the data are read from it or downloaded into it, never quietly from elsewhere; it
    must be a folder that exists."""
    if data_dir:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise DataError(f"data.data_dir (--data-dir) {data_dir} {what}; give the folder that holds mnist/ "
                            "(or fashion-mnist/), create it to download into it, or leave it out ($VAELAB_DATA, "
                            "then the cache)")
        return [root]
    roots = []
    if os.environ.get("VAELAB_DATA"):
        roots.append(Path(os.environ["VAELAB_DATA"]).expanduser())
    roots.append(cache_dir())
    return roots


def find_file(root: Path, name: str, stem: str) -> Path | None:
    for candidate in (root / name / f"{stem}.gz", root / name / stem):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, data_dir: str | None = None, download: bool = True) -> dict[str, Path]:
    """Paths of the four IDX files of ``name``, downloading them if needed."""
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    roots = data_roots(data_dir)
    for root in roots:
        found = {stem: find_file(root, name, stem) for stem in FILES}
        if all(found.values()):
            return found  # type: ignore[return-value]
    # An explicit data_dir is the only root; else download into the first one ($VAELAB_DATA, the cache).
    target = roots[0] / name
    if not download:
        raise DataError(f"{name} not found; place {', '.join(f + '.gz' for f in FILES)} in {target}")
    return {stem: fetch(name, stem, target) for stem in FILES}


def fetch(name: str, stem: str, folder: Path) -> Path:
    """Download ``stem.gz`` from the first mirror that answers; verify; write atomically."""
    dest = folder / f"{stem}.gz"
    if dest.is_file():
        return dest
    errors = []
    for mirror in SOURCES[name]["mirrors"]:
        url = mirror + stem + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                blob = r.read()
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        verify(blob, SOURCES[name]["sha256"][stem], url)
        try:
            with atomic_path(dest) as tmp:
                tmp.write_bytes(blob)
        except OSError as e:
            raise DataError(f"cannot write {dest}: {e.strerror}; pass --data-dir to a writable folder") from None
        return dest
    raise DataError(f"could not download {name} ({errors[0] if errors else 'no mirror'}); "
                    f"offline? place {', '.join(f + '.gz' for f in FILES)} in {folder}")


def verify(blob: bytes, sha256: str, where: str) -> None:
    try:
        data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where} sent a corrupt gzip file ({e}); try again later") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f"{where} failed its SHA-256 check (got {digest[:12]}..., want {sha256[:12]}...); "
                        "nothing was written")
