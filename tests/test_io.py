"""Atomic writes: readers see the old file or the new one, never half of one; modes like open()."""

from __future__ import annotations

import os
import stat

import pytest

from vaelab.io import atomic_path, write_json, write_text


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text(tmp_path / "atomic.txt", "x")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    # mkstemp alone would give 0600: a report or results table others cannot read.
    assert mode(tmp_path / "atomic.txt") == mode(plain)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
