"""bnserve/atomic.py: a reader sees the old file or the whole new one, never a temporary."""

from __future__ import annotations

import os
import stat

import pytest

from bnserve import atomic


def test_write_file_makes_parents_and_a_readable_file(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    atomic.write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(path.name for path in target.parent.iterdir()) == ["out.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    atomic.write_bytes(target, b"old")

    def failing_writer(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(target, failing_writer)
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["out.bin"]


def test_built_in_place_renames_the_built_file_over_the_target(tmp_path):
    target, temporary = tmp_path / "link", tmp_path / ".link.tmp"
    temporary.write_text("a killed build's leftover")
    (tmp_path / "run-1").mkdir()
    with atomic.built_in_place(target, temporary) as building:
        assert not building.exists()  # the leftover is gone before the build starts
        building.symlink_to("run-1", target_is_directory=True)
    assert os.readlink(target) == "run-1"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "run-1"]


def test_a_failed_build_deletes_the_temporary_and_its_companions(tmp_path):
    target, temporary = tmp_path / "db", tmp_path / ".db.new"
    companion = tmp_path / ".db.new-wal"
    target.write_text("old")
    with (
        pytest.raises(RuntimeError),
        atomic.built_in_place(target, temporary, companions=[companion]) as building,
    ):
        building.write_text("half")
        companion.write_text("journal")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["db"]


def test_fsync_directory_accepts_a_directory(tmp_path):
    atomic.fsync_directory(tmp_path)  # no error: the entries are on disk
