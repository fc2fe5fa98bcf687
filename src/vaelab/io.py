"""Atomic file writes: a reader never sees a half-written file.

Every file vaelab writes goes to a temporary file in the same folder, is
flushed to disk, and is then renamed over the target (``os.replace`` is atomic
on POSIX and Windows).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vaelab.errors import VaelabError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception, Ctrl+C included, the temporary file is removed and the target is
    left as it was. The temporary file is made here rather than by ``tempfile.mkstemp``
    so that its name is known before it exists: a Ctrl+C landing inside mkstemp, or at
    the chmod its private 0600 mode needs, would leave a file nobody removes.
    ``os.open`` applies the umask, as a plain ``open()`` does."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a part of the path is a file
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.is_file()), path.parent)
        raise VaelabError(f"cannot write {path}: {blocker} is a file, not a folder; choose another path") from None
    except OSError as e:
        raise VaelabError(f"cannot write {path}: cannot make its folder ({e.strerror})") from None
    tmp = _fresh_name(path)
    try:
        while True:  # one try from before the file exists to after the rename
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:  # another writer's name (1 in 2**64): draw again
                tmp = _fresh_name(path)
            except OSError as e:  # named by the user's path, not the temporary file's
                raise VaelabError(f"cannot write {path}: {e.strerror}") from None
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fresh_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
