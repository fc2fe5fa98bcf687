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
    # a private 0600 file (as mkstemp makes) would be a report or results table others cannot read.
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


@pytest.mark.parametrize("call", ["open", "close"])
def test_ctrl_c_while_the_temporary_is_made_leaves_no_temporary(tmp_path, monkeypatch, call):
    """Ctrl+C raises where Python next checks for signals: here, just as the temporary file
    has been created (os.open returned; os.close is the next call). A name picked inside a
    helper such as mkstemp would be lost with the exception and its file left behind."""
    target = tmp_path / "history.csv"
    write_text(target, "epoch\n1\n")
    real = getattr(os, call)

    def interrupted(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, call, interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text(target, "epoch\n1\n2\n")
    monkeypatch.undo()
    assert target.read_text() == "epoch\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]
