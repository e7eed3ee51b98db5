"""Atomic writes: whole files with the usual permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lra.files import atomic_write


def test_an_atomic_write_has_the_permissions_of_an_ordinary_file(tmp_path: Path):
    atomic_write(tmp_path / "atomic.txt", lambda file: file.write("x"))
    (tmp_path / "plain.txt").write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    path.write_text("old\n")

    def fail(file) -> None:
        file.write("new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]
